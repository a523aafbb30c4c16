//! The simulated radio: the adapters of one stand-in are in radio range of each other, so a
//! client using one adapter (a phone on `hci1`) sees what another registered (the gateway's
//! advertisement and GATT application on `hci0`) the way bluetoothd shows a remote LE device:
//!
//! - `Adapter1.SetDiscoveryFilter` / `StartDiscovery` / `StopDiscovery`: while an adapter
//!   discovers, every [`ADVERTISING_INTERVAL`] the advertisements of the other adapters in the
//!   same area that pass the merged filter appear as `/org/bluez/hciA/dev_XX_XX_…` objects with
//!   `org.bluez.Device1` (`Address`, `Name`, `Alias`, `RSSI`, `UUIDs`, `ManufacturerData`,
//!   `Connected`, `ServicesResolved`, …), announced with `InterfacesAdded`, seen again with a
//!   `PropertiesChanged(RSSI)`. When discovery stops the `RSSI` is invalidated (bluetoothd
//!   does the same), so a client can tell a device seen now from one remembered; devices are
//!   kept (bluetoothd with `TemporaryTimeout = 0`).
//! - `Device1.Connect`: a [`Link`] into the advertising adapter (the gateway sees a peer with
//!   this adapter's address), then `GattService1` / `GattCharacteristic1` objects mirroring the
//!   registered application (`UUID`, `Flags`, `Service`, `Device`, `Value`, `Notifying`,
//!   `MTU`), `Connected` and `ServicesResolved`. `ReadValue`, `WriteValue`, `StartNotify` and
//!   `StopNotify` are forwarded through the link as ATT operations; the application's
//!   notifications come back as `PropertiesChanged(Value)` on the characteristic.
//!   `Device1.Disconnect` cancels a pending connection attempt or ends the link (the GATT
//!   objects go with `InterfacesRemoved`, notify sessions end).
//! - Like bluetoothd, a client that leaves the bus loses its discovery and notify sessions,
//!   but not its connections; the stand-in counts such abandoned sessions so tests can tell a
//!   client that cleaned up from one that merely exited.
//!
//! For tests of a client's timeouts, an adapter can [withhold](Withhold) its advertisement,
//! connections, answers to reads or its notifications. [`Adapter::radio`] reports what is
//! open; [`Standin::serve_control`] exports the same controls as `org.latchkey.Sim1`.
//!
//! Not simulated: descriptors (the CCCD is written by `StartNotify`), pairing, long writes,
//! signal strength changes, BR/EDR.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use zbus::message::Header;
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use crate::state::{AdapterState, AdvInfo};
use crate::{lock, Adapter, Error, Inner, Link, Standin, WriteOptions};

/// How often a discovering adapter hears the advertisements in range.
pub const ADVERTISING_INTERVAL: Duration = Duration::from_millis(100);
/// The ATT MTU of simulated connections (what a phone requests, PROTOCOL.md §3), unless the
/// central's adapter was given another ([`Adapter::set_att_mtu`]).
pub const ATT_MTU: u16 = 185;
/// How long a connection attempt or an ATT request stays unanswered before the stack gives
/// up (BlueZ: the ATT transaction timeout, 30 s).
pub const GIVE_UP: Duration = Duration::from_secs(30);
/// The object path of the control interface.
pub const CONTROL_PATH: &str = "/org/latchkey/sim";

const DEVICE_IFACE: &str = "org.bluez.Device1";
const ADAPTER_IFACE: &str = "org.bluez.Adapter1";
const CHAR_IFACE: &str = "org.bluez.GattCharacteristic1";

/// What an adapter can hold back, to make a client's stage time out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Withhold {
    /// Its advertisement: scanners do not see it.
    Device,
    /// Connections to it: `Connect` does not complete.
    Connection,
    /// Answers to reads of its characteristics (the challenge): `ReadValue` does not complete.
    Challenge,
    /// Its notifications (the result): they are not delivered.
    Result,
}

impl std::str::FromStr for Withhold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "device" => Ok(Self::Device),
            "connection" => Ok(Self::Connection),
            "challenge" => Ok(Self::Challenge),
            "result" => Ok(Self::Result),
            _ => Err(format!(
                "{s:?}: expected device, connection, challenge or result"
            )),
        }
    }
}

/// bluetoothd's error names, as a phone-side client sees them.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.bluez.Error")]
pub enum RadioError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Failed(String),
    NotReady(String),
    InProgress(String),
    AlreadyConnected(String),
    NotConnected(String),
    NotSupported(String),
    NotPermitted(String),
    InvalidArguments(String),
    InvalidValueLength(String),
    InvalidOffset(String),
    DoesNotExist(String),
}

impl From<Error> for RadioError {
    /// What the peer's application answered, as bluetoothd would relay it.
    fn from(e: Error) -> Self {
        match e {
            Error::Call { name, message } => match name.rsplit('.').next().unwrap_or_default() {
                "NotPermitted" => Self::NotPermitted(message),
                "InvalidValueLength" => Self::InvalidValueLength(message),
                "InvalidOffset" => Self::InvalidOffset(message),
                "NotSupported" => Self::NotSupported(message),
                _ => Self::Failed(message),
            },
            Error::Timeout(what) => Self::Failed(format!("ATT timeout: {what}")),
            other => Self::Failed(other.to_string()),
        }
    }
}

/// Counters a test can read after the fact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RadioStats {
    /// Connections this adapter made as a central.
    pub connections_made: u64,
    /// ATT operations of each finished connection, oldest first.
    pub closed_att_ops: Vec<u32>,
    /// Discovery and notify sessions that ended only because their client left the bus
    /// without stopping them.
    pub abandoned_sessions: u64,
    /// Notifications of this adapter's application that were withheld.
    pub withheld_notifications: u64,
}

/// One connection this adapter has (or is attempting) as a central.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionReport {
    /// The peer adapter's name (`hci0`).
    pub peer: String,
    /// The peer's address as this adapter shows it.
    pub address: String,
    /// False while the attempt is pending.
    pub connected: bool,
    /// ATT operations so far.
    pub att_ops: u32,
    /// Notify sessions open on the peer's characteristics.
    pub notify_sessions: usize,
}

