//! The D-Bus objects the stand-in exports as `org.bluez`: per adapter `Adapter1`,
//! `GattManager1` and `LEAdvertisingManager1` at `/org/bluez/hciN`, and a `Device1` per
//! connected peer. Registration reads the application back the way bluetoothd does.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};

use crate::state::{AdapterState, AdvInfo, AppInfo, CharInfo, ServiceInfo};
use crate::CALL_TIMEOUT;
use latchkey_proto::LEGACY_ADV_MAX;

/// BlueZ's error names (`org.bluez.Error.*`).
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.bluez.Error")]
pub enum BluezError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Failed(String),
    InvalidArguments(String),
    AlreadyExists(String),
    DoesNotExist(String),
    NotPermitted(String),
    InvalidLength(String),
}

pub struct Adapter1 {
    pub state: Arc<AdapterState>,
    /// The stand-in, for the simulated radio (discovery sees the other adapters).
    pub standin: std::sync::Weak<crate::Inner>,
}

#[zbus::interface(name = "org.bluez.Adapter1")]
impl Adapter1 {
    // Discovery: the simulated radio (radio.rs).
    async fn start_discovery(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), crate::radio::RadioError> {
        crate::radio::start_discovery(&self.standin, &self.state, conn, &hdr).await
    }
    async fn stop_discovery(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), crate::radio::RadioError> {
        crate::radio::stop_discovery(&self.state, conn, &hdr).await
    }
    fn set_discovery_filter(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        filter: HashMap<String, OwnedValue>,
    ) -> Result<(), crate::radio::RadioError> {
        crate::radio::set_discovery_filter(&self.state, &hdr, &filter)
    }
    fn get_discovery_filters(&self) -> Vec<String> {
        [
            "UUIDs",
            "RSSI",
            "Pathloss",
            "Transport",
            "DuplicateData",
            "Discoverable",
            "Pattern",
        ]
        .map(String::from)
        .to_vec()
    }
    async fn remove_device(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        device: ObjectPath<'_>,
    ) -> Result<(), crate::radio::RadioError> {
        crate::radio::remove_device(&self.state, conn, device.as_str()).await
    }

