//! The command line (CONTRACT §1). `main.rs` only parses and calls `cli::main`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use latchkey_phone::cli::PhoneCmd;

use crate::config::{BleMode, Config, Overrides};
use crate::control::client::{self, Route};
use crate::control::{self, Advertised, Request};
use crate::open_store;

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
    /// Write an encrypted, consistent copy of the registry to FILE (through the daemon when it runs)
    Backup {
        /// Where to write it (made 0600)
        file: PathBuf,
    },
    /// Put a backup back in place of the registry (daemon stopped; the old one is kept aside)
    Restore {
        /// A file made by `latchkey backup`
        file: PathBuf,
    },
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
    match cli.command {
        Command::Serve(_) => {
            crate::check_data_dir(&config.data_dir)?;
            serve(config)
        }
        Command::Admin(AdminCmd::Password) => {
            let password = read_password()?;
            ask(
                &config,
                Request::AdminPassword {
                    password: password.expose().to_owned(),
                },
            )?;
            eprintln!("admin password set; existing web sessions were ended");
            Ok(())
        }
        Command::Admin(AdminCmd::Token { name }) => {
            let v = ask(&config, Request::AdminToken { name })?;
            println!("{}", v["token"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Admin(AdminCmd::RotateKey) => {
            crate::check_data_dir(&config.data_dir)?;
            rotate_key(&config)
        }
        Command::Pair => pair(&ask(&config, Request::Pair {})?),
        Command::Devices(DevicesCmd::List { json }) => {
            list_devices(&ask(&config, Request::DevicesList {})?, json)
        }
        Command::Devices(DevicesCmd::Revoke { id }) => {
            revoked(&ask(&config, Request::DevicesRevoke { id })?)
        }
        Command::Nodes(NodesCmd::List { json }) => {
            list_nodes(&ask(&config, Request::NodesList {})?, json)
        }
        Command::Nodes(NodesCmd::Revoke { id }) => {
            revoked(&ask(&config, Request::NodesRevoke { id })?)
        }
        Command::Backup { file } => backup(&config, &file),
        Command::Restore { file } => restore(&config, &file),
        Command::Phone(_) => Ok(()),
    }
}

/// Runs a command through the daemon when one serves the data dir, else on the registry
/// opened here (which needs the master key).
fn ask(config: &Config, request: Request) -> anyhow::Result<serde_json::Value> {
    match client::route(config)? {
        Route::Daemon(stream) => client::call(stream, &request),
        Route::Direct => {
            let (store, _) = registry_store(config)?;
            let at = advertised(config, &store)?;
            let now = config.clock.now();
            control::execute(&store, request, now, config.pair_token_ttl_secs, &at).map_err(|e| {
                match e {
                    control::Failure::Internal(e) => e,
                    refused => anyhow::anyhow!(refused),
                }
            })
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    return_big_allocations();
    let runtime = runtime()?;
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

/// The blocking pool's bound. Most of its work is serial underneath (one read connection behind
/// a lock, one GPIO line at a time; writes go to the store's own thread), so more threads only
/// wait. tokio's default of 512 let each reconnect storm grow the pool to hundreds of threads
/// that steady load then kept alive, each with its stack and its allocator cache
/// (docs/RELIABILITY.md, "The heap across storms"). Past the bound, blocking jobs queue in order.
const BLOCKING_THREADS: usize = 16;

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
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

fn read_password() -> anyhow::Result<crate::secret::SecretString> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New admin password: ")?;
        let second = rpassword::prompt_password("Again: ")?;
        if first != second {
            bail!("the passwords differ");
        }
        Ok(crate::secret::SecretString::new(first))
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(8 * 1024)
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        Ok(crate::secret::SecretString::new(
            line.trim_end_matches(['\r', '\n']).to_owned(),
        ))
    }
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

/// Where phones reach the gateway, for a pairing payload made without the daemon: what the
/// daemon on this data dir last recorded, else worked out from the config.
fn advertised(config: &Config, store: &crate::store::Store) -> anyhow::Result<Advertised> {
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
    Ok(Advertised { host, port })
}

fn pair(answer: &serde_json::Value) -> anyhow::Result<()> {
    let payload = answer["payload"].as_str().unwrap_or_default();
    let ttl = answer["ttlSecs"].as_u64().unwrap_or_default();
    let expires = answer["expires"].as_i64().unwrap_or_default();
    let qr = crate::qr::terminal(payload)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{qr}")?;
    writeln!(
        out,
        "Scan with the phone within {} (until {}).",
        human_secs(ttl),
        crate::clock::rfc3339(expires)
    )?;
    writeln!(out, "{payload}")?;
    Ok(())
}

/// The registry for a CLI command run without a daemon: it needs the master key.
fn registry_store(
    config: &Config,
) -> anyhow::Result<(crate::store::Store, crate::crypto::MasterKey)> {
    crate::check_data_dir(&config.data_dir)?;
    match open_store(&config.data_dir, config.credentials_dir.as_deref()) {
        Ok(opened) => Ok(opened),
        Err(e) if e.downcast_ref::<crate::crypto::KeyError>().is_some() => Err(e.context(format!(
            "latchkey serve is not running on {}, so this command opens the registry itself, \
             which needs the master key",
            config.data_dir.display()
        ))),
        Err(e) => Err(e),
    }
}

fn human_secs(s: u64) -> String {
    if s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

fn text<'a>(v: &'a serde_json::Value, field: &str, missing: &'a str) -> &'a str {
    v[field].as_str().unwrap_or(missing)
}

fn list_devices(answer: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{answer}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<36}  {:<20}  {:<10}  {:<20}  {:<20}  STATUS",
        "ID", "NAME", "TYPE", "PAIRED", "LAST SEEN"
    )?;
    for d in answer["devices"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<36}  {:<20}  {:<10}  {:<20}  {:<20}  {}",
            text(d, "deviceId", ""),
            text(d, "name", ""),
            text(d, "type", ""),
            text(d, "pairedAt", ""),
            text(d, "lastSeen", "never"),
            if d["revoked"].as_bool() == Some(true) {
                "revoked"
            } else {
                "active"
            }
        )?;
    }
    Ok(())
}

fn revoked(answer: &serde_json::Value) -> anyhow::Result<()> {
    let id = text(answer, "id", "");
    if answer["already"].as_bool() == Some(true) {
        eprintln!("{id} was already revoked");
    } else {
        eprintln!("revoked {id}");
    }
    Ok(())
}

fn list_nodes(answer: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{answer}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<36}  {:<20}  {:<12}  {:<7}  {:<10}  {:<10}  {:<20}  ENDPOINT",
        "ID", "NAME", "ROOM", "KIND", "FIRMWARE", "STATUS", "LAST SEEN"
    )?;
    for n in answer["nodes"].as_array().into_iter().flatten() {
        let status = match (text(n, "state", ""), n["online"].as_bool() == Some(true)) {
            ("registered", true) => "online",
            ("registered", false) => "offline",
            (s, _) => s,
        };
        writeln!(
            out,
            "{:<36}  {:<20}  {:<12}  {:<7}  {:<10}  {:<10}  {:<20}  {}",
            text(n, "node_id", ""),
            text(n, "name", ""),
            text(n, "room", ""),
            text(n, "kind", "-"),
            text(n, "firmware", "-"),
            status,
            text(n, "last_seen", "never"),
            text(n, "endpoint", "-"),
        )?;
    }
    Ok(())
}

