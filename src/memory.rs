//! Giving freed heap back to the system.
//!
//! glibc keeps what a burst frees (a reconnect storm's thousand handshakes and replays) in its
//! per-thread arenas: the soak showed RSS climbing to each storm's high-water mark and staying
//! there with the live heap flat (docs/RELIABILITY.md, "Soak"). On a Pi that memory belongs to
//! the rest of the system, and an RSS that follows the live heap is what makes a real leak
//! visible. `malloc_trim(0)` hands back every whole free page of every arena.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Often enough that a storm's peak is gone within a minute; a trim is a walk of the arenas'
/// free lists (a few milliseconds with tens of MiB free), so this costs nothing measurable.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Trims the heap every [`TRIM_EVERY`] until `shutdown` (a no-op off glibc: other allocators
/// return memory on their own terms).
pub fn spawn_trimmer(shutdown: CancellationToken) {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + TRIM_EVERY;
        let mut tick = tokio::time::interval_at(start, TRIM_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            // It takes each arena's lock in turn: not on an async worker.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    });
}

/// Returns free heap pages to the system; true when some were returned.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only takes the allocator's own locks; no pointer is passed.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .expect("rss")
            .parse()
            .expect("pages");
        // SAFETY: sysconf has no preconditions.
        pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
    }

    #[test]
    fn a_trim_gives_back_what_a_burst_freed_in_the_middle_of_the_heap() {
        // A burst of 96 MiB in 4 KiB blocks, of which every 32nd stays: the survivors pin the
        // heap, so free() alone can only give back its top, as after a storm.
        const BLOCK: usize = 4096;
        const COUNT: usize = 96 * 256;
        let kept = std::thread::spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..COUNT).map(|i| vec![i as u8; BLOCK]).collect();
            let mut kept = Vec::new();
            for (i, b) in blocks.drain(..).enumerate() {
                if i % 32 == 0 {
                    kept.push(b);
                }
            }
            kept
        })
        .join()
        .expect("burst");
        let before = rss_bytes();
        assert!(trim(), "malloc_trim returned nothing");
        let after = rss_bytes();
        assert!(
            before.saturating_sub(after) > 48 << 20,
            "RSS {before} -> {after} bytes: under 48 MiB given back"
        );
        drop(kept);
    }
}