/// What is open on an adapter's radio right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RadioReport {
    pub discovering: bool,
    /// Remote device objects this adapter shows (seen now or remembered).
    pub devices: Vec<String>,
    pub connections: Vec<ConnectionReport>,
    /// Adapters connected to this one (it is their peripheral).
    pub inbound: Vec<String>,
    pub stats: RadioStats,
}

impl RadioReport {
    /// Nothing open: no discovery, no connection either way, no notify session.
    pub fn is_idle(&self) -> bool {
        !self.discovering && self.connections.is_empty() && self.inbound.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
struct Filter {
    /// Lower-case UUIDs; empty: any.
    uuids: Vec<String>,
    transport: String,
}

impl Filter {
    fn parse(dict: &HashMap<String, OwnedValue>) -> Result<Self, RadioError> {
        let mut f = Filter::default();
        for (k, v) in dict {
            match k.as_str() {
                "UUIDs" => {
                    let list = v
                        .try_clone()
                        .ok()
                        .and_then(|v| Vec::<String>::try_from(v).ok())
                        .ok_or_else(|| RadioError::InvalidArguments("UUIDs: as".into()))?;
                    f.uuids = list.into_iter().map(|u| u.to_ascii_lowercase()).collect();
                }
                "Transport" => {
                    let t = v
                        .try_clone()
                        .ok()
                        .and_then(|v| String::try_from(v).ok())
                        .ok_or_else(|| RadioError::InvalidArguments("Transport: s".into()))?;
                    if !["auto", "le", "bredr"].contains(&t.as_str()) {
                        return Err(RadioError::InvalidArguments(format!("Transport {t:?}")));
                    }
                    f.transport = t;
                }
                "RSSI" | "Pathloss" | "DuplicateData" | "Discoverable" | "Pattern" => {}
                other => {
                    return Err(RadioError::InvalidArguments(format!(
                        "unknown filter {other:?}"
                    )))
                }
            }
        }
        Ok(f)
    }

    fn accepts(&self, adv: &AdvInfo) -> bool {
        self.transport != "bredr"
            && (self.uuids.is_empty()
                || adv
                    .service_uuids
                    .iter()
                    .any(|u| self.uuids.contains(&u.to_ascii_lowercase())))
    }
}

/// Per-adapter radio state (a field of [`AdapterState`]).
#[derive(Default)]
pub struct RadioState {
    inner: Mutex<RadioInner>,
    watcher: OnceLock<()>,
}

#[derive(Default)]
struct RadioInner {
    area: String,
    /// The ATT MTU this adapter's connections get as a central (`None`: [`ATT_MTU`]).
    att_mtu: Option<u16>,
    withheld: HashSet<Withhold>,
    discovery_clients: HashSet<String>,
    filters: HashMap<String, Filter>,
    scanner: Option<AbortHandle>,
    /// The remote devices this adapter shows, by address.
    devices: HashMap<String, Arc<Remote>>,
    /// Adapters connected into this one.
    inbound: Vec<String>,
    stats: RadioStats,
}

impl RadioState {
    pub fn discovering(&self) -> bool {
        !lock(&self.inner).discovery_clients.is_empty()
    }

    fn withheld(&self, w: Withhold) -> bool {
        lock(&self.inner).withheld.contains(&w)
    }

    fn area(&self) -> String {
        lock(&self.inner).area.clone()
    }

    /// Whether the merged discovery filter lets `adv` through.
    fn accepts(&self, adv: &AdvInfo) -> bool {
        let r = lock(&self.inner);
        r.discovery_clients
            .iter()
            .any(|c| r.filters.get(c).is_none_or(|f: &Filter| f.accepts(adv)))
    }
}

/// A remote device as one adapter shows it.
struct Remote {
    path: String,
    adapter_path: String,
    address: String,
    /// The adapter that advertised it.
    peer: String,
    name: Option<String>,
    uuids: Vec<String>,
    /// The advertisement's manufacturer data, as bluetoothd shows it (`ManufacturerData`).
    manufacturer_data: std::collections::BTreeMap<u16, Vec<u8>>,
    rssi: i16,
    state: Mutex<RemoteState>,
}

#[derive(Default)]
struct RemoteState {
    /// Heard during the current discovery (the `RSSI` property exists).
    seen: bool,
    link: LinkState,
}

#[derive(Default)]
enum LinkState {
    #[default]
    Down,
    /// The sender cancels the attempt.
    Connecting(watch::Sender<bool>),
    Up(Arc<Connection>),
}

/// A live connection from a central adapter to a peer, with its mirrored GATT objects.
struct Connection {
    phone: Arc<AdapterState>,
    peer: Arc<AdapterState>,
    link: Mutex<Option<Arc<Link>>>,
    /// Set when the connection ends: pending operations give up.
    closed: watch::Sender<bool>,
    services: Vec<String>,
    chars: Vec<Arc<CharState>>,
    pump: Mutex<Option<JoinHandle<()>>>,
}

impl Connection {
    fn link(&self) -> Result<Arc<Link>, RadioError> {
        lock(&self.link)
            .clone()
            .ok_or_else(|| RadioError::NotConnected("Not Connected".into()))
    }

    fn notify_sessions(&self) -> usize {
        self.chars
            .iter()
            .map(|c| lock(&c.notify_clients).len())
            .sum()
    }
}

/// A mirrored characteristic.
struct CharState {
    path: String,
    /// The application's object path of the characteristic.
    app_path: String,
    uuid: String,
    flags: Vec<String>,
    service: String,
    value: Mutex<Vec<u8>>,
    notify_clients: Mutex<HashSet<String>>,
}

impl CharState {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// Resolves when `rx` says true (or its sender is gone).
async fn fired(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn properties_changed(
    conn: &zbus::Connection,
    path: &str,
    iface: &'static str,
    changed: HashMap<&str, Value<'_>>,
    invalidated: &[&str],
) {
    let Ok(emitter) = SignalEmitter::new(conn, path) else {
        return;
    };
    let _ = zbus::fdo::Properties::properties_changed(
        &emitter,
        InterfaceName::from_static_str_unchecked(iface),
        changed,
        Cow::Borrowed(invalidated),
    )
    .await;
}

fn sender(hdr: &Header<'_>) -> Result<String, RadioError> {
    hdr.sender()
        .map(|s| s.to_string())
        .ok_or_else(|| RadioError::Failed("no sender".into()))
}

fn option<T: TryFrom<OwnedValue>>(opts: &HashMap<String, OwnedValue>, key: &str) -> Option<T> {
    opts.get(key)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| T::try_from(v).ok())
}

fn standin(weak: &Weak<Inner>) -> Result<Standin, RadioError> {
    weak.upgrade()
        .map(|inner| Standin { inner })
        .ok_or_else(|| RadioError::Failed("the stand-in is stopping".into()))
}

/// The advertisement `peer` sends that `me` can hear, if any.
fn audible(me: &AdapterState, peer: &AdapterState) -> Option<AdvInfo> {
    if std::ptr::eq(me, peer)
        || !peer.powered.load(Ordering::SeqCst)
        || peer.radio.withheld(Withhold::Device)
        || peer.radio.area() != me.radio.area()
    {
        return None;
    }
    peer.current_adv()
}

/// A deterministic signal strength per pair of adapters.
fn rssi(me: &AdapterState, peer: &AdapterState) -> i16 {
    let last = |a: &str| {
        a.rsplit(':')
            .next()
            .and_then(|b| i16::from_str_radix(b, 16).ok())
            .unwrap_or(0)
    };
    -45 - (last(&me.address) - last(&peer.address)).abs() % 8 * 3
}

// ------------------------------------------------------------------------------------------
// Adapter1 methods (called from objects.rs)
// ------------------------------------------------------------------------------------------

pub(crate) async fn start_discovery(
    weak: &Weak<Inner>,
    me: &Arc<AdapterState>,
    conn: &zbus::Connection,
    hdr: &Header<'_>,
) -> Result<(), RadioError> {
    let client = sender(hdr)?;
    let standin = standin(weak)?;
    if !me.powered.load(Ordering::SeqCst) {
        return Err(RadioError::NotReady("Resource Not Ready".into()));
    }
    watch_clients(me, conn).await;
    let first = {
        let mut r = lock(&me.radio.inner);
        if !r.discovery_clients.insert(client) {
            return Err(RadioError::InProgress(
                "Operation already in progress".into(),
            ));
        }
        r.discovery_clients.len() == 1
    };
    if first {
        properties_changed(
            conn,
            &me.path(),
            ADAPTER_IFACE,
            HashMap::from([("Discovering", Value::from(true))]),
            &[],
        )
        .await;
        let (me2, conn2) = (me.clone(), conn.clone());
        let task = tokio::spawn(async move {
            loop {
                hear(&standin, &me2, &conn2).await;
                tokio::time::sleep(ADVERTISING_INTERVAL).await;
            }
        });
        if let Some(old) = lock(&me.radio.inner).scanner.replace(task.abort_handle()) {
            old.abort();
        }
    }
    Ok(())
}

pub(crate) async fn stop_discovery(
    me: &Arc<AdapterState>,
    conn: &zbus::Connection,
    hdr: &Header<'_>,
) -> Result<(), RadioError> {
    let client = sender(hdr)?;
    if !lock(&me.radio.inner).discovery_clients.contains(&client) {
        return Err(RadioError::Failed("No discovery started".into()));
    }
    end_discovery(me, conn, &client).await;
    Ok(())
}

async fn end_discovery(me: &Arc<AdapterState>, conn: &zbus::Connection, client: &str) {
    let (last, seen) = {
        let mut r = lock(&me.radio.inner);
        if !r.discovery_clients.remove(client) {
            return;
        }
        r.filters.remove(client);
        if !r.discovery_clients.is_empty() {
            return;
        }
        if let Some(s) = r.scanner.take() {
            s.abort();
        }
        let seen: Vec<String> = r
            .devices
            .values()
            .filter(|d| std::mem::take(&mut lock(&d.state).seen))
            .map(|d| d.path.clone())
            .collect();
        (true, seen)
    };
    if last {
        for path in seen {
            properties_changed(conn, &path, DEVICE_IFACE, HashMap::new(), &["RSSI"]).await;
        }
        properties_changed(
            conn,
            &me.path(),
            ADAPTER_IFACE,
            HashMap::from([("Discovering", Value::from(false))]),
            &[],
        )
        .await;
    }
}

pub(crate) fn set_discovery_filter(
    me: &AdapterState,
    hdr: &Header<'_>,
    dict: &HashMap<String, OwnedValue>,
) -> Result<(), RadioError> {
    let client = sender(hdr)?;
    let filter = Filter::parse(dict)?;
    let mut r = lock(&me.radio.inner);
    if dict.is_empty() {
        r.filters.remove(&client);
    } else {
        r.filters.insert(client, filter);
    }
    Ok(())
}

pub(crate) async fn remove_device(
    me: &Arc<AdapterState>,
    conn: &zbus::Connection,
    path: &str,
) -> Result<(), RadioError> {
    let remote = {
        let mut r = lock(&me.radio.inner);
        let key = r
            .devices
            .iter()
            .find(|(_, d)| d.path == path)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| RadioError::DoesNotExist("Does Not Exist".into()))?;
        r.devices.remove(&key)
    };
    if let Some(remote) = remote {
        disconnect(&remote, conn).await;
        let _ = conn
            .object_server()
            .remove::<RemoteDevice, _>(remote.path.as_str())
            .await;
    }
    Ok(())
}

/// One advertising interval: what `me` hears now.
async fn hear(standin: &Standin, me: &Arc<AdapterState>, conn: &zbus::Connection) {
    let peers: Vec<Arc<AdapterState>> = lock(&standin.inner.adapters).values().cloned().collect();
    for peer in peers {
        let Some(adv) = audible(me, &peer) else {
            continue;
        };
        if !me.radio.accepts(&adv) {
            continue;
        }
        let (remote, new, newly_seen) = {
            let mut r = lock(&me.radio.inner);
            let mut new = false;
            let remote = r
                .devices
                .entry(peer.address.clone())
                .or_insert_with(|| {
                    new = true;
                    Arc::new(Remote {
                        path: format!("{}/dev_{}", me.path(), peer.address.replace(':', "_")),
                        adapter_path: me.path(),
                        address: peer.address.clone(),
                        peer: peer.name.clone(),
                        name: adv.local_name.clone(),
                        uuids: adv.service_uuids.clone(),
                        manufacturer_data: adv.manufacturer_data.clone(),
                        rssi: rssi(me, &peer),
                        state: Mutex::new(RemoteState::default()),
                    })
                })
                .clone();
            let newly_seen = !std::mem::replace(&mut lock(&remote.state).seen, true);
            (remote, new, newly_seen)
        };
        if new {
            let object = RemoteDevice {
                remote: remote.clone(),
                standin: Arc::downgrade(&standin.inner),
            };
            let _ = conn.object_server().at(remote.path.as_str(), object).await;
        } else if newly_seen {
            properties_changed(
                conn,
                &remote.path,
                DEVICE_IFACE,
                HashMap::from([("RSSI", Value::from(remote.rssi))]),
                &[],
            )
            .await;
        }
    }
}

/// Like bluetoothd, end the discovery and notify sessions of clients that leave the bus.
async fn watch_clients(me: &Arc<AdapterState>, conn: &zbus::Connection) {
    if me.radio.watcher.set(()).is_err() {
        return;
    }
    let Ok(dbus) = zbus::fdo::DBusProxy::new(conn).await else {
        return;
    };
    let Ok(mut changes) = dbus.receive_name_owner_changed().await else {
        return;
    };
    let (me, conn) = (me.clone(), conn.clone());
    tokio::spawn(async move {
        while let Some(sig) = changes.next().await {
            let Ok(args) = sig.args() else { continue };
            let name = args.name().to_string();
            if name.starts_with(':') && args.new_owner().is_none() {
                client_left(&me, &conn, &name).await;
            }
        }
    });
}

async fn client_left(me: &Arc<AdapterState>, conn: &zbus::Connection, client: &str) {
    let discovering = lock(&me.radio.inner).discovery_clients.contains(client);
    if discovering {
        lock(&me.radio.inner).stats.abandoned_sessions += 1;
        end_discovery(me, conn, client).await;
    }
    lock(&me.radio.inner).filters.remove(client);
    let connections: Vec<Arc<Connection>> = lock(&me.radio.inner)
        .devices
        .values()
        .filter_map(|d| match &lock(&d.state).link {
            LinkState::Up(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    for c in connections {
        for ch in &c.chars {
            let (had, last) = {
                let mut clients = lock(&ch.notify_clients);
                (clients.remove(client), clients.is_empty())
            };
            if had {
                lock(&me.radio.inner).stats.abandoned_sessions += 1;
                if last {
                    end_notify(&c, ch, conn).await;
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Connections
// ------------------------------------------------------------------------------------------

/// Waits until the peer can be connected to: it advertises, in range, and accepts.
async fn reachable(standin: &Standin, remote: &Remote, me: &AdapterState) -> Arc<AdapterState> {
    loop {
        let peer = lock(&standin.inner.adapters).get(&remote.peer).cloned();
        if let Some(peer) = peer {
            if audible(me, &peer).is_some() && !peer.radio.withheld(Withhold::Connection) {
                return peer;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(
    weak: &Weak<Inner>,
    remote: &Arc<Remote>,
    conn: &zbus::Connection,
) -> Result<(), RadioError> {
    let standin = standin(weak)?;
    let me = lock(&standin.inner.adapters)
        .values()
        .find(|a| a.path() == remote.adapter_path)
        .cloned()
        .ok_or_else(|| RadioError::Failed("adapter gone".into()))?;
    let cancelled = {
        let mut st = lock(&remote.state);
        match st.link {
            LinkState::Up(_) => {
                return Err(RadioError::AlreadyConnected("Already Connected".into()))
            }
            LinkState::Connecting(_) => return Err(RadioError::InProgress("In Progress".into())),
            LinkState::Down => {}
        }
        let (tx, rx) = watch::channel(false);
        st.link = LinkState::Connecting(tx);
        rx
    };
    let reset = || {
        let mut st = lock(&remote.state);
        if matches!(st.link, LinkState::Connecting(_)) {
            st.link = LinkState::Down;
        }
    };
    let peer = tokio::select! {
        p = tokio::time::timeout(GIVE_UP, reachable(&standin, remote, &me)) => match p {
            Ok(p) => p,
            Err(_) => {
                reset();
                return Err(RadioError::Failed("le-connection-abort-by-local".into()));
            }
        },
        _ = fired(cancelled) => {
            reset();
            return Err(RadioError::Failed("Operation was cancelled".into()));
        }
    };
    let connection = match establish(&standin, remote, &me, &peer, conn).await {
        Ok(c) => c,
        Err(e) => {
            reset();
            return Err(e);
        }
    };
    let up = {
        let mut st = lock(&remote.state);
        if matches!(st.link, LinkState::Connecting(_)) {
            st.link = LinkState::Up(connection.clone());
            true
        } else {
            false
        }
    };
    if !up {
        teardown(&connection, conn).await;
        return Err(RadioError::Failed("Operation was cancelled".into()));
    }
    lock(&me.radio.inner).stats.connections_made += 1;
    lock(&peer.radio.inner).inbound.push(me.name.clone());
    properties_changed(
        conn,
        &remote.path,
        DEVICE_IFACE,
        HashMap::from([("Connected", Value::from(true))]),
        &[],
    )
    .await;
    properties_changed(
        conn,
        &remote.path,
        DEVICE_IFACE,
        HashMap::from([("ServicesResolved", Value::from(true))]),
        &[],
    )
    .await;
    let pump = tokio::spawn(pump(connection.clone(), conn.clone()));
    *lock(&connection.pump) = Some(pump);
    Ok(())
}

/// Opens the link and mirrors the peer's GATT application under the device.
async fn establish(
    standin: &Standin,
    remote: &Remote,
    me: &Arc<AdapterState>,
    peer: &Arc<AdapterState>,
    conn: &zbus::Connection,
) -> Result<Arc<Connection>, RadioError> {
    let gateway = Adapter {
        standin: standin.clone(),
        state: peer.clone(),
    };
    let mtu = lock(&me.radio.inner).att_mtu.unwrap_or(ATT_MTU);
    let link = gateway.connect(&me.address, mtu).await?;
    let device = OwnedObjectPath::try_from(remote.path.clone())
        .map_err(|e| RadioError::Failed(e.to_string()))?;
    let mut services = Vec::new();
    let mut chars = Vec::new();
    let mut handle: u16 = 0x000a;
    let mut objects: Vec<(String, RemoteService)> = Vec::new();
    for s in &link.app.services {
        let service_path = format!("{}/service{handle:04x}", remote.path);
        objects.push((
            service_path.clone(),
            RemoteService {
                uuid: s.uuid.clone(),
                primary: s.primary,
                device: device.clone(),
                handle,
            },
        ));
        services.push(service_path.clone());
        handle += 1;
        for c in link
            .app
            .characteristics
            .iter()
            .filter(|c| c.service == s.path)
        {
            chars.push(Arc::new(CharState {
                path: format!("{service_path}/char{handle:04x}"),
                app_path: c.path.clone(),
                uuid: c.uuid.clone(),
                flags: c.flags.clone(),
                service: service_path.clone(),
                value: Mutex::new(Vec::new()),
                notify_clients: Mutex::new(HashSet::new()),
            }));
            let notifies = c.flags.iter().any(|f| f == "notify" || f == "indicate");
            handle += if notifies { 3 } else { 2 };
        }
    }
    let connection = Arc::new(Connection {
        phone: me.clone(),
        peer: peer.clone(),
        link: Mutex::new(Some(Arc::new(link))),
        closed: watch::channel(false).0,
        services,
        chars,
        pump: Mutex::new(None),
    });
    let server = conn.object_server();
    let mut registered = Ok(());
    for (path, object) in objects {
        if let Err(e) = server.at(path.as_str(), object).await {
            registered = Err(e);
        }
    }
    for ch in &connection.chars {
        let object = RemoteChar {
            ch: ch.clone(),
            conn: connection.clone(),
        };
        if let Err(e) = server.at(ch.path.as_str(), object).await {
            registered = Err(e);
        }
    }
    if let Err(e) = registered {
        teardown(&connection, conn).await;
        return Err(RadioError::Failed(format!("GATT objects: {e}")));
    }
    Ok(connection)
}

/// Carries the peer's notifications to the mirrored characteristics.
async fn pump(c: Arc<Connection>, conn: zbus::Connection) {
    let Ok(link) = c.link() else { return };
    let closed = fired(c.closed.subscribe());
    tokio::pin!(closed);
    loop {
        let next = async { link.rx.lock().await.recv().await };
        let received = tokio::select! {
            n = next => n,
            _ = &mut closed => None,
        };
        let Some((app_path, value)) = received else {
            return;
        };
        let Some(ch) = c.chars.iter().find(|ch| ch.app_path == app_path) else {
            continue;
        };
        if c.peer.radio.withheld(Withhold::Result) {
            lock(&c.peer.radio.inner).stats.withheld_notifications += 1;
            continue;
        }
        value_changed(ch, value, &conn).await;
    }
}

async fn value_changed(ch: &CharState, value: Vec<u8>, conn: &zbus::Connection) {
    lock(&ch.value).clone_from(&value);
    properties_changed(
        conn,
        &ch.path,
        CHAR_IFACE,
        HashMap::from([("Value", Value::from(value))]),
        &[],
    )
    .await;
}

/// Ends an attempt or a connection; the device object stays.
async fn disconnect(remote: &Remote, conn: &zbus::Connection) -> bool {
    let previous = std::mem::take(&mut lock(&remote.state).link);
    match previous {
        LinkState::Down => false,
        LinkState::Connecting(cancel) => {
            cancel.send_replace(true);
            true
        }
        LinkState::Up(c) => {
            teardown(&c, conn).await;
            for (prop, invalidated) in [("ServicesResolved", false), ("Connected", false)] {
                properties_changed(
                    conn,
                    &remote.path,
                    DEVICE_IFACE,
                    HashMap::from([(prop, Value::from(invalidated))]),
                    &[],
                )
                .await;
            }
            true
        }
    }
}

/// Closes a connection: pending operations end, the mirrored objects go, the link
/// disconnects (the peer's application sees its subscriptions end and the peer go).
async fn teardown(c: &Arc<Connection>, conn: &zbus::Connection) {
    c.closed.send_replace(true);
    let pump = lock(&c.pump).take();
    if let Some(pump) = pump {
        pump.abort();
        let _ = pump.await;
    }
    let server = conn.object_server();
    for ch in c.chars.iter().rev() {
        lock(&ch.notify_clients).clear();
        let _ = server.remove::<RemoteChar, _>(ch.path.as_str()).await;
    }
    for s in c.services.iter().rev() {
        let _ = server.remove::<RemoteService, _>(s.as_str()).await;
    }
    let taken = lock(&c.link).take();
    if let Some(mut link) = taken {
        // Operations that were cancelled let go of the link within a few polls.
        for _ in 0..500 {
            match Arc::try_unwrap(link) {
                Ok(l) => {
                    let ops = l.att_ops();
                    let _ = l.disconnect().await;
                    lock(&c.phone.radio.inner).stats.closed_att_ops.push(ops);
                    break;
                }
                Err(shared) => {
                    link = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    let mut peer = lock(&c.peer.radio.inner);
    if let Some(i) = peer.inbound.iter().position(|n| *n == c.phone.name) {
        peer.inbound.remove(i);
    }
}

/// The last notify session on `ch` ended: disable notifications at the peer.
async fn end_notify(c: &Connection, ch: &CharState, conn: &zbus::Connection) {
    if let Ok(link) = c.link() {
        let _ = link.unsubscribe(&ch.uuid).await;
    }
    properties_changed(
        conn,
        &ch.path,
        CHAR_IFACE,
        HashMap::from([("Notifying", Value::from(false))]),
        &[],
    )
    .await;
}

// ------------------------------------------------------------------------------------------
// The phone-side objects
// ------------------------------------------------------------------------------------------

/// `org.bluez.Device1` of a remote device, as the central adapter shows it.
struct RemoteDevice {
    remote: Arc<Remote>,
    standin: Weak<Inner>,
}

#[zbus::interface(name = "org.bluez.Device1")]
impl RemoteDevice {
    async fn connect(&self, #[zbus(connection)] conn: &zbus::Connection) -> Result<(), RadioError> {
        connect(&self.standin, &self.remote, conn).await
    }

    async fn disconnect(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), RadioError> {
        if disconnect(&self.remote, conn).await {
            Ok(())
        } else {
            Err(RadioError::NotConnected("Not Connected".into()))
        }
    }

    fn connect_profile(&self, _uuid: String) -> Result<(), RadioError> {
        Err(RadioError::NotSupported(
            "Operation is not supported".into(),
        ))
    }

    fn disconnect_profile(&self, _uuid: String) -> Result<(), RadioError> {
        Err(RadioError::NotSupported(
            "Operation is not supported".into(),
        ))
    }

    fn pair(&self) -> Result<(), RadioError> {
        Err(RadioError::NotSupported(
            "the simulated radio does not pair".into(),
        ))
    }

    fn cancel_pairing(&self) -> Result<(), RadioError> {
        Err(RadioError::DoesNotExist("Does Not Exist".into()))
    }

    #[zbus(property)]
    fn address(&self) -> String {
        self.remote.address.clone()
    }
    #[zbus(property)]
    fn address_type(&self) -> String {
        "public".into()
    }
    #[zbus(property)]
    fn name(&self) -> zbus::fdo::Result<String> {
        self.remote
            .name
            .clone()
            .ok_or_else(|| zbus::fdo::Error::InvalidArgs("No such property 'Name'".into()))
    }
    #[zbus(property)]
    fn alias(&self) -> String {
        self.remote
            .name
            .clone()
            .unwrap_or_else(|| self.remote.address.replace(':', "-"))
    }
    #[zbus(property)]
    fn adapter(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(self.remote.adapter_path.clone()).unwrap_or_default()
    }
    #[zbus(property, name = "RSSI")]
    fn rssi(&self) -> zbus::fdo::Result<i16> {
        if lock(&self.remote.state).seen {
            Ok(self.remote.rssi)
        } else {
            Err(zbus::fdo::Error::InvalidArgs(
                "No such property 'RSSI'".into(),
            ))
        }
    }
    #[zbus(property, name = "UUIDs")]
    fn uuids(&self) -> Vec<String> {
        self.remote.uuids.clone()
    }
    /// Present only when the advertisement carried some, as with bluetoothd.
    #[zbus(property)]
    fn manufacturer_data(&self) -> zbus::fdo::Result<HashMap<u16, OwnedValue>> {
        if self.remote.manufacturer_data.is_empty() {
            return Err(zbus::fdo::Error::InvalidArgs(
                "No such property 'ManufacturerData'".into(),
            ));
        }
        self.remote
            .manufacturer_data
            .iter()
            .map(|(k, v)| {
                OwnedValue::try_from(Value::from(v.clone()))
                    .map(|v| (*k, v))
                    .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
            })
            .collect()
    }
    #[zbus(property)]
    fn connected(&self) -> bool {
        matches!(lock(&self.remote.state).link, LinkState::Up(_))
    }
    #[zbus(property)]
    fn services_resolved(&self) -> bool {
        self.connected()
    }
    #[zbus(property)]
    fn paired(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn bonded(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn trusted(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn blocked(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn legacy_pairing(&self) -> bool {
        false
    }
}

/// `org.bluez.GattService1` of a connected remote device.
struct RemoteService {
    uuid: String,
    primary: bool,
    device: OwnedObjectPath,
    handle: u16,
}

#[zbus::interface(name = "org.bluez.GattService1")]
impl RemoteService {
    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        self.uuid.clone()
    }
    #[zbus(property)]
    fn primary(&self) -> bool {
        self.primary
    }
    #[zbus(property)]
    fn device(&self) -> OwnedObjectPath {
        self.device.clone()
    }
    #[zbus(property)]
    fn includes(&self) -> Vec<OwnedObjectPath> {
        Vec::new()
    }
    #[zbus(property)]
    fn handle(&self) -> u16 {
        self.handle
    }
}

/// `org.bluez.GattCharacteristic1` of a connected remote device; each method is one ATT
/// operation through the link.
struct RemoteChar {
    ch: Arc<CharState>,
    conn: Arc<Connection>,
}

impl RemoteChar {
    /// Runs `op` unless the connection ends first or the ATT timeout passes.
    async fn att<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, RadioError>>,
    ) -> Result<T, RadioError> {
        tokio::select! {
            r = tokio::time::timeout(GIVE_UP, op) => {
                r.unwrap_or_else(|_| Err(RadioError::Failed("ATT timeout".into())))
            }
            _ = fired(self.conn.closed.subscribe()) => {
                Err(RadioError::NotConnected("Not Connected".into()))
            }
        }
    }
}

#[zbus::interface(name = "org.bluez.GattCharacteristic1")]
impl RemoteChar {
    async fn read_value(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<Vec<u8>, RadioError> {
        if !self.ch.has("read") {
            return Err(RadioError::NotPermitted("Read not permitted".into()));
        }
        let offset: u16 = option(&options, "offset").unwrap_or(0);
        let link = self.conn.link()?;
        let withheld = self.conn.peer.radio.withheld(Withhold::Challenge);
        let value = self
            .att(async {
                if withheld {
                    std::future::pending::<()>().await;
                }
                Ok(link.read(&self.ch.uuid, offset).await?)
            })
            .await?;
        drop(link);
        value_changed(&self.ch, value.clone(), conn).await;
        Ok(value)
    }

    async fn write_value(
        &self,
        value: Vec<u8>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(), RadioError> {
        let requested: Option<String> = option(&options, "type");
        // bluetoothd's choice of ATT procedure.
        let kind: &'static str = match requested.as_deref() {
            Some("reliable") => "reliable",
            Some("request") => "request",
            Some("command") => "command",
            Some(other) => return Err(RadioError::InvalidArguments(format!("type {other:?}"))),
            None if self.ch.has("reliable-write") => "reliable",
            None if self.ch.has("write") => "request",
            None if self.ch.has("write-without-response") => "command",
            None => return Err(RadioError::NotPermitted("Write not permitted".into())),
        };
        if !["write", "write-without-response", "reliable-write"]
            .iter()
            .any(|f| self.ch.has(f))
        {
            return Err(RadioError::NotPermitted("Write not permitted".into()));
        }
        let w = WriteOptions {
            offset: option(&options, "offset").unwrap_or(0),
            kind,
            prepare_authorize: option(&options, "prepare-authorize").unwrap_or(false),
        };
        let link = self.conn.link()?;
        if kind == "command" {
            // A write command has no response: whatever the peer makes of it is not heard.
            let uuid = self.ch.uuid.clone();
            tokio::spawn(async move {
                let _ = link.write_with(&uuid, &value, w).await;
            });
            return Ok(());
        }
        self.att(async { Ok(link.write_with(&self.ch.uuid, &value, w).await?) })
            .await
    }

    async fn start_notify(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), RadioError> {
        if !(self.ch.has("notify") || self.ch.has("indicate")) {
            return Err(RadioError::NotSupported(
                "Operation is not supported".into(),
            ));
        }
        let client = sender(&hdr)?;
        watch_clients(&self.conn.phone, conn).await;
        let first = {
            let clients = lock(&self.ch.notify_clients);
            if clients.contains(&client) {
                return Err(RadioError::InProgress(
                    "Operation already in progress".into(),
                ));
            }
            clients.is_empty()
        };
        if first {
            let link = self.conn.link()?;
            self.att(async { Ok(link.subscribe(&self.ch.uuid).await?) })
                .await?;
        }
        lock(&self.ch.notify_clients).insert(client);
        if first {
            properties_changed(
                conn,
                &self.ch.path,
                CHAR_IFACE,
                HashMap::from([("Notifying", Value::from(true))]),
                &[],
            )
            .await;
        }
        Ok(())
    }

    async fn stop_notify(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), RadioError> {
        let client = sender(&hdr)?;
        let last = {
            let mut clients = lock(&self.ch.notify_clients);
            if !clients.remove(&client) {
                return Err(RadioError::Failed("No notify session started".into()));
            }
            clients.is_empty()
        };
        if last {
            end_notify(&self.conn, &self.ch, conn).await;
        }
        Ok(())
    }

    fn acquire_write(
        &self,
        _options: HashMap<String, OwnedValue>,
    ) -> Result<(zbus::zvariant::OwnedFd, u16), RadioError> {
        Err(RadioError::NotSupported(
            "Operation is not supported".into(),
        ))
    }

    fn acquire_notify(
        &self,
        _options: HashMap<String, OwnedValue>,
    ) -> Result<(zbus::zvariant::OwnedFd, u16), RadioError> {
        Err(RadioError::NotSupported(
            "Operation is not supported".into(),
        ))
    }

    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        self.ch.uuid.clone()
    }
    #[zbus(property)]
    fn service(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(self.ch.service.clone()).unwrap_or_default()
    }
    #[zbus(property)]
    fn value(&self) -> Vec<u8> {
        lock(&self.ch.value).clone()
    }
    #[zbus(property)]
    fn notifying(&self) -> zbus::fdo::Result<bool> {
        if self.ch.has("notify") || self.ch.has("indicate") {
            Ok(!lock(&self.ch.notify_clients).is_empty())
        } else {
            Err(zbus::fdo::Error::InvalidArgs(
                "No such property 'Notifying'".into(),
            ))
        }
    }
    #[zbus(property)]
    fn flags(&self) -> Vec<String> {
        self.ch.flags.clone()
    }
    #[zbus(property, name = "MTU")]
    fn mtu(&self) -> u16 {
        self.conn.link().map_or(ATT_MTU, |l| l.mtu)
    }
}

// ------------------------------------------------------------------------------------------
// Controls: in-process and over D-Bus
// ------------------------------------------------------------------------------------------

impl Adapter {
    /// The ATT MTU of the connections this adapter makes as a central from now on (a phone
    /// that requests more than [`ATT_MTU`], e.g. Android's 247).
    pub fn set_att_mtu(&self, mtu: u16) {
        lock(&self.state.radio.inner).att_mtu = Some(mtu);
    }

    /// Puts the adapter in an area: adapters hear only those in the same area (default: the
    /// empty name), so parallel tests do not see each other's gateways.
    pub fn set_area(&self, area: &str) {
        area.clone_into(&mut lock(&self.state.radio.inner).area);
    }

    /// Starts or stops withholding `what` (for tests of a client's timeouts).
    pub fn withhold(&self, what: Withhold, on: bool) {
        let mut r = lock(&self.state.radio.inner);
        if on {
            r.withheld.insert(what);
        } else {
            r.withheld.remove(&what);
        }
    }

    /// Powers the adapter on or off (a phone's Bluetooth switch).
    pub fn set_powered(&self, on: bool) {
        self.state.powered.store(on, Ordering::SeqCst);
    }

    /// What is open on this adapter's radio now.
    pub fn radio(&self) -> RadioReport {
        report(&self.state)
    }
}

fn report(state: &AdapterState) -> RadioReport {
    let r = lock(&state.radio.inner);
    let mut devices: Vec<String> = r.devices.values().map(|d| d.path.clone()).collect();
    devices.sort();
    let mut connections = Vec::new();
    for d in r.devices.values() {
        match &lock(&d.state).link {
            LinkState::Down => {}
            LinkState::Connecting(_) => connections.push(ConnectionReport {
                peer: d.peer.clone(),
                address: d.address.clone(),
                connected: false,
                att_ops: 0,
                notify_sessions: 0,
            }),
            LinkState::Up(c) => connections.push(ConnectionReport {
                peer: d.peer.clone(),
                address: d.address.clone(),
                connected: true,
                att_ops: lock(&c.link).as_ref().map_or(0, |l| l.att_ops()),
                notify_sessions: c.notify_sessions(),
            }),
        }
    }
    RadioReport {
        discovering: !r.discovery_clients.is_empty(),
        devices,
        connections,
        inbound: r.inbound.clone(),
        stats: r.stats.clone(),
    }
}

/// `org.latchkey.Sim1`: the radio's controls for tests and demos in other processes.
struct Sim1 {
    standin: Weak<Inner>,
}

impl Sim1 {
    fn adapter(&self, name: &str) -> zbus::fdo::Result<Adapter> {
        let standin =
            standin(&self.standin).map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        standin
            .adapter(name)
            .ok_or_else(|| zbus::fdo::Error::InvalidArgs(format!("no adapter {name}")))
    }
}

#[zbus::interface(name = "org.latchkey.Sim1")]
impl Sim1 {
    /// Adds an adapter (`hciN`), powered on or off.
    async fn add_adapter(&self, name: String, powered: bool) -> zbus::fdo::Result<()> {
        let standin =
            standin(&self.standin).map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let a = standin
            .add_adapter(&name)
            .await
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        a.set_powered(powered);
        Ok(())
    }

    fn set_area(&self, adapter: String, area: String) -> zbus::fdo::Result<()> {
        self.adapter(&adapter)?.set_area(&area);
        Ok(())
    }

    /// bluetoothd's `StartNotify` policy for the adapter's applications: for every peer that
    /// subscribes (`true`, the default, as bluetoothd does) or for the first only (`false`).
    fn set_start_notify_per_peer(&self, adapter: String, per_peer: bool) -> zbus::fdo::Result<()> {
        self.adapter(&adapter)?.set_start_notify_per_peer(per_peer);
        Ok(())
    }

    /// `what`: device, connection, challenge or result.
    fn withhold(&self, adapter: String, what: String, on: bool) -> zbus::fdo::Result<()> {
        let w: Withhold = what.parse().map_err(zbus::fdo::Error::InvalidArgs)?;
        self.adapter(&adapter)?.withhold(w, on);
        Ok(())
    }

    /// The adapter's radio: `discovering` (b), `devices`, `connections`, `pending`,
    /// `inbound`, `notify_sessions`, `abandoned_sessions`, `withheld_notifications` (u),
    /// `closed_att_ops` (au).
    fn status(&self, adapter: String) -> zbus::fdo::Result<HashMap<String, OwnedValue>> {
        let r = self.adapter(&adapter)?.radio();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut out: HashMap<String, OwnedValue> = HashMap::new();
        out.insert("discovering".into(), OwnedValue::from(r.discovering));
        let mut put = |k: &str, v: u32| {
            out.insert(k.into(), OwnedValue::from(v));
        };
        put("devices", count(r.devices.len()));
        put(
            "connections",
            count(r.connections.iter().filter(|c| c.connected).count()),
        );
        put(
            "pending",
            count(r.connections.iter().filter(|c| !c.connected).count()),
        );
        put("inbound", count(r.inbound.len()));
        put(
            "notify_sessions",
            count(r.connections.iter().map(|c| c.notify_sessions).sum()),
        );
        put(
            "abandoned_sessions",
            u32::try_from(r.stats.abandoned_sessions).unwrap_or(u32::MAX),
        );
        put(
            "withheld_notifications",
            u32::try_from(r.stats.withheld_notifications).unwrap_or(u32::MAX),
        );
        let ops = Value::from(r.stats.closed_att_ops.clone());
        if let Ok(v) = OwnedValue::try_from(ops) {
            out.insert("closed_att_ops".into(), v);
        }
        Ok(out)
    }
}

impl Standin {
    /// Exports `org.latchkey.Sim1` at [`CONTROL_PATH`].
    pub async fn serve_control(&self) -> Result<(), Error> {
        let conn = self.inner.conn.clone();
        let control = Sim1 {
            standin: Arc::downgrade(&self.inner),
        };
        self.home(async move {
            conn.object_server().at(CONTROL_PATH, control).await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adv(uuids: &[&str]) -> AdvInfo {
        AdvInfo {
            owner: ":1.1".into(),
            path: "/adv".into(),
            kind: "peripheral".into(),
            service_uuids: uuids.iter().map(|u| (*u).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn discovery_filters_as_bluetoothd_reads_them() {
        let door = "8603cf6e-0001-462b-ab5a-16c899edcee3";
        let dict = |uuids: Vec<&str>, transport: &str| {
            let mut d: HashMap<String, OwnedValue> = HashMap::new();
            let list: Vec<String> = uuids.into_iter().map(str::to_owned).collect();
            d.insert(
                "UUIDs".into(),
                OwnedValue::try_from(Value::from(list)).unwrap(),
            );
            d.insert(
                "Transport".into(),
                OwnedValue::try_from(Value::from(transport.to_owned())).unwrap(),
            );
            d
        };
        let f = Filter::parse(&dict(vec!["8603CF6E-0001-462B-AB5A-16C899EDCEE3"], "le")).unwrap();
        assert!(f.accepts(&adv(&[door])));
        assert!(!f.accepts(&adv(&["0000180f-0000-1000-8000-00805f9b34fb"])));
        assert!(Filter::parse(&dict(vec![], "auto"))
            .unwrap()
            .accepts(&adv(&[])));
        assert!(!Filter::parse(&dict(vec![], "bredr"))
            .unwrap()
            .accepts(&adv(&[door])));
        assert!(Filter::parse(&dict(vec![], "usb")).is_err());
        let mut unknown = HashMap::new();
        unknown.insert("Colour".to_owned(), OwnedValue::from(1u8));
        assert!(Filter::parse(&unknown).is_err());
        assert_eq!("challenge".parse::<Withhold>(), Ok(Withhold::Challenge));
        assert!("everything".parse::<Withhold>().is_err());
    }
}
