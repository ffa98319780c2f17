//! Loop pacing: a shard on CPUs it shares with other busy programs.
//!
//! Every round of a shard's event loop has fixed costs (ring submissions, glommio's
//! preemption timers, and, when the round finds nothing, going to sleep and waking). A
//! busy shard that is not saturated runs many short rounds, each for a command or a
//! completion or two: with 10 recipients per message and two shards sharing two cores with
//! smtp-source and smtp-sink, about ten `io_uring_enter`s and three context switches per
//! message. While the shard is busy and tasks are waiting for a CPU (Linux pressure
//! stall information, `/proc/pressure/cpu`), the pacer holds each round to at least
//! `[tuning] loop_period`: when a round ends sooner, the shard's thread sleeps the rest,
//! which hands the core to whoever waits for it, and the next round handles all that
//! arrived meanwhile. A saturated shard's rounds are longer than the period and are never
//! held; an idle or uncontended shard is not paced at all. The price is latency: up to one
//! period per step of a session, only while the CPUs are contended.
//!
//! Rounds count as small below [`SMALL_ROUND_TASKS`] task runs per scheduler pass. Measured
//! here with two shards in 10 ms probes: 10 recipients per message 3-8 (pacing there: 20-25%
//! less CPU per message), one recipient mostly 12-35 (each round already batched by the
//! inline fdatasync), where pacing starts rarely: none in two 10,000-message
//! `vs-postfix.sh` runs, up to 3 spells in 20 probes of busy windows in others.

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// The unpaced window in which the shard's loop is measured before each decision.
pub const PROBE_WINDOW: Duration = Duration::from_millis(10);

/// How long a decision holds: paced or not, the shard is measured again after this (a
/// shard at rest wakes for it about nine times a second).
pub const DECISION_SPELL: Duration = Duration::from_millis(100);

/// Task runs per second (besides the pacer's own) below which the shard counts as idle.
pub const BUSY_TASKS_PER_SEC: u64 = 2_000;

/// Rounds count as small while glommio runs fewer tasks than this per scheduler pass
/// (about two passes per round of the loop that runs tasks); see the module's notes.
pub const SMALL_ROUND_TASKS: u64 = 10;

/// The timer that ends a paced round: due at once, it fires when the reactor next polls.
const NEXT_ROUND_TIMER: Duration = Duration::from_micros(1);

/// Timer slack of a shard's thread while paced, nanoseconds: the default 50 us would
/// stretch every pause by up to that much.
const PACE_TIMER_SLACK_NS: libc::c_ulong = 1_000;

/// Where Linux reports CPU pressure.
const PSI_CPU: &str = "/proc/pressure/cpu";

/// What the pacer did, for the metrics.
#[derive(Debug, Default)]
pub struct PaceStats {
    /// Rounds held back by a pause.
    pub paused_rounds: Cell<u64>,
    /// Time the shard's thread slept in those pauses, microseconds.
    pub paused_us: Cell<u64>,
    /// Spells ([`DECISION_SPELL`]) in which the shard was paced.
    pub paced_spells: Cell<u64>,
}

/// Reads the cumulative time (microseconds) during which at least one task waited for a
/// CPU: the `total` of the `some` line of `/proc/pressure/cpu`.
struct CpuPressure {
    file: Option<File>,
    buf: [u8; 256],
}

impl CpuPressure {
    fn open() -> CpuPressure {
        let file = File::open(PSI_CPU).ok();
        if file.is_none() {
            log::info!("{PSI_CPU} is not readable: loop pacing needs loop_pace_cpu_pressure = 0");
        }
        CpuPressure {
            file,
            buf: [0; 256],
        }
    }

    fn stalled_us(&mut self) -> Option<u64> {
        let file = self.file.as_ref()?;
        let n = file.read_at(&mut self.buf, 0).ok()?;
        some_total_us(&self.buf[..n])
    }
}

/// The `total=` of the `some` line of a PSI file.
pub fn some_total_us(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))
        .and_then(|v| v.parse().ok())
}

/// One window of a shard's loop: task runs (besides the pacer's), scheduler passes, how long
/// tasks waited for a CPU (None: not known) and the window's length.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub tasks: u64,
    pub passes: u64,
    pub stalled: Option<Duration>,
    pub window: Duration,
}

/// Whether to pace the next spell: the shard ran tasks (besides the pacer) at
/// [`BUSY_TASKS_PER_SEC`] or more, in small rounds ([`SMALL_ROUND_TASKS`]), and, unless
/// `pressure_min_percent` is 0, tasks waited for a CPU for at least that share of the window.
pub fn should_pace(p: &Probe, pressure_min_percent: u32) -> bool {
    if u128::from(p.tasks) * 1_000_000 < u128::from(BUSY_TASKS_PER_SEC) * p.window.as_micros() {
        return false;
    }
    if p.tasks >= SMALL_ROUND_TASKS * p.passes {
        return false;
    }
    if pressure_min_percent == 0 {
        return true;
    }
    let Some(stalled) = p.stalled else {
        return false;
    };
    stalled.as_micros() * 100 >= p.window.as_micros() * u128::from(pressure_min_percent)
}