    #[zbus(property)]
    fn address(&self) -> String {
        self.state.address.clone()
    }
    #[zbus(property)]
    fn address_type(&self) -> String {
        "public".into()
    }
    #[zbus(property)]
    fn name(&self) -> String {
        format!("standin-{}", self.state.name)
    }
    #[zbus(property)]
    fn alias(&self) -> String {
        format!("standin-{}", self.state.name)
    }
    #[zbus(property)]
    fn class(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn powered(&self) -> bool {
        self.state.powered.load(Ordering::SeqCst)
    }
    #[zbus(property)]
    fn set_powered(&mut self, on: bool) {
        self.state.powered.store(on, Ordering::SeqCst);
    }
    #[zbus(property)]
    fn discoverable(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn pairable(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn discovering(&self) -> bool {
        self.state.radio.discovering()
    }
    #[zbus(property, name = "UUIDs")]
    fn uuids(&self) -> Vec<String> {
        Vec::new()
    }
    #[zbus(property)]
    fn roles(&self) -> Vec<String> {
        vec!["central".into(), "peripheral".into()]
    }
}

pub struct GattManager1 {
    pub state: Arc<AdapterState>,
}

type ManagedObjects = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>>;

#[zbus::interface(name = "org.bluez.GattManager1")]
impl GattManager1 {
    /// Like bluetoothd: read the whole application with `GetManagedObjects` before answering.
    async fn register_application(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        application: ObjectPath<'_>,
        _options: HashMap<String, OwnedValue>,
    ) -> Result<(), BluezError> {
        let owner = sender(&hdr)?;
        let path = application.to_string();
        if self
            .state
            .apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|a| a.owner == owner && a.path == path)
        {
            return Err(BluezError::AlreadyExists("Already Exists".into()));
        }
        let call = conn.call_method(
            Some(owner.as_str()),
            path.as_str(),
            Some("org.freedesktop.DBus.ObjectManager"),
            "GetManagedObjects",
            &(),
        );
        let reply = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| BluezError::Failed("application did not answer GetManagedObjects".into()))?
            .map_err(|e| BluezError::Failed(format!("GetManagedObjects: {e}")))?;
        let objects: ManagedObjects = reply
            .body()
            .deserialize()
            .map_err(|e| BluezError::InvalidArguments(format!("GetManagedObjects reply: {e}")))?;
        let app =
            parse_application(&owner, &path, &objects).map_err(BluezError::InvalidArguments)?;
        self.state.add_app(app, conn.clone()).await;
        Ok(())
    }

    async fn unregister_application(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        application: ObjectPath<'_>,
    ) -> Result<(), BluezError> {
        let owner = sender(&hdr)?;
        if self.state.remove_app(&owner, application.as_str()) {
            Ok(())
        } else {
            Err(BluezError::DoesNotExist("Does Not Exist".into()))
        }
    }
}

pub struct LeAdvertisingManager1 {
    pub state: Arc<AdapterState>,
}

#[zbus::interface(name = "org.bluez.LEAdvertisingManager1")]
impl LeAdvertisingManager1 {
    /// Like bluetoothd: read the advertisement's properties before answering.
    async fn register_advertisement(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        advertisement: ObjectPath<'_>,
        _options: HashMap<String, OwnedValue>,
    ) -> Result<(), BluezError> {
        let owner = sender(&hdr)?;
        let path = advertisement.to_string();
        let call = conn.call_method(
            Some(owner.as_str()),
            path.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "GetAll",
            &("org.bluez.LEAdvertisement1",),
        );
        let reply = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| BluezError::Failed("advertisement did not answer GetAll".into()))?
            .map_err(|e| BluezError::Failed(format!("GetAll: {e}")))?;
        let props: HashMap<String, OwnedValue> = reply
            .body()
            .deserialize()
            .map_err(|e| BluezError::InvalidArguments(format!("GetAll reply: {e}")))?;
        let kind = string(&props, "Type").unwrap_or_default();
        if kind != "peripheral" && kind != "broadcast" {
            return Err(BluezError::InvalidArguments(format!(
                "advertisement Type {kind:?}"
            )));
        }
        let adv = AdvInfo {
            owner,
            path,
            kind,
            service_uuids: strings(&props, "ServiceUUIDs"),
            manufacturer_data: keyed_bytes(&props, "ManufacturerData"),
            service_data: keyed_bytes(&props, "ServiceData"),
            local_name: string(&props, "LocalName"),
            discoverable: props
                .get("Discoverable")
                .and_then(|v| bool::try_from(v).ok()),
            min_interval_ms: props.get("MinInterval").and_then(|v| u32::try_from(v).ok()),
            max_interval_ms: props.get("MaxInterval").and_then(|v| u32::try_from(v).ok()),
        };
        // Stricter than bluetoothd, which would move an oversized advertisement to extended
        // advertising (that many phones do not scan, and that cannot be connectable and
        // scannable at once): a test should hear about it.
        if adv.legacy_len() > LEGACY_ADV_MAX {
            return Err(BluezError::InvalidLength(format!(
                "{} bytes of advertising data do not fit the {LEGACY_ADV_MAX} of legacy advertising",
                adv.legacy_len()
            )));
        }
        self.state.add_adv(adv);
        Ok(())
    }

    async fn unregister_advertisement(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        advertisement: ObjectPath<'_>,
    ) -> Result<(), BluezError> {
        let owner = sender(&hdr)?;
        if self.state.remove_adv(&owner, advertisement.as_str()) {
            Ok(())
        } else {
            Err(BluezError::DoesNotExist("Does Not Exist".into()))
        }
    }

    #[zbus(property)]
    fn active_instances(&self) -> u8 {
        u8::try_from(self.state.adv_count()).unwrap_or(u8::MAX)
    }
    #[zbus(property)]
    fn supported_instances(&self) -> u8 {
        5u8.saturating_sub(u8::try_from(self.state.adv_count()).unwrap_or(u8::MAX))
    }
    #[zbus(property)]
    fn supported_includes(&self) -> Vec<String> {
        vec!["tx-power".into(), "appearance".into(), "local-name".into()]
    }
}

/// A connected peer, as bluetoothd shows it.
pub struct Device1 {
    pub address: String,
    pub adapter: OwnedObjectPath,
    pub connected: bool,
}

#[zbus::interface(name = "org.bluez.Device1")]
impl Device1 {
    #[zbus(property)]
    fn address(&self) -> String {
        self.address.clone()
    }
    #[zbus(property)]
    fn address_type(&self) -> String {
        "random".into()
    }
    #[zbus(property)]
    fn alias(&self) -> String {
        self.address.replace(':', "-")
    }
    #[zbus(property)]
    fn adapter(&self) -> OwnedObjectPath {
        self.adapter.clone()
    }
    #[zbus(property)]
    fn connected(&self) -> bool {
        self.connected
    }
    #[zbus(property)]
    fn services_resolved(&self) -> bool {
        self.connected
    }
    #[zbus(property)]
    fn paired(&self) -> bool {
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
}

impl Device1 {
    /// Marks the device disconnected and emits `PropertiesChanged`.
    pub async fn set_disconnected(&mut self, emitter: &SignalEmitter<'_>) -> zbus::Result<()> {
        self.connected = false;
        self.connected_changed(emitter).await?;
        self.services_resolved_changed(emitter).await
    }
}

fn sender(hdr: &Header<'_>) -> Result<String, BluezError> {
    hdr.sender()
        .map(|s| s.to_string())
        .ok_or_else(|| BluezError::Failed("no sender".into()))
}

fn string(props: &HashMap<String, OwnedValue>, key: &str) -> Option<String> {
    props
        .get(key)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| String::try_from(v).ok())
}

