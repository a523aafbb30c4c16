//! What the stand-in remembers per adapter: registered applications and advertisements, and
//! which simulated links subscribed to which characteristic. Notifications (the application's
//! `PropertiesChanged(Value)`) are routed to every subscribed link, as bluetoothd does.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use zbus::zvariant::OwnedValue;

/// A GATT service of a registered application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub path: String,
    pub uuid: String,
    pub primary: bool,
}

/// A GATT characteristic of a registered application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharInfo {
    pub path: String,
    pub uuid: String,
    pub flags: Vec<String>,
    /// The service object path (its `Service` property).
    pub service: String,
}

/// A registered application, as read back with `GetManagedObjects`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    /// The unique bus name that registered it.
    pub owner: String,
    pub path: String,
    pub services: Vec<ServiceInfo>,
    pub characteristics: Vec<CharInfo>,
}

impl AppInfo {
    pub fn characteristic(&self, uuid: &str) -> Option<&CharInfo> {
        self.characteristics.iter().find(|c| c.uuid == uuid)
    }
}

/// A registered advertisement, as read back with `Properties.GetAll`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdvInfo {
    pub owner: String,
    pub path: String,
    /// `Type`: `peripheral` or `broadcast`.
    pub kind: String,
    pub service_uuids: Vec<String>,
    /// `ManufacturerData`: company id → data.
    pub manufacturer_data: BTreeMap<u16, Vec<u8>>,
    /// `ServiceData`: UUID → data.
    pub service_data: BTreeMap<String, Vec<u8>>,
    /// `LocalName`: bluetoothd puts it in the scan response of a legacy connectable
    /// advertisement, so it does not take advertising-data bytes.
    pub local_name: Option<String>,
    pub discoverable: Option<bool>,
    /// `MinInterval` / `MaxInterval`, in milliseconds.
    pub min_interval_ms: Option<u32>,
    pub max_interval_ms: Option<u32>,
}

/// The Bluetooth base UUID's tail: UUIDs ending so fit in 2 bytes on air.
const BASE_UUID_TAIL: &str = "-0000-1000-8000-00805f9b34fb";

fn uuid_len(uuid: &str) -> usize {
    let u = uuid.to_ascii_lowercase();
    if u.starts_with("0000") && u.ends_with(BASE_UUID_TAIL) {
        2
    } else {
        16
    }
}

impl AdvInfo {
    /// Bytes of legacy advertising data this advertisement needs: Flags (3, which bluetoothd
    /// adds for a discoverable peripheral), the service UUID lists, manufacturer and service
    /// data. At most 31 fit.
    pub fn legacy_len(&self) -> usize {
        let flags = if self.kind == "peripheral" { 3 } else { 0 };
        let mut uuids = 0;
        for size in [2, 16] {
            let n = self
                .service_uuids
                .iter()
                .filter(|u| uuid_len(u) == size)
                .count();
            if n > 0 {
                uuids += 2 + n * size;
            }
        }
        let mfr: usize = self
            .manufacturer_data
            .values()
            .map(|d| 2 + 2 + d.len())
            .sum();
        let svc: usize = self
            .service_data
            .iter()
            .map(|(u, d)| 2 + uuid_len(u) + d.len())
            .sum();
        flags + uuids + mfr + svc
    }
}

/// A notification as a link receives it: (characteristic path, value).
pub type Notification = (String, Vec<u8>);

struct Subscriber {
    link: u64,
    tx: mpsc::UnboundedSender<Notification>,
}

