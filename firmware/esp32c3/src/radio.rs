//! The door's BLE side: node-core's [`DoorRadio`] on trouble-host (GATT peripheral, door
//! service version 2, PROTOCOL.md §16) over esp-radio's BLE controller.
//!
//! trouble's stack, its runner and the per-connection GATT loops live in [`ble_task`] (their
//! lifetimes are the task's); [`EspDoorRadio`] is the core's handle to it, through channels:
//!
//! - `start` hands the door tag to the advertiser (a new tag restarts advertising);
//! - each of [`BLE_CONNECTIONS`] slots serves one connection, numbered by trouble's
//!   connection handle; its events go to one queue the core reads with `next`;
//! - `reply_read` and `notify` go to the slot holding that connection (dropped if it is gone).
//!
//! A Challenge read at offset 0 waits for the core's value (at most [`READ_ANSWER_MS`]); a
//! read blob at a later offset is answered from the value that connection was last given.
//! Request writes are taken whole (write with response, offset 0); writes without response
//! are ignored, and long (prepared) writes are refused by trouble itself.
//!
//! The vehicle pairing service (PROTOCOL.md §27) is in the static GATT table of every node;
//! `start(_, pairing: false)` (a door) refuses its reads and writes. A Pairing Challenge read
//! waits for the core's value like a Challenge read; a Pairing Response write waits for the
//! core's verdict ([`WRITE_ANSWER_MS`]) and is answered with success or an ATT error.

use core::cell::RefCell;

use embassy_futures::join::{join, join_array};
use embassy_futures::select::{select, Either};
use embassy_sync::blocking_mutex::raw::{CriticalSectionRawMutex, NoopRawMutex};
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::channel::Channel;
use embassy_sync::signal::Signal;
use embassy_time::{with_timeout, Duration, Timer};
use esp_radio::ble::controller::BleConnector;
use latchkey_node_core::board::{ConnId, DoorEvent, DoorRadio, HardwareError, MAX_WRITE};
use latchkey_proto::v2::pairing::{self, CHALLENGE_LEN as PAIRING_CHALLENGE_LEN, RESPONSE_LEN};
use latchkey_proto::v2::{Challenge, Request, ResultFrame};
use trouble_host::att::{AttClient, AttReq};
use trouble_host::prelude::*;

use crate::board::{ADV_INTERVAL_MS, BLE_CONNECTIONS, BLE_L2CAP_CHANNELS};

/// The controller type: esp-radio's HCI connector with trouble's command queue.
pub type BleController = ExternalController<BleConnector<'static>, 20>;

/// Longest wait for the core's Challenge value before the read is refused.
pub const READ_ANSWER_MS: u64 = 1_000;
/// Longest wait for the core's verdict on a Pairing Response before the write is refused.
pub const WRITE_ANSWER_MS: u64 = 5_000;
/// Longest wait for the core to take an event before it is dropped (the core is not reading).
const EVENT_HANDOFF_MS: u64 = 1_000;
/// Largest value passed to the core's read replies and notifications.
const MAX_VALUE: usize = 128;
/// Format byte of the node's manufacturer data (PROTOCOL.md §16: version 2).
const ADV_FORMAT_V2: u8 = latchkey_proto::v2::VERSION;

const _: () = assert!(Challenge::LEN <= MAX_VALUE && ResultFrame::MAX_LEN <= MAX_VALUE);
const _: () = assert!(PAIRING_CHALLENGE_LEN <= MAX_VALUE && RESPONSE_LEN <= MAX_WRITE);
const _: () = assert!(Request::LEN <= MAX_WRITE);

#[gatt_server]
struct DoorServer {
    door: DoorService,
    pairing: PairingService,
}

/// The door service version 2; its values are per connection, so the table's copies stay
/// unused (reads and writes are answered unprocessed).
#[gatt_service(uuid = latchkey_proto::v2::SERVICE_UUID)]
struct DoorService {
    #[characteristic(uuid = latchkey_proto::v2::CHALLENGE_UUID, read, notify, value = [0; 42])]
    challenge: [u8; 42],
    #[characteristic(uuid = latchkey_proto::v2::REQUEST_UUID, write, value = [0; 83])]
    request: [u8; 83],
    #[characteristic(uuid = latchkey_proto::v2::RESULT_UUID, notify, value = [0; 43])]
    result: [u8; 43],
}

