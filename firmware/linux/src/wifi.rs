//! Wi-Fi adapters. On Linux "the access point" is the AP API's listener (`--ap-listen`); the
//! radio side is one of:
//!
//! - [`HostWifi`] (default): the host's network is managed outside the node (a wired Pi, or
//!   NetworkManager configured by hand): scan lists nothing, joining succeeds at once.
//! - [`SimWifi`] (`--wifi-sim FILE`): a JSON list `[{"ssid","password","rssi"}]`; joining checks
//!   the password, so the wrong-password path runs for real. Read on every call.
//!
//! - [`crate::nm::NmWifi`] (`--wifi nm:IFACE`): NetworkManager over D-Bus, the real adapter.

use std::path::PathBuf;

use latchkey_node_core::board::{Network, Wifi, WifiError};
use serde::Deserialize;
use zeroize::Zeroizing;

/// The host manages its own network.
pub struct HostWifi;

impl Wifi for HostWifi {
    async fn scan(&mut self) -> Result<Vec<Network>, WifiError> {
        Ok(Vec::new())
    }
    async fn open_setup_ap(&mut self, _ssid: &str, _passphrase: &str) -> Result<(), WifiError> {
        Ok(())
    }
    async fn close_setup_ap(&mut self) {}
    async fn join(&mut self, _ssid: &str, _password: &str) -> Result<(), WifiError> {
        Ok(())
    }
}

#[derive(Deserialize)]
struct SimNetwork {
    ssid: String,
    #[serde(default)]
    password: Zeroizing<String>,
    #[serde(default = "default_rssi")]
    rssi: i16,
}

fn default_rssi() -> i16 {
    -50
}

/// The stand-in radio for tests.
pub struct SimWifi {
    path: PathBuf,
}

impl SimWifi {
    /// Networks from `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    async fn networks(&self) -> Result<Vec<SimNetwork>, WifiError> {
        let bytes = tokio::fs::read(&self.path).await.map_err(|e| {
            tracing::error!("wifi-sim {}: {e}", self.path.display());
            WifiError::Failed
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            tracing::error!("wifi-sim {}: {e}", self.path.display());
            WifiError::Failed
        })
    }
}

impl Wifi for SimWifi {
    async fn scan(&mut self) -> Result<Vec<Network>, WifiError> {
        Ok(self
            .networks()
            .await?
            .into_iter()
            .map(|n| Network {
                secure: !n.password.is_empty(),
                ssid: n.ssid,
                rssi: n.rssi,
            })
            .collect())
    }

    async fn open_setup_ap(&mut self, ssid: &str, _passphrase: &str) -> Result<(), WifiError> {
        tracing::info!("wifi-sim: setup access point {ssid} (WPA2, the label's code) up");
        Ok(())
    }

    async fn close_setup_ap(&mut self) {
        tracing::info!("wifi-sim: setup access point down");
    }

    async fn join(&mut self, ssid: &str, password: &str) -> Result<(), WifiError> {
        let networks = self.networks().await?;
        let Some(n) = networks.iter().find(|n| n.ssid == ssid) else {
            return Err(WifiError::NotFound);
        };
        if n.password.as_bytes() != password.as_bytes() {
            return Err(WifiError::WrongPassword);
        }
        Ok(())
    }
}

/// Either adapter, chosen on the command line.
pub enum AnyWifi {
    /// Host-managed network.
    Host(HostWifi),
    /// Stand-in.
    Sim(SimWifi),
    /// NetworkManager.
    Nm(crate::nm::NmWifi),
}

impl Wifi for AnyWifi {
    async fn scan(&mut self) -> Result<Vec<Network>, WifiError> {
        match self {
            AnyWifi::Host(w) => w.scan().await,
            AnyWifi::Sim(w) => w.scan().await,
            AnyWifi::Nm(w) => w.scan().await,
        }
    }
    async fn open_setup_ap(&mut self, ssid: &str, passphrase: &str) -> Result<(), WifiError> {
        match self {
            AnyWifi::Host(w) => w.open_setup_ap(ssid, passphrase).await,
            AnyWifi::Sim(w) => w.open_setup_ap(ssid, passphrase).await,
            AnyWifi::Nm(w) => w.open_setup_ap(ssid, passphrase).await,
        }
    }
    async fn close_setup_ap(&mut self) {
        match self {
            AnyWifi::Host(w) => w.close_setup_ap().await,
            AnyWifi::Sim(w) => w.close_setup_ap().await,
            AnyWifi::Nm(w) => w.close_setup_ap().await,
        }
    }
    async fn join(&mut self, ssid: &str, password: &str) -> Result<(), WifiError> {
        match self {
            AnyWifi::Host(w) => w.join(ssid, password).await,
            AnyWifi::Sim(w) => w.join(ssid, password).await,
            AnyWifi::Nm(w) => w.join(ssid, password).await,
        }
    }
}