pub struct AdapterState {
    pub name: String,
    pub address: String,
    pub powered: AtomicBool,
    pub(crate) apps: Mutex<Vec<AppInfo>>,
    advs: Mutex<Vec<AdvInfo>>,
    routers: Mutex<HashMap<(String, String), AbortHandle>>,
    subs: Mutex<HashMap<String, Vec<Subscriber>>>,
    app_registrations: watch::Sender<u64>,
    adv_registrations: watch::Sender<u64>,
    /// Notifications routed to links, in total.
    pub notifications: AtomicU64,
    /// Whether `StartNotify` goes out for every peer that enables notifications (bluetoothd
    /// today) or for the first one only (older bluetoothd).
    start_notify_per_peer: AtomicBool,
    /// `StartNotify` / `StopNotify` calls made into applications.
    pub start_notify_calls: AtomicU64,
    pub stop_notify_calls: AtomicU64,
    /// The simulated radio's view from this adapter (radio.rs).
    pub(crate) radio: crate::radio::RadioState,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AdapterState {
    pub(crate) fn new(name: &str, index: u32) -> Self {
        Self {
            name: name.to_owned(),
            address: format!(
                "00:AA:00:00:{:02X}:{:02X}",
                (index >> 8) & 0xff,
                index & 0xff
            ),
            powered: AtomicBool::new(false),
            apps: Mutex::new(Vec::new()),
            advs: Mutex::new(Vec::new()),
            routers: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            app_registrations: watch::channel(0).0,
            adv_registrations: watch::channel(0).0,
            notifications: AtomicU64::new(0),
            start_notify_per_peer: AtomicBool::new(true),
            start_notify_calls: AtomicU64::new(0),
            stop_notify_calls: AtomicU64::new(0),
            radio: Default::default(),
        }
    }

    pub fn path(&self) -> String {
        format!("/org/bluez/{}", self.name)
    }

    /// Records a registration and starts routing its notifications. Runs on the stand-in's
    /// runtime (inside `RegisterApplication`).
    pub(crate) async fn add_app(self: &std::sync::Arc<Self>, app: AppInfo, conn: zbus::Connection) {
        let key = (app.owner.clone(), app.path.clone());
        let this = self.clone();
        let (owner, path) = key.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .sender(owner.as_str())
                .and_then(|b| b.path_namespace(path.as_str()))
                .and_then(|b| b.interface("org.freedesktop.DBus.Properties"))
                .and_then(|b| b.member("PropertiesChanged"))
                .map(|b| b.build());
            let Ok(rule) = rule else { return };
            let stream = zbus::MessageStream::for_match_rule(rule, &conn, Some(1024)).await;
            let _ = ready_tx.send(());
            let Ok(mut stream) = stream else { return };
            while let Some(Ok(msg)) = stream.next().await {
                let Some(char_path) = msg.header().path().map(|p| p.to_string()) else {
                    continue;
                };
                let body = msg.body();
                let Ok((iface, changed, _)) =
                    body.deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
                else {
                    continue;
                };
                if iface != "org.bluez.GattCharacteristic1" {
                    continue;
                }
                let Some(value) = changed
                    .get("Value")
                    .and_then(|v| v.try_clone().ok())
                    .and_then(|v| Vec::<u8>::try_from(v).ok())
                else {
                    continue;
                };
                this.deliver(&char_path, value);
            }
        });
        // The route is in place before RegisterApplication returns, so no early
        // notification is lost (the match rule is added within a bus round trip).
        let _ = tokio::time::timeout(crate::CALL_TIMEOUT, ready_rx).await;
        lock(&self.routers).insert(key, task.abort_handle());
        lock(&self.apps).push(app);
        self.app_registrations.send_modify(|n| *n += 1);
    }

    fn deliver(&self, char_path: &str, value: Vec<u8>) {
        let subs = lock(&self.subs);
        for s in subs.get(char_path).into_iter().flatten() {
            if s.tx.send((char_path.to_owned(), value.clone())).is_ok() {
                self.notifications.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn remove_app(&self, owner: &str, path: &str) -> bool {
        let removed = {
            let mut apps = lock(&self.apps);
            let before = apps.len();
            let gone: Vec<AppInfo> = apps
                .iter()
                .filter(|a| a.owner == owner && a.path == path)
                .cloned()
                .collect();
            apps.retain(|a| !(a.owner == owner && a.path == path));
            if apps.len() == before {
                return false;
            }
            gone
        };
        if let Some(h) = lock(&self.routers).remove(&(owner.to_owned(), path.to_owned())) {
            h.abort();
        }
        let mut subs = lock(&self.subs);
        for app in removed {
            for c in app.characteristics {
                subs.remove(&c.path);
            }
        }
        true
    }

    pub(crate) fn add_adv(&self, adv: AdvInfo) {
        lock(&self.advs).push(adv);
        self.adv_registrations.send_modify(|n| *n += 1);
    }

    pub(crate) fn remove_adv(&self, owner: &str, path: &str) -> bool {
        let mut advs = lock(&self.advs);
        let before = advs.len();
        advs.retain(|a| !(a.owner == owner && a.path == path));
        advs.len() != before
    }

    pub(crate) fn adv_count(&self) -> usize {
        lock(&self.advs).len()
    }

    /// Everything `owner` registered goes, as when its bus connection closes.
    pub(crate) fn owner_vanished(&self, owner: &str) {
        let paths: Vec<String> = lock(&self.apps)
            .iter()
            .filter(|a| a.owner == owner)
            .map(|a| a.path.clone())
            .collect();
        for p in paths {
            self.remove_app(owner, &p);
        }
        lock(&self.advs).retain(|a| a.owner != owner);
    }

    /// bluetoothd went away, or the adapter did: nothing stays registered.
    pub(crate) fn clear(&self) {
        let apps: Vec<(String, String)> = lock(&self.apps)
            .iter()
            .map(|a| (a.owner.clone(), a.path.clone()))
            .collect();
        for (o, p) in apps {
            self.remove_app(&o, &p);
        }
        lock(&self.advs).clear();
    }

    /// The newest registered application.
    pub fn current_app(&self) -> Option<AppInfo> {
        lock(&self.apps).last().cloned()
    }

    /// The newest registered advertisement.
    pub fn current_adv(&self) -> Option<AdvInfo> {
        lock(&self.advs).last().cloned()
    }

    pub fn app_registrations(&self) -> watch::Receiver<u64> {
        self.app_registrations.subscribe()
    }

    pub fn adv_registrations(&self) -> watch::Receiver<u64> {
        self.adv_registrations.subscribe()
    }

    /// How `StartNotify` is called: `true` for every peer that enables notifications, as
    /// bluetoothd's `ccc_write_cb` (src/gatt-database.c) does; `false` for the first one only.
    /// Either way `StopNotify` comes when the last one leaves.
    pub fn set_start_notify_per_peer(&self, per_peer: bool) {
        self.start_notify_per_peer.store(per_peer, Ordering::SeqCst);
    }

    /// Adds a subscriber; returns whether bluetoothd calls `StartNotify` now: for a new
    /// subscriber, always (per peer) or when it is the characteristic's first.
    pub(crate) fn subscribe(
        &self,
        char_path: &str,
        link: u64,
        tx: mpsc::UnboundedSender<Notification>,
    ) -> bool {
        let mut subs = lock(&self.subs);
        let list = subs.entry(char_path.to_owned()).or_default();
        let first = list.is_empty();
        if list.iter().any(|s| s.link == link) {
            // The CCC already holds this value: bluetoothd just succeeds.
            return false;
        }
        list.push(Subscriber { link, tx });
        let call = first || self.start_notify_per_peer.load(Ordering::SeqCst);
        if call {
            self.start_notify_calls.fetch_add(1, Ordering::Relaxed);
        }
        call
    }

    /// Removes a subscriber; returns whether it was the last (bluetoothd then calls
    /// `StopNotify`).
    pub(crate) fn unsubscribe(&self, char_path: &str, link: u64) -> bool {
        let mut subs = lock(&self.subs);
        let Some(list) = subs.get_mut(char_path) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| s.link != link);
        let last = before > list.len() && list.is_empty();
        if list.is_empty() {
            subs.remove(char_path);
        }
        if last {
            self.stop_notify_calls.fetch_add(1, Ordering::Relaxed);
        }
        last
    }
}
