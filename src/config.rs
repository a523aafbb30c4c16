//! Configuration: command-line flag > environment > TOML file > default (CONTRACT §1).
//! clap resolves flag-over-environment; this module layers the file and the defaults beneath.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::clock::{SharedClock, SystemClock};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_DATA_DIR: &str = "latchkey-data";
/// A publisher's quota is a fifth of the publishes: when the log is full, those holding more
/// lose their oldest first, so it takes five devices at their quota to crowd out the rest.
const DEFAULT_PER_PUBLISHER: u64 = 2_000;
/// Event data the log keeps at most: room for the default retention at an average of 6 KiB.
const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
const MIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// A phone syncing UI state publishes a few events a second; 20/s with a burst of 40 is far
/// above that and far below what would fill the log.
const DEFAULT_PUBLISH_RATE: u32 = 20;
const DEFAULT_PUBLISH_BURST: u32 = 40;
/// The first of the colon-separated directories systemd passes in `var` (the others are not ours).
fn first_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(|s| {
        let s = s.to_string_lossy().into_owned();
        PathBuf::from(s.split(':').next().unwrap_or_default())
    })
}

/// A config file is a few kilobytes; refuse anything absurd rather than read it.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum BleMode {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is larger than 1 MiB")]
    TooLarge { path: PathBuf },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// `LATCHKEY_MDNS` (`true`/`on`/`1` or `false`/`off`/`0`) overrides `[discovery] mdns`.
fn mdns_env() -> Result<Option<bool>, ConfigError> {
    let Some(v) = std::env::var_os("LATCHKEY_MDNS") else {
        return Ok(None);
    };
    match v.to_string_lossy().to_ascii_lowercase().as_str() {
        "true" | "on" | "1" => Ok(Some(true)),
        "false" | "off" | "0" => Ok(Some(false)),
        _ => Err(ConfigError::Invalid(
            "LATCHKEY_MDNS must be true or false".into(),
        )),
    }
}

/// What the TOML file may say. Every field is optional; unknown keys are an error so a typo
/// does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub advertise_host: Option<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub pairing: PairingFile,
    #[serde(default)]
    pub events: EventsFile,
    #[serde(default)]
    pub ble: BleFile,
    #[serde(default)]
    pub discovery: DiscoveryFile,
    #[serde(default)]
    pub http: HttpFile,
    #[serde(default)]
    pub access: AccessFile,
    #[serde(default)]
    pub backup: BackupFile,
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<EndpointConfig>,
}

/// `[backup]`: the daemon's automatic backups into `<data-dir>/backups/`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    pub keep: Option<usize>,
    pub interval_secs: Option<u64>,
}

/// Automatic backups: one every `interval_secs` of the clock (0: none), the newest `keep` kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPolicy {
    pub keep: usize,
    pub interval_secs: u64,
    /// How often the daemon compares the clock with its newest backup.
    pub check_every: Duration,
}

