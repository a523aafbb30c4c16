//! The monotonic clock (tokio's, so `sleep_until` and `now` agree) and the OS CSPRNG.

use latchkey_node_core::board::{Clock, Rng};
use latchkey_node_core::time::Instant;

/// Milliseconds since the node started.
#[derive(Clone, Copy)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Starts counting now.
    pub fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        let ms = self.start.elapsed().as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    async fn sleep_until(&self, at: Instant) {
        let at = self.start + std::time::Duration::from_millis(at.as_millis());
        tokio::time::sleep_until(at).await;
    }
}

/// The OS CSPRNG (getrandom).
pub struct OsRng;

impl Rng for OsRng {
    fn fill_bytes(&mut self, buf: &mut [u8]) {
        // getrandom fails only when the OS has no entropy source at all; a node must not run then.
        if let Err(e) = getrandom::fill(buf) {
            tracing::error!("OS random source failed: {e}");
            std::process::abort();
        }
    }
}
