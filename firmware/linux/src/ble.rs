//! The node's BLE door (PROTOCOL.md §16) on BlueZ, through bluer: [`BluezRadio`] implements the
//! core's [`DoorRadio`]. The GATT application's callbacks only move bytes between BlueZ and a
//! bounded event queue; every rule is the core's.
//!
//! - Connections: BlueZ tells a GATT server nothing about connections, only the peer of each
//!   request. A peer (adapter, address) gets a [`ConnId`] at its first request, kept until its
//!   `Device1` reports `Connected = false` or the object goes (watched per peer), or BlueZ or
//!   the adapter goes: then the core gets [`DoorEvent::Disconnected`].
//! - A vehicle (`--kind vehicle`) also serves the pairing service (issue 12): Pairing
//!   Challenge reads go to the core like Challenge reads; a Pairing Response write waits for
//!   the core's verdict ([`DoorRadio::reply_write`], at most [`WRITE_TIMEOUT`]) and is answered
//!   with the ATT Write Response or `org.bluez.Error.Failed`.
//! - Registration: a task registers the application and the advertisement on the adapter and
//!   registers them again when BlueZ says the adapter was added anew (bluetoothd restarted,
//!   or the adapter came back). Without a system bus, BlueZ or an adapter the radio says so in
//!   one log line and stays silent; the node works on over Wi-Fi.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluer::adv::{Advertisement, AdvertisementHandle, Type as AdvType};
use bluer::gatt::local::{
    Application, ApplicationHandle, Characteristic, CharacteristicNotifier, CharacteristicNotify,
    CharacteristicNotifyMethod, CharacteristicRead, CharacteristicReadRequest, CharacteristicWrite,
    CharacteristicWriteMethod, CharacteristicWriteRequest, ReqError, ReqResult, Service,
};
use bluer::gatt::WriteOp;
use bluer::{Address, DeviceEvent, DeviceProperty, SessionEvent, Uuid};
use futures_util::{FutureExt, StreamExt};
use latchkey_node_core::board::{ConnId, DoorEvent, DoorRadio, HardwareError, MAX_WRITE};
use latchkey_proto::v2::{pairing, CHALLENGE_UUID, REQUEST_UUID, RESULT_UUID, SERVICE_UUID};
use latchkey_proto::ADV_COMPANY_ID;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// How long a challenge read waits for the core's value before BlueZ gets an error.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a Pairing Response write waits for the core's verdict (a signature check, an
/// ECDH and a flash write) before BlueZ gets an error.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Our limit on each call to BlueZ (bluer's own is 120 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads and writes queued for the core; more are refused (the phone retries).
const MAX_QUEUED: usize = 64;
/// Peers with a live [`ConnId`]; a radio holds a handful at once, so more means missed
/// disconnects: the least recently active peer is then dropped.
const MAX_PEERS: usize = 32;
/// A re-check while waiting for BlueZ or an adapter, in case a signal was missed.
const IDLE_RECHECK: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Advertising interval (PERFORMANCE.md, time to open): a phone's scan window of ~30 ms hears a
/// 100–150 ms advertiser within a few windows; shorter costs power for little.
pub const ADV_INTERVAL_MIN: Duration = Duration::from_millis(100);
pub const ADV_INTERVAL_MAX: Duration = Duration::from_millis(150);
/// Manufacturer data format of a node (PROTOCOL.md §16): `0x02 ‖ door_tag`.
const ADV_FORMAT_NODE: u8 = 0x02;
/// A scan response holds 31 bytes: a name AD takes 2 of them.
const MAX_LOCAL_NAME: usize = 29;

/// What the radio is told at construction.
#[derive(Debug, Clone)]
pub struct BleConfig {
    /// `hciN`; `None`: the first adapter BlueZ lists.
    pub adapter: Option<String>,
    /// Shown in the scan response (cut to what fits).
    pub local_name: String,
    /// See [`READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// See [`WRITE_TIMEOUT`].
    pub write_timeout: Duration,
}

