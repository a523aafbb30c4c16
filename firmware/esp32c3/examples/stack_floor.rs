//! The stack alone, for the size report's floor (`scripts/firmware-size.sh --floor`): the
//! same esp-hal, esp-rtos, esp-radio (Wi-Fi station + BLE, coexistence), embassy-net (DHCP,
//! one TCP connection) and trouble-host (a GATT peripheral with one service) as the node, and
//! no latchkey code. Never flashed: it only tells how much of the image the stack takes.
#![no_std]
#![no_main]

extern crate alloc;

use core::net::Ipv4Addr;

use embassy_executor::Spawner;
use embassy_futures::join::join3;
use embassy_net::tcp::TcpSocket;
use embassy_net::StackResources;
use embassy_time::{Duration, Timer};
use esp_backtrace as _;
use esp_radio::ble::controller::BleConnector;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{Config, Interface, WifiController};
use static_cell::StaticCell;
use trouble_host::prelude::*;

esp_bootloader_esp_idf::esp_app_desc!();

static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();

#[gatt_server]
struct Server {
    service: Service,
}

#[gatt_service(uuid = "0000fff0-0000-1000-8000-00805f9b34fb")]
struct Service {
    #[characteristic(uuid = "0000fff1-0000-1000-8000-00805f9b34fb", read, write, notify, value = [0; 42])]
    value: [u8; 42],
}

#[esp_rtos::main]
async fn main(spawner: Spawner) {
    let p = esp_hal::init(esp_hal::Config::default());
    esp_alloc::heap_allocator!(size: 144 * 1024);
    let timg0 = esp_hal::timer::timg::TimerGroup::new(p.TIMG0);
    esp_rtos::start(timg0.timer0, p.FROM_CPU_INTR0);

    let Ok(mut controller) = WifiController::new(p.WIFI, Default::default()) else {
        return;
    };
    let (stack, runner) = embassy_net::new(
        Interface::station(),
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        1,
    );
    spawner.spawn(net_task(runner).unwrap_or_else(|_| halt()));
    let Ok(ssid) = "floor".try_into() else {
        return;
    };
    let config = StationConfig::default().with_ssid(ssid);
    if controller.set_config(&Config::Station(config)).is_err() {
        return;
    }
    let wifi = async {
        let _ = controller.connect_async().await;
        stack.wait_config_up().await;
        let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
        let mut socket = TcpSocket::new(stack, &mut rx, &mut tx);
        let remote = (Ipv4Addr::new(192, 168, 1, 2), 8080);
        if socket.connect(remote).await.is_ok() {
            let _ = embedded_io_async::Write::write_all(&mut socket, b"floor").await;
        }
    };

    let Ok(connector) = BleConnector::new(p.BT, Default::default()) else {
        return;
    };
    let ble_controller: ExternalController<_, 20> = ExternalController::new(connector);
    let mut resources: HostResources<_, DefaultPacketPool, 1, 2> = HostResources::new();
    let host = trouble_host::new(ble_controller, &mut resources)
        .set_random_address(Address::random([0xC0, 1, 2, 3, 4, 5]))
        .build();
    let mut runner = host.runner();
    let mut peripheral = host.peripheral();
    let Ok(server) = Server::new_with_config(GapConfig::Peripheral(PeripheralConfig {
        name: "floor",
        appearance: &appearance::UNKNOWN,
    })) else {
        return;
    };
    let ble = async {
        let mut data = [0u8; 31];
        let Ok(len) = AdStructure::encode_slice(
            &[AdStructure::Flags(
                LE_GENERAL_DISCOVERABLE | BR_EDR_NOT_SUPPORTED,
            )],
            &mut data,
        ) else {
            return;
        };
        let adv = Advertisement::ConnectableScannableUndirected {
            adv_data: data.get(..len).unwrap_or_default(),
            scan_data: &[],
        };
        let Ok(advertiser) = peripheral.advertise(&Default::default(), adv).await else {
            return;
        };
        let Ok(conn) = advertiser.accept().await else {
            return;
        };
        let Ok(conn) = conn.with_attribute_server(&server) else {
            return;
        };
        loop {
            match conn.next().await {
                GattConnectionEvent::Disconnected { .. } => break,
                GattConnectionEvent::Gatt { event } => {
                    if let Ok(reply) = event.accept() {
                        reply.send().await;
                    }
                }
                _ => {}
            }
        }
        let _ = server
            .service
            .value
            .notify_raw(&conn, &[0; 42], false)
            .await;
    };
    join3(async { while runner.run().await.is_err() {} }, wifi, ble).await;
    loop {
        Timer::after(Duration::from_secs(1)).await;
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Interface>) {
    runner.run().await
}

fn halt() -> ! {
    esp_hal::system::software_reset()
}
