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
//! Pacing must pay. A probe (10 ms) that finds the shard busy, in small rounds and on
//! contended CPUs starts a trial: 100 ms unpaced, then 100 ms paced, each measured whole
//! (CPU time of the shard's thread per task run). When the paced half spent at least
//! [`PAYS_MIN_PERCENT`] less, the shard stays paced for [`PACED_SPELL`] and tries again;
//! otherwise it runs unpaced for [`UNPAID_BACKOFF`]. Measured with two shards beside
//! smtp-source and smtp-sink (README, "What the performance pass changed"): with 10
//! recipients per message, pacing whenever the probe asked saved 18-24% of the CPU per
//! message (11-14% with the trials, which spend some time unpaced); with one, whose rounds
//! the inline fdatasync already batches, it cost up to 25% more in 2 pairs of runs of 3,
//! and probes there still asked for pacing now and then (2-31 task runs per scheduler pass
//! in their rounds, against 3-12 at 10 recipients).

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// The unpaced window in which the shard's loop is measured before each trial.
pub const PROBE_WINDOW: Duration = Duration::from_millis(10);

/// How long the shard runs unpaced after a probe that does not ask for pacing (a shard at
/// rest wakes for the probes about nine times a second).
pub const UNPACED_SPELL: Duration = Duration::from_millis(100);

/// A trial: this long unpaced, then this long paced, each measured whole.
pub const TRIAL_SPELL: Duration = Duration::from_millis(100);

/// After a trial that paid, how long the shard stays paced before the next trial.
pub const PACED_SPELL: Duration = Duration::from_millis(400);

/// A trial pays when its paced half spent at least this much less CPU per task run than
/// its unpaced half.
pub const PAYS_MIN_PERCENT: u128 = 5;

/// After a trial that did not pay, how long the shard runs unpaced before the next probe.
pub const UNPAID_BACKOFF: Duration = Duration::from_secs(1);

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
    /// Trials (an unpaced and a paced spell, compared).
    pub trials: Cell<u64>,
    /// Trials in which pacing paid (each followed by [`PACED_SPELL`] paced).
    pub paid_trials: Cell<u64>,
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
/// tasks waited for a CPU (None: not known), the window's length and the thread's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub tasks: u64,
    pub passes: u64,
    pub stalled: Option<Duration>,
    pub window: Duration,
    /// CPU time of the shard's thread in the window (user and system).
    pub cpu: Duration,
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

/// Whether a trial paid: its paced half spent at least [`PAYS_MIN_PERCENT`] less CPU per task
/// run than its unpaced half.
pub fn paid(unpaced: &Probe, paced: &Probe) -> bool {
    if paced.tasks == 0 || unpaced.tasks == 0 {
        return false;
    }
    paced.cpu.as_nanos() * u128::from(unpaced.tasks) * 100
        < unpaced.cpu.as_nanos() * u128::from(paced.tasks) * (100 - PAYS_MIN_PERCENT)
}

/// CPU time this thread has used, user and system.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Runs the loop for `length`, paced at `period` (None: unpaced), and measures it. Task
/// runs and passes come from the executor's own statistics, which reading resets; the
/// pacer's own wake-ups are left out.
async fn measure(
    psi: &mut CpuPressure,
    length: Duration,
    period: Option<Duration>,
    stats: &PaceStats,
) -> Probe {
    let stalled_before = psi.stalled_us();
    let start = Instant::now();
    let cpu_before = thread_cpu();
    let _ = glommio::executor().executor_stats();
    let own_runs = match period {
        None => {
            glommio::timer::sleep(length).await;
            1
        }
        Some(period) => paced(length, period, stats).await,
    };
    let es = glommio::executor().executor_stats();
    let stalled = match (stalled_before, psi.stalled_us()) {
        (Some(a), Some(b)) => Some(Duration::from_micros(b.saturating_sub(a))),
        _ => None,
    };
    Probe {
        tasks: es.tasks_executed().saturating_sub(own_runs),
        passes: es.scheduler_runs(),
        stalled,
        window: start.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu_before),
    }
}

/// Holds every round of the loop to at least `period` for `length`; returns the rounds.
async fn paced(length: Duration, period: Duration, stats: &PaceStats) -> u64 {
    let slack = TimerSlack::set(PACE_TIMER_SLACK_NS);
    let spell = Instant::now();
    let mut round = spell;
    let mut rounds = 0;
    while spell.elapsed() < length {
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
        rounds += 1;
        round = Instant::now();
    }
    drop(slack);
    rounds
}

/// Paces this shard's loop for as long as the shard runs (a detached task).
pub async fn run(period: Duration, pressure_min_percent: u32, stats: std::rc::Rc<PaceStats>) {
    let mut psi = CpuPressure::open();
    loop {
        let probe = measure(&mut psi, PROBE_WINDOW, None, &stats).await;
        if !should_pace(&probe, pressure_min_percent) {
            glommio::timer::sleep(UNPACED_SPELL).await;
            continue;
        }
        let unpaced = measure(&mut psi, TRIAL_SPELL, None, &stats).await;
        let trial = measure(&mut psi, TRIAL_SPELL, Some(period), &stats).await;
        stats.trials.set(stats.trials.get() + 1);
        if paid(&unpaced, &trial) {
            stats.paid_trials.set(stats.paid_trials.get() + 1);
            paced(PACED_SPELL, period, &stats).await;
        } else {
            glommio::timer::sleep(UNPAID_BACKOFF).await;
        }
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
            cpu: Duration::from_millis(5),
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

    #[test]
    fn a_trial_pays_when_pacing_spends_less_cpu_per_task() {
        let unpaced = probe(100, 50, None); // 50 us a task
        let paced = |tasks, cpu_us| Probe {
            cpu: Duration::from_micros(cpu_us),
            ..probe(tasks, 10, None)
        };
        assert!(paid(&unpaced, &paced(1000, 40_000)), "40 us a task");
        assert!(
            !paid(&unpaced, &paced(1000, 47_500)),
            "47.5 us: less than 5% saved"
        );
        assert!(!paid(&unpaced, &paced(1000, 60_000)), "60 us a task");
        assert!(!paid(&unpaced, &paced(0, 0)), "nothing ran");
    }
}
