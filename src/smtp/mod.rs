//! SMTP without I/O: the command parser, the DATA scanner, the address grammar, the
//! relay policy tables and the inbound session state machine. Nothing here touches a
//! socket or a file, so all of it is unit-tested, property-tested and fuzzed directly.

pub mod address;
pub mod client;
pub mod data;
pub mod parser;
pub mod policy;
pub mod sasl;
pub mod session;
