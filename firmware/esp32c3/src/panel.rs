//! The status LED and the boot button.
//!
//! The LED shows what the adapters last saw the core do (they call [`show`]); each code is a
//! 2-second pattern of 100 ms slots, repeated (docs/FIRMWARE.md lists them):
//!
//! | code | pattern | when |
//! |---|---|---|
//! | `Setup` | 1 s on, 1 s off | setup access point open, nothing tried yet |
//! | `SetupRetry` | long, short | access point open again after a failed join or registration |
//! | `Busy` | 100 ms on/off | joining Wi-Fi or registering |
//! | `Offline` | two blinks | registered, no gateway session |
//! | `Online` | on, one short gap | gateway session up |
//! | `Revoked` | three blinks | the gateway revoked the node: factory reset only |
//! | `Reset` | steady on | button held long enough: erasing, then restart |
//!
//! The button: a press held for [`FACTORY_RESET_HOLD_MS`] raises [`factory_reset_requested`];
//! `main` then stops the core, erases the store and restarts the chip.

use core::sync::atomic::{AtomicU8, Ordering};

use embassy_futures::select::{select, Either};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Ticker, Timer};
use esp_hal::gpio::{AnyPin, Input, InputConfig, Level, Output, OutputConfig, Pull};

use crate::board::{FACTORY_RESET_HOLD_MS, LED_ACTIVE_LOW};

/// What the LED says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Code {
    /// Setup access point open.
    Setup = 0,
    /// Setup access point open again after a failure.
    SetupRetry,
    /// Joining or registering.
    Busy,
    /// Registered, no session.
    Offline,
    /// Session up.
    Online,
    /// Revoked.
    Revoked,
    /// Factory reset under way.
    Reset,
}

const CODES: [Code; 7] = [
    Code::Setup,
    Code::SetupRetry,
    Code::Busy,
    Code::Offline,
    Code::Online,
    Code::Revoked,
    Code::Reset,
];

impl Code {
    /// 20 slots of 100 ms, bit `i` = slot `i` lit.
    const fn pattern(self) -> u32 {
        match self {
            // Slot 0 is the least significant bit.
            Code::Setup => 0x3FF,                 // slots 0-9
            Code::SetupRetry => (1 << 11) | 0xFF, // slots 0-7, then 11
            Code::Busy => 0x5_5555,               // every other slot
            Code::Offline => 0b101,               // slots 0 and 2
            Code::Online => 0x7_FFFF,             // all but slot 19
            Code::Revoked => 0b1_0101,            // slots 0, 2 and 4
            Code::Reset => 0xF_FFFF,              // steady
        }
    }
}

const SLOTS: u32 = 20;
const SLOT_MS: u64 = 100;

static CODE: AtomicU8 = AtomicU8::new(Code::Setup as u8);
static FACTORY_RESET: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// Sets the LED's code.
pub fn show(code: Code) {
    CODE.store(code as u8, Ordering::Relaxed);
}

fn current() -> Code {
    let raw = CODE.load(Ordering::Relaxed);
    CODES
        .iter()
        .copied()
        .find(|c| *c as u8 == raw)
        .unwrap_or(Code::Setup)
}

/// Completes when the button was held for the factory-reset time.
pub async fn factory_reset_requested() {
    FACTORY_RESET.wait().await;
}

/// Drives the LED forever.
#[embassy_executor::task]
pub async fn led_task(pin: AnyPin<'static>) {
    let off = if LED_ACTIVE_LOW {
        Level::High
    } else {
        Level::Low
    };
    let mut led = Output::new(pin, off, OutputConfig::default());
    let mut ticker = Ticker::every(Duration::from_millis(SLOT_MS));
    let mut slot = 0;
    loop {
        let lit = current().pattern() & (1 << slot) != 0;
        led.set_level(Level::from(lit != LED_ACTIVE_LOW));
        slot = (slot + 1) % SLOTS;
        ticker.next().await;
    }
}

/// Watches the boot button forever (active low, internal pull-up).
#[embassy_executor::task]
pub async fn button_task(pin: AnyPin<'static>) {
    let mut button = Input::new(pin, InputConfig::default().with_pull(Pull::Up));
    loop {
        button.wait_for_low().await;
        let held = select(
            button.wait_for_high(),
            Timer::after(Duration::from_millis(FACTORY_RESET_HOLD_MS)),
        )
        .await;
        if let Either::Second(()) = held {
            log::warn!("boot button held: factory reset");
            show(Code::Reset);
            FACTORY_RESET.signal(());
            button.wait_for_high().await;
        }
    }
}
