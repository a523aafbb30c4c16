//! Load tool for the sync channel (`scripts/bench-ws.sh` runs it; not part of the tests).
//!
//! `ws_load bench` starts each server under test as a child process on loopback — latchkey
//! itself (`latchkey serve` on a temp data dir, devices paired over the API), a bare
//! tokio-tungstenite broadcast server (`ws_load bare`, our stack's ceiling: latchkey's write
//! batching without its auth and persistence), a Python `websockets` server and a Node.js `ws`
//! server — and runs the same load against each: N clients receiving everything, publishers at
//! a fixed rate, then increasing rates, then many idle connections. It prints delivery latency
//! (p50/p99/max), delivered events/s, CPU and RSS, then every ratio.
//!
//! The servers run on their own cpus and the load tool on others (`--server-cpus`,
//! `--load-cpus`; by default the first allowed cpu and the rest), so a figure says whose limit
//! it is. With a single cpu they cannot be separated and everything runs unpinned.
//!
//! Receivers are `latchkey_phone::sync_client::SyncClient`s; publishers are raw sockets that
//! stamp each event with its send time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use latchkey::ws::session::WRITE_BATCH;
use latchkey_phone::sync_client::{Incoming, SyncClient};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

mod load;

use load::{epoch, free_port, micros, raise_fd_limit, wait_listening};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The bare tokio-tungstenite broadcast server.
    Bare {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Runs the benchmark against every target and prints the figures.
    Bench(Box<BenchArgs>),
}

#[derive(clap::Args, Clone)]
struct BenchArgs {
    /// The latchkey binary (build it with --release).
    #[arg(long, default_value = "target/release/latchkey")]
    latchkey: PathBuf,
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    #[arg(long, default_value = "scripts/ws_bench_server.py")]
    python_server: PathBuf,
    #[arg(long, default_value = "node")]
    node: PathBuf,
    #[arg(long, default_value = "scripts/ws_bench_server.mjs")]
    node_server: PathBuf,
    /// Where the `ws` package is installed (NODE_PATH for the Node server).
    #[arg(long)]
    node_modules: Option<PathBuf>,
    /// Which servers, in order.
    #[arg(
        long,
        env = "WS_BENCH_TARGETS",
        value_delimiter = ',',
        default_value = "latchkey,bare,python,node"
    )]
    targets: Vec<String>,
    /// Cpus for the servers under test, e.g. `0` or `0-1` (default: the first allowed cpu).
    #[arg(long, env = "WS_BENCH_SERVER_CPUS")]
    server_cpus: Option<String>,
    /// Cpus for this load tool (default: the allowed cpus the servers do not get).
    #[arg(long, env = "WS_BENCH_LOAD_CPUS")]
    load_cpus: Option<String>,
    /// Run everything unpinned (the old method).
    #[arg(long)]
    no_pin: bool,
    /// A smoke run: fewer clients, shorter runs, fewer steps (explicit options still win).
    #[arg(long)]
    quick: bool,
    /// Receiving clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Publishing connections (the rate is shared between them).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Publishes per second in the latency run.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds of publishing in the latency run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Publish rates of the throughput steps.
    #[arg(long, value_delimiter = ',', default_value = "25,50,200,400,800,1600")]
    steps: Vec<u64>,
    #[arg(long, default_value_t = 4)]
    step_secs: u64,
    /// Idle authenticated connections for the memory run (0 to skip).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
}

fn main() -> anyhow::Result<()> {
    raise_fd_limit();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.cmd {
        Cmd::Bare { listen } => runtime()?.block_on(bare_server(listen)),
        Cmd::Bench(mut args) => {
            if let Some(("bench", m)) = matches.subcommand() {
                args.apply_quick(m);
            }
            let pinning = Pinning::decide(&args)?;
            // Before the runtime starts its threads, so every one of them inherits it.
            pinning.pin_self()?;
            runtime()?.block_on(bench(*args, pinning))
        }
    }
}

/// Worker threads default to the cpus this process may use, so a pinned process gets as
/// many workers as it has cpus.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

