//! The whole inbound state machine over arbitrary input: must never panic, and must
//! always consume or ask for more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::config::Config;
use ringpost::smtp::session::{Event, Session, SessionConfig};

thread_local! {
    // The session config is shard-local (it counts refusals in a RefCell): one per thread.
    static CFG: SessionConfig = {
        let text = "[[listen]]\naddr = \"127.0.0.1:2525\"\n[policy]\nrelay_domains = [\"example.test\"]\nvrfy = \"on\"\nexpn = \"on\"\n";
        SessionConfig::from_config(&Config::parse(text, "fuzz").expect("config"))
    };
}

fuzz_target!(|data: &[u8]| {
    CFG.with(|cfg| {
        let mut s = Session::new(cfg, "127.0.0.1".parse().expect("ip"));
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let (used, ev) = s.feed(&data[at..], &mut out);
            at += used;
            match ev {
                Event::Message => s.stored(Ok("0000000000000001"), &mut out),
                Event::Etrn => {}
                Event::StartTls | Event::Auth => break,
                Event::NeedInput | Event::Close => break,
            }
        }
    });
});
