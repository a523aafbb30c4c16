//! A stand-in for BlueZ's `org.bluez` service, for tests only (never part of the product).
//!
//! It owns `org.bluez` on a private bus and behaves towards a GATT server application the way
//! bluetoothd does: adapters at `/org/bluez/hciN` with `Adapter1`, `GattManager1` and
//! `LEAdvertisingManager1` under an ObjectManager at `/`; `RegisterApplication` reads the
//! application back with `GetManagedObjects`; `RegisterAdvertisement` reads the
//! advertisement's properties (and refuses more than the 31 bytes of legacy advertising data,
//! where bluetoothd would quietly switch to extended advertising). A simulated LE [`Link`] (a
//! phone connected to the adapter) appears as a `Device1` object and performs ATT operations
//! as method calls into the application — `ReadValue`, `WriteValue`, `StartNotify`/
//! `StopNotify` with the options bluetoothd passes (`device`, `mtu`, `link`, `offset`,
//! `type`); `StartNotify` for every peer that subscribes and `StopNotify` when the last one
//! leaves, as bluetoothd's `ccc_write_cb` does (older bluetoothd: `StartNotify` for the first
//! only, [`Adapter::set_start_notify_per_peer`]) — and receives notifications, which the
//! application sends as `PropertiesChanged(Value)`.
//!
//! Every call into the application has a timeout on this side ([`CALL_TIMEOUT`]), so a test
//! never hangs on an application that does not answer.
//!
//! Design note: the next step is a simulated radio, where a phone-side client in another
//! process sees the gateway as a remote `Device1` with `GattService1`/`GattCharacteristic1`
//! objects. [`Link`] is the seam: its operations are exactly the ATT operations such remote
//! objects would forward.

mod bus;
mod objects;
pub mod phone;
pub mod radio;
mod state;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, Value};

pub use bus::{Broker, PrivateBus};
pub use radio::{RadioReport, Withhold};
pub use state::{AdapterState, AdvInfo, AppInfo, CharInfo, Notification, ServiceInfo};

use objects::{Adapter1, Device1, GattManager1, LeAdvertisingManager1};