const _: () = assert!(Challenge::LEN == 42 && Request::LEN == 83 && ResultFrame::MAX_LEN == 43);

/// The vehicle pairing service (served by vehicles only, see the module comment).
#[gatt_service(uuid = pairing::SERVICE_UUID)]
struct PairingService {
    #[characteristic(uuid = pairing::CHALLENGE_UUID, read, value = [0; 106])]
    challenge: [u8; 106],
    #[characteristic(uuid = pairing::RESPONSE_UUID, write, value = [0; 151])]
    response: [u8; 151],
}

const _: () = assert!(PAIRING_CHALLENGE_LEN == 106 && RESPONSE_LEN == 151);

type Value = heapless::Vec<u8, MAX_VALUE>;

enum Cmd {
    Read { conn: ConnId, value: Value },
    Notify { conn: ConnId, value: Value },
    Write { conn: ConnId, ok: bool },
}

static START: Signal<CriticalSectionRawMutex, ([u8; 5], bool)> = Signal::new();
static EVENTS: Channel<CriticalSectionRawMutex, DoorEvent, 8> = Channel::new();
static COMMANDS: [Channel<CriticalSectionRawMutex, Cmd, 2>; BLE_CONNECTIONS] =
    [const { Channel::new() }; BLE_CONNECTIONS];
static SLOTS: Mutex<CriticalSectionRawMutex, RefCell<[Option<ConnId>; BLE_CONNECTIONS]>> =
    Mutex::new(RefCell::new([None; BLE_CONNECTIONS]));

/// node-core's handle to [`ble_task`].
pub struct EspDoorRadio;

impl EspDoorRadio {
    fn send(conn: ConnId, value: &[u8], make: fn(ConnId, Value) -> Cmd) {
        let Ok(value) = Value::from_slice(value) else {
            log::warn!("ble: value over {MAX_VALUE} bytes dropped");
            return;
        };
        let slot = SLOTS.lock(|s| s.borrow().iter().position(|c| *c == Some(conn)));
        let sent = slot
            .and_then(|i| COMMANDS.get(i))
            .map(|q| q.try_send(make(conn, value)).is_ok());
        if sent != Some(true) {
            log::debug!("ble: connection {conn} gone; value dropped");
        }
    }
}

impl DoorRadio for EspDoorRadio {
    async fn start(&mut self, door_tag: [u8; 5], pairing: bool) -> Result<(), HardwareError> {
        PAIRING.store(pairing, core::sync::atomic::Ordering::Relaxed);
        START.signal((door_tag, pairing));
        Ok(())
    }

    async fn next(&mut self) -> DoorEvent {
        EVENTS.receive().await
    }

    async fn reply_read(&mut self, conn: ConnId, value: &[u8]) {
        Self::send(conn, value, |conn, value| Cmd::Read { conn, value });
    }

    async fn notify(&mut self, conn: ConnId, value: &[u8]) {
        Self::send(conn, value, |conn, value| Cmd::Notify { conn, value });
    }

    async fn reply_write(&mut self, conn: ConnId, ok: bool) {
        let slot = SLOTS.lock(|s| s.borrow().iter().position(|c| *c == Some(conn)));
        let sent = slot
            .and_then(|i| COMMANDS.get(i))
            .map(|q| q.try_send(Cmd::Write { conn, ok }).is_ok());
        if sent != Some(true) {
            log::debug!("ble: connection {conn} gone; verdict dropped");
        }
    }
}

/// Whether this node serves the pairing service (a vehicle), as the core said at `start`.
static PAIRING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

async fn emit(event: DoorEvent) {
    if with_timeout(Duration::from_millis(EVENT_HANDOFF_MS), EVENTS.send(event))
        .await
        .is_err()
    {
        log::warn!("ble: event dropped (door service not reading)");
    }
}

