//! Relay outputs: a GPIO line through the kernel's character device (gpiocdev), or a stand-in
//! that appends `on <ms>` / `off <ms>` (monotonic milliseconds since the node started) to a file,
//! so a test can assert the pulse.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use gpiocdev::line::Value;
use latchkey_node_core::board::{HardwareError, Relay};

use crate::clock::TokioClock;

/// A relay on a GPIO line, active high.
pub struct GpioRelay {
    request: gpiocdev::Request,
    line: u32,
}

impl GpioRelay {
    /// Claims `line` on `chip` as an output, released.
    pub fn open(chip: &str, line: u32) -> anyhow::Result<Self> {
        let request = gpiocdev::Request::builder()
            .on_chip(chip)
            .with_consumer("latchkey-node")
            .with_line(line)
            .as_output(Value::Inactive)
            .request()?;
        Ok(Self { request, line })
    }
}

impl Relay for GpioRelay {
    fn set(&mut self, energised: bool) -> Result<(), HardwareError> {
        let v = if energised {
            Value::Active
        } else {
            Value::Inactive
        };
        self.request.set_value(self.line, v).map_err(|e| {
            tracing::error!("relay line {}: {e}", self.line);
            HardwareError
        })
    }
}

/// The stand-in relay for tests.
pub struct SimRelay {
    path: PathBuf,
    clock: TokioClock,
    on: bool,
}

impl SimRelay {
    /// Appends to `path` (created if missing).
    pub fn new(path: PathBuf, clock: TokioClock) -> Self {
        Self {
            path,
            clock,
            on: false,
        }
    }
}

impl Relay for SimRelay {
    fn set(&mut self, energised: bool) -> Result<(), HardwareError> {
        if energised == self.on {
            return Ok(());
        }
        let word = if energised { "on" } else { "off" };
        let now = latchkey_node_core::board::Clock::now(&self.clock).as_millis();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|_| HardwareError)?;
        writeln!(f, "{word} {now}").map_err(|_| HardwareError)?;
        self.on = energised;
        Ok(())
    }
}

/// Either relay, chosen on the command line.
pub enum AnyRelay {
    /// Real hardware.
    Gpio(GpioRelay),
    /// The test stand-in.
    Sim(SimRelay),
}

impl Relay for AnyRelay {
    fn set(&mut self, energised: bool) -> Result<(), HardwareError> {
        match self {
            AnyRelay::Gpio(r) => r.set(energised),
            AnyRelay::Sim(r) => r.set(energised),
        }
    }
}
