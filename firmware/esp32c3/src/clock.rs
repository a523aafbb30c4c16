//! The monotonic clock (embassy-time, driven by esp-rtos's timer) and the TRNG.

use esp_hal::rng::Trng;
use latchkey_node_core::board::{Clock, Rng};
use latchkey_node_core::time::Instant;

/// Milliseconds since boot.
#[derive(Clone, Copy)]
pub struct EmbassyClock;

impl Clock for EmbassyClock {
    fn now(&self) -> Instant {
        Instant::from_millis(embassy_time::Instant::now().as_millis())
    }

    async fn sleep_until(&self, at: Instant) {
        embassy_time::Timer::at(embassy_time::Instant::from_millis(at.as_millis())).await;
    }
}

/// The hardware RNG fed by a live entropy source (`TrngSource`, kept for the whole run by
/// `main`): the node's key pair, setup code, nonces and jitter come from here.
pub struct TrngRng(pub Trng);

impl Rng for TrngRng {
    fn fill_bytes(&mut self, buf: &mut [u8]) {
        self.0.read(buf);
    }
}
