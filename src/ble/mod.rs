//! BLE GATT adapter (CONTRACT §5): the door service on BlueZ, through bluer.
//!
//! - [`door`]: challenge reads, auth writes and result notifications, over the transport-free
//!   [`crate::access`] domain;
//! - [`gatt`]: the bluer application and advertisement, registered on one adapter;
//! - [`bus`]: what zbus tells us about BlueZ (present? adapters? restarted? peer gone?);
//! - the supervisor below keeps the registration alive across bluetoothd restarts and adapter
//!   removal without restarting the daemon.
//!
//! `--ble off` starts nothing; `--ble auto` starts when BlueZ and an adapter answer, otherwise
//! says once why not and waits for them; `--ble on` fails start-up unless the service could
//! be registered.

pub mod bus;
pub mod door;
pub mod door_v2;
pub mod gatt;
mod timedate;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::BleMode;
use crate::state::AppState;
use bus::BusEvent;
use door::Door;
use door_v2::DoorV2;
use gatt::Registration;

#[derive(Debug, thiserror::Error)]
pub enum BleError {
    #[error("BLE was required (--ble on) but is not available: {0}")]
    Unavailable(String),
}

/// Where the door service stands, for the log, `/metrics` and the activity page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum BleState {
    /// Not running, and not going to (disabled, or no system bus).
    Off { reason: String },
    /// Waiting for BlueZ or an adapter, or retrying a failed registration.
    Waiting { reason: String },
    /// Registered and advertising.
    Up { adapter: String },
}

#[derive(Default)]
pub struct BleStatus {
    state: Mutex<Option<BleState>>,
    /// Successful registrations (more than one means BlueZ or the adapter came back).
    pub registrations: AtomicU64,
    /// Peer disconnects seen (their nonces were discarded).
    pub disconnects: AtomicU64,
}

impl BleStatus {
    pub fn get(&self) -> BleState {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(BleState::Off {
                reason: "not started".into(),
            })
    }

    /// Sets the state; returns whether it changed (callers log transitions only).
    fn set(&self, s: BleState) -> bool {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref() == Some(&s) {
            return false;
        }
        *g = Some(s);
        true
    }

    pub fn is_up(&self) -> bool {
        matches!(self.get(), BleState::Up { .. })
    }
}

/// How often idle peer lockout rows are pruned.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);
/// A re-check while waiting for BlueZ, in case a signal was missed.
const IDLE_RECHECK: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Starts the BLE service according to the configured mode.
pub async fn start(state: &AppState) -> Result<(), BleError> {
    let mode = state.config.ble;
    if mode == BleMode::Off {
        state.ble.set(BleState::Off {
            reason: "disabled (--ble off)".into(),
        });
        return Ok(());
    }
    let fail = |reason: String| -> Result<(), BleError> {
        if mode == BleMode::On {
            return Err(BleError::Unavailable(reason));
        }
        tracing::info!("BLE is off: {reason}");
        state.ble.set(BleState::Off { reason });
        Ok(())
    };

    let conn = match bus::connect(state.config.dbus_address.as_deref()).await {
        Ok(c) => c,
        Err(reason) => return fail(reason),
    };
    let session = match tokio::time::timeout(bus::CALL_TIMEOUT, bluer::Session::new()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(format!("bluer cannot open the system D-Bus: {e}")),
        Err(_) => return fail("bluer could not open the system D-Bus within 5 s".into()),
    };
    // Watch before probing, so nothing that happens in between is missed.
    let events = match bus::watch(&conn, state.shutdown.clone()).await {
        Ok(rx) => rx,
        Err(e) => return fail(format!("cannot watch the system D-Bus: {e}")),
    };
    timedate::spawn(conn.clone(), state.clone());
    spawn_housekeeping(state.clone());

    let door = Arc::new(Door::new(state.clone()));
    let v2 = Arc::new(DoorV2::new(state.clone(), door.clone()));
    let mut sup = Supervisor {
        state: state.clone(),
        door,
        v2,
        session,
        conn,
        reg: None,
    };
    match sup.try_up().await {
        Ok(()) => {}
        Err(Retry::Wait(reason)) if mode == BleMode::On => {
            return Err(BleError::Unavailable(reason))
        }
        Err(Retry::Backoff(reason)) if mode == BleMode::On => {
            return Err(BleError::Unavailable(reason))
        }
        Err(Retry::Wait(reason)) | Err(Retry::Backoff(reason)) => {
            tracing::info!(
                "BLE is off for now: {reason}; the door service starts when BlueZ and an adapter answer"
            );
        }
    }
    tokio::spawn(sup.run(events));
    Ok(())
}