/// `latchkey backup FILE`: made by the daemon when it runs (it streams the bytes; this process
/// writes FILE, as its own user, where that user may write), else here.
fn backup(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = match client::route(config)? {
        Route::Daemon(stream) => client::backup(stream, file)?,
        Route::Direct => {
            let (store, master) = registry_store(config)?;
            let dir = crate::backup::dir(&config.data_dir);
            let snap = crate::backup::snapshot(&store, &master, config.clock.now(), &dir)?;
            crate::backup::write(&snap, file)?
        }
    };
    eprintln!(
        "backup written to {} ({bytes} bytes); only this gateway's master key opens it: keep a \
         copy of the key, apart from the backups",
        file.display()
    );
    Ok(())
}

/// `latchkey restore FILE` (daemon stopped).
fn restore(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    crate::check_data_dir(&config.data_dir)?;
    if let crate::datadir::Daemon::Running { .. } = crate::datadir::daemon(&config.data_dir)? {
        bail!(
            "latchkey serve is running on {}; stop it first (systemctl stop latchkey)",
            config.data_dir.display()
        );
    }
    let r = crate::backup::restore(
        file,
        &config.data_dir,
        config.credentials_dir.as_deref(),
        config.clock.now(),
    )?;
    match &r.aside {
        Some(p) => eprintln!(
            "restored gateway {} from its backup of {}; the registry it replaced is kept as {}",
            r.gateway_id,
            crate::clock::rfc3339(r.created_at),
            p.display()
        ),
        None => eprintln!(
            "restored gateway {} from its backup of {}",
            r.gateway_id,
            crate::clock::rfc3339(r.created_at)
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use super::*;

    #[test]
    fn the_daemon_runs_a_bounded_number_of_blocking_jobs_and_queues_the_rest() {
        let rt = runtime().unwrap();
        let jobs = 3 * BLOCKING_THREADS;
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        // Holds the first jobs until the bound is reached, so every thread the pool may
        // start is started; without a bound all `jobs` would run at once.
        let full = Arc::new(Barrier::new(BLOCKING_THREADS));
        // Every job finishes (a job that never got a thread would hang the test here).
        rt.block_on(async {
            let handles: Vec<_> = (0..jobs)
                .map(|i| {
                    let (running, most, full) = (running.clone(), most.clone(), full.clone());
                    tokio::task::spawn_blocking(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        if i < BLOCKING_THREADS {
                            full.wait();
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), BLOCKING_THREADS);
    }
}
