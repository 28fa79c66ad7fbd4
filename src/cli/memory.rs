//! glibc's malloc arenas, capped before any thread starts.
//!
//! glibc gives threads arenas of their own (up to 8 per core) and keeps what they freed
//! for reuse by the same arena; with the pipeline's many threads (tokio workers, a Parquet
//! encoder per open file, inference workers, librdkafka's) resident memory then kept
//! rising for minutes at a steady load: +1.7 MiB/min over a 10-minute soak, 198-216 MiB.
//! One arena per core kept it flat at 147-152 MiB with the same latency
//! (benches/RESULTS.md, "Session 14"). A `MALLOC_ARENA_MAX` set in the environment wins.

/// Caps glibc's malloc arenas at one per core unless `MALLOC_ARENA_MAX` is set. Call it
/// first thing in `main`.
pub(crate) fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let arenas = i32::try_from(cores).unwrap_or(i32::MAX).max(2);
        // SAFETY: mallopt only sets a malloc parameter, and runs before other threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
