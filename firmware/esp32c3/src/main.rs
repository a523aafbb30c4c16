//! `latchkey-node-esp32c3`: the latchkey endpoint node on an ESP32-C3. Adapters only; every
//! rule is in `latchkey-node-core`, which this hands a board and calls. Init, heap, RTOS,
//! radio, the tasks the stacks need, then the core (trouble's `ble_bas_peripheral` shape).
#![no_std]
#![no_main]

extern crate alloc;

mod board;
mod clock;
mod flash;
mod net;
mod panel;
mod radio;
mod relay;
mod wifi;

use embassy_executor::Spawner;
use embassy_net::{Ipv4Cidr, StackResources, StaticConfigV4};
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::rng::{Trng, TrngSource};
use esp_hal::timer::timg::TimerGroup;
use esp_radio::ble::controller::BleConnector;
use esp_radio::wifi::{Interface, WifiController};
use latchkey_node_core::board::Board;
use latchkey_node_core::storage::CredentialStore;
use latchkey_node_core::{setup_code, Config};
use static_cell::{ConstStaticCell, StaticCell};

use crate::panel::Code;
use crate::board::{AP_ADDR, AP_SOCKETS, AP_TCP, STA_SOCKETS, STA_TCP, TCP_RX, TCP_TX};

esp_bootloader_esp_idf::esp_app_desc!();

static STA_RESOURCES: StaticCell<StackResources<STA_SOCKETS>> = StaticCell::new();
static AP_RESOURCES: StaticCell<StackResources<AP_SOCKETS>> = StaticCell::new();
// Built in place (const): 12 KiB each would not fit on the stack on the way to a static.
static STA_BUFFERS: ConstStaticCell<edge_nal_embassy::TcpBuffers<STA_TCP, TCP_TX, TCP_RX>> =
    ConstStaticCell::new(edge_nal_embassy::TcpBuffers::new());
static AP_BUFFERS: ConstStaticCell<edge_nal_embassy::TcpBuffers<AP_TCP, TCP_TX, TCP_RX>> =
    ConstStaticCell::new(edge_nal_embassy::TcpBuffers::new());
static STA_TCP_STACK: StaticCell<edge_nal_embassy::Tcp<'static>> = StaticCell::new();
static AP_TCP_STACK: StaticCell<edge_nal_embassy::Tcp<'static>> = StaticCell::new();
static AP_ACCEPT: StaticCell<edge_nal_embassy::TcpAccept<'static>> = StaticCell::new();
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
    spawner.spawn(panel::led_task(pins.led).unwrap_or_else(|_| fatal_now()));
    spawner.spawn(panel::button_task(pins.button).unwrap_or_else(|_| fatal_now()));

    let flash = FLASH.init(esp_storage::FlashStorage::new(p.FLASH));
    let Ok(label) = flash::load_or_create_label(flash, &mut rng) else {
        return fatal("label page unreadable").await;
    };

    // Wi-Fi: two embassy-net stacks on the one radio (station and setup access point).
    let Ok(wifi_controller) = WifiController::new(p.WIFI, Default::default()) else {
        return fatal("Wi-Fi init").await;
    };
    let seed = u64::from(trng.random()) << 32 | u64::from(trng.random());
    let (sta, sta_runner) = embassy_net::new(
        Interface::station(),
        embassy_net::Config::dhcpv4(Default::default()),
        STA_RESOURCES.init(StackResources::new()),
        seed,
    );
    let (ap, ap_runner) = embassy_net::new(
        Interface::access_point(),
        embassy_net::Config::ipv4_static(StaticConfigV4 {
            address: Ipv4Cidr::new(AP_ADDR, 24),
            gateway: Some(AP_ADDR),
            dns_servers: Default::default(),
        }),
        AP_RESOURCES.init(StackResources::new()),
        seed.rotate_left(17),
    );
    spawner.spawn(net::net_task(sta_runner).unwrap_or_else(|_| fatal_now()));
    spawner.spawn(net::net_task(ap_runner).unwrap_or_else(|_| fatal_now()));
    spawner.spawn(net::dhcp_server_task(ap).unwrap_or_else(|_| fatal_now()));
    spawner.spawn(wifi::wifi_task(wifi_controller, sta).unwrap_or_else(|_| fatal_now()));

    // BLE: the host runs in its own task, idle until the core starts the door service.
    let Ok(connector) = BleConnector::new(p.BT, Default::default()) else {
        return fatal("BLE init").await;
    };
    // The chip's Bluetooth MAC as a static random address: little-endian on air, two top bits set.
    let mac = esp_hal::efuse::interface_mac_address(esp_hal::efuse::InterfaceMacAddress::Bluetooth);
    let mut address = [0u8; 6];
    for (dst, src) in address.iter_mut().zip(mac.as_bytes().iter().rev()) {
        *dst = *src;
    }
    address[5] |= 0xC0;
    spawner.spawn(
        radio::ble_task(radio::BleController::new(connector), address)
            .unwrap_or_else(|_| fatal_now()),
    );
    let radio = radio::EspDoorRadio;

    let sta_tcp =
        net::StaticTcp(STA_TCP_STACK.init(edge_nal_embassy::Tcp::new(sta, STA_BUFFERS.take())));
    let ap_tcp = AP_TCP_STACK.init(edge_nal_embassy::Tcp::new(ap, AP_BUFFERS.take()));
    let Ok(accept) = net::Ap::bind(ap_tcp).await else {
        return fatal("AP listener").await;
    };
    let Some(mut store) = flash::store(flash) else {
        return fatal("store range").await;
    };
    // A revoked node makes no adapter call the LED could follow: say so from the start.
    if let Ok(Some(credentials)) = store.credentials().await {
        panel::show(if credentials.revoked { Code::Revoked } else { Code::Busy });
    }
    let board = Board {
        store,
        relay: relay::GpioRelay::new(pins.relay),
        clock: clock::EmbassyClock,
        wifi: wifi::EspWifi::new(),
        http: net::Http::new(sta, sta_tcp),
        ws: net::Ws::new(sta, sta_tcp, trng.clone()),
        ap: net::Ap::new(AP_ACCEPT.init(accept)),
        rng,
    };
    // The lead adds `radio,` to the Board literal above once node-core's Board has the field.
    let _ = &radio;
    let config = Config {
        kind: label.kind,
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
fn fatal_now() -> ! {
    log::error!("fatal: task spawn; restarting");
    esp_hal::system::software_reset()
}
