//! `ringpost tune`: look at the machine (allowed cores, memory, the queue disk's fsync
//! latency) and print a suggested `[tuning]`/limits profile, like the ones in `tuning/`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// fsyncs measured on the queue disk.
const FSYNC_SAMPLES: usize = 50;
/// Bytes written before each of them (a small group commit).
const FSYNC_WRITE_BYTES: usize = 4096;
/// Memory set aside per idle session in the suggestion (read buffer + state).
const SESSION_BYTES: u64 = 32 * 1024;

/// What `tune` found.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    pub cores: usize,
    pub memory_bytes: u64,
    pub fsync_p50: Duration,
    pub fsync_p99: Duration,
    /// The queue's file system writes out of place (btrfs, ZFS, bcachefs): zeros written
    /// ahead of the records cannot spare it metadata updates.
    pub copy_on_write: bool,
}

/// True when `dir` is on a copy-on-write file system (by statfs(2)'s type).
pub fn copy_on_write(dir: &Path) -> bool {
    const BTRFS: i64 = 0x9123_683E;
    const ZFS: i64 = 0x2FC1_2FC1;
    const BCACHEFS: i64 = 0xCA45_1A4E;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) fills the zeroed struct; `path` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, BTRFS | ZFS | BCACHEFS)
}

/// write + fdatasync latency on `dir`'s file system.
pub fn measure_fsync(dir: &Path) -> std::io::Result<(Duration, Duration)> {
    measure_fsync_n(dir, FSYNC_SAMPLES)
}

/// `[queue] sync = "auto"` at start-up: this many fsyncs decide.
pub const FSYNC_STARTUP_SAMPLES: usize = 10;

/// The sync mode for a disk whose fsync takes `p50`.
pub fn sync_mode_for(p50: Duration) -> crate::config::SyncMode {
    if p50 <= SYNC_INLINE_FSYNC_MAX {
        crate::config::SyncMode::Inline
    } else {
        crate::config::SyncMode::Ring
    }
}

/// `samples` write + fdatasync pairs on `dir`'s file system: (p50, p99).
pub fn measure_fsync_n(dir: &Path, samples: usize) -> std::io::Result<(Duration, Duration)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(".ringpost-tune-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = vec![0x5Au8; FSYNC_WRITE_BYTES];
    let n = samples.max(1);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    samples.sort();
    Ok((
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    ))
}

pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Up to this fsync latency a commit's fdatasync runs on the shard's own thread.
const SYNC_INLINE_FSYNC_MAX: Duration = Duration::from_millis(1);

/// The suggested `max_connections_per_host`: this many per shard, within the bounds below
/// (the profiles' 32 for 2-8 cores and 64 for 32-64).
const CONNECTIONS_PER_SHARD: u32 = 4;
const CONNECTIONS_MIN: u32 = 32;
const CONNECTIONS_MAX: u32 = 64;

