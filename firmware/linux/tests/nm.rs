//! The NetworkManager adapter of the real `latchkey-node` process, against a stand-in for
//! NetworkManager's D-Bus objects on a private bus: the setup hotspot with the label's code as
//! WPA2 passphrase, the scan, a refused password, and the station profile after provisioning.

// Test helpers fail loudly; clippy's allow-*-in-tests only covers #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{Gateway, Node, TOKEN};
use zbus::fdo;
use zbus::object_server::ObjectServer;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const STATION_UUID: &str = "6c9d8a1e-4b7f-4d0e-9a51-1a7e5e0c0002";
const HOTSPOT_UUID: &str = "6c9d8a1e-4b7f-4d0e-9a51-1a7e5e0c0001";
const DEVICE: &str = "/org/freedesktop/NetworkManager/Devices/3";

type Settings = HashMap<String, HashMap<String, OwnedValue>>;

#[derive(Default)]
struct NmState {
    /// The hotspot's (ssid, settings) while it is up.
    hotspot: Option<(String, Settings)>,
    /// Profiles by uuid.
    profiles: HashMap<String, OwnedObjectPath>,
    /// The station network joined, if any.
    station: Option<String>,
    reason: u32,
    next: u32,
}

type Shared = Arc<Mutex<NmState>>;

const NETWORKS: [(&str, &str, u8); 2] = [("HomeWifi", "right-pass", 80), ("Cafe", "", 30)];

fn text(s: &Settings, group: &str, key: &str) -> String {
    s[group][key].downcast_ref::<&str>().unwrap().to_owned()
}

fn bytes(s: &Settings, group: &str, key: &str) -> Vec<u8> {
    Vec::<u8>::try_from(s[group][key].try_clone().unwrap()).unwrap()
}

struct Nm(Shared);

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl Nm {
    fn get_device_by_ip_iface(&self, iface: &str) -> fdo::Result<OwnedObjectPath> {
        if iface != "wlan0" {
            return Err(fdo::Error::Failed("no such device".into()));
        }
        Ok(OwnedObjectPath::try_from(DEVICE).unwrap())
    }

    async fn add_and_activate_connection(
        &self,
        #[zbus(object_server)] server: &ObjectServer,
        settings: Settings,
        _device: OwnedObjectPath,
        _specific: OwnedObjectPath,
    ) -> fdo::Result<(OwnedObjectPath, OwnedObjectPath)> {
        let uuid = text(&settings, "connection", "uuid");
        let ssid = String::from_utf8(bytes(&settings, "802-11-wireless", "ssid")).unwrap();
        let mode = text(&settings, "802-11-wireless", "mode");
        let (n, state) = {
            let mut s = self.0.lock().unwrap();
            s.next += 1;
            let state = if mode == "ap" {
                s.hotspot = Some((ssid.clone(), settings.clone()));
                2
            } else {
                let psk = settings
                    .get("802-11-wireless-security")
                    .map(|_| text(&settings, "802-11-wireless-security", "psk"))
                    .unwrap_or_default();
                match NETWORKS.iter().find(|n| n.0 == ssid) {
                    None => {
                        s.reason = 53;
                        4
                    }
                    Some(n) if n.1 != psk => {
                        s.reason = 7;
                        4
                    }
                    Some(_) => {
                        s.station = Some(ssid.clone());
                        2
                    }
                }
            };
            (s.next, state)
        };
        let conn =
            OwnedObjectPath::try_from(format!("/org/freedesktop/NetworkManager/Settings/{n}"))
                .unwrap();
        let active = OwnedObjectPath::try_from(format!(
            "/org/freedesktop/NetworkManager/ActiveConnection/{n}"
        ))
        .unwrap();
        server
            .at(&conn, Profile(self.0.clone(), uuid.clone()))
            .await?;
        server.at(&active, Active(state)).await?;
        self.0.lock().unwrap().profiles.insert(uuid, conn.clone());
        Ok((conn, active))
    }

    fn deactivate_connection(&self, _active: OwnedObjectPath) -> fdo::Result<()> {
        self.0.lock().unwrap().hotspot = None;
        Ok(())
    }
}

struct SettingsIface(Shared);

#[zbus::interface(name = "org.freedesktop.NetworkManager.Settings")]
impl SettingsIface {
    fn get_connection_by_uuid(&self, uuid: &str) -> fdo::Result<OwnedObjectPath> {
        self.0
            .lock()
            .unwrap()
            .profiles
            .get(uuid)
            .cloned()
            .ok_or_else(|| fdo::Error::Failed("no such connection".into()))
    }
}

struct Profile(Shared, String);

#[zbus::interface(name = "org.freedesktop.NetworkManager.Settings.Connection")]
impl Profile {
    fn delete(&self) -> fdo::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.profiles.remove(&self.1);
        if self.1 == HOTSPOT_UUID {
            s.hotspot = None;
        }
        Ok(())
    }
}

struct Active(u32);

