//! Command framing and parsing over arbitrary bytes: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::smtp::parser::{frame, parse_command, skip_line, Frame};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match frame(&data[at..], 512) {
            Ok(Frame::Line(line, used)) => {
                let _ = parse_command(line);
                at += used;
            }
            Ok(Frame::Incomplete) => break,
            Err(_) => at += skip_line(&data[at..]).0.max(1),
        }
    }
});
