//! DNS reply handling: arbitrary bytes as an answer to the resolver's cache logic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::route::dns::Resolver;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let r = Resolver::new(vec![], Duration::from_secs(1), 1, Duration::from_secs(1), 1);
    r.absorb_untrusted(data);
});
