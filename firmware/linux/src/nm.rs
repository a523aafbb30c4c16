//! Wi-Fi through NetworkManager's D-Bus API (zbus): the setup access point is an NM hotspot
//! (WPA2-PSK, CCMP, the label's setup code as passphrase, IPv4 "shared" so phones get an
//! address), and joining is an NM station connection. Both connections have fixed UUIDs, so a
//! new attempt replaces the previous one instead of piling up profiles.
//!
//! WPA3-SAE is not requested: NM's `sae` key management needs driver support that the Pi's
//! brcmfmac does not offer in AP mode; WPA2 with an 80-bit code is the documented baseline
//! (NODES.md §4.1).

use std::collections::HashMap;
use std::time::Duration;

use latchkey_node_core::board::{Network, Wifi, WifiError};
use zbus::zvariant::{OwnedObjectPath, Value};

const NM: &str = "org.freedesktop.NetworkManager";
const NM_PATH: &str = "/org/freedesktop/NetworkManager";
const SETTINGS_PATH: &str = "/org/freedesktop/NetworkManager/Settings";
/// Fixed UUIDs of the two connection profiles the node owns.
pub const HOTSPOT_UUID: &str = "6c9d8a1e-4b7f-4d0e-9a51-1a7e5e0c0001";
/// See [`HOTSPOT_UUID`].
pub const STATION_UUID: &str = "6c9d8a1e-4b7f-4d0e-9a51-1a7e5e0c0002";
/// How long to wait for a scan to finish before reading the results.
const SCAN_SETTLE: Duration = Duration::from_secs(2);
/// How often the activation state is read while joining.
const POLL: Duration = Duration::from_millis(200);

// NM_ACTIVE_CONNECTION_STATE_*
const ACTIVATED: u32 = 2;
const DEACTIVATED: u32 = 4;
// NM_DEVICE_STATE_REASON_* that mean "the password was refused".
const WRONG_PASSWORD_REASONS: [u32; 4] = [7, 8, 9, 11];
// NM_DEVICE_STATE_REASON_SSID_NOT_FOUND
const SSID_NOT_FOUND: u32 = 53;

type Settings<'a> = HashMap<&'static str, HashMap<&'static str, Value<'a>>>;

/// NetworkManager on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` is honoured).
pub struct NmWifi {
    conn: zbus::Connection,
    device: OwnedObjectPath,
    hotspot_active: Option<OwnedObjectPath>,
}

fn failed(e: impl std::fmt::Display) -> WifiError {
    tracing::warn!("networkmanager: {e}");
    WifiError::Failed
}

impl NmWifi {
    /// Finds the Wi-Fi device `iface` (e.g. `wlan0`).
    pub async fn connect(iface: &str) -> anyhow::Result<Self> {
        let conn = zbus::Connection::system().await?;
        let nm = proxy(&conn, NM_PATH, NM).await?;
        let device: OwnedObjectPath = nm.call("GetDeviceByIpIface", &(iface,)).await?;
        Ok(Self {
            conn,
            device,
            hotspot_active: None,
        })
    }

    async fn activate(
        &self,
        settings: Settings<'_>,
    ) -> Result<(OwnedObjectPath, OwnedObjectPath), WifiError> {
        let nm = proxy(&self.conn, NM_PATH, NM).await.map_err(failed)?;
        let root = OwnedObjectPath::try_from("/").map_err(failed)?;
        nm.call("AddAndActivateConnection", &(settings, &self.device, root))
            .await
            .map_err(failed)
    }

    /// Deletes the profile with `uuid` if NM has it.
    async fn forget(&self, uuid: &str) {
        let Ok(settings) = proxy(
            &self.conn,
            SETTINGS_PATH,
            "org.freedesktop.NetworkManager.Settings",
        )
        .await
        else {
            return;
        };
        let found: Result<OwnedObjectPath, _> =
            settings.call("GetConnectionByUuid", &(uuid,)).await;
        if let Ok(path) = found {
            if let Ok(c) = proxy(
                &self.conn,
                path.as_str(),
                "org.freedesktop.NetworkManager.Settings.Connection",
            )
            .await
            {
                let _: Result<(), _> = c.call("Delete", &()).await;
            }
        }
    }

