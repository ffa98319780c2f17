//! ringpost: a thread-per-core SMTP relay with a durable sharded queue log.
//!
//! Dependency direction: `smtp`, `queue::record` and `config` do no I/O; `queue` and
//! `net` build on them; `shard` wires everything together on glommio executors.

pub mod auth;
pub mod config;
pub mod deliver;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod queue;
pub mod route;
pub mod shard;
pub mod smtp;
pub mod time;
pub mod tls;
pub mod tune;