impl Default for BackupPolicy {
    fn default() -> Self {
        Self {
            keep: 7,
            interval_secs: 86_400,
            check_every: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingFile {
    pub token_ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsFile {
    pub retention: Option<u64>,
    pub retention_per_publisher: Option<u64>,
    pub max_bytes: Option<u64>,
    pub audit_retention: Option<u64>,
    pub audit_max_age_days: Option<u64>,
    pub publish_rate: Option<u32>,
    pub publish_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryFile {
    /// Announce `_latchkey._tcp` over mDNS (default true).
    pub mdns: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleFile {
    pub mode: Option<BleMode>,
    pub require_encryption: Option<bool>,
    /// Which BlueZ adapter to serve on (`hci0`, …); default: `hci0` if present, else the first.
    pub adapter: Option<String>,
}

/// `[access]`: offline access tools.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    pub tool_lifetime_secs: Option<u64>,
    pub vehicle_key_lifetime_secs: Option<u64>,
}

/// `[http]`: the listener's timeouts and connection caps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    pub header_timeout_secs: Option<u64>,
    pub body_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub ws_per_device: Option<usize>,
}

/// How long a client may take, and how many connections it may hold open (`[http]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// From accepting a connection (or finishing a response on it) to having the next
    /// request's headers: hyper starts this clock while the connection waits for a request,
    /// so it is also the keep-alive idle timeout.
    pub header_timeout: Duration,
    /// To receive a whole request body.
    pub body_timeout: Duration,
    /// Connections not yet upgraded to an authenticated WebSocket, in total and per source
    /// address; `None`: derived from the fd limit at start (`listener::Caps`).
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    /// Authenticated WebSockets one device may hold open at once.
    pub ws_per_device: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            max_connections: None,
            max_connections_per_address: None,
            ws_per_device: 8,
        }
    }
}

impl HttpLimits {
    fn from_file(f: &HttpFile) -> Self {
        let d = Self::default();
        Self {
            header_timeout: f
                .header_timeout_secs
                .map_or(d.header_timeout, Duration::from_secs),
            body_timeout: f
                .body_timeout_secs
                .map_or(d.body_timeout, Duration::from_secs),
            max_connections: f.max_connections,
            max_connections_per_address: f.max_connections_per_address,
            ws_per_device: f.ws_per_device.unwrap_or(d.ws_per_device),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let secs = |d: Duration| d.as_secs();
        if !(1..=30).contains(&secs(self.header_timeout))
            || !(1..=30).contains(&secs(self.body_timeout))
        {
            return Err(ConfigError::Invalid(
                "http.header_timeout_secs and http.body_timeout_secs must be 1 to 30".into(),
            ));
        }
        if self.max_connections == Some(0)
            || self.max_connections_per_address == Some(0)
            || !(1..=1024).contains(&self.ws_per_device)
        {
            return Err(ConfigError::Invalid(
                "http.max_connections, http.max_connections_per_address and http.ws_per_device \
                 must be at least 1 (ws_per_device at most 1024)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A door, gate or vehicle the gateway can open (`[[endpoint]]` in the config file).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `[a-z0-9_-]{1,32}`; what the phone names in its auth frame.
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Device ids allowed to use this endpoint; absent means every paired device.
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    pub action: ActionConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ActionConfig {
    /// Runs argv directly (no shell) with a timeout.
    Command {
        argv: Vec<String>,
        #[serde(default = "default_command_timeout")]
        timeout_secs: u64,
    },
    /// Pulses a line through the Linux GPIO character device.
    Gpio {
        chip: String,
        line: u32,
        #[serde(default)]
        active_low: bool,
        #[serde(default = "default_pulse_ms")]
        pulse_ms: u64,
    },
    /// Forwards the grant to an endpoint node: `unlock` with `pulse_ms` (docs/NODES.md §5).
    Node {
        node_id: String,
        #[serde(default = "default_node_pulse_ms")]
        pulse_ms: u64,
    },
    /// Decides and records, drives nothing (useful while installing).
    None,
}

fn default_command_timeout() -> u64 {
    10
}

fn default_pulse_ms() -> u64 {
    500
}

fn default_node_pulse_ms() -> u64 {
    crate::nodes::doors::DEFAULT_PULSE_MS
}

/// The resolved configuration the daemon runs with.
#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub ble: BleMode,
    pub ble_require_encryption: bool,
    /// The BlueZ adapter to use (`[ble] adapter`); `None` picks `hci0`, else the first one.
    pub ble_adapter: Option<String>,
    pub advertise_host: Option<String>,
    /// Announce the gateway over mDNS/DNS-SD (`[discovery] mdns`, env `LATCHKEY_MDNS`).
    pub mdns: bool,
    /// Shown in the UI and the BLE advertisement.
    pub name: String,
    pub pair_token_ttl_secs: u64,
    /// Client publishes kept, all publishers together (`[events] retention`).
    pub event_retention: u64,
    /// Each publisher's quota when the log is full (`[events] retention_per_publisher`).
    pub event_retention_per_publisher: u64,
    /// Bytes of event data the log keeps (`[events] max_bytes`).
    pub event_max_bytes: u64,
    /// Gateway (audit) events kept (`[events] audit_retention`, `audit_max_age_days`).
    pub audit_retention: u64,
    pub audit_max_age_days: Option<u64>,
    /// Each device's (and admin credential's) publish budget: per second, and the burst.
    pub publish_rate: u32,
    pub publish_burst: u32,
    pub http: HttpLimits,
    /// How long an access tool lasts from its issue or refresh (`[access] tool_lifetime_secs`).
    pub tool_lifetime_secs: u64,
    /// How long a vehicle key lasts from its issue or refresh
    /// (`[access] vehicle_key_lifetime_secs`).
    pub vehicle_key_lifetime_secs: u64,
    pub endpoints: Vec<EndpointConfig>,
    /// systemd's `$CREDENTIALS_DIRECTORY`, where `latchkey.key` may live.
    pub credentials_dir: Option<PathBuf>,
    /// systemd's `$RUNTIME_DIRECTORY`: where `serve` puts its control socket (else the data dir).
    pub runtime_dir: Option<PathBuf>,
    /// How long a control-socket client may take to send its request.
    pub control_timeout: Duration,
    pub backup: BackupPolicy,
    /// Injected so tests control time.
    pub clock: SharedClock,
    /// The system D-Bus address for BLE; `None` means libdbus's default.
    pub dbus_address: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("ble", &self.ble)
            .field("advertise_host", &self.advertise_host)
            .field("mdns", &self.mdns)
            .field("name", &self.name)
            .field("pair_token_ttl_secs", &self.pair_token_ttl_secs)
            .field("event_retention", &self.event_retention)
            .field(
                "event_retention_per_publisher",
                &self.event_retention_per_publisher,
            )
            .field("event_max_bytes", &self.event_max_bytes)
            .field("audit_retention", &self.audit_retention)
            .field("audit_max_age_days", &self.audit_max_age_days)
            .field("publish_rate", &self.publish_rate)
            .field("publish_burst", &self.publish_burst)
            .field("http", &self.http)
            .field("tool_lifetime_secs", &self.tool_lifetime_secs)
            .field("vehicle_key_lifetime_secs", &self.vehicle_key_lifetime_secs)
            .field("endpoints", &self.endpoints.len())
            .field("runtime_dir", &self.runtime_dir)
            .field("backup", &self.backup)
            .finish_non_exhaustive()
    }
}

/// Values that came from flags or the environment (clap merged those two already).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub ble: Option<BleMode>,
}

impl Config {
    /// What the event log's pruner keeps.
    pub fn retention(&self) -> crate::events::Retention {
        crate::events::Retention {
            publishes: self.event_retention,
            per_publisher: self.event_retention_per_publisher,
            max_bytes: self.event_max_bytes,
            audit: self.audit_retention,
            audit_max_age_ms: self
                .audit_max_age_days
                .map(|d| i64::try_from(d.saturating_mul(86_400_000)).unwrap_or(i64::MAX)),
        }
    }

    pub fn resolve(over: &Overrides) -> Result<Self, ConfigError> {
        let file = match &over.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let state_dir = first_dir("STATE_DIRECTORY");
        let data_dir = over
            .data_dir
            .clone()
            .or(file.data_dir.clone())
            .or(state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let listen = match over.listen.or(file.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| ConfigError::Invalid("default listen address".into()))?,
        };
        let cfg = Self {
            data_dir,
            listen,
            ble: over.ble.or(file.ble.mode).unwrap_or_default(),
            ble_require_encryption: file.ble.require_encryption.unwrap_or(false),
            ble_adapter: file.ble.adapter,
            advertise_host: file.advertise_host,
            mdns: mdns_env()?.or(file.discovery.mdns).unwrap_or(true),
            name: file.name.unwrap_or_else(|| "latchkey".to_owned()),
            pair_token_ttl_secs: file.pairing.token_ttl_secs.unwrap_or(300),
            event_retention: file.events.retention.unwrap_or(10_000),
            event_retention_per_publisher: file
                .events
                .retention_per_publisher
                .unwrap_or(DEFAULT_PER_PUBLISHER),
            event_max_bytes: file.events.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            audit_retention: file.events.audit_retention.unwrap_or(10_000),
            audit_max_age_days: file.events.audit_max_age_days,
            publish_rate: file.events.publish_rate.unwrap_or(DEFAULT_PUBLISH_RATE),
            publish_burst: file.events.publish_burst.unwrap_or(DEFAULT_PUBLISH_BURST),
            http: HttpLimits::from_file(&file.http),
            tool_lifetime_secs: file
                .access
                .tool_lifetime_secs
                .unwrap_or(crate::grants::tools::DEFAULT_LIFETIME_SECS),
            vehicle_key_lifetime_secs: file
                .access
                .vehicle_key_lifetime_secs
                .unwrap_or(crate::grants::vehicle::DEFAULT_LIFETIME_SECS),
            endpoints: file.endpoints,
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            runtime_dir: first_dir("RUNTIME_DIRECTORY"),
            control_timeout: crate::control::REQUEST_TIMEOUT,
            backup: BackupPolicy {
                keep: file.backup.keep.unwrap_or(BackupPolicy::default().keep),
                interval_secs: file
                    .backup
                    .interval_secs
                    .unwrap_or(BackupPolicy::default().interval_secs),
                ..BackupPolicy::default()
            },
            clock: Arc::new(SystemClock),
            dbus_address: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A configuration for tests: the given data dir, loopback, BLE off, defaults elsewhere.
    pub fn for_test(data_dir: &Path, clock: SharedClock) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ble: BleMode::Off,
            ble_require_encryption: false,
            ble_adapter: None,
            advertise_host: None,
            // Tests never multicast from the host's network; the discovery tests turn it on
            // inside their own network namespace.
            mdns: false,
            name: "latchkey-test".to_owned(),
            pair_token_ttl_secs: 300,
            event_retention: 10_000,
            event_retention_per_publisher: DEFAULT_PER_PUBLISHER,
            event_max_bytes: DEFAULT_MAX_BYTES,
            audit_retention: 10_000,
            audit_max_age_days: None,
            publish_rate: DEFAULT_PUBLISH_RATE,
            publish_burst: DEFAULT_PUBLISH_BURST,
            http: HttpLimits::default(),
            tool_lifetime_secs: crate::grants::tools::DEFAULT_LIFETIME_SECS,
            vehicle_key_lifetime_secs: crate::grants::vehicle::DEFAULT_LIFETIME_SECS,
            endpoints: Vec::new(),
            credentials_dir: None,
            runtime_dir: None,
            control_timeout: crate::control::REQUEST_TIMEOUT,
            // Tests that want automatic backups turn them on.
            backup: BackupPolicy {
                interval_secs: 0,
                ..BackupPolicy::default()
            },
            clock,
            dbus_address: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !crate::grants::tools::LIFETIME_RANGE.contains(&self.tool_lifetime_secs) {
            return Err(ConfigError::Invalid(
                "access.tool_lifetime_secs must be between 3600 and 7776000".into(),
            ));
        }
        if !crate::grants::tools::LIFETIME_RANGE.contains(&self.vehicle_key_lifetime_secs) {
            return Err(ConfigError::Invalid(
                "access.vehicle_key_lifetime_secs must be between 3600 and 7776000".into(),
            ));
        }
        if !(30..=86_400).contains(&self.pair_token_ttl_secs) {
            return Err(ConfigError::Invalid(
                "pairing.token_ttl_secs must be between 30 and 86400".into(),
            ));
        }
        if self.event_retention < 10_000 {
            return Err(ConfigError::Invalid(
                "events.retention must be at least 10000".into(),
            ));
        }
        if !(1..=self.event_retention).contains(&self.event_retention_per_publisher) {
            return Err(ConfigError::Invalid(
                "events.retention_per_publisher must be between 1 and events.retention".into(),
            ));
        }
        if self.event_max_bytes < MIN_MAX_BYTES {
            return Err(ConfigError::Invalid(
                "events.max_bytes must be at least 16777216 (16 MiB)".into(),
            ));
        }
        if self.audit_retention < 10_000 {
            return Err(ConfigError::Invalid(
                "events.audit_retention must be at least 10000".into(),
            ));
        }
        if self
            .audit_max_age_days
            .is_some_and(|d| !(1..=36_500).contains(&d))
        {
            return Err(ConfigError::Invalid(
                "events.audit_max_age_days must be between 1 and 36500".into(),
            ));
        }
        if !(1..=100_000).contains(&self.publish_rate)
            || !(1..=1_000_000).contains(&self.publish_burst)
        {
            return Err(ConfigError::Invalid(
                "events.publish_rate must be 1 to 100000 and events.publish_burst 1 to 1000000"
                    .into(),
            ));
        }
        self.http.validate()?;
        if !(1..=1000).contains(&self.backup.keep) {
            return Err(ConfigError::Invalid("backup.keep must be 1 to 1000".into()));
        }
        if let Some(a) = &self.ble_adapter {
            let valid = a.len() <= 16
                && a.strip_prefix("hci")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "ble.adapter {a:?} must be an adapter name like hci0"
                )));
            }
        }
        if self.name.is_empty() || self.name.len() > 32 {
            return Err(ConfigError::Invalid(
                "name must be 1 to 32 characters".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for ep in &self.endpoints {
            let valid_id = !ep.id.is_empty()
                && ep.id.len() <= 32
                && ep.id.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid_id {
                return Err(ConfigError::Invalid(format!(
                    "endpoint id {:?} must be 1 to 32 of [a-z0-9_-]",
                    ep.id
                )));
            }
            if !seen.insert(ep.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "endpoint id {:?} appears twice",
                    ep.id
                )));
            }
            if let ActionConfig::Gpio { chip, pulse_ms, .. } = &ep.action {
                if chip.is_empty() || !(1..=60_000).contains(pulse_ms) {
                    return Err(ConfigError::Invalid(format!(
                        "endpoint {}: gpio needs a chip and pulse_ms from 1 to 60000",
                        ep.id
                    )));
                }
            }
            if let ActionConfig::Node { node_id, pulse_ms } = &ep.action {
                if crate::nodes::NodeId::parse(node_id).is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "endpoint {}: node_id must be a node id (see latchkey nodes list)",
                        ep.id
                    )));
                }
                if !(100..=30_000).contains(pulse_ms) {
                    return Err(ConfigError::Invalid(format!(
                        "endpoint {}: a node's pulse_ms must be 100 to 30000",
                        ep.id
                    )));
                }
            }
            if let ActionConfig::Command { argv, timeout_secs } = &ep.action {
                if argv.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "endpoint {}: argv is empty",
                        ep.id
                    )));
                }
                if *timeout_secs == 0 || *timeout_secs > 300 {
                    return Err(ConfigError::Invalid(format!(
                        "endpoint {}: timeout_secs must be 1 to 300",
                        ep.id
                    )));
                }
            }
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: one_line_toml_error(&text, &e),
    })
}

