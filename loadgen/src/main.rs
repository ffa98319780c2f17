//! loadgen: ringpost's load generator, SMTP sink and test DNS server.
//!
//! The `send`, `sink` and `dns` commands arrive with the loadgen issue; until then this
//! binary only says so, so that the workspace builds and the name is taken.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("loadgen: send, sink and dns are not built yet (see the loadgen issue)");
    ExitCode::from(2)
}
