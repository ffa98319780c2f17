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
//! to 18% more, ahead or alike in 11 pairs of runs of 12, at less CPU per message in every
//! pair; with one recipient (CPU-bound) it did not gain, and its stores waited longer.

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

/// Binds the calling thread to `cpus`.
pub fn bind(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, CPU_SET writes within it
    // (indices past CPU_SETSIZE are skipped), and sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(c, &mut set);
            }
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_this_thread() {
        let allowed = allowed_cpus();
        let first = allowed[0];
        std::thread::spawn(move || {
            bind(&[first]).expect("bind");
            // SAFETY: reads this thread's mask into a zeroed set.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            let r = unsafe {
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set)
            };
            assert_eq!(r, 0);
            assert_eq!(unsafe { libc::CPU_COUNT(&set) }, 1);
            assert!(unsafe { libc::CPU_ISSET(first, &set) });
        })
        .join()
        .expect("thread");
    }
}
