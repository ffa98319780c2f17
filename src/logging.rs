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
        let text = r.args().to_string();
        // glommio probes io_uring poll support on every DmaFile open and logs the (normal)
        // failure on virtual disks as an error: it is not one.
        if r.target().starts_with("glommio") && text.contains("iopoll") {
            return;
        }
        let level = r.level().as_str().to_ascii_lowercase();
        let line = if self.json {
            let micros = crate::time::unix_micros();
            format!(
                "{{\"ts\":{}.{:06},\"level\":\"{level}\",\"target\":{},\"msg\":{}}}\n",
                micros / 1_000_000,
                micros % 1_000_000,
                serde_json::to_string(r.target()).unwrap_or_default(),
                serde_json::to_string(&text).unwrap_or_default()
            )
        } else {
            format!("ringpost: {level}: {text}\n")
        };
        let urgent = r.level() <= log::Level::Warn;
        BUFFER.with(|b| {
            let mut b = b.borrow_mut();
            if b.0.is_empty() {
                b.1 = Instant::now();
            }
            b.0.extend_from_slice(line.as_bytes());
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
