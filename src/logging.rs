//! The log: one line per event on stderr, plain (`ringpost: info: ...`) or JSON (`--log-format
//! json`), level from `RUST_LOG`. Lines are buffered per thread and written in batches, so
//! logging every message costs a copy, not a system call: a thread's buffer goes out when it
//! holds `BUFFER_BYTES_MAX`, when a warning or an error comes, when it is older than
//! `BUFFER_AGE_MAX` at the next line, and on `log::logger().flush()` (shards call it every
//! second and at exit).

use std::cell::RefCell;
use std::io::Write;
use std::time::{Duration, Instant};

const BUFFER_BYTES_MAX: usize = 16 * 1024;
const BUFFER_AGE_MAX: Duration = Duration::from_millis(250);

thread_local! {
    static BUFFER: RefCell<(Vec<u8>, Instant)> = RefCell::new((Vec::with_capacity(BUFFER_BYTES_MAX), Instant::now()));
}

pub struct Logger {
    pub level: log::LevelFilter,
    pub json: bool,
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        let _ = std::io::stderr().lock().write_all(buf);
        buf.clear();
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        // glommio probes io_uring poll support on every DmaFile open and logs the (normal)
        // failure on virtual disks as an error: it is not one.
        if r.target().starts_with("glommio") && r.args().to_string().contains("iopoll") {
            return;
        }
        let level = match r.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warn",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let urgent = r.level() <= log::Level::Warn;
        BUFFER.with(|b| {
            let mut b = b.borrow_mut();
            if b.0.is_empty() {
                b.1 = Instant::now();
            }
            // Formatted straight into the thread's buffer: no String per line (two lines
            // per relayed message go through here).
            if self.json {
                let micros = crate::time::unix_micros();
                let msg = r.args().to_string();
                let _ = writeln!(
                    b.0,
                    "{{\"ts\":{}.{:06},\"level\":\"{}\",\"target\":{},\"msg\":{}}}",
                    micros / 1_000_000,
                    micros % 1_000_000,
                    level,
                    serde_json::to_string(r.target()).unwrap_or_default(),
                    serde_json::to_string(&msg).unwrap_or_default()
                );
            } else {
                let _ = writeln!(b.0, "ringpost: {level}: {}", r.args());
            }
            if urgent || b.0.len() >= BUFFER_BYTES_MAX || b.1.elapsed() >= BUFFER_AGE_MAX {
                write_out(&mut b.0);
            }
        });
    }

    fn flush(&self) {
        BUFFER.with(|b| write_out(&mut b.borrow_mut().0));
    }
}

/// Installs the logger; `RUST_LOG` (error, warn, info, debug, trace) sets the level.
pub fn install(json: bool) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    if log::set_boxed_logger(Box::new(Logger { level, json })).is_ok() {
        log::set_max_level(level);
    }
}
