//! The DATA scanner over arbitrary content in arbitrary pieces: never panic, consume
//! everything or stop exactly at the end, and agree with itself whatever the split. And
//! the queue's wire form (kept dot-stuffed), unstuffed span by span for a BDAT chunk, is
//! exactly what the unstuffing scan gives, whenever the content is one the relay keeps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::smtp::data::{unstuff, unstuffed_len, DataScanner};

fuzz_target!(|input: (u16, &[u8])| {
    let (split, data) = input;
    let mut whole = DataScanner::wire_form(1 << 20);
    let mut out_whole = Vec::new();
    let (used_whole, end_whole) = whole.feed(data, &mut out_whole);
    let cut = usize::from(split) % (data.len() + 1);
    let mut parts = DataScanner::wire_form(1 << 20);
    let mut out_parts = Vec::new();
    let (a, e) = parts.feed(&data[..cut], &mut out_parts);
    let (used_parts, end_parts) = if e.is_some() { (a, e) } else {
        let (b, e) = parts.feed(&data[cut..], &mut out_parts);
        (a + b, e)
    };
    assert_eq!(used_whole, used_parts);
    assert_eq!(end_whole, end_parts);
    assert_eq!(out_whole, out_parts);
    // Bare CR or LF (refused) and over the limit (refused) never reach the queue.
    if let Some(end) = end_whole {
        if !end.bare_newline && !end.over_limit {
            let mut plain = DataScanner::new(1 << 20);
            let mut out_plain = Vec::new();
            let (used_plain, _) = plain.feed(data, &mut out_plain);
            assert_eq!(used_plain, used_whole);
            assert_eq!(unstuff(&out_whole), out_plain);
            assert_eq!(unstuffed_len(&out_whole), out_plain.len());
        }
    }
});