/// Starts the BLE controller and host task (idle until the core's first `start`); returns the
/// core's handle.
pub fn start(
    spawner: &embassy_executor::Spawner,
    bt: esp_hal::peripherals::BT<'static>,
) -> Result<EspDoorRadio, esp_radio::ble::controller::BleInitError> {
    let connector = BleConnector::new(bt, Default::default())?;
    // The chip's Bluetooth MAC as a static random address: little-endian on air, the two top
    // bits set.
    let mac = esp_hal::efuse::interface_mac_address(esp_hal::efuse::InterfaceMacAddress::Bluetooth);
    let mut address = [0u8; 6];
    for (dst, src) in address.iter_mut().zip(mac.as_bytes().iter().rev()) {
        *dst = *src;
    }
    address[5] |= 0xC0;
    spawner.spawn(
        ble_task(BleController::new(connector), address).unwrap_or_else(|_| crate::fatal_now()),
    );
    Ok(EspDoorRadio)
}

/// Runs the BLE host: idle until the core's first `start`, then advertising and serving.
#[embassy_executor::task]
pub async fn ble_task(controller: BleController, address: [u8; 6]) {
    let mut resources: HostResources<
        BleController,
        DefaultPacketPool,
        BLE_CONNECTIONS,
        BLE_L2CAP_CHANNELS,
    > = HostResources::new();
    let stack = trouble_host::new(controller, &mut resources)
        .set_random_address(Address::random(address))
        .build();
    let mut runner = stack.runner();
    let mut peripheral = stack.peripheral();
    let server = match DoorServer::new_with_config(GapConfig::Peripheral(PeripheralConfig {
        name: "latchkey",
        appearance: &appearance::access_control::ACCESS_DOOR,
    })) {
        Ok(s) => s,
        Err(e) => {
            log::error!("ble: GATT table: {e:?}");
            return;
        }
    };
    let handoff: Channel<NoopRawMutex, GattConnection<'_, '_, DefaultPacketPool>, 1> =
        Channel::new();
    let host = async {
        loop {
            if let Err(e) = runner.run().await {
                log::error!("ble: host stopped: {e:?}; restarting");
                Timer::after(Duration::from_secs(1)).await;
            }
        }
    };
    let slots = join_array(core::array::from_fn::<_, BLE_CONNECTIONS, _>(|i| {
        slot(i, &server, &handoff)
    }));
    join(
        host,
        join(advertise(&mut peripheral, &server, &handoff), slots),
    )
    .await;
}

/// Advertises (restarting on a new tag) and hands each connection to a free slot, waiting for
/// one when both are busy.
async fn advertise<'v, 's>(
    peripheral: &mut Peripheral<'v, BleController, DefaultPacketPool>,
    server: &'s DoorServer<'v>,
    handoff: &Channel<NoopRawMutex, GattConnection<'v, 's, DefaultPacketPool>, 1>,
) {
    let (mut tag, _) = START.wait().await;
    let params = AdvertisementParameters {
        interval_min: Duration::from_millis(ADV_INTERVAL_MS.start),
        interval_max: Duration::from_millis(ADV_INTERVAL_MS.end),
        ..Default::default()
    };
    loop {
        let mut manufacturer = [0u8; 1 + 5];
        manufacturer[0] = ADV_FORMAT_V2;
        manufacturer[1..].copy_from_slice(&tag);
        let mut data = [0u8; 31];
        let len = match AdStructure::encode_slice(
            &[
                AdStructure::Flags(LE_GENERAL_DISCOVERABLE | BR_EDR_NOT_SUPPORTED),
                AdStructure::CompleteServiceUuids128(&[
                    latchkey_proto::v2::SERVICE_UUID.to_le_bytes()
                ]),
                AdStructure::ManufacturerSpecificData {
                    company_identifier: latchkey_proto::ADV_COMPANY_ID,
                    payload: &manufacturer,
                },
            ],
            &mut data,
        ) {
            Ok(len) => len,
            Err(e) => {
                log::error!("ble: advertisement: {e:?}");
                return;
            }
        };
        let adv = Advertisement::ConnectableScannableUndirected {
            adv_data: data.get(..len).unwrap_or_default(),
            scan_data: &[],
        };
        let advertiser = match peripheral.advertise(&params, adv).await {
            Ok(a) => a,
            Err(e) => {
                log::warn!("ble: advertise: {e:?}");
                Timer::after(Duration::from_secs(1)).await;
                continue;
            }
        };
        match select(advertiser.accept(), START.wait()).await {
            Either::First(Ok(conn)) => match conn.with_attribute_server(server) {
                Ok(gatt) => handoff.send(gatt).await,
                Err(e) => log::warn!("ble: attribute server: {e:?}"),
            },
            Either::First(Err(e)) => {
                log::warn!("ble: accept: {e:?}");
                Timer::after(Duration::from_secs(1)).await;
            }
            // New data: the advertiser is dropped (advertising stops) and restarts with it.
            Either::Second((new_tag, _)) => tag = new_tag,
        }
    }
}