fn strings(props: &HashMap<String, OwnedValue>, key: &str) -> Vec<String> {
    props
        .get(key)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| Vec::<String>::try_from(v).ok())
        .unwrap_or_default()
}

/// A dictionary of byte arrays (`a{qv}` or `a{sv}` whose variants hold `ay`).
fn keyed_bytes<K>(
    props: &HashMap<String, OwnedValue>,
    key: &str,
) -> std::collections::BTreeMap<K, Vec<u8>>
where
    K: Ord + std::hash::Hash + zbus::zvariant::Basic + for<'k> TryFrom<Value<'k>>,
    for<'k> <K as TryFrom<Value<'k>>>::Error: Into<zbus::zvariant::Error>,
{
    let Some(dict) = props
        .get(key)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| HashMap::<K, OwnedValue>::try_from(v).ok())
    else {
        return Default::default();
    };
    dict.into_iter()
        .filter_map(|(k, v)| {
            let inner = match &*v {
                Value::Value(b) => b.try_clone().ok()?,
                other => other.try_clone().ok()?,
            };
            Some((k, Vec::<u8>::try_from(inner).ok()?))
        })
        .collect()
}

fn object_path(props: &HashMap<String, OwnedValue>, key: &str) -> Option<String> {
    props
        .get(key)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| OwnedObjectPath::try_from(v).ok())
        .map(|p| p.to_string())
}

const KNOWN_FLAGS: &[&str] = &[
    "broadcast",
    "read",
    "write-without-response",
    "write",
    "notify",
    "indicate",
    "authenticated-signed-writes",
    "extended-properties",
    "reliable-write",
    "writable-auxiliaries",
    "encrypt-read",
    "encrypt-write",
    "encrypt-notify",
    "encrypt-indicate",
    "encrypt-authenticated-read",
    "encrypt-authenticated-write",
    "encrypt-authenticated-notify",
    "encrypt-authenticated-indicate",
    "secure-read",
    "secure-write",
    "secure-notify",
    "secure-indicate",
    "authorize",
];

fn valid_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Checks the objects an application exports the way bluetoothd's gatt-database does.
fn parse_application(
    owner: &str,
    app_path: &str,
    objects: &ManagedObjects,
) -> Result<AppInfo, String> {
    let mut services = Vec::new();
    let mut chars = Vec::new();
    for (path, ifaces) in objects {
        let path = path.to_string();
        if !path.starts_with(&format!("{app_path}/")) && path != app_path {
            return Err(format!(
                "object {path} is outside the application {app_path}"
            ));
        }
        if let Some(p) = ifaces.get("org.bluez.GattService1") {
            let uuid = string(p, "UUID").ok_or(format!("{path}: service without UUID"))?;
            if !valid_uuid(&uuid) {
                return Err(format!("{path}: bad UUID {uuid:?}"));
            }
            let primary = p
                .get("Primary")
                .and_then(|v| bool::try_from(v).ok())
                .ok_or(format!("{path}: service without Primary"))?;
            services.push(ServiceInfo {
                path: path.clone(),
                uuid,
                primary,
            });
        }
        if let Some(p) = ifaces.get("org.bluez.GattCharacteristic1") {
            let uuid = string(p, "UUID").ok_or(format!("{path}: characteristic without UUID"))?;
            if !valid_uuid(&uuid) {
                return Err(format!("{path}: bad UUID {uuid:?}"));
            }
            let service = object_path(p, "Service").ok_or(format!("{path}: no Service"))?;
            let flags = strings(p, "Flags");
            if flags.is_empty() {
                return Err(format!("{path}: no Flags"));
            }
            if let Some(bad) = flags.iter().find(|f| !KNOWN_FLAGS.contains(&f.as_str())) {
                return Err(format!("{path}: unknown flag {bad:?}"));
            }
            chars.push(CharInfo {
                path: path.clone(),
                uuid,
                flags,
                service,
            });
        }
    }
    if services.is_empty() {
        return Err("the application has no service".into());
    }
    for c in &chars {
        if !services.iter().any(|s| s.path == c.service) {
            return Err(format!(
                "{}: Service {} is not in the application",
                c.path, c.service
            ));
        }
    }
    services.sort_by(|a, b| a.path.cmp(&b.path));
    chars.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(AppInfo {
        owner: owner.to_owned(),
        path: app_path.to_owned(),
        services,
        characteristics: chars,
    })
}
