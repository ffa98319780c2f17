//! The durable queue: per-shard append-only logs of message and outcome records.

pub mod index;
pub mod log;
pub mod record;
pub mod recovery;
