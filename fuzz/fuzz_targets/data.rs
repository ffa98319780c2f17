//! The DATA scanner over arbitrary content in arbitrary pieces: never panic, consume
//! everything or stop exactly at the end, and agree with itself whatever the split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::smtp::data::DataScanner;

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
});