impl BleConfig {
    pub fn new(adapter: Option<String>, local_name: &str) -> Self {
        Self {
            adapter,
            local_name: local_name.to_owned(),
            read_timeout: READ_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// Where the door's BLE stands (for the log and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BleState {
    /// Not started yet.
    Idle,
    /// Off: why (no system bus, no BlueZ, no adapter, a failed registration).
    Off(String),
    /// Registered and advertising on this adapter.
    Up(String),
}

/// The door's radio on BlueZ. Construct it at start-up; [`DoorRadio::start`] connects to the
/// system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket) and registers.
pub struct BluezRadio {
    config: BleConfig,
    shared: Arc<Shared>,
    /// The advertised door tag; the registration task ends when this is dropped.
    tag: Option<watch::Sender<[u8; 5]>>,
    state: watch::Sender<BleState>,
}

impl BluezRadio {
    pub fn new(config: BleConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(VecDeque::new()),
                wake: Notify::new(),
                peers: Mutex::new(Peers::default()),
                result: tokio::sync::Mutex::new(None),
                read_timeout: config.read_timeout,
                write_timeout: config.write_timeout,
            }),
            config,
            tag: None,
            state: watch::channel(BleState::Idle).0,
        }
    }

    /// Follows the radio's [`BleState`].
    pub fn state(&self) -> watch::Receiver<BleState> {
        self.state.subscribe()
    }

    fn off(&self, reason: String) {
        tracing::info!("BLE is off: {reason}; the node works over Wi-Fi");
        self.state.send_replace(BleState::Off(reason));
    }
}

impl DoorRadio for BluezRadio {
    /// Never fails: without BlueZ the door is off (one log line) and comes up when BlueZ and an
    /// adapter appear, while the node serves over Wi-Fi.
    async fn start(&mut self, door_tag: [u8; 5], pairing: bool) -> Result<(), HardwareError> {
        if let Some(tx) = &self.tag {
            tx.send_replace(door_tag);
            return Ok(());
        }
        let (tx, rx) = watch::channel(door_tag);
        self.tag = Some(tx);
        let session = match tokio::time::timeout(CALL_TIMEOUT, bluer::Session::new()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.off(format!("no system D-Bus ({e})"));
                return Ok(());
            }
            Err(_) => {
                self.off("the system D-Bus did not answer within 5 s".into());
                return Ok(());
            }
        };
        let sup = Supervisor {
            config: self.config.clone(),
            shared: self.shared.clone(),
            session,
            tag: rx,
            pairing,
            state: self.state.clone(),
            reg: None,
            said_off: false,
        };
        tokio::spawn(sup.run());
        Ok(())
    }

    async fn next(&mut self) -> DoorEvent {
        loop {
            if let Some(ev) = lock(&self.shared.queue).pop_front() {
                return ev;
            }
            // A permit stored by a push between the check and here completes this at once.
            self.shared.wake.notified().await;
        }
    }

    async fn reply_read(&mut self, conn: ConnId, value: &[u8]) {
        let pending = lock(&self.shared.peers)
            .by_id(conn)
            .and_then(|p| p.pending.take());
        match pending {
            // The reader may have given up (timeout, disconnect): nothing to do then.
            Some((_, tx)) => drop(tx.send(value.to_vec())),
            None => tracing::debug!(conn, "challenge value for a read nobody waits for"),
        }
    }

    async fn reply_write(&mut self, conn: ConnId, ok: bool) {
        let pending = lock(&self.shared.peers)
            .by_id(conn)
            .and_then(|p| p.pending_write.take());
        match pending {
            Some(tx) => drop(tx.send(ok)),
            None => tracing::debug!(conn, "pairing verdict for a write nobody waits for"),
        }
    }

    async fn notify(&mut self, conn: ConnId, value: &[u8]) {
        if lock(&self.shared.peers).by_id(conn).is_none() {
            tracing::debug!(conn, "result not sent: the connection is gone");
            return;
        }
        let mut guard = self.shared.result.lock().await;
        let Some(n) = guard.as_mut() else {
            tracing::debug!(conn, "result not sent: nobody subscribed to Result");
            return;
        };
        // BlueZ sends it to every subscriber; results carry their nonce (PROTOCOL.md §17.3).
        match tokio::time::timeout(CALL_TIMEOUT, n.notify(value.to_vec())).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                tracing::debug!(conn, "result not sent: the Result subscription ended");
                *guard = None;
            }
            Err(_) => tracing::warn!(conn, "result not sent: the system D-Bus did not take it"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A peer as BlueZ names it in a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PeerKey {
    adapter: String,
    address: Address,
}

/// The two characteristics whose reads the core answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    /// The door's Challenge.
    Challenge,
    /// A vehicle's Pairing Challenge.
    Pairing,
}

