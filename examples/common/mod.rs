//! What the benchmark examples share.

/// Nanoseconds this thread has run on a core: the scheduler's account, which
/// `bench/lib.sh` reads per thread of the server too.
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat")
}