/// Serves one connection at a time, forever.
async fn slot<'v, 's>(
    i: usize,
    server: &'s DoorServer<'v>,
    handoff: &Channel<NoopRawMutex, GattConnection<'v, 's, DefaultPacketPool>, 1>,
) {
    let Some(commands) = COMMANDS.get(i) else {
        return;
    };
    loop {
        let conn = handoff.receive().await;
        let id = ConnId::from(conn.raw().handle().raw());
        // Values meant for this slot's previous connection are stale.
        commands.clear();
        SLOTS.lock(|s| {
            if let Some(slot) = s.borrow_mut().get_mut(i) {
                *slot = Some(id);
            }
        });
        serve(id, server, &conn, commands).await;
        SLOTS.lock(|s| {
            if let Some(slot) = s.borrow_mut().get_mut(i) {
                *slot = None;
            }
        });
        emit(DoorEvent::Disconnected { conn: id }).await;
    }
}

async fn serve(
    id: ConnId,
    server: &DoorServer<'_>,
    conn: &GattConnection<'_, '_, DefaultPacketPool>,
    commands: &Channel<CriticalSectionRawMutex, Cmd, 2>,
) {
    let challenge = server.door.challenge.handle;
    let request = server.door.request.handle;
    let pairing_challenge = server.pairing.challenge.handle;
    let pairing_response = server.pairing.response.handle;
    let vehicle = PAIRING.load(core::sync::atomic::Ordering::Relaxed);
    // The last Challenge values this connection was given (for read blobs).
    let mut last = Value::new();
    let mut last_pairing = Value::new();
    loop {
        let event = match select(conn.next(), commands.receive()).await {
            Either::First(GattConnectionEvent::Disconnected { .. }) => return,
            Either::First(GattConnectionEvent::Gatt { event }) => event,
            Either::First(_) => continue,
            Either::Second(cmd) => {
                notify(server, conn, id, cmd).await;
                continue;
            }
        };
        let reply = match event {
            GattEvent::Read(read)
                if read.handle() == challenge || read.handle() == pairing_challenge =>
            {
                let is_pairing = read.handle() == pairing_challenge;
                let offset = match read.payload().incoming() {
                    AttClient::Request(AttReq::ReadBlob { offset, .. }) => usize::from(offset),
                    _ => 0,
                };
                let last = if is_pairing {
                    &mut last_pairing
                } else {
                    &mut last
                };
                if is_pairing && !vehicle {
                    read.reject(AttErrorCode::READ_NOT_PERMITTED)
                } else if offset == 0 {
                    emit(if is_pairing {
                        DoorEvent::PairingChallenge { conn: id }
                    } else {
                        DoorEvent::ReadChallenge { conn: id }
                    })
                    .await;
                    match answer(server, conn, id, commands, Wanted::Read).await {
                        Some(Answer::Read(value)) => {
                            *last = value;
                            read.accept_unprocessed(last.as_slice())
                        }
                        _ => read.reject(AttErrorCode::UNLIKELY_ERROR),
                    }
                } else if !last.is_empty() && offset <= last.len() {
                    read.accept_unprocessed(last.as_slice())
                } else {
                    read.reject(AttErrorCode::INVALID_OFFSET)
                }
            }
            GattEvent::Write(write) if write.handle() == pairing_response => {
                let with_response = matches!(
                    write.payload().incoming(),
                    AttClient::Request(AttReq::Write { .. })
                );
                let value = write.with_data(|offset, data| {
                    (offset == 0 && data.len() <= MAX_WRITE).then(|| data.to_vec())
                });
                match (vehicle, with_response, value) {
                    (true, true, Some(value)) => {
                        emit(DoorEvent::PairingResponse { conn: id, value }).await;
                        match answer(server, conn, id, commands, Wanted::Write).await {
                            Some(Answer::Write(true)) => write.accept_unprocessed(),
                            _ => write.reject(AttErrorCode::UNLIKELY_ERROR),
                        }
                    }
                    (true, true, None) => {
                        write.reject(AttErrorCode::INVALID_ATTRIBUTE_VALUE_LENGTH)
                    }
                    _ => write.reject(AttErrorCode::WRITE_NOT_PERMITTED),
                }
            }
            GattEvent::Write(write) if write.handle() == request => {
                let with_response = matches!(
                    write.payload().incoming(),
                    AttClient::Request(AttReq::Write { .. })
                );
                let value = write.with_data(|offset, data| {
                    (offset == 0 && data.len() <= MAX_WRITE).then(|| data.to_vec())
                });
                match (with_response, value) {
                    (true, Some(value)) => {
                        let reply = write.accept_unprocessed();
                        if let Ok(reply) = reply {
                            reply.send().await;
                        }
                        emit(DoorEvent::Request { conn: id, value }).await;
                        continue;
                    }
                    (true, None) => write.reject(AttErrorCode::INVALID_ATTRIBUTE_VALUE_LENGTH),
                    // A write without response: nothing to answer, nothing to pass on.
                    (false, _) => write.reject(AttErrorCode::WRITE_NOT_PERMITTED),
                }
            }
            other => other.accept(),
        };
        match reply {
            Ok(reply) => reply.send().await,
            Err(e) => log::warn!("ble: reply: {e:?}"),
        }
    }
}