/// How long the stand-in waits for the application to answer one call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("private bus: {0}")]
    Bus(String),
    #[error("D-Bus: {0}")]
    ZBus(#[from] zbus::Error),
    #[error("{0}")]
    Failed(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// The application answered a call with a D-Bus error.
    #[error("{name}: {message}")]
    Call { name: String, message: String },
}

impl Error {
    /// The D-Bus error name the application answered with, if it did.
    pub fn dbus_name(&self) -> Option<&str> {
        match self {
            Error::Call { name, .. } => Some(name),
            _ => None,
        }
    }
}

struct Inner {
    conn: zbus::Connection,
    /// The runtime the connection lives on; every D-Bus call is made there.
    home: tokio::runtime::Handle,
    adapters: Mutex<HashMap<String, Arc<AdapterState>>>,
    next_link: AtomicU64,
    adapter_index: AtomicU32,
}

/// The running stand-in ("bluetoothd"). Cheap to clone.
#[derive(Clone)]
pub struct Standin {
    inner: Arc<Inner>,
}

impl Standin {
    /// Connects to `bus_address`, takes `org.bluez` and exports the ObjectManager, on the
    /// current runtime.
    pub async fn start(bus_address: &str) -> Result<Self, Error> {
        let conn = zbus::connection::Builder::address(bus_address)?
            .serve_at("/", zbus::fdo::ObjectManager)?
            .name("org.bluez")?
            .build()
            .await?;
        let inner = Arc::new(Inner {
            conn: conn.clone(),
            home: tokio::runtime::Handle::current(),
            adapters: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            adapter_index: AtomicU32::new(0),
        });
        // Like bluetoothd, forget what a client registered when its connection goes.
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let mut changes = dbus.receive_name_owner_changed().await?;
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(sig) = changes.next().await {
                let Ok(args) = sig.args() else { continue };
                let name = args.name().to_string();
                if !name.starts_with(':') || args.new_owner().is_some() {
                    continue;
                }
                let Some(inner) = weak.upgrade() else { return };
                let adapters: Vec<_> = lock(&inner.adapters).values().cloned().collect();
                for a in adapters {
                    a.owner_vanished(&name);
                }
            }
        });
        Ok(Self { inner })
    }

    /// Runs `fut` on the stand-in's runtime (where its connection lives).
    async fn home<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        self.inner
            .home
            .spawn(fut)
            .await
            .map_err(|e| Error::Failed(format!("stand-in task: {e}")))?
    }

    /// The stand-in's own unique bus name.
    pub fn unique_name(&self) -> String {
        self.inner
            .conn
            .unique_name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    }

    /// Adds an adapter (`hci0`, …): its objects appear with `InterfacesAdded`.
    pub async fn add_adapter(&self, name: &str) -> Result<Adapter, Error> {
        let index = self.inner.adapter_index.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(AdapterState::new(name, index));
        lock(&self.inner.adapters).insert(name.to_owned(), state.clone());
        let conn = self.inner.conn.clone();
        let st = state.clone();
        let standin = Arc::downgrade(&self.inner);
        self.home(async move {
            let server = conn.object_server();
            let path = st.path();
            server
                .at(path.as_str(), GattManager1 { state: st.clone() })
                .await?;
            server
                .at(path.as_str(), LeAdvertisingManager1 { state: st.clone() })
                .await?;
            server
                .at(
                    path.as_str(),
                    Adapter1 {
                        state: st.clone(),
                        standin,
                    },
                )
                .await?;
            Ok(())
        })
        .await?;
        Ok(Adapter {
            standin: self.clone(),
            state,
        })
    }

    /// Removes an adapter (unplugged): `InterfacesRemoved`, and everything registered on it
    /// is gone.
    pub async fn remove_adapter(&self, name: &str) -> Result<(), Error> {
        let Some(state) = lock(&self.inner.adapters).remove(name) else {
            return Err(Error::Failed(format!("no adapter {name}")));
        };
        state.clear();
        let conn = self.inner.conn.clone();
        self.home(async move {
            let server = conn.object_server();
            let path = state.path();
            server.remove::<Adapter1, _>(path.as_str()).await?;
            server
                .remove::<LeAdvertisingManager1, _>(path.as_str())
                .await?;
            server.remove::<GattManager1, _>(path.as_str()).await?;
            Ok(())
        })
        .await
    }

    pub fn adapter(&self, name: &str) -> Option<Adapter> {
        lock(&self.inner.adapters).get(name).map(|s| Adapter {
            standin: self.clone(),
            state: s.clone(),
        })
    }

    /// "bluetoothd exits": releases `org.bluez` and closes the connection; everything
    /// registered is forgotten.
    pub async fn stop(self) -> Result<(), Error> {
        for a in lock(&self.inner.adapters).values() {
            a.clear();
        }
        let conn = self.inner.conn.clone();
        self.home(async move {
            conn.release_name("org.bluez").await?;
            conn.close().await?;
            Ok(())
        })
        .await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One adapter of the stand-in.
#[derive(Clone)]
pub struct Adapter {
    standin: Standin,
    pub state: Arc<AdapterState>,
}

impl Adapter {
    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn powered(&self) -> bool {
        self.state.powered.load(Ordering::SeqCst)
    }

    /// bluetoothd's `StartNotify` policy: for every peer that enables notifications (`true`,
    /// the default, as bluetoothd does today) or for the first one only (`false`, older
    /// bluetoothd). `StopNotify` comes when the last subscriber leaves, either way.
    pub fn set_start_notify_per_peer(&self, per_peer: bool) {
        self.state.set_start_notify_per_peer(per_peer);
    }

    /// `StartNotify` and `StopNotify` calls made into the registered application so far.
    pub fn notify_calls(&self) -> (u64, u64) {
        (
            self.state.start_notify_calls.load(Ordering::Relaxed),
            self.state.stop_notify_calls.load(Ordering::Relaxed),
        )
    }

    /// Successful `RegisterApplication` calls so far.
    pub fn registrations(&self) -> u64 {
        *self.state.app_registrations().borrow()
    }

    /// Waits until more than `seen` applications were registered, and returns the newest.
    pub async fn wait_application(&self, seen: u64, timeout: Duration) -> Result<AppInfo, Error> {
        let mut rx = self.state.app_registrations();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n > seen))
            .await
            .map_err(|_| Error::Timeout(format!("no application registered on {}", self.name())))?
            .map_err(|_| Error::Failed("adapter gone".into()))?;
        self.state
            .current_app()
            .ok_or_else(|| Error::Failed("the application was unregistered again".into()))
    }

    /// Waits until more than `seen` advertisements were registered, and returns the newest.
    pub async fn wait_advertisement(&self, seen: u64, timeout: Duration) -> Result<AdvInfo, Error> {
        let mut rx = self.state.adv_registrations();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n > seen))
            .await
            .map_err(|_| Error::Timeout(format!("no advertisement on {}", self.name())))?
            .map_err(|_| Error::Failed("adapter gone".into()))?;
        self.state
            .current_adv()
            .ok_or_else(|| Error::Failed("the advertisement was unregistered again".into()))
    }

    /// A phone connects with `address` and an ATT MTU of `mtu`.
    pub async fn connect(&self, address: &str, mtu: u16) -> Result<Link, Error> {
        let app = self
            .state
            .current_app()
            .ok_or_else(|| Error::Failed(format!("nothing registered on {}", self.name())))?;
        let id = self.standin.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let path = format!("{}/dev_{}", self.state.path(), address.replace(':', "_"));
        let device = Device1 {
            address: address.to_owned(),
            adapter: OwnedObjectPath::try_from(self.state.path())
                .map_err(|e| Error::Failed(e.to_string()))?,
            connected: true,
        };
        let conn = self.standin.inner.conn.clone();
        let p = path.clone();
        self.standin
            .home(async move {
                conn.object_server().at(p.as_str(), device).await?;
                Ok(())
            })
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Link {
            id,
            adapter: self.clone(),
            app,
            path,
            mtu,
            tx,
            rx: tokio::sync::Mutex::new(rx),
            att_ops: AtomicU32::new(0),
            subscribed: Mutex::new(Vec::new()),
        })
    }
}