/// toml's own rendering draws the offending line over several lines; a shell user and the
/// journal want one: "line 3, column 1: unknown field `lisen`, expected …".
fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_flag_over_file_over_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latchkey.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:9000"
data_dir = "/tmp/from-file"
advertise_host = "10.0.0.5"
[pairing]
token_ttl_secs = 120
[[endpoint]]
id = "front-door"
action = { type = "command", argv = ["/bin/true"] }
"#,
        )
        .unwrap();
        let over = Overrides {
            config: Some(path.clone()),
            ..Default::default()
        };
        let cfg = Config::resolve(&over).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/from-file"));
        assert_eq!(cfg.pair_token_ttl_secs, 120);
        assert_eq!(cfg.endpoints.len(), 1);
        assert_eq!(cfg.ble, BleMode::Auto);

        let over = Overrides {
            config: Some(path),
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            data_dir: Some("/tmp/flag".into()),
            ble: Some(BleMode::Off),
        };
        let cfg = Config::resolve(&over).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/flag"));
        assert_eq!(cfg.ble, BleMode::Off);
    }

    #[test]
    fn event_bounds_and_budget_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let resolve = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::resolve(&Overrides {
                config: Some(path.clone()),
                ..Default::default()
            })
        };
        let cfg = resolve(
            "[events]\nretention = 20000\nretention_per_publisher = 500\n\
             audit_retention = 30000\naudit_max_age_days = 2\npublish_rate = 5\n",
        )
        .unwrap();
        let r = cfg.retention();
        assert_eq!(
            (r.publishes, r.per_publisher, r.audit),
            (20_000, 500, 30_000)
        );
        assert_eq!(r.audit_max_age_ms, Some(2 * 86_400_000));
        assert_eq!(r.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!((cfg.publish_rate, cfg.publish_burst), (5, 40));
        for bad in [
            "[events]\nretention_per_publisher = 10001\n",
            "[events]\nretention_per_publisher = 0\n",
            "[events]\naudit_retention = 9999\n",
            "[events]\nmax_bytes = 1000\n",
            "[events]\npublish_rate = 0\n",
            "[events]\naudit_max_age_days = 0\n",
        ] {
            assert!(
                matches!(resolve(bad), Err(ConfigError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "lisen = \"1.2.3.4:1\"\n").unwrap();
        let err = Config::resolve(&Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        assert!(err.to_string().contains("line 1, column 1"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
        std::fs::write(
            &path,
            "[[endpoint]]\nid = \"Bad Id\"\naction = { type = \"none\" }\n",
        )
        .unwrap();
        let err = Config::resolve(&Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
        // A node action names a node id, and a pulse the node accepts.
        for (node, pulse, ok) in [
            ("0b8f4c1e-7d3a-4a55-9a4e-5e0f2f1e9c10", 1500, true),
            ("front", 1500, false),
            ("0b8f4c1e-7d3a-4a55-9a4e-5e0f2f1e9c10", 50, false),
        ] {
            std::fs::write(
                &path,
                format!(
                    "[[endpoint]]\nid = \"gate\"\naction = {{ type = \"node\", node_id = \"{node}\", pulse_ms = {pulse} }}\n"
                ),
            )
            .unwrap();
            let r = Config::resolve(&Overrides {
                config: Some(path.clone()),
                ..Default::default()
            });
            assert_eq!(r.is_ok(), ok, "{node} {pulse}: {:?}", r.err());
        }
    }
}