struct Peer {
    id: ConnId,
    /// The core's answer to the outstanding read (ATT allows one request at a time per peer).
    pending: Option<(ReadKind, oneshot::Sender<Vec<u8>>)>,
    /// The core's verdict on the outstanding Pairing Response write.
    pending_write: Option<oneshot::Sender<bool>>,
    /// The last Challenge value given to this peer (served for reads at an offset).
    last: Option<Vec<u8>>,
    /// The same for the Pairing Challenge.
    last_pairing: Option<Vec<u8>>,
    active: Instant,
    watcher: Option<AbortHandle>,
}

#[derive(Default)]
struct Peers {
    map: HashMap<PeerKey, Peer>,
    next: ConnId,
}

impl Peers {
    fn by_id(&mut self, id: ConnId) -> Option<&mut Peer> {
        self.map.values_mut().find(|p| p.id == id)
    }

    fn fresh_id(&mut self) -> ConnId {
        loop {
            let id = self.next;
            self.next = self.next.wrapping_add(1);
            if !self.map.values().any(|p| p.id == id) {
                return id;
            }
        }
    }

    fn remove(&mut self, key: &PeerKey) -> Option<ConnId> {
        let p = self.map.remove(key)?;
        if let Some(w) = p.watcher {
            w.abort();
        }
        Some(p.id)
    }
}