    async fn wait_activated(&self, active: &OwnedObjectPath) -> Result<(), WifiError> {
        let ac = proxy(
            &self.conn,
            active.as_str(),
            "org.freedesktop.NetworkManager.Connection.Active",
        )
        .await
        .map_err(failed)?;
        loop {
            // A vanished active connection is a failed one.
            let state: u32 = ac.get_property("State").await.unwrap_or(DEACTIVATED);
            match state {
                ACTIVATED => return Ok(()),
                DEACTIVATED => return Err(self.failure_reason().await),
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    async fn failure_reason(&self) -> WifiError {
        let Ok(dev) = proxy(
            &self.conn,
            self.device.as_str(),
            "org.freedesktop.NetworkManager.Device",
        )
        .await
        else {
            return WifiError::Failed;
        };
        match dev.get_property::<(u32, u32)>("StateReason").await {
            Ok((_, reason)) if WRONG_PASSWORD_REASONS.contains(&reason) => WifiError::WrongPassword,
            Ok((_, SSID_NOT_FOUND)) => WifiError::NotFound,
            _ => WifiError::Failed,
        }
    }
}

async fn proxy<'a>(
    conn: &zbus::Connection,
    path: &'a str,
    iface: &'a str,
) -> zbus::Result<zbus::Proxy<'a>> {
    zbus::proxy::Builder::new(conn)
        .destination(NM)?
        .path(path)?
        .interface(iface)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

fn security(psk: &str) -> HashMap<&'static str, Value<'_>> {
    HashMap::from([
        ("key-mgmt", Value::from("wpa-psk")),
        ("psk", Value::from(psk)),
    ])
}

impl Wifi for NmWifi {
    async fn scan(&mut self) -> Result<Vec<Network>, WifiError> {
        let wireless = proxy(
            &self.conn,
            self.device.as_str(),
            "org.freedesktop.NetworkManager.Device.Wireless",
        )
        .await
        .map_err(failed)?;
        let options: HashMap<&str, Value<'_>> = HashMap::new();
        // A scan refused as "too soon" still leaves the last results to read.
        let _: Result<(), _> = wireless.call("RequestScan", &(options,)).await;
        tokio::time::sleep(SCAN_SETTLE).await;
        let aps: Vec<OwnedObjectPath> = wireless
            .call("GetAllAccessPoints", &())
            .await
            .map_err(failed)?;
        let mut out = Vec::new();
        for ap in aps {
            let Ok(p) = proxy(
                &self.conn,
                ap.as_str(),
                "org.freedesktop.NetworkManager.AccessPoint",
            )
            .await
            else {
                continue;
            };
            let ssid: Vec<u8> = p.get_property("Ssid").await.unwrap_or_default();
            let Ok(ssid) = String::from_utf8(ssid) else {
                continue;
            };
            if ssid.is_empty() || out.iter().any(|n: &Network| n.ssid == ssid) {
                continue;
            }
            let strength: u8 = p.get_property("Strength").await.unwrap_or(0);
            let flags: u32 = p.get_property("Flags").await.unwrap_or(0);
            let wpa: u32 = p.get_property("WpaFlags").await.unwrap_or(0);
            let rsn: u32 = p.get_property("RsnFlags").await.unwrap_or(0);
            out.push(Network {
                ssid,
                // NM reports 0–100 %; the usual linear mapping onto -100..-50 dBm.
                rssi: i16::from(strength.min(100)) / 2 - 100,
                secure: flags & 1 != 0 || wpa != 0 || rsn != 0,
            });
        }
        Ok(out)
    }

    async fn open_setup_ap(&mut self, ssid: &str, passphrase: &str) -> Result<(), WifiError> {
        self.forget(HOTSPOT_UUID).await;
        let mut sec = security(passphrase);
        sec.insert("proto", Value::from(vec!["rsn"]));
        sec.insert("pairwise", Value::from(vec!["ccmp"]));
        sec.insert("group", Value::from(vec!["ccmp"]));
        let settings: Settings<'_> = HashMap::from([
            (
                "connection",
                HashMap::from([
                    ("type", Value::from("802-11-wireless")),
                    ("id", Value::from("latchkey-setup")),
                    ("uuid", Value::from(HOTSPOT_UUID)),
                    ("autoconnect", Value::from(false)),
                ]),
            ),
            (
                "802-11-wireless",
                HashMap::from([
                    ("ssid", Value::from(ssid.as_bytes())),
                    ("mode", Value::from("ap")),
                ]),
            ),
            ("802-11-wireless-security", sec),
            ("ipv4", HashMap::from([("method", Value::from("shared"))])),
            ("ipv6", HashMap::from([("method", Value::from("ignore"))])),
        ]);
        let (_, active) = self.activate(settings).await?;
        self.wait_activated(&active).await?;
        self.hotspot_active = Some(active);
        Ok(())
    }

    async fn close_setup_ap(&mut self) {
        if let Some(active) = self.hotspot_active.take() {
            if let Ok(nm) = proxy(&self.conn, NM_PATH, NM).await {
                let _: Result<(), _> = nm.call("DeactivateConnection", &(active,)).await;
            }
        }
        self.forget(HOTSPOT_UUID).await;
    }

    async fn join(&mut self, ssid: &str, password: &str) -> Result<(), WifiError> {
        self.forget(STATION_UUID).await;
        let mut settings: Settings<'_> = HashMap::from([
            (
                "connection",
                HashMap::from([
                    ("type", Value::from("802-11-wireless")),
                    ("id", Value::from("latchkey-station")),
                    ("uuid", Value::from(STATION_UUID)),
                    ("autoconnect", Value::from(true)),
                ]),
            ),
            (
                "802-11-wireless",
                HashMap::from([
                    ("ssid", Value::from(ssid.as_bytes())),
                    ("mode", Value::from("infrastructure")),
                ]),
            ),
        ]);
        if !password.is_empty() {
            settings.insert("802-11-wireless-security", security(password));
        }
        let (_, active) = self.activate(settings).await?;
        let result = self.wait_activated(&active).await;
        if result.is_err() {
            // A refused profile must not linger and autoconnect with the wrong password.
            self.forget(STATION_UUID).await;
        }
        result
    }
}