/// What a pending ATT request waits for from the core.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Read,
    Write,
}

enum Answer {
    Read(Value),
    Write(bool),
}

/// Waits for the core's value (a read) or verdict (a write) for `id`, sending notifications
/// meanwhile; an answer of the other kind is stale and dropped.
async fn answer(
    server: &DoorServer<'_>,
    conn: &GattConnection<'_, '_, DefaultPacketPool>,
    id: ConnId,
    commands: &Channel<CriticalSectionRawMutex, Cmd, 2>,
    wanted: Wanted,
) -> Option<Answer> {
    let wait = async {
        loop {
            match commands.receive().await {
                Cmd::Read { conn: c, value } if c == id && wanted == Wanted::Read => {
                    return Answer::Read(value)
                }
                Cmd::Write { conn: c, ok } if c == id && wanted == Wanted::Write => {
                    return Answer::Write(ok)
                }
                cmd => notify(server, conn, id, cmd).await,
            }
        }
    };
    let limit = match wanted {
        Wanted::Read => READ_ANSWER_MS,
        Wanted::Write => WRITE_ANSWER_MS,
    };
    with_timeout(Duration::from_millis(limit), wait).await.ok()
}

async fn notify(
    server: &DoorServer<'_>,
    conn: &GattConnection<'_, '_, DefaultPacketPool>,
    id: ConnId,
    cmd: Cmd,
) {
    // A read reply with no read pending (it timed out) is dropped.
    if let Cmd::Notify { conn: c, value } = cmd {
        if c == id {
            if let Err(e) = server.door.result.notify_raw(conn, &value, false).await {
                log::debug!("ble: notify: {e:?}");
            }
        }
    }
}