#[zbus::interface(name = "org.freedesktop.NetworkManager.Connection.Active")]
impl Active {
    #[zbus(property)]
    fn state(&self) -> u32 {
        self.0
    }
}

struct Wireless;

#[zbus::interface(name = "org.freedesktop.NetworkManager.Device.Wireless")]
impl Wireless {
    fn request_scan(&self, _options: HashMap<String, OwnedValue>) {}

    fn get_all_access_points(&self) -> Vec<OwnedObjectPath> {
        (0..NETWORKS.len())
            .map(|i| {
                OwnedObjectPath::try_from(format!(
                    "/org/freedesktop/NetworkManager/AccessPoint/{i}"
                ))
                .unwrap()
            })
            .collect()
    }
}

struct Device(Shared);

#[zbus::interface(name = "org.freedesktop.NetworkManager.Device")]
impl Device {
    #[zbus(property)]
    fn state_reason(&self) -> (u32, u32) {
        (30, self.0.lock().unwrap().reason)
    }
}

struct AccessPoint(usize);

#[zbus::interface(name = "org.freedesktop.NetworkManager.AccessPoint")]
impl AccessPoint {
    #[zbus(property)]
    fn ssid(&self) -> Vec<u8> {
        NETWORKS[self.0].0.as_bytes().to_vec()
    }
    #[zbus(property)]
    fn strength(&self) -> u8 {
        NETWORKS[self.0].2
    }
    #[zbus(property)]
    fn flags(&self) -> u32 {
        u32::from(!NETWORKS[self.0].1.is_empty())
    }
    #[zbus(property)]
    fn wpa_flags(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn rsn_flags(&self) -> u32 {
        if NETWORKS[self.0].1.is_empty() {
            0
        } else {
            0x188
        }
    }
}

async fn stand_in(address: &str) -> (zbus::Connection, Shared) {
    let shared: Shared = Arc::default();
    let mut b = zbus::connection::Builder::address(address)
        .unwrap()
        .name("org.freedesktop.NetworkManager")
        .unwrap()
        .serve_at("/org/freedesktop/NetworkManager", Nm(shared.clone()))
        .unwrap()
        .serve_at(
            "/org/freedesktop/NetworkManager/Settings",
            SettingsIface(shared.clone()),
        )
        .unwrap()
        .serve_at(DEVICE, Wireless)
        .unwrap()
        .serve_at(DEVICE, Device(shared.clone()))
        .unwrap();
    for i in 0..NETWORKS.len() {
        b = b
            .serve_at(
                format!("/org/freedesktop/NetworkManager/AccessPoint/{i}"),
                AccessPoint(i),
            )
            .unwrap();
    }
    (b.build().await.unwrap(), shared)
}

#[tokio::test]
async fn networkmanager_hotspot_scan_wrong_password_and_station() {
    let bus = latchkey_bluez_standin::PrivateBus::start().unwrap();
    let (_conn, nm) = stand_in(&bus.address).await;
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::spawn(
        dir.path(),
        &["--wifi-nm", "wlan0"],
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.address.as_str())],
    )
    .await;
    let code = node
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("setup code: "))
        .unwrap()
        .to_owned();
    node.wait_state("unprovisioned").await;

    // The hotspot: the label's SSID, WPA2-PSK with the setup code, CCMP only, shared IPv4.
    let (ssid, hotspot) = nm.lock().unwrap().hotspot.clone().expect("hotspot up");
    assert!(ssid.starts_with("latchkey-setup-"), "{ssid}");
    assert_eq!(
        text(&hotspot, "802-11-wireless-security", "key-mgmt"),
        "wpa-psk"
    );
    assert_eq!(text(&hotspot, "802-11-wireless-security", "psk"), code);
    assert_eq!(text(&hotspot, "ipv4", "method"), "shared");
    let proto = Vec::<String>::try_from(
        hotspot["802-11-wireless-security"]["proto"]
            .try_clone()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(proto, ["rsn"]);

    let nets: serde_json::Value = reqwest::get(node.url("/api/v1/networks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        nets,
        serde_json::json!({"networks":[
            {"ssid":"HomeWifi","rssi":-60,"secure":true},
            {"ssid":"Cafe","rssi":-85,"secure":false}]})
    );

    assert_eq!(node.provision(&gw, "wrong-pass", TOKEN).await.status(), 202);
    let failed = node.wait_state("wifi_failed").await;
    assert_eq!(failed["error"]["code"], "WIFI_WRONG_PASSWORD");
    // The refused profile is gone, so NM will not autoconnect with the wrong password.
    assert!(!nm.lock().unwrap().profiles.contains_key(STATION_UUID));

    assert_eq!(node.provision(&gw, "right-pass", TOKEN).await.status(), 202);
    gw.next_of("status").await;
    let s = nm.lock().unwrap();
    assert_eq!(s.station.as_deref(), Some("HomeWifi"));
    assert!(s.profiles.contains_key(STATION_UUID));
    assert!(s.hotspot.is_none(), "hotspot closed once provisioned");
    assert!(!s.profiles.contains_key(HOTSPOT_UUID));
}
