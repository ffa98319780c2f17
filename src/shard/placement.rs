//! Shard placement: pinned to a CPU, or floating over the shards' CPUs.
//!
//! A shard's thread is pinned to its CPU (`[tuning] placement = "pinned"`, the default):
//! on a relay that has its cores to itself that keeps each shard's data in one core's
//! caches and nothing migrates. When other busy programs share those CPUs, a pinned shard
//! woken by the network waits for its own core even while another one is idle, and a
//! lock-step client waits with it. `floating` lets each shard's thread run on any of the
//! shards' CPUs, as Scylla's `--overprovisioned` lifts its thread affinity. Measured with
//! two shards beside smtp-source and smtp-sink on two cores (README, "What the
//! performance pass changed"): with 10 recipients per message (a latency-bound load: each
//! is 13 lock-step round trips, and a fifth of the CPU time was idle) floating relayed up
//! to 18% more, ahead in 12 pairs of runs of 15 and within 1% in the other three, at less
//! CPU per message in every pair; with one recipient (CPU-bound) it did not gain, and its stores waited longer.

use crate::config::ShardPlacement;
use glommio::{CpuSet, Placement};

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// The glommio placement for each shard's executor: pinned to its own CPU, or fenced to
/// all the shards' CPUs (glommio binds the thread before it creates the ring, so the
/// ring's io_uring workers float with it). `shard_cpus` may repeat a CPU (more shards than
/// CPUs share them).
pub fn of(
    placement: ShardPlacement,
    shard_cpus: &[usize],
) -> std::io::Result<impl Fn(usize) -> Placement> {
    let fence = match placement {
        ShardPlacement::Pinned => None,
        ShardPlacement::Floating => Some(
            CpuSet::online()
                .map_err(|e| std::io::Error::other(format!("cannot read the CPU topology: {e}")))?
                .filter(|l| shard_cpus.contains(&l.cpu)),
        ),
    };
    Ok(move |cpu| match &fence {
        None => Placement::Fixed(cpu),
        Some(set) => Placement::Fenced(set.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floating_shard_runs_on_the_shards_cpus_a_pinned_one_on_its_own() {
        let allowed = allowed_cpus();
        let first = allowed[0];
        let last = *allowed.last().expect("a CPU");
        let run_on = |placement| {
            glommio::LocalExecutorBuilder::new(placement)
                .spawn(|| async { allowed_cpus() })
                .expect("executor")
                .join()
                .expect("join")
        };
        // Floating over one CPU: bound to exactly that one.
        let fenced = of(ShardPlacement::Floating, &[first, first]).expect("topology");
        assert_eq!(run_on(fenced(first)), [first]);
        // Floating over two: either of them, from whichever shard's CPU.
        let fenced = of(ShardPlacement::Floating, &[first, last]).expect("topology");
        let cpus = run_on(fenced(last));
        assert!(cpus.contains(&first) && cpus.contains(&last), "{cpus:?}");
        // Pinned: its own CPU only.
        let pinned = of(ShardPlacement::Pinned, &[first, last]).expect("no topology needed");
        assert_eq!(run_on(pinned(last)), [last]);
    }
}