/// How a write reaches the application.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub offset: u16,
    /// `"request"` (write with response), `"command"`, `"reliable"`.
    pub kind: &'static str,
    pub prepare_authorize: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            offset: 0,
            kind: "request",
            prepare_authorize: false,
        }
    }
}

/// A simulated LE connection from a phone to the adapter. Each method is one ATT operation.
pub struct Link {
    id: u64,
    adapter: Adapter,
    /// The application as discovered when the link connected (the phone's GATT cache).
    pub app: AppInfo,
    /// The peer's device object path (what bluetoothd passes as the `device` option).
    pub path: String,
    pub mtu: u16,
    tx: mpsc::UnboundedSender<Notification>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Notification>>,
    att_ops: AtomicU32,
    subscribed: Mutex<Vec<String>>,
}

impl Link {
    /// ATT operations this link performed (CCCD writes, reads, writes).
    pub fn att_ops(&self) -> u32 {
        self.att_ops.load(Ordering::Relaxed)
    }

    fn characteristic(&self, uuid: &str) -> Result<CharInfo, Error> {
        self.app
            .characteristic(uuid)
            .cloned()
            .ok_or_else(|| Error::Failed(format!("no characteristic {uuid}")))
    }

    fn options(&self, offset: u16) -> Result<HashMap<&'static str, Value<'static>>, Error> {
        let device =
            ObjectPath::try_from(self.path.clone()).map_err(|e| Error::Failed(e.to_string()))?;
        let mut o: HashMap<&'static str, Value<'static>> = HashMap::new();
        o.insert("device", Value::from(device));
        o.insert("mtu", Value::from(self.mtu));
        o.insert("link", Value::from("LE"));
        if offset != 0 {
            o.insert("offset", Value::from(offset));
        }
        Ok(o)
    }