impl BenchArgs {
    /// `--quick`: the same phases, smaller and shorter; options given explicitly are kept.
    fn apply_quick(&mut self, m: &ArgMatches) {
        if !self.quick {
            return;
        }
        let default = |id: &str| matches!(m.value_source(id), Some(ValueSource::DefaultValue));
        if default("clients") {
            self.clients = 200;
        }
        if default("duration") {
            self.duration = 3;
        }
        if default("steps") {
            self.steps = vec![400, 1600];
        }
        if default("step_secs") {
            self.step_secs = 2;
        }
        if default("idle") {
            self.idle = 1000;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pinning: servers on some cpus, the load tool on the others.

struct Pinning {
    /// `None`: unpinned.
    server: Option<libc::cpu_set_t>,
    load: Option<libc::cpu_set_t>,
}

impl Pinning {
    fn decide(args: &BenchArgs) -> anyhow::Result<Pinning> {
        let unpinned = Pinning {
            server: None,
            load: None,
        };
        let allowed = allowed_cpus()?;
        if args.no_pin {
            println!(
                "unpinned (--no-pin): servers and load tool share cpus {}",
                cpu_list(&allowed)
            );
            return Ok(unpinned);
        }
        if allowed.len() < 2 {
            println!(
                "only one cpu ({}) available: the servers and the load tool cannot be separated; running unpinned",
                cpu_list(&allowed)
            );
            return Ok(unpinned);
        }
        let server = match &args.server_cpus {
            Some(s) => parse_cpus(s)?,
            None => allowed[..1].to_vec(),
        };
        let load = match &args.load_cpus {
            Some(s) => parse_cpus(s)?,
            None => allowed
                .iter()
                .copied()
                .filter(|c| !server.contains(c))
                .collect(),
        };
        if let Some(c) = server.iter().chain(&load).find(|c| !allowed.contains(c)) {
            bail!(
                "cpu {c} is not available to this process (allowed: {})",
                cpu_list(&allowed)
            );
        }
        if load.is_empty() || server.is_empty() {
            bail!("the servers and the load tool each need at least one cpu");
        }
        if server.iter().any(|c| load.contains(c)) {
            println!(
                "warning: server cpus {} and load tool cpus {} overlap",
                cpu_list(&server),
                cpu_list(&load)
            );
        }
        Ok(Pinning {
            server: Some(cpu_set(&server)),
            load: Some(cpu_set(&load)),
        })
    }

    fn pin_self(&self) -> anyhow::Result<()> {
        if let Some(set) = &self.load {
            set_affinity(set).context("pinning the load tool")?;
        }
        Ok(())
    }

    /// Makes `cmd`'s process run on the server cpus.
    fn pin_child(&self, cmd: &mut Command) {
        if let Some(set) = self.server {
            // SAFETY: sched_setaffinity is a plain syscall (async-signal-safe) on a copied set.
            unsafe {
                cmd.pre_exec(move || set_affinity(&set));
            }
        }
    }
}

fn parse_cpus(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.trim()
                .parse()
                .with_context(|| format!("bad cpu list {s:?}"))?,
            b.trim()
                .parse()
                .with_context(|| format!("bad cpu list {s:?}"))?,
        );
        if a > b || b >= libc::CPU_SETSIZE as usize {
            bail!("bad cpu list {s:?}");
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set; the kernel fills it in.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size given.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: the index is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// `cpus` must be below CPU_SETSIZE (parse_cpus and allowed_cpus see to it).
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: the index is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

fn set_affinity(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size given; 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The cpus a process may run on, as the kernel reports them.
fn cpus_of(pid: &str) -> String {
    proc_status_field(pid, "Cpus_allowed_list:").unwrap_or_else(|| "?".into())
}

fn proc_status_field(pid: &str, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
}

/// The 1, 5 and 15 minute load averages: how busy the shared machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------------
// The bare server: one task per connection, a broadcast channel, and latchkey's write batching
// (`feed` each waiting event, one `flush`), nothing else.

async fn bare_server(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let (tx, _) = broadcast::channel::<(u64, Arc<str>)>(4096);
    // Assigning a seq and broadcasting happen under one lock, so events go out in seq order.
    let seq = Arc::new(std::sync::Mutex::new(0u64));
    let mut next_id = 0u64;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        next_id += 1;
        tokio::spawn(bare_conn(tcp, tx.clone(), seq.clone(), next_id));
    }
}

struct Shared(Arc<str>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

async fn bare_conn(
    tcp: TcpStream,
    tx: broadcast::Sender<(u64, Arc<str>)>,
    seq: Arc<std::sync::Mutex<u64>>,
    id: u64,
) {
    // The same buffer sizes latchkey uses.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(256 * 1024));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(cfg)).await else {
        return;
    };
    let mut rx = tx.subscribe();
    let mut muted = false;
    let latest = *seq.lock().unwrap_or_else(|p| p.into_inner());
    let hello = json!({"type":"hello","deviceId":null,"seq":latest});
    if ws.send(Message::text(hello.to_string())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(f) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    match f["type"].as_str() {
                        Some("publish") => {
                            let ts = time::OffsetDateTime::now_utc()
                                .format(&time::format_description::well_known::Rfc3339)
                                .unwrap_or_default();
                            let s = {
                                let mut g = seq.lock().unwrap_or_else(|p| p.into_inner());
                                *g += 1;
                                let ev = json!({"type":"event","seq":*g,"topic":f["topic"],"ts":ts,"data":f["data"]});
                                let _ = tx.send((id, ev.to_string().into()));
                                *g
                            };
                            let ack = json!({"type":"ack","id":f["id"],"seq":s});
                            if ws.send(Message::text(ack.to_string())).await.is_err() {
                                return;
                            }
                        }
                        Some("subscribe") => {
                            muted = f["topics"].as_array().is_some_and(|t| t.is_empty());
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            r = rx.recv() => {
                let first = match r {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // As latchkey's session does: the first event, then whatever else is already
                // waiting, up to one batch; each fed, one flush for all.
                let mut batch = Vec::with_capacity(WRITE_BATCH);
                let mut next = Ok(first);
                let mut taken = 0;
                loop {
                    match next {
                        Ok((from, frame)) => {
                            if from != id && !muted {
                                if let Ok(text) = Utf8Bytes::try_from(Bytes::from_owner(Shared(frame))) {
                                    batch.push(Message::Text(text));
                                }
                            }
                        }
                        Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(broadcast::error::TryRecvError::Closed) => return,
                    }
                    taken += 1;
                    if taken == WRITE_BATCH {
                        break;
                    }
                    next = rx.try_recv();
                }
                if batch.is_empty() {
                    continue;
                }
                for m in batch {
                    if ws.feed(m).await.is_err() {
                        return;
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Targets

struct Target {
    child: Child,
    port: u16,
    keys: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn key(&self, i: usize) -> String {
        self.keys
            .get(i)
            .cloned()
            .unwrap_or_else(|| "dev_bench".to_owned())
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

fn log_file(dir: &std::path::Path, name: &str) -> anyhow::Result<std::process::Stdio> {
    Ok(std::fs::File::create(dir.join(name))?.into())
}

async fn start(
    name: &str,
    args: &BenchArgs,
    pinning: &Pinning,
    devices: usize,
) -> anyhow::Result<Target> {
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{port}");
    let mut admin_token = None;
    let mut cmd = match name {
        "latchkey" => {
            let token = std::process::Command::new(&args.latchkey)
                .args(["--data-dir"])
                .arg(dir.path().join("data"))
                .args(["admin", "token", "--name", "bench"])
                .output()
                .context("latchkey admin token")?;
            if !token.status.success() {
                bail!("latchkey admin token failed");
            }
            admin_token = Some(String::from_utf8(token.stdout)?.trim().to_owned());
            // The benchmark measures fan-out, so each publisher's budget (20/s by default)
            // is lifted above the highest rate step.
            let config = dir.path().join("bench.toml");
            std::fs::write(
                &config,
                "[events]\npublish_rate = 100000\npublish_burst = 100000\n",
            )?;
            let mut c = Command::new(&args.latchkey);
            c.arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--config")
                .arg(&config)
                .args(["serve", "--ble", "off", "--listen", &listen])
                .env("RUST_LOG", "warn")
                .stdout(log_file(dir.path(), "stdout.log")?);
            c
        }
        "bare" => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["bare", "--listen", &listen]);
            c
        }
        "python" => {
            let mut c = Command::new(&args.python);
            c.arg(&args.python_server)
                .args(["--port", &port.to_string()]);
            c
        }
        "node" => {
            let mut c = Command::new(&args.node);
            c.arg(&args.node_server).args(["--port", &port.to_string()]);
            if let Some(m) = &args.node_modules {
                c.env("NODE_PATH", m);
            }
            c
        }
        other => bail!("unknown target {other}"),
    };
    cmd.stderr(log_file(dir.path(), "stderr.log")?)
        .kill_on_drop(true);
    pinning.pin_child(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting the {name} server"))?;
    if let Err(e) = wait_listening(port).await {
        let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        bail!("{name}: {e}; its stderr:\n{log}");
    }
    let keys = match admin_token {
        Some(token) => {
            let t0 = Instant::now();
            let keys: Vec<String> = load::pair(port, &token, devices)
                .await?
                .into_iter()
                .map(|p| p.device_key)
                .collect();
            println!(
                "  paired {} devices over the API in {:.1} s",
                keys.len(),
                t0.elapsed().as_secs_f64()
            );
            keys
        }
        None => Vec::new(),
    };
    Ok(Target {
        child,
        port,
        keys,
        _dir: Some(dir),
    })
}

fn rss_kib(pid: u32) -> u64 {
    load::rss_kib(pid).unwrap_or(0)
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Time (s) a process's threads spent runnable but waiting for a cpu: what the other side of
/// the benchmark or other jobs on the machine took from it (`/proc/<pid>/task/*/schedstat`).
fn cpu_wait_secs(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum();
    ns as f64 / 1e9
}

/// CPU used and CPU waited for, in seconds.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu: f64,
    wait: f64,
}

impl Usage {
    fn of(pid: &str) -> Usage {
        Usage {
            cpu: cpu_secs(pid),
            wait: cpu_wait_secs(pid),
        }
    }

    fn since(self, before: Usage) -> Usage {
        Usage {
            cpu: self.cpu - before.cpu,
            wait: self.wait - before.wait,
        }
    }
}

/// Samples the server's RSS every 200 ms until stopped; returns the peak.
fn rss_sampler(pid: u32) -> (CancellationToken, tokio::task::JoinHandle<u64>) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let h = tokio::spawn(async move {
        let mut peak = rss_kib(pid);
        loop {
            tokio::select! {
                _ = s.cancelled() => return peak.max(rss_kib(pid)),
                _ = tokio::time::sleep(Duration::from_millis(200)) => peak = peak.max(rss_kib(pid)),
            }
        }
    });
    (stop, h)
}

// ---------------------------------------------------------------------------------------------
// Clients

async fn connect_clients(
    target: &Target,
    range: std::ops::Range<usize>,
) -> anyhow::Result<Vec<SyncClient>> {
    load::connect_clients(&target.url(), range.map(|i| target.key(i)).collect()).await
}

/// One delivery: its latency (µs) and when it arrived (ms since the tool started).
type Sample = (u32, u32);

struct ReceiverStats {
    /// Deliveries per run id.
    samples: Vec<Vec<Sample>>,
    resets: u64,
    errors: u64,
}

fn spawn_receivers(
    clients: Vec<SyncClient>,
    runs: usize,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<ReceiverStats>> {
    clients
        .into_iter()
        .map(|mut c| {
            let stop = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                tokio::pin!(stop);
                let mut st = ReceiverStats {
                    samples: vec![Vec::new(); runs],
                    resets: 0,
                    errors: 0,
                };
                loop {
                    let r = tokio::select! {
                        biased;
                        _ = &mut stop => break,
                        r = c.next() => r,
                    };
                    match r {
                        Ok(Incoming::Event(ev)) => {
                            let now = micros();
                            if let (Some(t), Some(run)) =
                                (ev.data["t"].as_u64(), ev.data["r"].as_u64())
                            {
                                if let Some(v) = st.samples.get_mut(run as usize) {
                                    let latency = now.saturating_sub(t).min(u32::MAX as u64);
                                    v.push((latency as u32, (now / 1000) as u32));
                                }
                            }
                        }
                        Ok(Incoming::Reset { .. }) => st.resets += 1,
                        Err(_) => {
                            st.errors += 1;
                            break;
                        }
                    }
                }
                st
            })
        })
        .collect()
}

type PubSink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    Message,
>;

/// A publishing socket; a task reads its acks into `acked`.
async fn connect_publisher(
    target: &Target,
    key: &str,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<PubSink> {
    let mut req = target.url().into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Device {key}"))?,
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    // Publishers receive nothing, so they measure nothing twice.
    ws.send(Message::text(
        json!({"type":"subscribe","topics":[]}).to_string(),
    ))
    .await?;
    ws.send(Message::text(
        json!({"type":"resume","since":0}).to_string(),
    ))
    .await?;
    let (tx, mut rx) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if matches!(&m, Message::Text(t) if t.as_str().contains("\"ack\"")) {
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(tx)
}

/// Publishes at `rate` per second (shared by the sockets) for `secs`; returns how many went
/// out. A socket that fails is dropped from `pubs`.
async fn publish_run(pubs: &mut Vec<PubSink>, run: usize, rate: u64, secs: u64) -> u64 {
    let sent = Arc::new(AtomicU64::new(0));
    let n = pubs.len() as f64;
    let pad = "x".repeat(64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut tx in pubs.drain(..) {
        let (sent, pad) = (sent.clone(), pad.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(n / rate as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut id = 0u64;
            while tokio::time::Instant::now() < deadline {
                tick.tick().await;
                id += 1;
                let f = json!({"type":"publish","id":id,"topic":"bench.load","data":{"t":micros(),"r":run,"pad":pad}});
                if tx.send(Message::text(f.to_string())).await.is_err() {
                    return None;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Some(tx)
        }));
    }
    for t in tasks {
        if let Ok(Some(tx)) = t.await {
            pubs.push(tx);
        }
    }
    sent.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Figures

#[derive(Clone, Default)]
struct RunFigures {
    rate: u64,
    expected: u64,
    delivered: u64,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
    rss_kib: u64,
    /// CPU seconds the server used during the run and its drain, and the load tool.
    server_cpu: f64,
    tool_cpu: f64,
    /// CPU used and waited for while publishing, by the server and by the load tool.
    server_pub: Usage,
    tool_pub: Usage,
    /// Publishing started, ended, and the drain after it ended (ms since the tool started).
    window_ms: (u32, u32, u32),
    /// Deliveries (of this run's events or earlier ones) that arrived while publishing /
    /// before the drain ended.
    in_window: u64,
    in_cpu_window: u64,
}

impl RunFigures {
    /// Deliveries that arrived while the publishers ran, per second: what the server
    /// actually got out then (a backlog of earlier runs included), not what it owed.
    fn delivered_per_sec(&self) -> f64 {
        let (start, end, _) = self.window_ms;
        self.in_window as f64 * 1000.0 / end.saturating_sub(start).max(1) as f64
    }

    fn ratio(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.delivered as f64 / self.expected as f64
        }
    }

    /// Server CPU time per delivered event, in µs: comparable even on a busy machine.
    fn cpu_us_per_event(&self) -> f64 {
        if self.in_cpu_window == 0 {
            0.0
        } else {
            self.server_cpu * 1e6 / self.in_cpu_window as f64
        }
    }

    /// Share of one core used, and waited for, while publishing: a side near 100 % of its
    /// cores is the limit; a side that waits long for a cpu is held back by someone else.
    fn core_share(&self, u: Usage) -> String {
        let (start, end, _) = self.window_ms;
        let secs = end.saturating_sub(start).max(1) as f64 / 1000.0;
        format!(
            "{:.0} % (waited {:.0} %)",
            u.cpu * 100.0 / secs,
            u.wait * 100.0 / secs
        )
    }

    /// Kept up: (almost) everything delivered, p99 under 50 ms.
    fn sustained(&self) -> bool {
        self.ratio() >= 0.999 && self.p99_us <= 50_000
    }

    /// One rate step's cell in the summary.
    fn cell(&self) -> String {
        format!(
            "{} ev/s, p99 {}, {:.1} %, server {}, load tool {}",
            thousands(self.delivered_per_sec()),
            ms(self.p99_us),
            self.ratio() * 100.0,
            self.core_share(self.server_pub),
            self.core_share(self.tool_pub),
        )
    }
}

fn ms(us: u32) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `a ÷ b`, or n/a when there is nothing to divide by.
fn times(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

struct TargetFigures {
    name: String,
    server_cpus: String,
    tool_cpus: String,
    load_before: String,
    load_after: String,
    runs: Vec<RunFigures>,
    idle_rss_kib: u64,
    idle_baseline_kib: u64,
    idle_connected: usize,
}

impl TargetFigures {
    /// The best rate it kept up with (delivered ev/s), if any.
    fn sustained(&self) -> Option<f64> {
        self.runs
            .iter()
            .filter(|r| r.sustained())
            .map(RunFigures::delivered_per_sec)
            .max_by(f64::total_cmp)
    }

    fn max_delivered(&self) -> f64 {
        self.runs
            .iter()
            .map(RunFigures::delivered_per_sec)
            .fold(0.0, f64::max)
    }

    /// Deliveries per server CPU-second over every run.
    fn deliveries_per_cpu_sec(&self) -> f64 {
        let (cpu, n) = self.runs.iter().fold((0.0, 0u64), |(c, n), r| {
            (c + r.server_cpu, n + r.in_cpu_window)
        });
        if cpu > 0.0 {
            n as f64 / cpu
        } else {
            0.0
        }
    }
}

async fn bench(args: BenchArgs, pinning: Pinning) -> anyhow::Result<()> {
    let _ = epoch();
    let load_before = loadavg();
    let mut all = Vec::new();
    for name in args.targets.clone() {
        println!("== {name}");
        let figures = bench_target(&name, &args, &pinning).await?;
        all.push(figures);
    }
    summary(&args, &load_before, &all);
    Ok(())
}

async fn bench_target(
    name: &str,
    args: &BenchArgs,
    pinning: &Pinning,
) -> anyhow::Result<TargetFigures> {
    let load_before = loadavg();
    let devices = (args.clients + args.publishers).max(args.idle);
    let target = start(name, args, pinning, devices).await?;
    let pid = target.pid();
    let (server_cpus, tool_cpus) = (cpus_of(&pid.to_string()), cpus_of("self"));
    println!(
        "  server pid {pid} on cpus {server_cpus}, load tool on cpus {tool_cpus}; load average {load_before}"
    );

    let t0 = Instant::now();
    let clients = connect_clients(&target, 0..args.clients).await?;
    println!(
        "  {} clients connected in {:.2} s; RSS {}",
        clients.len(),
        t0.elapsed().as_secs_f64(),
        mb(rss_kib(pid))
    );
    let acked = Arc::new(AtomicU64::new(0));
    let mut pubs = Vec::new();
    for i in 0..args.publishers {
        pubs.push(connect_publisher(&target, &target.key(args.clients + i), acked.clone()).await?);
    }
    let mut plan = vec![(args.rate, args.duration)];
    plan.extend(args.steps.iter().map(|&r| (r, args.step_secs)));
    let stop = CancellationToken::new();
    let receivers = spawn_receivers(clients, plan.len(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut runs = Vec::new();
    for (run, &(rate, secs)) in plan.iter().enumerate() {
        let (rss_stop, rss) = rss_sampler(pid);
        let (server0, tool0) = (Usage::of(&pid.to_string()), Usage::of("self"));
        let acked_before = acked.load(Ordering::Relaxed);
        let start_ms = micros() / 1000;
        let sent = publish_run(&mut pubs, run, rate, secs).await;
        let end_ms = micros() / 1000;
        let server_pub = Usage::of(&pid.to_string()).since(server0);
        let tool_pub = Usage::of("self").since(tool0);
        // Let the last deliveries land.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let drained_ms = micros() / 1000;
        let acked = acked.load(Ordering::Relaxed) - acked_before;
        rss_stop.cancel();
        let rss = rss.await.unwrap_or(0);
        let server_cpu = cpu_secs(&pid.to_string()) - server0.cpu;
        let tool_cpu = cpu_secs("self") - tool0.cpu;
        println!(
            "  run {run}: {rate}/s for {secs} s: sent {sent}, acked {acked}, peak RSS {}",
            mb(rss)
        );
        runs.push(RunFigures {
            rate,
            expected: sent * args.clients as u64,
            rss_kib: rss,
            server_cpu,
            tool_cpu,
            server_pub,
            tool_pub,
            window_ms: (start_ms as u32, end_ms as u32, drained_ms as u32),
            ..Default::default()
        });
        if pubs.len() < args.publishers {
            println!("  (a publisher was disconnected; stopping the rate steps)");
            break;
        }
    }
    stop.cancel();
    let mut per_run: Vec<Vec<Sample>> = vec![Vec::new(); plan.len()];
    let (mut resets, mut errors) = (0, 0);
    for r in receivers {
        if let Ok(st) = r.await {
            for (i, s) in st.samples.into_iter().enumerate() {
                per_run[i].extend(s);
            }
            resets += st.resets;
            errors += st.errors;
        }
    }
    if resets + errors > 0 {
        println!("  receivers saw {resets} resets and {errors} terminal errors");
    }
    // Arrivals of every run's events: a server that fell behind spends a run's CPU on the
    // events of the runs before it, and those deliveries count for that run's window.
    let mut arrivals: Vec<u32> = per_run.iter().flatten().map(|&(_, at)| at).collect();
    arrivals.sort_unstable();
    let arrived = |from: u32, to: u32| {
        (arrivals.partition_point(|&a| a <= to) - arrivals.partition_point(|&a| a < from)) as u64
    };
    for (fig, samples) in runs.iter_mut().zip(per_run) {
        let (start, end, drained) = fig.window_ms;
        fig.in_window = arrived(start, end);
        fig.in_cpu_window = arrived(start, drained);
        let mut s: Vec<u32> = samples.into_iter().map(|(l, _)| l).collect();
        fig.delivered = s.len() as u64;
        (fig.p50_us, fig.p99_us, fig.max_us) = load::p50_p99_max(&mut s);
        println!(
            "    {:>5}/s: delivered {:>9}/{:<9} ({:6.2}%), {:>9.0} ev/s while publishing,  p50 {:>9} p99 {:>9} max {:>9}  server CPU {:.2} µs/event ({:.1} s), load tool CPU {:.1} s; while publishing: server {} of a core, load tool {}",
            fig.rate,
            fig.delivered,
            fig.expected,
            fig.ratio() * 100.0,
            fig.delivered_per_sec(),
            ms(fig.p50_us),
            ms(fig.p99_us),
            ms(fig.max_us),
            fig.cpu_us_per_event(),
            fig.server_cpu,
            fig.tool_cpu,
            fig.core_share(fig.server_pub),
            fig.core_share(fig.tool_pub),
        );
    }
    drop(pubs);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (mut idle_rss, mut idle_base, mut idle_n) = (0, 0, 0);
    if args.idle > 0 {
        idle_base = rss_kib(pid);
        let t0 = Instant::now();
        let idle = connect_clients(&target, 0..args.idle).await?;
        idle_n = idle.len();
        tokio::time::sleep(Duration::from_secs(3)).await;
        idle_rss = rss_kib(pid);
        println!(
            "  {} idle connections in {:.1} s: RSS {} (before: {})",
            idle_n,
            t0.elapsed().as_secs_f64(),
            mb(idle_rss),
            mb(idle_base)
        );
        drop(idle);
    }
    target.stop().await;
    let load_after = loadavg();
    println!("  load average after: {load_after}");
    Ok(TargetFigures {
        name: name.to_owned(),
        server_cpus,
        tool_cpus,
        load_before,
        load_after,
        runs,
        idle_rss_kib: idle_rss,
        idle_baseline_kib: idle_base,
        idle_connected: idle_n,
    })
}

fn summary(args: &BenchArgs, load_before: &str, all: &[TargetFigures]) {
    println!();
    println!(
        "## Summary ({} receiving clients, {} publishers; load average {} before, {} after)",
        args.clients,
        args.publishers,
        load_before,
        loadavg()
    );
    println!();
    println!("| server | server cpus | load tool cpus | load average before → after |");
    println!("|---|---|---|---|");
    for t in all {
        println!(
            "| {} | {} | {} | {} → {} |",
            t.name, t.server_cpus, t.tool_cpus, t.load_before, t.load_after
        );
    }

    println!();
    println!(
        "{} publishes/s for {} s ({} deliveries/s owed):",
        args.rate,
        args.duration,
        thousands((args.rate * args.clients as u64) as f64)
    );
    println!();
    println!("| server | p50 | p99 | max | delivered | delivered ev/s | server CPU per delivery | server cpu while publishing | load tool cpu | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for t in all {
        let Some(r) = t.runs.first() else { continue };
        println!(
            "| {} | {} | {} | {} | {:.1} % | {} | {:.2} µs | {} | {} | {} |",
            t.name,
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.max_us),
            r.ratio() * 100.0,
            thousands(r.delivered_per_sec()),
            r.cpu_us_per_event(),
            r.core_share(r.server_pub),
            r.core_share(r.tool_pub),
            mb(r.rss_kib),
        );
    }

    if !args.steps.is_empty() {
        println!();
        println!("Rate steps ({} s each; delivered ev/s while publishing, p99, share delivered, cpu used (and waited for) while publishing, in % of one core):", args.step_secs);
        println!();
        let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
        println!("| publishes/s | {} |", names.join(" | "));
        println!("|---|{}", "---|".repeat(names.len()));
        for (i, rate) in args.steps.iter().enumerate() {
            let cells: Vec<String> = all
                .iter()
                .map(|t| {
                    t.runs
                        .get(i + 1)
                        .map(RunFigures::cell)
                        .unwrap_or_else(|| "-".into())
                })
                .collect();
            println!("| {rate} | {} |", cells.join(" | "));
        }
    }

    if args.idle > 0 {
        println!();
        println!(
            "| server | {} idle connections: RSS | before | per connection |",
            args.idle
        );
        println!("|---|---|---|---|");
        for t in all {
            let per = if t.idle_connected > 0 {
                format!(
                    "{:.1} KB",
                    t.idle_rss_kib.saturating_sub(t.idle_baseline_kib) as f64
                        / t.idle_connected as f64
                )
            } else {
                "-".into()
            };
            println!(
                "| {} | {} ({} connected) | {} | {} |",
                t.name,
                mb(t.idle_rss_kib),
                t.idle_connected,
                mb(t.idle_baseline_kib),
                per
            );
        }
    }

    let Some(lk) = all.iter().find(|t| t.name == "latchkey") else {
        return;
    };
    let Some(lk_first) = lk.runs.first() else {
        return;
    };
    println!();
    println!("Ratios, latchkey ÷ peer (p99 and RSS: below 1 = latchkey lower; ev/s: above 1 = latchkey delivers more):");
    println!();
    println!(
        "| latchkey ÷ | p99 at {r}/s | delivered ev/s at {r}/s | max delivered ev/s | best sustained ev/s | deliveries per server CPU-s | peak RSS at {r}/s | idle RSS |",
        r = args.rate
    );
    println!("|---|---|---|---|---|---|---|---|");
    for o in all.iter().filter(|t| t.name != "latchkey") {
        let Some(o_first) = o.runs.first() else {
            continue;
        };
        let sustained = match (lk.sustained(), o.sustained()) {
            (Some(a), Some(b)) => times(a, b),
            (Some(_), None) => format!("{} never kept up", o.name),
            (None, Some(_)) => "latchkey never kept up".into(),
            (None, None) => "neither kept up".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            o.name,
            times(lk_first.p99_us as f64, o_first.p99_us as f64),
            times(lk_first.delivered_per_sec(), o_first.delivered_per_sec()),
            times(lk.max_delivered(), o.max_delivered()),
            sustained,
            times(lk.deliveries_per_cpu_sec(), o.deliveries_per_cpu_sec()),
            times(lk_first.rss_kib as f64, o_first.rss_kib as f64),
            times(lk.idle_rss_kib as f64, o.idle_rss_kib as f64),
        );
    }
}
