//! Sockets: the inbound SMTP listeners and connections of one shard.

pub mod inbound;
pub mod stream;