struct Shared {
    queue: Mutex<VecDeque<DoorEvent>>,
    wake: Notify,
    peers: Mutex<Peers>,
    /// The newest Result notifier: bluetoothd calls `StartNotify` per subscribing peer (older
    /// versions: for the first) and any live session reaches every subscriber.
    result: tokio::sync::Mutex<Option<CharacteristicNotifier>>,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl Shared {
    /// Queues an event for the core; reads and writes are refused when the queue is full.
    /// Disconnects have room of their own (one per peer: a peer gets no id while the queue is
    /// full), so the core does not miss one.
    fn push(&self, ev: DoorEvent) -> bool {
        {
            let mut q = lock(&self.queue);
            let room = match ev {
                DoorEvent::Disconnected { .. } => MAX_QUEUED + MAX_PEERS,
                _ => MAX_QUEUED,
            };
            if q.len() >= room {
                return false;
            }
            q.push_back(ev);
        }
        self.wake.notify_one();
        true
    }

    fn busy(&self) -> bool {
        lock(&self.queue).len() >= MAX_QUEUED
    }

    /// The peer's [`ConnId`], made at its first request (a watcher then waits for its
    /// disconnect).
    fn conn(self: &Arc<Self>, key: &PeerKey, session: &bluer::Session) -> ConnId {
        let now = Instant::now();
        let (id, evicted) = {
            let mut peers = lock(&self.peers);
            if let Some(p) = peers.map.get_mut(key) {
                p.active = now;
                return p.id;
            }
            let mut evicted = None;
            if peers.map.len() >= MAX_PEERS {
                let oldest = peers
                    .map
                    .iter()
                    .min_by_key(|(_, p)| p.active)
                    .map(|(k, _)| k.clone());
                evicted = oldest.and_then(|k| peers.remove(&k));
            }
            let id = peers.fresh_id();
            peers.map.insert(
                key.clone(),
                Peer {
                    id,
                    pending: None,
                    pending_write: None,
                    last: None,
                    last_pairing: None,
                    active: now,
                    watcher: None,
                },
            );
            (id, evicted)
        };
        if let Some(old) = evicted {
            tracing::warn!(
                conn = old,
                "too many BLE peers; the least recently active dropped"
            );
            self.gone_id(old);
        }
        let watcher = tokio::spawn(watch_peer(self.clone(), session.clone(), key.clone()));
        if let Some(p) = lock(&self.peers).map.get_mut(key) {
            p.watcher = Some(watcher.abort_handle());
        }
        id
    }

    /// The peer is gone: the core hears it once.
    fn gone(&self, key: &PeerKey) {
        let id = lock(&self.peers).remove(key);
        if let Some(conn) = id {
            self.gone_id(conn);
        }
    }

    fn gone_id(&self, conn: ConnId) {
        if !self.push(DoorEvent::Disconnected { conn }) {
            // Only when the core stopped taking events; ids are not reused for 2^32 peers.
            tracing::warn!(
                conn,
                "BLE disconnect not queued: the door does not take events"
            );
        }
    }

    /// BlueZ or the adapter went: every connection and subscription with it.
    async fn reset(&self) {
        let keys: Vec<PeerKey> = lock(&self.peers).map.keys().cloned().collect();
        for k in keys {
            self.gone(&k);
        }
        *self.result.lock().await = None;
    }

    /// Challenge (or Pairing Challenge) `ReadValue`: at offset 0 the core's value (within the
    /// read timeout); at another offset the rest of the last value this peer was given.
    async fn read(
        self: &Arc<Self>,
        session: &bluer::Session,
        req: CharacteristicReadRequest,
        kind: ReadKind,
    ) -> ReqResult<Vec<u8>> {
        let key = PeerKey {
            adapter: req.adapter_name,
            address: req.device_address,
        };
        let offset = usize::from(req.offset);
        if offset != 0 {
            let mut peers = lock(&self.peers);
            let last = peers.map.get_mut(&key).and_then(|p| match kind {
                ReadKind::Challenge => p.last.as_ref(),
                ReadKind::Pairing => p.last_pairing.as_ref(),
            });
            return last
                .and_then(|v| v.get(offset..))
                .map(<[u8]>::to_vec)
                .ok_or(ReqError::InvalidOffset);
        }
        if self.busy() {
            tracing::warn!("BLE events pile up; challenge read refused");
            return Err(ReqError::Failed);
        }
        let conn = self.conn(&key, session);
        let (tx, rx) = oneshot::channel();
        if let Some(p) = lock(&self.peers).map.get_mut(&key) {
            p.pending = Some((kind, tx));
        }
        let event = match kind {
            ReadKind::Challenge => DoorEvent::ReadChallenge { conn },
            ReadKind::Pairing => DoorEvent::PairingChallenge { conn },
        };
        if !self.push(event.clone()) {
            tracing::warn!(conn, "BLE events pile up; challenge read refused");
            return Err(ReqError::Failed);
        }
        match tokio::time::timeout(self.read_timeout, rx).await {
            Ok(Ok(value)) => {
                if let Some(p) = lock(&self.peers).map.get_mut(&key) {
                    match kind {
                        ReadKind::Challenge => p.last = Some(value.clone()),
                        ReadKind::Pairing => p.last_pairing = Some(value.clone()),
                    }
                }
                Ok(value)
            }
            Ok(Err(_)) => Err(ReqError::Failed),
            Err(_) => {
                tracing::warn!(conn, "the door did not answer a challenge read in time");
                // Not taken yet: withdraw it, so its late answer never meets this peer's next read.
                lock(&self.queue).retain(|ev| *ev != event);
                Err(ReqError::Failed)
            }
        }
    }

    /// Request `WriteValue`: one write with response at offset 0 of at most [`MAX_WRITE`]
    /// bytes goes to the core; the ATT Write Response leaves at once, the answer is a Result
    /// notification.
    fn write(
        self: &Arc<Self>,
        session: &bluer::Session,
        value: Vec<u8>,
        req: CharacteristicWriteRequest,
    ) -> ReqResult<()> {
        self.queue_write(session, value, req, WriteKind::Request)
            .map(|_| ())
    }

    /// A write the core takes ([`check_write`]), queued as its event; its connection.
    fn queue_write(
        self: &Arc<Self>,
        session: &bluer::Session,
        value: Vec<u8>,
        req: CharacteristicWriteRequest,
        kind: WriteKind,
    ) -> ReqResult<ConnId> {
        let key = check_write(&value, req)?;
        let what = match kind {
            WriteKind::Request => "request",
            WriteKind::Pairing(_) => "pairing response",
        };
        if self.busy() {
            tracing::warn!("BLE events pile up; {what} refused");
            return Err(ReqError::InProgress);
        }
        let conn = self.conn(&key, session);
        let event = match kind {
            WriteKind::Request => DoorEvent::Request { conn, value },
            WriteKind::Pairing(verdict) => {
                // In place before the core can see the event and answer it.
                if let Some(p) = lock(&self.peers).map.get_mut(&key) {
                    p.pending_write = Some(verdict);
                }
                DoorEvent::PairingResponse { conn, value }
            }
        };
        if !self.push(event) {
            tracing::warn!(conn, "BLE events pile up; {what} refused");
            return Err(ReqError::InProgress);
        }
        Ok(conn)
    }

    /// Pairing Response `WriteValue`: one write with response at offset 0 of at most
    /// [`MAX_WRITE`] bytes goes to the core, and the ATT answer waits for its verdict (at most
    /// the write timeout; then, or when refused, `org.bluez.Error.Failed`).
    async fn pairing_write(
        self: &Arc<Self>,
        session: &bluer::Session,
        value: Vec<u8>,
        req: CharacteristicWriteRequest,
    ) -> ReqResult<()> {
        let (tx, rx) = oneshot::channel();
        let conn = self.queue_write(session, value, req, WriteKind::Pairing(tx))?;
        match tokio::time::timeout(self.write_timeout, rx).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) | Ok(Err(_)) => Err(ReqError::Failed),
            Err(_) => {
                tracing::warn!(conn, "the vehicle did not judge a pairing response in time");
                // Not taken yet: withdraw it, so it is not kept after the phone heard "failed".
                lock(&self.queue).retain(
                    |ev| !matches!(ev, DoorEvent::PairingResponse { conn: c, .. } if *c == conn),
                );
                Err(ReqError::Failed)
            }
        }
    }

    async fn subscribed(&self, notifier: CharacteristicNotifier) {
        *self.result.lock().await = Some(notifier);
    }
}

