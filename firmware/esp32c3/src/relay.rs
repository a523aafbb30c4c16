//! The relay: one push-pull GPIO, active high, released at boot.

use esp_hal::gpio::{AnyPin, Level, Output, OutputConfig};
use latchkey_node_core::board::{HardwareError, Relay};

/// The relay output.
pub struct GpioRelay(Output<'static>);

impl GpioRelay {
    /// Claims `pin` as an output, low (released) from the first instruction.
    pub fn new(pin: AnyPin<'static>) -> Self {
        Self(Output::new(pin, Level::Low, OutputConfig::default()))
    }
}

impl Relay for GpioRelay {
    fn set(&mut self, energised: bool) -> Result<(), HardwareError> {
        // A GPIO write cannot fail; the relay module's own failure is invisible to the chip.
        self.0.set_level(Level::from(energised));
        Ok(())
    }
}