/// Returns after the executor's next round: a timer due at once is only seen when the
/// reactor next polls its timers (a timer that is already due when first polled would not
/// yield, so that one is replaced).
async fn next_round() {
    loop {
        let mut timer = glommio::timer::Timer::new(NEXT_ROUND_TIMER);
        if futures_lite::future::poll_once(&mut timer).await.is_none() {
            timer.await;
            return;
        }
    }
}

/// Measures one unpaced window of the loop. Task runs and passes come from the executor's
/// own statistics, which reading resets; the pacer's wake-up ending the window is one run.
async fn probe(psi: &mut CpuPressure) -> Probe {
    let stalled_before = psi.stalled_us();
    let start = Instant::now();
    let _ = glommio::executor().executor_stats();
    glommio::timer::sleep(PROBE_WINDOW).await;
    let es = glommio::executor().executor_stats();
    let stalled = match (stalled_before, psi.stalled_us()) {
        (Some(a), Some(b)) => Some(Duration::from_micros(b.saturating_sub(a))),
        _ => None,
    };
    Probe {
        tasks: es.tasks_executed().saturating_sub(1),
        passes: es.scheduler_runs(),
        stalled,
        window: start.elapsed(),
    }
}

/// Paces this shard's loop for as long as the shard runs (a detached task).
pub async fn run(period: Duration, pressure_min_percent: u32, stats: std::rc::Rc<PaceStats>) {
    let mut psi = CpuPressure::open();
    loop {
        let unpaced = probe(&mut psi).await;
        if !should_pace(&unpaced, pressure_min_percent) {
            glommio::timer::sleep(DECISION_SPELL).await;
            continue;
        }
        stats.paced_spells.set(stats.paced_spells.get() + 1);
        let slack = TimerSlack::set(PACE_TIMER_SLACK_NS);
        let spell = Instant::now();
        let mut round = spell;
        while spell.elapsed() < DECISION_SPELL {
            let ran = round.elapsed();
            if ran < period {
                let pause = period - ran;
                std::thread::sleep(pause);
                stats.paused_rounds.set(stats.paused_rounds.get() + 1);
                stats
                    .paused_us
                    .set(stats.paused_us.get() + pause.as_micros() as u64);
            }
            next_round().await;
            round = Instant::now();
        }
        drop(slack);
    }
}

/// This thread's timer slack, set for a paced spell and put back after it.
struct TimerSlack(libc::c_int);

impl TimerSlack {
    fn set(ns: libc::c_ulong) -> TimerSlack {
        // SAFETY: prctl(PR_GET/SET_TIMERSLACK) reads and changes only this thread's slack.
        unsafe {
            let before = libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0);
            libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0);
            TimerSlack(before)
        }
    }
}

impl Drop for TimerSlack {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: as in `set`.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, self.0 as libc::c_ulong, 0, 0, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_some_total_of_a_psi_file() {
        let text = b"some avg10=2.45 avg60=13.63 avg300=14.58 total=4779781437\n\
                     full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_total_us(text), Some(4_779_781_437));
        assert_eq!(some_total_us(b"full avg10=0.00 total=7\n"), None);
        assert_eq!(some_total_us(b"some avg10=0.00 total=x\n"), None);
        assert_eq!(some_total_us(b""), None);
    }

    fn probe(tasks: u64, passes: u64, stalled: Option<Duration>) -> Probe {
        Probe {
            tasks,
            passes,
            stalled,
            window: Duration::from_millis(10),
        }
    }

    #[test]
    fn paces_a_busy_shard_in_small_rounds_while_cpus_are_contended() {
        let ms = Duration::from_millis;
        // In 10 ms: 2,000 task runs a second is 20.
        // idle: never
        assert!(!should_pace(&probe(19, 10, Some(ms(10))), 10));
        assert!(!should_pace(&probe(0, 0, None), 0));
        // busy, tasks waited 1 ms of 10: at 10% yes, at 20% no
        assert!(should_pace(&probe(200, 60, Some(ms(1))), 10));
        assert!(!should_pace(&probe(200, 60, Some(ms(1))), 20));
        // rounds already large (10 or more task runs a pass): no
        assert!(should_pace(&probe(599, 60, Some(ms(5))), 10));
        assert!(!should_pace(&probe(600, 60, Some(ms(5))), 10));
        // no pressure information: only when no pressure is asked for
        assert!(!should_pace(&probe(200, 60, None), 10));
        assert!(should_pace(&probe(200, 60, None), 0));
    }
}