    async fn call(
        &self,
        char_path: String,
        method: &'static str,
        body: impl serde_like::Body,
    ) -> Result<zbus::Message, Error> {
        let conn = self.adapter.standin.inner.conn.clone();
        let owner = self.app.owner.clone();
        self.adapter
            .standin
            .home(async move {
                let call = body.call(&conn, &owner, &char_path, method);
                match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Err(_) => Err(Error::Timeout(format!("{method} on {char_path}"))),
                    Ok(Err(zbus::Error::MethodError(name, message, _))) => Err(Error::Call {
                        name: name.to_string(),
                        message: message.unwrap_or_default(),
                    }),
                    Ok(Err(e)) => Err(Error::ZBus(e)),
                    Ok(Ok(m)) => Ok(m),
                }
            })
            .await
    }

    /// Writes the CCCD of `uuid` (enable notifications). bluetoothd calls `StartNotify` for
    /// every peer that does so (see [`Adapter::set_start_notify_per_peer`]).
    pub async fn subscribe(&self, uuid: &str) -> Result<(), Error> {
        let c = self.characteristic(uuid)?;
        self.att_ops.fetch_add(1, Ordering::Relaxed);
        lock(&self.subscribed).push(c.path.clone());
        if self
            .adapter
            .state
            .subscribe(&c.path, self.id, self.tx.clone())
        {
            self.call(c.path, "StartNotify", serde_like::Empty).await?;
        }
        Ok(())
    }

    /// Disables notifications on `uuid`; the last client's unsubscription calls `StopNotify`.
    pub async fn unsubscribe(&self, uuid: &str) -> Result<(), Error> {
        let c = self.characteristic(uuid)?;
        self.att_ops.fetch_add(1, Ordering::Relaxed);
        lock(&self.subscribed).retain(|p| *p != c.path);
        if self.adapter.state.unsubscribe(&c.path, self.id) {
            self.call(c.path, "StopNotify", serde_like::Empty).await?;
        }
        Ok(())
    }

    /// An ATT Read (offset 0) or Read Blob (offset > 0) request.
    pub async fn read(&self, uuid: &str, offset: u16) -> Result<Vec<u8>, Error> {
        let c = self.characteristic(uuid)?;
        self.att_ops.fetch_add(1, Ordering::Relaxed);
        let opts = self.options(offset)?;
        let reply = self
            .call(c.path, "ReadValue", serde_like::Read(opts))
            .await?;
        let value: Vec<u8> = reply
            .body()
            .deserialize()
            .map_err(|e| Error::Failed(format!("ReadValue reply: {e}")))?;
        // One ATT response carries at most MTU - 1 bytes.
        let max = usize::from(self.mtu.saturating_sub(1));
        Ok(value.into_iter().take(max).collect())
    }

    /// A write request (write with response) at offset 0.
    pub async fn write(&self, uuid: &str, value: &[u8]) -> Result<(), Error> {
        self.write_with(uuid, value, WriteOptions::default()).await
    }

    /// A write with explicit options. A value longer than one ATT PDU (MTU − 3) is refused
    /// here, as the phone's stack could not send it in one write.
    pub async fn write_with(&self, uuid: &str, value: &[u8], w: WriteOptions) -> Result<(), Error> {
        let c = self.characteristic(uuid)?;
        if value.len() > usize::from(self.mtu.saturating_sub(3)) {
            return Err(Error::Failed(format!(
                "{} bytes do not fit one ATT write at MTU {}",
                value.len(),
                self.mtu
            )));
        }
        self.att_ops.fetch_add(1, Ordering::Relaxed);
        let mut opts = self.options(w.offset)?;
        opts.insert("type", Value::from(w.kind));
        if w.prepare_authorize {
            opts.insert("prepare-authorize", Value::from(true));
        }
        self.call(
            c.path,
            "WriteValue",
            serde_like::Write(value.to_vec(), opts),
        )
        .await?;
        Ok(())
    }

    /// The next notification on `uuid`, or `None` after `timeout`.
    pub async fn notification(&self, uuid: &str, timeout: Duration) -> Option<Vec<u8>> {
        let path = self.app.characteristic(uuid)?.path.clone();
        let mut rx = self.rx.lock().await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((p, v))) if p == path => return Some(v),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Drops notifications already received and not yet taken.
    pub async fn drain_notifications(&self) {
        let mut rx = self.rx.lock().await;
        while rx.try_recv().is_ok() {}
    }

    /// Disconnects: subscriptions end (`StopNotify` for the last one), the `Device1` object
    /// reports `Connected = false` and is removed.
    pub async fn disconnect(self) -> Result<(), Error> {
        let paths: Vec<String> = lock(&self.subscribed).drain(..).collect();
        for p in paths {
            if self.adapter.state.unsubscribe(&p, self.id) {
                let _ = self.call(p, "StopNotify", serde_like::Empty).await;
            }
        }
        let conn = self.adapter.standin.inner.conn.clone();
        let path = self.path.clone();
        self.adapter
            .standin
            .home(async move {
                let server = conn.object_server();
                let iface = server.interface::<_, Device1>(path.as_str()).await?;
                iface
                    .get_mut()
                    .await
                    .set_disconnected(iface.signal_emitter())
                    .await?;
                server.remove::<Device1, _>(path.as_str()).await?;
                Ok(())
            })
            .await
    }
}

