//! Everything about this board that is a number or a pin, named once: the GPIOs, the flash
//! ranges (they match `partitions.csv`), the heap, the socket pools. Change a pin here (and
//! nowhere else) for another board; nothing from provisioning is compiled in.

use core::net::Ipv4Addr;
use core::ops::Range;

use esp_hal::gpio::AnyPin;

/// The board's pins, taken once from the peripherals by [`pins!`].
pub struct Pins {
    /// The relay output (active high: a relay module's IN, or a transistor's base resistor).
    pub relay: AnyPin<'static>,
    /// The status LED (active low: the on-board LED of ESP32-C3 SuperMini and DevKitM-1 style
    /// boards sits between 3.3 V and GPIO8).
    pub led: AnyPin<'static>,
    /// The boot button: GPIO9 to ground on nearly every ESP32-C3 board. It is a strapping pin,
    /// so holding it at reset enters the ROM download mode; a long press *while running* resets.
    pub button: AnyPin<'static>,
}

/// Takes the pins out of esp-hal's `Peripherals`: the one place that names them. Change the
/// relay's GPIO here for another wiring (avoid the strapping pins 2, 8, 9 and the USB pins 18,
/// 19).
macro_rules! pins {
    ($p:expr) => {
        $crate::board::Pins {
            relay: $p.GPIO3.into(),
            led: $p.GPIO8.into(),
            button: $p.GPIO9.into(),
        }
    };
}
pub(crate) use pins;

/// Whether the LED lights when its pin is low.
pub const LED_ACTIVE_LOW: bool = true;
/// Held this long, the boot button erases the node (factory reset).
pub const FACTORY_RESET_HOLD_MS: u64 = 5_000;

/// Flash erase page.
pub const FLASH_PAGE: u32 = 4096;
/// The `latchkey` partition: node-core's map (credentials, key pair, and the grant blob in two
/// slots of up to 12 pages each, NODES.md §8), erased by a factory reset. The Linux node's 40.
pub const STORE_RANGE: Range<u32> = 0x1C_0000..0x1E_8000;
/// The `ring` partition: node-core's decision ring (a sequential-storage queue of 8 pages).
pub const RING_RANGE: Range<u32> = 0x1E_8000..0x1F_0000;
/// The `label` partition: the setup code and label id, made on first boot, kept by a factory
/// reset (the printed label does not change).
pub const LABEL_RANGE: Range<u32> = 0x1F_8000..0x1F_9000;
/// The `kind` partition: the node's kind, set at the factory (`espflash write-bin 0x1F9000`
/// of a file holding `vhcl` makes a vehicle node; erased, it is a door). One image serves both.
pub const KIND_RANGE: Range<u32> = 0x1F_9000..0x1F_A000;
/// End of the application partition: the image must fit below the data.
pub const APP_RANGE: Range<u32> = 0x1_0000..0x1C_0000;

const _: () = assert!(
    STORE_RANGE.start.is_multiple_of(FLASH_PAGE) && STORE_RANGE.end.is_multiple_of(FLASH_PAGE)
);
const _: () = assert!((STORE_RANGE.end - STORE_RANGE.start) / FLASH_PAGE >= 40);
const _: () = assert!(
    RING_RANGE.start.is_multiple_of(FLASH_PAGE) && RING_RANGE.end.is_multiple_of(FLASH_PAGE)
);
const _: () = assert!(STORE_RANGE.end <= RING_RANGE.start && RING_RANGE.end <= LABEL_RANGE.start);
const _: () = assert!(
    LABEL_RANGE.start.is_multiple_of(FLASH_PAGE) && LABEL_RANGE.end.is_multiple_of(FLASH_PAGE)
);
const _: () = assert!(KIND_RANGE.start.is_multiple_of(FLASH_PAGE));
const _: () = assert!(APP_RANGE.end <= STORE_RANGE.start);
const _: () = assert!(LABEL_RANGE.end <= KIND_RANGE.start);

/// Heap in the main DRAM. Wi-Fi and BLE together take about 128 KiB of it; the node's own
/// buffers (JSON, picoserve's 2 × 4 KiB, a gateway frame of up to 64 KiB while it is decoded)
/// take the rest.
pub const HEAP_MAIN: usize = 144 * 1024;
/// Heap in the RAM the ROM bootloader used (`.dram2_uninit`), free once the app runs.
pub const HEAP_RECLAIMED: usize = 64 * 1024;

/// The setup access point's address (NODES.md §4.1: `http://192.168.4.1/`).
pub const AP_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 4, 1);
/// The AP API's port.
pub const AP_PORT: u16 = 80;
/// Phones the setup access point admits at once.
pub const AP_MAX_STATIONS: u16 = 2;

/// Largest message the gateway may send (it closes with 1009 above: NODES.md §5).
pub const WS_MAX_IN: usize = 64 * 1024;
/// Largest frame the node sends (the gateway answers `BAD_FRAME` above).
pub const WS_MAX_OUT: usize = 16 * 1024;
/// Every HTTP exchange with the gateway (connect, request, answer).
pub const HTTP_TIMEOUT_MS: u64 = 10_000;

/// Station TCP sockets: the registration POST and the gateway session (never both at once,
/// one spare for a session being torn down while the next connects).
pub const STA_TCP: usize = 2;
/// AP TCP sockets: node-core's AP workers.
pub const AP_TCP: usize = latchkey_node_core::ap::WORKERS;
/// TCP buffer sizes (each socket has one of each).
pub const TCP_RX: usize = 4096;
/// See [`TCP_RX`].
pub const TCP_TX: usize = 2048;
/// embassy-net socket slots: TCP, plus DHCP client and DNS on the station; TCP plus the DHCP
/// server's UDP socket on the access point.
pub const STA_SOCKETS: usize = STA_TCP + 2;
/// See [`STA_SOCKETS`].
pub const AP_SOCKETS: usize = AP_TCP + 1;

/// BLE connections served at once (two phones at the door, or one with a stale link).
pub const BLE_CONNECTIONS: usize = 2;
/// L2CAP channels: signalling and ATT per connection.
pub const BLE_L2CAP_CHANNELS: usize = 2 * BLE_CONNECTIONS;
/// Advertising interval bounds (PROTOCOL.md §16 and the time-to-open estimate: 100–150 ms).
pub const ADV_INTERVAL_MS: Range<u64> = 100..150;
