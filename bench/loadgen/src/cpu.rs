//! The load generator's own CPU time, so a report can show whether the client saturated its core.

use std::time::Duration;

/// User plus system CPU time used so far by this process (all threads).
pub fn process_cpu_time() -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage only writes into the struct we pass, which is sized for it.
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if status != 0 {
        return None;
    }
    // SAFETY: getrusage returned 0, so it filled the struct.
    let usage = unsafe { usage.assume_init() };
    let to_duration = |time: libc::timeval| {
        Duration::from_secs(u64::try_from(time.tv_sec).ok()?)
            .checked_add(Duration::from_micros(u64::try_from(time.tv_usec).ok()?))
    };
    to_duration(usage.ru_utime)?.checked_add(to_duration(usage.ru_stime)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = process_cpu_time().expect("getrusage works on Linux");
        let mut accumulator = 0u64;
        let mut rounds = 0u64;
        // Spin until the counter moves; bounded so the test cannot hang.
        while process_cpu_time().is_some_and(|now| now <= before) && rounds < 50_000_000 {
            accumulator = accumulator.wrapping_mul(31).wrapping_add(rounds);
            rounds += 1;
        }
        std::hint::black_box(accumulator);
        assert!(process_cpu_time().expect("getrusage") > before);
    }
}