enum Retry {
    /// BlueZ or the adapter is missing: wait for the bus to say it appeared.
    Wait(String),
    /// Registration failed: try again after a backoff.
    Backoff(String),
}

struct Supervisor {
    state: AppState,
    door: Arc<Door>,
    v2: Arc<DoorV2>,
    session: bluer::Session,
    conn: zbus::Connection,
    reg: Option<Registration>,
}

impl Supervisor {
    async fn try_up(&mut self) -> Result<(), Retry> {
        let adapters = bus::adapters(&self.conn)
            .await
            .map_err(|r| self.waiting(r))?;
        let name = bus::choose_adapter(&adapters, self.state.config.ble_adapter.as_deref())
            .map_err(|r| self.waiting(r))?;
        match gatt::register(&self.session, &name, &self.door, &self.v2).await {
            Ok(reg) => {
                self.reg = Some(reg);
                let n = self.state.ble.registrations.fetch_add(1, Ordering::Relaxed) + 1;
                self.state.ble.set(BleState::Up {
                    adapter: name.clone(),
                });
                tracing::info!(
                    adapter = %name,
                    registrations = n,
                    "BLE door service registered and advertising"
                );
                Ok(())
            }
            Err(reason) => {
                if self.state.ble.set(BleState::Waiting {
                    reason: reason.clone(),
                }) {
                    tracing::warn!(adapter = %name, "BLE registration failed: {reason}");
                }
                Err(Retry::Backoff(reason))
            }
        }
    }

    fn waiting(&self, reason: String) -> Retry {
        if self.state.ble.set(BleState::Waiting {
            reason: reason.clone(),
        }) && self.state.ble.registrations.load(Ordering::Relaxed) > 0
        {
            tracing::warn!("BLE door service is down: {reason}");
        }
        Retry::Wait(reason)
    }

    /// Drops the registration (which unregisters what is still registered).
    async fn down(&mut self, reason: &str) {
        if let Some(reg) = self.reg.take() {
            tracing::warn!(adapter = %reg.adapter, "BLE door service is down: {reason}");
            drop(reg);
        }
        self.door.reset().await;
        self.v2.reset().await;
        self.state.ble.set(BleState::Waiting {
            reason: reason.to_owned(),
        });
    }

    async fn run(mut self, mut events: mpsc::Receiver<BusEvent>) {
        let stop = self.state.shutdown.clone();
        let mut backoff = Duration::from_secs(1);
        let mut retry_at = self.reg.is_none().then(|| Instant::now() + backoff);
        loop {
            let wake = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        tracing::warn!("lost the system D-Bus watch; BLE will not recover by itself");
                        stop.cancelled().await;
                        break;
                    };
                    match ev {
                        BusEvent::BluezOwner(None) => {
                            self.down("bluetoothd left the system D-Bus").await;
                            retry_at = Some(Instant::now() + IDLE_RECHECK);
                        }
                        BusEvent::BluezOwner(Some(_)) => {
                            self.down("bluetoothd restarted").await;
                            backoff = Duration::from_secs(1);
                            retry_at = Some(Instant::now());
                        }
                        BusEvent::AdapterAdded(_) if self.reg.is_none() => {
                            retry_at = Some(Instant::now());
                        }
                        BusEvent::AdapterRemoved(a)
                            if self.reg.as_ref().is_some_and(|r| r.adapter == a) =>
                        {
                            self.down(&format!("adapter {a} disappeared")).await;
                            retry_at = Some(Instant::now());
                        }
                        BusEvent::PeerGone(p) => {
                            self.door.peer_gone(&p);
                            self.v2.peer_gone(&p);
                            self.state.ble.disconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                _ = wake => {
                    retry_at = None;
                    if self.reg.is_none() {
                        match self.try_up().await {
                            Ok(()) => backoff = Duration::from_secs(1),
                            Err(Retry::Wait(_)) => {
                                retry_at = Some(Instant::now() + IDLE_RECHECK);
                            }
                            Err(Retry::Backoff(_)) => {
                                retry_at = Some(Instant::now() + backoff);
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            }
                        }
                    }
                }
            }
        }
        // Unregister while the runtime still runs.
        if let Some(reg) = self.reg.take() {
            drop(reg);
            tokio::task::yield_now().await;
        }
    }
}

fn spawn_housekeeping(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = state.shutdown.cancelled() => return,
            }
            let now = state.now();
            match state
                .store
                .write(move |tx| crate::access::verify::housekeeping(tx, now))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "idle peer lockouts forgotten"),
                Err(e) => tracing::warn!(error = %e, "lockout housekeeping failed"),
            }
        }
    });
}
