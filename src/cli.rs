//! The command line (CONTRACT §1). `main.rs` only parses and calls `cli::main`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use latchkey_phone::cli::PhoneCmd;

use crate::config::{BleMode, Config, Overrides};
use crate::registry::{self, DeviceId, RevokeOutcome};
use crate::{admin, open_store, pairing};

#[derive(Debug, Parser)]
#[command(
    name = "latchkey",
    version,
    about = "Pairs phones on the LAN and lets them through doors"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Data directory [default: $STATE_DIRECTORY, else ./latchkey-data]
    #[arg(long, global = true, env = "LATCHKEY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file
    #[arg(long, global = true, env = "LATCHKEY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: web UI, HTTP API, WebSocket and BLE door service
    Serve(ServeArgs),
    /// Admin credentials
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Create a pairing token and show its QR code in the terminal
    Pair,
    /// The device registry
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Endpoint nodes
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// A reference phone client: pair, listen, publish, unlock, add-node
    #[command(subcommand)]
    Phone(PhoneCmd),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0:8080]
    #[arg(long, env = "LATCHKEY_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// BLE door service: auto (when BlueZ and an adapter answer), on (required), off
    #[arg(long, env = "LATCHKEY_BLE", value_enum)]
    pub ble: Option<BleMode>,
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Set the admin password (read from stdin when stdin is not a terminal)
    Password,
    /// Print a new admin API token, alone on one line
    Token {
        /// A name to recognise the token by
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Re-key the registry and re-seal every secret under a new master key (daemon stopped)
    RotateKey,
}

#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// List paired devices
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device; its connections are cut off at once
    Revoke {
        /// Device id (from `latchkey devices list`)
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// List endpoint nodes (pending, registered, revoked)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node; its session is closed at once (4403) and it is refused after
    Revoke {
        /// Node id (from `latchkey nodes list`)
        id: String,
    },
}

impl Cli {
    fn overrides(&self) -> Overrides {
        let (listen, ble) = match &self.command {
            Command::Serve(a) => (a.listen, a.ble),
            _ => (None, None),
        };
        Overrides {
            data_dir: self.global.data_dir.clone(),
            config: self.global.config.clone(),
            listen,
            ble,
        }
    }
}

pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LATCHKEY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd the journal adds its own timestamps; plain lines read best there.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journald && std::io::stderr().is_terminal())
        .with_target(false);
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// Runs a parsed command line. Errors become exit status 1 with a one-line reason.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    // The phone side is a separate party: it reads no gateway configuration.
    if let Command::Phone(cmd) = cli.command {
        return latchkey_phone::cli::run(cmd);
    }
    // Nothing the gateway writes is for other users: the data dir holds password hashes and
    // sealed secrets. (The store also makes its files 0600 itself; this covers the rest.)
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let config = Config::resolve(&cli.overrides())?;
    crate::check_data_dir(&config.data_dir)?;
    match cli.command {
        Command::Serve(_) => serve(config),
        Command::Admin(AdminCmd::Password) => set_password(&config),
        Command::Admin(AdminCmd::Token { name }) => {
            let store = registry_store(&config)?;
            let now = config.clock.now();
            let (_, token) =
                store.write_blocking(|tx| Ok(admin::create_token(tx, &name, now)))??;
            println!("{}", token.expose());
            Ok(())
        }
        Command::Admin(AdminCmd::RotateKey) => rotate_key(&config),
        Command::Pair => pair(&config),
        Command::Devices(DevicesCmd::List { json }) => list_devices(&config, json),
        Command::Devices(DevicesCmd::Revoke { id }) => revoke_device(&config, &id),
        Command::Nodes(NodesCmd::List { json }) => list_nodes(&config, json),
        Command::Nodes(NodesCmd::Revoke { id }) => revoke_node(&config, &id),
        Command::Phone(_) => Ok(()),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    return_big_allocations();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        // Handlers go in first, so a SIGTERM that arrives while we start is a clean stop, not
        // the default action (death by signal, which systemd counts as a failure).
        let shutdown = crate::shutdown_signal().context("cannot handle SIGTERM/SIGINT")?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        crate::run(config, listener, shutdown).await
    });
    // Everything is committed by now; do not let a stuck blocking task hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// glibc serves large allocations with mmap only until the first is freed; then it raises
/// the threshold and keeps later ones (argon2's 19 MiB per password check, on whichever
/// blocking thread ran it) in per-thread arenas it rarely gives back. A fixed threshold keeps
/// every large block mmapped, so its memory returns to the system when freed.
fn return_big_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called at start, before the runtime exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn set_password(config: &Config) -> anyhow::Result<()> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New admin password: ")?;
        let second = rpassword::prompt_password("Again: ")?;
        if first != second {
            bail!("the passwords differ");
        }
        crate::secret::SecretString::new(first)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(8 * 1024)
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        crate::secret::SecretString::new(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    let store = registry_store(config)?;
    let now = config.clock.now();
    store.write_blocking(|tx| Ok(admin::set_password(tx, password.expose(), now)))??;
    eprintln!("admin password set; existing web sessions were ended");
    Ok(())
}

