//! `latchkey-node-esp32c3`: the latchkey endpoint node on an ESP32-C3. Adapters only; every
//! rule is in `latchkey-node-core`, which this hands a board and calls. Init, heap, RTOS,
//! radio, the tasks the stacks need, then the core (trouble's `ble_bas_peripheral` shape).
#![no_std]
#![no_main]

extern crate alloc;

mod ap;
mod board;
mod clock;
mod flash;
mod http;
mod net;
mod panel;
mod radio;
mod relay;
mod wifi;
mod ws;

use embassy_executor::Spawner;
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::rng::{Trng, TrngSource};
use esp_hal::timer::timg::TimerGroup;
use latchkey_node_core::board::Board;
use latchkey_node_core::storage::CredentialStore;
use latchkey_node_core::{setup_code, Config};
use static_cell::StaticCell;

use crate::panel::Code;

esp_bootloader_esp_idf::esp_app_desc!();

static FLASH: StaticCell<esp_storage::FlashStorage<'static>> = StaticCell::new();

#[esp_rtos::main]
async fn main(spawner: Spawner) {
    esp_println::logger::init_logger_from_env();
    let p = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    esp_alloc::heap_allocator!(#[link_section = ".dram2_uninit"] size: board::HEAP_RECLAIMED);
    esp_alloc::heap_allocator!(size: board::HEAP_MAIN);
    let timg0 = TimerGroup::new(p.TIMG0);
    esp_rtos::start(timg0.timer0, p.FROM_CPU_INTR0);

    // The entropy source stays on for the whole run: keys and codes come from the TRNG.
    let _entropy = TrngSource::new(p.RNG, p.ADC1);
    let Ok(trng) = Trng::try_new() else {
        return fatal("no entropy source").await;
    };
    let mut rng = clock::TrngRng(trng.clone());

    let pins = board::pins!(p);
    // The relay's pin is driven released before anything else can take time.
    let relay = relay::GpioRelay::new(pins.relay);
    spawner.spawn(panel::led_task(pins.led).unwrap_or_else(|_| fatal_now()));
    spawner.spawn(panel::button_task(pins.button).unwrap_or_else(|_| fatal_now()));

    let flash = FLASH.init(esp_storage::FlashStorage::new(p.FLASH));
    let Ok(label) = flash::load_or_create_label(flash, &mut rng) else {
        return fatal("label page unreadable").await;
    };
    let kind = flash::kind(flash);
    log::info!("node kind: {}", kind.as_str());

    let seed = u64::from(trng.random()) << 32 | u64::from(trng.random());
    let Ok((sta, ap)) = wifi::start(&spawner, p.WIFI, seed) else {
        return fatal("Wi-Fi init").await;
    };
    let Ok(radio) = radio::start(&spawner, p.BT) else {
        return fatal("BLE init").await;
    };

    let sta_tcp = net::StaticTcp::station(sta);
    let Ok(ap_listener) = ap::Ap::listen(ap).await else {
        return fatal("AP listener").await;
    };
    let Some(mut store) = flash::store(flash) else {
        return fatal("store range").await;
    };
    // A revoked node makes no adapter call the LED could follow: say so from the start.
    if let Ok(Some(credentials)) = store.credentials().await {
        panel::show(if credentials.revoked {
            Code::Revoked
        } else {
            Code::Busy
        });
    }
    let board = Board {
        store,
        relay,
        clock: clock::EmbassyClock,
        wifi: wifi::EspWifi::new(),
        http: http::Http::new(sta, sta_tcp),
        ws: ws::Ws::new(sta, sta_tcp, trng.clone()),
        ap: ap_listener,
        rng,
        radio,
    };
    let config = Config {
        kind,
        setup_ssid: setup_code::ssid(&label.label_id),
        setup_code: label.code,
        factory_reset: false,
    };
    let result = latchkey_node_core::run(board, &config, panel::factory_reset_requested()).await;
    if let Err(e) = result {
        return fatal_with(e).await;
    }
    // The button was held: erase through the core's store, then start again, unprovisioned.
    if let Some(mut store) = flash::store(flash) {
        if let Err(e) = store.erase().await {
            log::error!("factory reset: {e}");
        }
    }
    // Let the log line and the LED code out before the restart.
    embassy_time::Timer::after(embassy_time::Duration::from_millis(500)).await;
    esp_hal::system::software_reset();
}

/// An init step failed: say so, wait, restart the chip (never a panic).
async fn fatal(what: &str) {
    log::error!("fatal: {what}; restarting in 10 s");
    embassy_time::Timer::after(embassy_time::Duration::from_secs(10)).await;
    esp_hal::system::software_reset();
}

async fn fatal_with(e: impl core::fmt::Display) {
    log::error!("node stopped: {e}");
    fatal("node core").await;
}

/// A task could not be spawned (its pool is full: a programming error caught at first boot).
pub fn fatal_now() -> ! {
    log::error!("fatal: task spawn; restarting");
    esp_hal::system::software_reset()
}
