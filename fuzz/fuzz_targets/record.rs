//! The queue log's record decoder and a whole segment scan over arbitrary bytes: never
//! panic, never loop, never read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::queue::{record, recovery};

fuzz_target!(|data: &[u8]| {
    let _ = record::decode(data);
    let scan = recovery::scan_segment(std::path::Path::new("fuzz"), data);
    assert!(scan.end as usize <= data.len());
});