fn rotate_key(config: &Config) -> anyhow::Result<()> {
    use crate::rotation::Rotated;
    match crate::rotation::rotate(&config.data_dir, config.credentials_dir.as_deref())? {
        Rotated::KeyFile(p) => eprintln!(
            "the registry and every sealed secret are now under the new master key in {}; \
             back it up now (the old key opens nothing any more)",
            p.display()
        ),
        Rotated::InstallCredential(p) => eprintln!(
            "the registry and every sealed secret are now under the new master key in {p}; \
             install it as the latchkey.key credential (systemd-creds encrypt --name=latchkey.key \
             {p} /etc/credstore.encrypted/latchkey.key), delete {p}, and back the key up",
            p = p.display()
        ),
    }
    Ok(())
}

fn pair(config: &Config) -> anyhow::Result<()> {
    let store = registry_store(config)?;
    let now = config.clock.now();
    let ttl = config.pair_token_ttl_secs;
    let t = store.write_blocking(|tx| Ok(pairing::create_token(tx, now, ttl)))??;
    // Where the daemon on this data dir said it is reachable; else work it out from the config.
    let recorded: Option<serde_json::Value> = store
        .read_blocking(|c| crate::store::meta_get(c, "advertise"))?
        .and_then(|s| serde_json::from_str(&s).ok());
    let host = match (
        &config.advertise_host,
        recorded.as_ref().and_then(|v| v["host"].as_str()),
    ) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) => h.to_owned(),
        (None, None) => crate::net::advertise_host(None, config.listen),
    };
    let port = recorded
        .as_ref()
        .and_then(|v| v["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(config.listen.port());
    let payload = serde_json::json!({
        "v": 1,
        "host": host,
        "port": port,
        "pairToken": t.token.expose(),
        "expires": t.expires,
    })
    .to_string();
    let qr = crate::qr::terminal(&payload)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{qr}")?;
    writeln!(
        out,
        "Scan with the phone within {} (until {}).",
        human_secs(ttl),
        crate::clock::rfc3339(t.expires)
    )?;
    writeln!(out, "{payload}")?;
    Ok(())
}

/// The registry for a CLI command (which needs the master key to open it).
fn registry_store(config: &Config) -> anyhow::Result<crate::store::Store> {
    Ok(open_store(&config.data_dir, config.credentials_dir.as_deref())?.0)
}

fn human_secs(s: u64) -> String {
    if s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

fn list_devices(config: &Config, json: bool) -> anyhow::Result<()> {
    let store = registry_store(config)?;
    let devices = store.read_blocking(registry::list)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({ "devices": devices }))?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<36}  {:<20}  {:<10}  {:<20}  {:<20}  STATUS",
        "ID", "NAME", "TYPE", "PAIRED", "LAST SEEN"
    )?;
    for d in devices {
        writeln!(
            out,
            "{:<36}  {:<20}  {:<10}  {:<20}  {:<20}  {}",
            d.device_id,
            d.name,
            d.kind,
            d.paired_at,
            d.last_seen.as_deref().unwrap_or("never"),
            if d.revoked { "revoked" } else { "active" }
        )?;
    }
    Ok(())
}

fn revoke_device(config: &Config, id: &str) -> anyhow::Result<()> {
    let Some(id) = DeviceId::parse(id) else {
        bail!("no device with id {id:?}")
    };
    let store = registry_store(config)?;
    let now = config.clock.now();
    match store.write_blocking(|tx| registry::revoke(tx, &id, now, "cli"))? {
        RevokeOutcome::Revoked => eprintln!("revoked {id}"),
        RevokeOutcome::AlreadyRevoked => eprintln!("{id} was already revoked"),
        RevokeOutcome::NotFound => bail!("no device with id {id}"),
    }
    Ok(())
}

fn list_nodes(config: &Config, json: bool) -> anyhow::Result<()> {
    let store = registry_store(config)?;
    let nodes = store.read_blocking(crate::nodes::list)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({ "nodes": nodes }))?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<36}  {:<20}  {:<12}  {:<7}  {:<10}  {:<10}  {:<20}  ENDPOINT",
        "ID", "NAME", "ROOM", "KIND", "FIRMWARE", "STATUS", "LAST SEEN"
    )?;
    for n in nodes {
        let status = match (n.state, n.online) {
            ("registered", true) => "online",
            ("registered", false) => "offline",
            (s, _) => s,
        };
        writeln!(
            out,
            "{:<36}  {:<20}  {:<12}  {:<7}  {:<10}  {:<10}  {:<20}  {}",
            n.node_id,
            n.name,
            n.room,
            n.kind.as_deref().unwrap_or("-"),
            n.firmware.as_deref().unwrap_or("-"),
            status,
            n.last_seen.as_deref().unwrap_or("never"),
            n.endpoint.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(())
}

fn revoke_node(config: &Config, id: &str) -> anyhow::Result<()> {
    let Some(id) = crate::nodes::NodeId::parse(id) else {
        bail!("no node with id {id:?}")
    };
    let store = registry_store(config)?;
    let now = config.clock.now();
    // A running daemon sees the `node.revoked` event and closes the node's session (4403).
    match store.write_blocking(|tx| crate::nodes::revoke(tx, &id, now, "cli"))? {
        RevokeOutcome::Revoked => eprintln!("revoked {id}"),
        RevokeOutcome::AlreadyRevoked => eprintln!("{id} was already revoked"),
        RevokeOutcome::NotFound => bail!("no node with id {id}"),
    }
    Ok(())
}