/// What a write is to the core.
enum WriteKind {
    /// A door Request: answered by a Result notification.
    Request,
    /// A vehicle's Pairing Response: answered by the verdict sent here.
    Pairing(oneshot::Sender<bool>),
}

/// The writes the core takes: a write with response at offset 0 of at most [`MAX_WRITE`]
/// bytes; its peer.
fn check_write(value: &[u8], req: CharacteristicWriteRequest) -> ReqResult<PeerKey> {
    // Commands have no response to carry an error, long and reliable writes arrive in
    // pieces (type "reliable"): none is a request frame.
    if req.op_type != WriteOp::Request || req.prepare_authorize {
        return Err(ReqError::NotPermitted);
    }
    if req.offset != 0 {
        return Err(ReqError::InvalidOffset);
    }
    if value.len() > MAX_WRITE {
        return Err(ReqError::InvalidValueLength);
    }
    Ok(PeerKey {
        adapter: req.adapter_name,
        address: req.device_address,
    })
}

/// Waits until the peer's `Device1` says it disconnected or its object goes.
async fn watch_peer(shared: Arc<Shared>, session: bluer::Session, key: PeerKey) {
    let events = async {
        let device = session.adapter(&key.adapter)?.device(key.address)?;
        // Subscribe first, then look: a disconnect in between is not missed.
        let events = device.events().await?;
        let connected = device.is_connected().await?;
        bluer::Result::Ok((events, connected))
    };
    match tokio::time::timeout(CALL_TIMEOUT, events).await {
        Ok(Ok((mut events, true))) => {
            while let Some(ev) = events.next().await {
                if let DeviceEvent::PropertyChanged(DeviceProperty::Connected(false)) = ev {
                    break;
                }
            }
        }
        Ok(Ok((_, false))) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "BLE peer state unreadable; taken as gone"),
        Err(_) => tracing::debug!("BLE peer state did not arrive in time; taken as gone"),
    }
    shared.gone(&key);
}

