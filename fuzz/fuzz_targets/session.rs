//! The whole inbound state machine over arbitrary input: must never panic, and must
//! always consume or ask for more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::config::Config;
use ringpost::smtp::session::{Event, Session, SessionConfig};
use std::sync::OnceLock;

fn config() -> &'static SessionConfig {
    static CFG: OnceLock<SessionConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let text = "[[listen]]\naddr = \"127.0.0.1:2525\"\n[policy]\nrelay_domains = [\"example.test\"]\nvrfy = \"on\"\nexpn = \"on\"\n";
        SessionConfig::from_config(&Config::parse(text, "fuzz").expect("config"))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut s = Session::new(config(), "127.0.0.1".parse().expect("ip"));
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