/// Method-call bodies, so `Link::call` can build them on the stand-in's runtime.
mod serde_like {
    use std::collections::HashMap;
    use std::future::Future;
    use std::pin::Pin;

    use zbus::zvariant::Value;

    type Options = HashMap<&'static str, Value<'static>>;
    type Call<'a> = Pin<Box<dyn Future<Output = zbus::Result<zbus::Message>> + Send + 'a>>;

    pub trait Body: Send + 'static {
        fn call<'a>(
            self,
            conn: &'a zbus::Connection,
            owner: &'a str,
            path: &'a str,
            method: &'static str,
        ) -> Call<'a>;
    }

    const IFACE: &str = "org.bluez.GattCharacteristic1";

    pub struct Empty;
    pub struct Read(pub Options);
    pub struct Write(pub Vec<u8>, pub Options);

    impl Body for Empty {
        fn call<'a>(
            self,
            conn: &'a zbus::Connection,
            owner: &'a str,
            path: &'a str,
            method: &'static str,
        ) -> Call<'a> {
            Box::pin(conn.call_method(Some(owner), path, Some(IFACE), method, &()))
        }
    }

    impl Body for Read {
        fn call<'a>(
            self,
            conn: &'a zbus::Connection,
            owner: &'a str,
            path: &'a str,
            method: &'static str,
        ) -> Call<'a> {
            Box::pin(async move {
                conn.call_method(Some(owner), path, Some(IFACE), method, &(self.0,))
                    .await
            })
        }
    }

    impl Body for Write {
        fn call<'a>(
            self,
            conn: &'a zbus::Connection,
            owner: &'a str,
            path: &'a str,
            method: &'static str,
        ) -> Call<'a> {
            Box::pin(async move {
                conn.call_method(Some(owner), path, Some(IFACE), method, &(self.0, self.1))
                    .await
            })
        }
    }
}

/// One private bus and one stand-in per test process, shared by its tests (libdbus reads
/// `DBUS_SYSTEM_BUS_ADDRESS` once per process, so one process cannot use two buses).
pub struct Shared {
    pub bus: PrivateBus,
    pub standin: Standin,
    next_adapter: AtomicU32,
}

impl Shared {
    /// A fresh adapter for one test (`hci0`, `hci1`, …), so tests may run in parallel.
    pub async fn new_adapter(&self) -> Result<Adapter, Error> {
        let n = self.next_adapter.fetch_add(1, Ordering::Relaxed);
        self.standin.add_adapter(&format!("hci{n}")).await
    }
}

/// Starts the process-wide private bus (and sets `DBUS_SYSTEM_BUS_ADDRESS` to it) on first
/// use. Call before anything in the process touches D-Bus.
pub fn private_bus() -> Result<&'static PrivateBus, Error> {
    static BUS: OnceLock<Result<PrivateBus, String>> = OnceLock::new();
    BUS.get_or_init(|| {
        let bus = PrivateBus::start().map_err(|e| e.to_string())?;
        // Before any libdbus or zbus connection of this process reads it.
        std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &bus.address);
        Ok(bus)
    })
    .as_ref()
    .map_err(|e| Error::Bus(e.clone()))
}

/// The process-wide bus and stand-in, started on first use; the stand-in runs on a runtime
/// thread of its own, so it outlives any one test's runtime.
pub fn shared() -> Result<&'static Shared, Error> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let bus = private_bus().map_err(|e| e.to_string())?.clone();
            let (tx, rx) = std::sync::mpsc::channel::<Result<Standin, String>>();
            let address = bus.address.clone();
            std::thread::Builder::new()
                .name("bluez-standin".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let _ = tx.send(Standin::start(&address).await.map_err(|e| e.to_string()));
                        std::future::pending::<()>().await;
                    });
                })
                .map_err(|e| e.to_string())?;
            let standin = rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| "the stand-in did not start within 10 s".to_owned())??;
            Ok(Shared {
                bus,
                standin,
                next_adapter: AtomicU32::new(0),
            })
        })
        .as_ref()
        .map_err(|e| Error::Bus(e.clone()))
}
