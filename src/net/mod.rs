//! Sockets: the inbound SMTP listeners and connections of one shard.

pub mod admin;
pub mod inbound;
pub mod stream;
pub mod watchdog;
