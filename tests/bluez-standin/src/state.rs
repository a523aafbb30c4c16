//! What the stand-in remembers per adapter: registered applications and advertisements, and
//! which simulated links subscribed to which characteristic. Notifications (the application's
//! `PropertiesChanged(Value)`) are routed to every subscribed link, as bluetoothd does.

use std::collections::HashMap;
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvInfo {
    pub owner: String,
    pub path: String,
    /// `Type`: `peripheral` or `broadcast`.
    pub kind: String,
    pub service_uuids: Vec<String>,
    pub local_name: Option<String>,
    pub discoverable: Option<bool>,
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

    /// Adds a subscriber; returns whether it is the characteristic's first (bluetoothd then
    /// calls `StartNotify`).
    pub(crate) fn subscribe(
        &self,
        char_path: &str,
        link: u64,
        tx: mpsc::UnboundedSender<Notification>,
    ) -> bool {
        let mut subs = lock(&self.subs);
        let list = subs.entry(char_path.to_owned()).or_default();
        let first = list.is_empty();
        if !list.iter().any(|s| s.link == link) {
            list.push(Subscriber { link, tx });
        }
        first
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
        let last = before > 0 && list.is_empty();
        if list.is_empty() {
            subs.remove(char_path);
        }
        last
    }
}