/// A read the core answers.
fn core_read(shared: &Arc<Shared>, session: &bluer::Session, kind: ReadKind) -> CharacteristicRead {
    let (reader, read_session) = (shared.clone(), session.clone());
    CharacteristicRead {
        read: true,
        fun: Box::new(move |req| {
            let (shared, session) = (reader.clone(), read_session.clone());
            async move { shared.read(&session, req, kind).await }.boxed()
        }),
        ..Default::default()
    }
}

/// The vehicle pairing service (issue 12): Pairing Challenge read, Pairing Response write
/// (with response).
fn pairing_service(shared: &Arc<Shared>, session: &bluer::Session) -> Service {
    let challenge = Characteristic {
        uuid: Uuid::from_u128(pairing::CHALLENGE_UUID),
        read: Some(core_read(shared, session, ReadKind::Pairing)),
        ..Default::default()
    };
    let (writer, write_session) = (shared.clone(), session.clone());
    let response = Characteristic {
        uuid: Uuid::from_u128(pairing::RESPONSE_UUID),
        write: Some(CharacteristicWrite {
            write: true,
            method: CharacteristicWriteMethod::Fun(Box::new(move |value, req| {
                let (shared, session) = (writer.clone(), write_session.clone());
                async move { shared.pairing_write(&session, value, req).await }.boxed()
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    Service {
        uuid: Uuid::from_u128(pairing::SERVICE_UUID),
        primary: true,
        characteristics: vec![challenge, response],
        ..Default::default()
    }
}

/// The version-2 door service (PROTOCOL.md §16): Challenge read+notify, Request write (with
/// response), Result notify; with `pairing` (a vehicle) the pairing service too.
fn application(shared: &Arc<Shared>, session: &bluer::Session, pairing: bool) -> Application {
    let challenge = Characteristic {
        uuid: Uuid::from_u128(CHALLENGE_UUID),
        read: Some(core_read(shared, session, ReadKind::Challenge)),
        // Notify-capable as §16 says; BlueZ would send a notified challenge to every
        // subscriber, so this door never notifies one.
        notify: Some(CharacteristicNotify {
            notify: true,
            method: CharacteristicNotifyMethod::Fun(Box::new(|_| async {}.boxed())),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (writer, write_session) = (shared.clone(), session.clone());
    let request = Characteristic {
        uuid: Uuid::from_u128(REQUEST_UUID),
        write: Some(CharacteristicWrite {
            write: true,
            method: CharacteristicWriteMethod::Fun(Box::new(move |value, req| {
                let r = writer.write(&write_session, value, req);
                async move { r }.boxed()
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let subscriber = shared.clone();
    let result = Characteristic {
        uuid: Uuid::from_u128(RESULT_UUID),
        notify: Some(CharacteristicNotify {
            notify: true,
            method: CharacteristicNotifyMethod::Fun(Box::new(move |notifier| {
                let shared = subscriber.clone();
                async move { shared.subscribed(notifier).await }.boxed()
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut services = vec![Service {
        uuid: Uuid::from_u128(SERVICE_UUID),
        primary: true,
        characteristics: vec![challenge, request, result],
        ..Default::default()
    }];
    if pairing {
        services.push(pairing_service(shared, session));
    }
    Application {
        services,
        ..Default::default()
    }
}

/// The node advertisement (PROTOCOL.md §16): connectable, the v2 service UUID and `0xFFFF`:
/// `02 ‖ door_tag` in the 31 bytes of legacy advertising data; the name goes in the scan
/// response (BlueZ puts `LocalName` there for a legacy connectable advertisement).
pub fn advertisement(door_tag: [u8; 5], local_name: &str) -> Advertisement {
    let mut data = Vec::with_capacity(1 + door_tag.len());
    data.push(ADV_FORMAT_NODE);
    data.extend_from_slice(&door_tag);
    Advertisement {
        advertisement_type: AdvType::Peripheral,
        service_uuids: [Uuid::from_u128(SERVICE_UUID)].into_iter().collect(),
        manufacturer_data: [(ADV_COMPANY_ID, data)].into_iter().collect(),
        local_name: Some(fit_name(local_name)).filter(|n| !n.is_empty()),
        discoverable: Some(true),
        min_interval: Some(ADV_INTERVAL_MIN),
        max_interval: Some(ADV_INTERVAL_MAX),
        ..Default::default()
    }
}

/// `name` cut to [`MAX_LOCAL_NAME`] bytes at a character boundary.
fn fit_name(name: &str) -> String {
    let mut end = name.len().min(MAX_LOCAL_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.get(..end).unwrap_or_default().to_owned()
}

/// The configured adapter, else the first in natural order (`hci2` before `hci10`).
fn choose_adapter(mut names: Vec<String>, wanted: Option<&str>) -> Result<String, String> {
    if let Some(w) = wanted {
        return if names.iter().any(|n| n == w) {
            Ok(w.to_owned())
        } else {
            Err(format!("adapter {w} is not present"))
        };
    }
    names.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
    names
        .into_iter()
        .next()
        .ok_or_else(|| "BlueZ has no Bluetooth adapter".to_owned())
}

async fn within<T>(
    what: &str,
    fut: impl std::future::Future<Output = bluer::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: BlueZ did not answer within 5 s")),
    }
}

/// A live registration: dropping it unregisters the application and the advertisement.
struct Registration {
    adapter: bluer::Adapter,
    _app: ApplicationHandle,
    adv: Option<AdvertisementHandle>,
}

enum Retry {
    /// BlueZ or the adapter is missing: wait for BlueZ to announce an adapter.
    Wait(String),
    /// Registration failed: try again after a backoff.
    Backoff(String),
}

struct Supervisor {
    config: BleConfig,
    shared: Arc<Shared>,
    session: bluer::Session,
    tag: watch::Receiver<[u8; 5]>,
    /// Whether the GATT application holds the vehicle pairing service.
    pairing: bool,
    state: watch::Sender<BleState>,
    reg: Option<Registration>,
    /// Whether "BLE is off" was logged since the last registration (one line, not one a retry).
    said_off: bool,
}

impl Supervisor {
    async fn try_up(&mut self) -> Result<(), Retry> {
        let names = within("listing adapters", self.session.adapter_names())
            .await
            .map_err(Retry::Wait)?;
        let name = choose_adapter(names, self.config.adapter.as_deref()).map_err(Retry::Wait)?;
        let adapter = self
            .session
            .adapter(&name)
            .map_err(|e| Retry::Wait(format!("adapter {name}: {e}")))?;
        let up = async {
            if !within("reading the adapter's power state", adapter.is_powered()).await? {
                within("powering the adapter on", adapter.set_powered(true)).await?;
                tracing::info!(adapter = %name, "powered the Bluetooth adapter on");
            }
            let app = within(
                "registering the GATT application",
                adapter.serve_gatt_application(application(
                    &self.shared,
                    &self.session,
                    self.pairing,
                )),
            )
            .await?;
            let tag = *self.tag.borrow_and_update();
            let adv = within(
                "registering the LE advertisement",
                adapter.advertise(advertisement(tag, &self.config.local_name)),
            )
            .await?;
            Ok::<_, String>((app, adv))
        };
        let (app, adv) = up.await.map_err(Retry::Backoff)?;
        tracing::info!(adapter = %name, "BLE door service registered and advertising");
        self.state.send_replace(BleState::Up(name));
        self.reg = Some(Registration {
            adapter,
            _app: app,
            adv: Some(adv),
        });
        self.said_off = false;
        Ok(())
    }

    /// Drops the registration (which unregisters what is still registered) and every peer.
    async fn down(&mut self, reason: &str) {
        if let Some(reg) = self.reg.take() {
            tracing::warn!(adapter = %reg.adapter.name(), "BLE door service is down: {reason}");
        }
        self.shared.reset().await;
        self.state.send_replace(BleState::Off(reason.to_owned()));
    }

    async fn readvertise(&mut self) {
        let tag = *self.tag.borrow_and_update();
        let Some(reg) = self.reg.as_mut() else { return };
        // One advertisement at a time: the old one goes first.
        drop(reg.adv.take());
        let adv = advertisement(tag, &self.config.local_name);
        match within(
            "registering the LE advertisement",
            reg.adapter.advertise(adv),
        )
        .await
        {
            Ok(h) => reg.adv = Some(h),
            Err(e) => {
                self.down(&e).await;
            }
        }
    }

    async fn run(mut self) {
        let mut events = match within("watching BlueZ", self.session.events()).await {
            Ok(e) => e.boxed(),
            Err(e) => {
                tracing::info!("BLE is off: {e}; the node works over Wi-Fi");
                self.state.send_replace(BleState::Off(e));
                return;
            }
        };
        let mut backoff = Duration::from_secs(1);
        let mut retry_at = Some(Instant::now());
        loop {
            let wake = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.tag.changed() => {
                    if changed.is_err() {
                        break; // the radio was dropped
                    }
                    self.readvertise().await;
                    if self.reg.is_none() && retry_at.is_none() {
                        retry_at = Some(Instant::now() + backoff);
                    }
                }
                ev = events.next() => {
                    let Some(ev) = ev else {
                        tracing::warn!("lost BlueZ's events; BLE will not recover by itself");
                        events = futures_util::stream::pending().boxed();
                        continue;
                    };
                    let ours = self.reg.as_ref().map(|r| r.adapter.name().to_owned());
                    match ev {
                        // Announced again while registered: bluetoothd restarted (its old
                        // registrations died with it) or the adapter came back.
                        SessionEvent::AdapterAdded(a) if ours.as_deref() == Some(a.as_str()) => {
                            self.down(&format!("{a} was announced anew (bluetoothd restarted?)")).await;
                            backoff = Duration::from_secs(1);
                            retry_at = Some(Instant::now());
                        }
                        SessionEvent::AdapterAdded(_) if ours.is_none() => {
                            retry_at = Some(Instant::now());
                        }
                        SessionEvent::AdapterRemoved(a) if ours.as_deref() == Some(a.as_str()) => {
                            self.down(&format!("adapter {a} disappeared")).await;
                            retry_at = Some(Instant::now());
                        }
                        _ => {}
                    }
                }
                () = wake => {
                    retry_at = None;
                    if self.reg.is_none() {
                        match self.try_up().await {
                            Ok(()) => backoff = Duration::from_secs(1),
                            Err(Retry::Wait(reason)) => {
                                self.off(&reason);
                                retry_at = Some(Instant::now() + IDLE_RECHECK);
                            }
                            Err(Retry::Backoff(reason)) => {
                                self.off(&reason);
                                retry_at = Some(Instant::now() + backoff);
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            }
                        }
                    }
                }
            }
        }
        // Unregister while the runtime still runs.
        drop(self.reg.take());
        tokio::task::yield_now().await;
    }

    fn off(&mut self, reason: &str) {
        self.state.send_replace(BleState::Off(reason.to_owned()));
        if !self.said_off {
            tracing::info!(
                "BLE is off: {reason}; the door service starts when BlueZ and an adapter answer"
            );
            self.said_off = true;
        } else {
            tracing::debug!("BLE still off: {reason}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_choice_is_the_configured_one_or_the_first() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            choose_adapter(v(&["hci10", "hci2"]), None),
            Ok("hci2".into())
        );
        assert_eq!(
            choose_adapter(v(&["hci0", "hci1"]), Some("hci1")),
            Ok("hci1".into())
        );
        assert!(choose_adapter(v(&["hci0"]), Some("hci3")).is_err());
        assert!(choose_adapter(vec![], None).is_err());
    }

    #[test]
    fn local_name_fits_the_scan_response() {
        assert_eq!(fit_name("Front door"), "Front door");
        let long = "é".repeat(20); // 40 bytes
        let cut = fit_name(&long);
        assert!(cut.len() <= MAX_LOCAL_NAME && long.starts_with(&cut));
        assert_eq!(cut.len(), 28);
    }
}