/// The suggested profile, as commented TOML.
pub fn suggest(m: &Machine, cpus: &[usize]) -> String {
    let shards = m.cores.max(1);
    // A quarter of memory for idle sessions, spread over the shards.
    let per_shard = (m.memory_bytes / 4 / SESSION_BYTES / shards as u64).clamp(1_000, 100_000);
    let ring = (64 * shards).next_power_of_two().clamp(256, 4096);
    // A slow disk (or many shards splitting the load) gains from a short commit window.
    let window_us = match (m.fsync_p50.as_micros(), shards) {
        (0..=200, 1..=16) => 0,
        (0..=200, _) => 100,
        (us, _) => (us / 4).min(1000),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# ringpost tune: {} cores, {} MiB memory, fsync p50 {} us / p99 {} us",
        m.cores,
        m.memory_bytes >> 20,
        m.fsync_p50.as_micros(),
        m.fsync_p99.as_micros()
    );
    if m.fsync_p50 < Duration::from_micros(20) {
        let _ = writeln!(
            s,
            "# fsync under 20 us: a write-back cache without power-loss protection? A 250 is only"
        );
        let _ = writeln!(
            s,
            "# as durable as the disk's promise; check the disk before trusting it."
        );
    }
    let _ = writeln!(
        s,
        "\n[server]\n# Sessions per shard: a quarter of memory at about {} KiB per idle session.",
        SESSION_BYTES / 1024
    );
    let _ = writeln!(s, "max_connections = {per_shard}");
    let _ = writeln!(s, "\n[queue]\n# Natural group commit when fsync is fast; a window of about a quarter of an fsync when not.");
    let _ = writeln!(s, "commit_window = \"{window_us}us\"");
    let sync = sync_mode_for(m.fsync_p50);
    let why = if sync == crate::config::SyncMode::Inline {
        "fsync is fast: the shard waits for it rather than for a worker thread"
    } else {
        "fsync is slow: the shard keeps working while an io_uring worker waits"
    };
    let _ = writeln!(s, "# {why}.\nsync = \"{}\"", sync.name());
    if m.copy_on_write {
        let _ = writeln!(
            s,
            "# A copy-on-write file system: zeros written ahead cannot spare it metadata.\nzero_ahead_bytes = 0"
        );
    } else {
        let _ = writeln!(
            s,
            "# Zeros written ahead of the records keep each commit's fdatasync a data write.\nzero_ahead_bytes = {}",
            crate::config::Queue::default().zero_ahead_bytes
        );
    }
    let _ = writeln!(
        s,
        "# Delivery outcomes synced at once; on a disk with an IOPS budget, \"10ms\" lets them ride\n# with the next message's commit (a quarter to a third fewer fsyncs here, a wider\n# duplicate window after a crash).\noutcome_delay = \"{}ms\"",
        crate::config::Queue::default().outcome_delay.as_millis()
    );
    let pools = crate::config::SitePools::Auto.for_shards(shards);
    let why = if pools == crate::config::SitePools::Owner {
        "one pool per site on the shard owning it: few shards, so one site's delivery fits one core"
    } else {
        "a pool per site on every shard: one busy site is delivered from every core"
    };
    let _ = writeln!(
        s,
        "\n[delivery]\n# {why}.\nsite_pools = \"{}\"\n# Connections per site: 32 keep up with 50 busy inbound sessions on 2 cores (16 let mail\n# queue up); 64 from 16 shards on.\nmax_connections_per_host = {}",
        pools.name(),
        (CONNECTIONS_PER_SHARD * shards as u32).clamp(CONNECTIONS_MIN, CONNECTIONS_MAX)
    );
    let _ = writeln!(
        s,
        "\n[tuning]\n# One shard per allowed core, pinned.\nshards = {shards}"
    );
    let list: Vec<String> = cpus.iter().take(shards).map(|c| c.to_string()).collect();
    let _ = writeln!(s, "cpus = [{}]", list.join(", "));
    let _ = writeln!(
        s,
        "ring_depth = {ring}\nio_memory_bytes = {}\nread_buffer_bytes = 16384",
        crate::config::Tuning::default().io_memory_bytes
    );
    let _ = writeln!(
        s,
        "# Cross-shard channel slots: the whole mesh in 64 MiB.\nmesh_capacity = {}",
        crate::shard::mesh_capacity(0, shards)
    );
    let t = crate::config::Tuning::default();
    let _ = writeln!(
        s,
        "# Loop pacing: only while tasks wait for a CPU, a shard runs small rounds and a trial\n# shows it saves CPU.\nloop_period = \"{}us\"\nloop_pace_cpu_pressure = {}",
        t.loop_period.as_micros(),
        t.loop_pace_cpu_pressure
    );
    let _ = writeln!(
        s,
        "# Shards pinned one per CPU: the relay has these cores to itself. \"floating\" where other\n# busy programs share them.\nplacement = \"{}\"",
        t.placement.name()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_scale_and_parse() {
        for (cores, fsync_us) in [(2, 300), (8, 80), (64, 50), (32, 5000)] {
            let m = Machine {
                cores,
                memory_bytes: 16 << 30,
                fsync_p50: Duration::from_micros(fsync_us),
                fsync_p99: Duration::from_micros(fsync_us * 3),
                copy_on_write: cores == 8,
            };
            let cpus: Vec<usize> = (0..cores).collect();
            let text = suggest(&m, &cpus);
            let full = format!("[[listen]]\naddr = \"127.0.0.1:2525\"\n{text}");
            let c = crate::config::Config::parse(&full, "tune")
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(c.tuning.shards, cores);
            assert_eq!(c.tuning.cpus.len(), cores);
            let want = if fsync_us <= 1000 {
                crate::config::SyncMode::Inline
            } else {
                crate::config::SyncMode::Ring
            };
            assert_eq!(c.queue.sync, want);
            let zeros = if cores == 8 { 0 } else { 256 * 1024 };
            assert_eq!(c.queue.zero_ahead_bytes, zeros);
            let pools = if cores <= crate::config::OWNER_POOLS_SHARDS_MAX {
                crate::config::SitePools::Owner
            } else {
                crate::config::SitePools::Shard
            };
            assert_eq!(c.delivery.site_pools, pools);
            let conns = if cores <= 8 { 32 } else { 64 };
            assert_eq!(c.delivery.max_connections_per_host, conns);
        }
    }
}
