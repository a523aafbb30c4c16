//! Relay timing: a pulse energises the relay until a deadline; a new pulse while active restarts
//! the deadline (NODES.md §5). Pure: the caller drives the pin from the returned effect and wakes
//! at [`RelayTimer::next_deadline`].
//!
//! ```text
//!   idle ──pulse(ms)──▶ active(until = now + ms) ──deadline──▶ idle
//!                        │  ▲
//!                        └──┘ pulse(ms): until = now + ms (no second "energise")
//! ```

use crate::time::Instant;

/// Shortest pulse a gateway may ask for, in milliseconds.
pub const MIN_PULSE_MS: u32 = 100;
/// Longest pulse a gateway may ask for, in milliseconds.
pub const MAX_PULSE_MS: u32 = 30_000;

/// What the relay machine tells the caller to do to the pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEffect {
    /// Energise the relay.
    Energise,
    /// Release the relay.
    Release,
}

/// Inputs of the relay machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEvent {
    /// Energise for this many milliseconds (already range-checked by the session).
    Pulse {
        /// Pulse length.
        ms: u32,
    },
    /// Time passed; release if the deadline is reached.
    Tick,
}

/// The relay's timing state.
#[derive(Debug, Clone, Default)]
pub struct RelayTimer {
    active_until: Option<Instant>,
}

impl RelayTimer {
    /// Applies an event at monotonic `now`.
    pub fn on(&mut self, event: RelayEvent, now: Instant) -> Option<RelayEffect> {
        match event {
            RelayEvent::Pulse { ms } => {
                let was_active = self.active_until.is_some();
                self.active_until = Some(now + u64::from(ms));
                (!was_active).then_some(RelayEffect::Energise)
            }
            RelayEvent::Tick => match self.active_until {
                Some(until) if now >= until => {
                    self.active_until = None;
                    Some(RelayEffect::Release)
                }
                _ => None,
            },
        }
    }

    /// When the caller must next send [`RelayEvent::Tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active_until
    }

    /// Whether the relay is energised.
    pub fn is_active(&self) -> bool {
        self.active_until.is_some()
    }

    /// Forgets a pulse whose energising failed at the pin, so the state matches the hardware.
    pub fn abort(&mut self) {
        self.active_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn a_pulse_energises_then_releases_at_its_deadline() {
        let mut r = RelayTimer::default();
        assert_eq!(
            r.on(RelayEvent::Pulse { ms: 3_000 }, at(1_000)),
            Some(RelayEffect::Energise)
        );
        assert_eq!(r.next_deadline(), Some(at(4_000)));
        assert_eq!(r.on(RelayEvent::Tick, at(3_999)), None);
        assert!(r.is_active());
        assert_eq!(
            r.on(RelayEvent::Tick, at(4_000)),
            Some(RelayEffect::Release)
        );
        assert!(!r.is_active());
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.on(RelayEvent::Tick, at(9_000)), None);
    }

    #[test]
    fn a_pulse_while_active_restarts_the_deadline_without_a_second_energise() {
        let mut r = RelayTimer::default();
        r.on(RelayEvent::Pulse { ms: 3_000 }, at(0));
        assert_eq!(r.on(RelayEvent::Pulse { ms: 3_000 }, at(2_000)), None);
        assert_eq!(r.on(RelayEvent::Tick, at(3_000)), None);
        assert_eq!(
            r.on(RelayEvent::Tick, at(5_000)),
            Some(RelayEffect::Release)
        );
    }

    #[test]
    fn a_shorter_pulse_while_active_shortens_it() {
        // "Restarts the pulse" (NODES.md §5): the newest command's length counts from now.
        let mut r = RelayTimer::default();
        r.on(RelayEvent::Pulse { ms: 10_000 }, at(0));
        r.on(RelayEvent::Pulse { ms: 100 }, at(1_000));
        assert_eq!(r.next_deadline(), Some(at(1_100)));
    }
}
