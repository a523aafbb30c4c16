//! Everything a request handler, WebSocket session or BLE callback needs, shared by reference.

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ble::BleStatus;
use crate::budget::Budgets;
use crate::clock::SharedClock;
use crate::clocktrust::ClockTrust;
use crate::config::Config;
use crate::crypto::MasterKey;
use crate::events::EventBus;
use crate::nodes::NodeHub;
use crate::ratelimit::RateLimiter;
use crate::registry::DeviceId;
use crate::slots::Slots;
use crate::store::Store;

pub type AppState = Arc<App>;

pub struct App {
    pub config: Config,
    pub store: Store,
    pub master: MasterKey,
    pub bus: EventBus,
    pub clock: SharedClock,
    pub gateway_id: String,
    /// Host and port phones are told to reach us at.
    pub advertise_host: String,
    pub port: u16,
    /// 5 failed logins per minute per client address.
    pub login_limit: RateLimiter<IpAddr>,
    /// Failed logins per minute from everyone together (addresses are cheap on a LAN).
    pub login_global: RateLimiter<()>,
    /// Password hashes (argon2, 19 MiB each) running at once.
    pub password_checks: tokio::sync::Semaphore,
    /// Authenticated WebSockets open per device (`http.ws_per_device`).
    pub ws_devices: Slots<DeviceId>,
    /// 10 unknown pair tokens per minute per client address.
    pub pair_limit: RateLimiter<IpAddr>,
    /// Access-tool requests (register + refresh) per device and minute.
    pub tool_limit: RateLimiter<DeviceId>,
    /// `POST /pairing-sessions`: 5 a minute per device.
    pub pairing_session_limit: RateLimiter<DeviceId>,
    /// Publishes per device (or admin credential), across all its sockets.
    pub publish_budget: Budgets<String>,
    pub metrics: Metrics,
    /// Cancelled when the daemon begins to stop; long-lived tasks watch it.
    pub shutdown: CancellationToken,
    /// Long-lived connection tasks (WebSockets), awaited on shutdown.
    pub tasks: TaskTracker,
    /// Where the BLE door service stands.
    pub ble: BleStatus,
    /// Whether the gateway's clock looks right (NTP, and what phones' frames say).
    pub clock_trust: ClockTrust,
    /// First run's one-time set-up code (its hash), while no admin password exists.
    pub setup: crate::setup::SetupCode,
    /// Live endpoint-node sessions (and the registration throttle).
    pub nodes: Arc<NodeHub>,
}

impl App {
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.host_port())
    }

    pub fn host_port(&self) -> String {
        if self.advertise_host.contains(':') {
            format!("[{}]:{}", self.advertise_host, self.port)
        } else {
            format!("{}:{}", self.advertise_host, self.port)
        }
    }
}

/// Counters for `/metrics`; gauges that the database knows are read at scrape time.
#[derive(Default)]
pub struct Metrics {
    pub pairings: AtomicU64,
    pub pair_failures: AtomicU64,
    pub login_failures: AtomicU64,
    pub password_checks: AtomicU64,
    pub rate_limited: AtomicU64,
    pub ws_connections: AtomicU64,
    pub ws_connections_total: AtomicU64,
    pub ws_dropped_slow: AtomicU64,
    pub access_granted: AtomicU64,
    pub access_denied: AtomicU64,
}
