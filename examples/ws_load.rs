//! Load tool for the sync channel (`scripts/bench-ws.sh` runs it; not part of the tests).
//!
//! `ws_load bench` starts each server under test as a child process on loopback — latchkey
//! itself (`latchkey serve` on a temp data dir, devices paired over the API), a bare
//! tokio-tungstenite broadcast server (`ws_load bare`, our stack's ceiling) and a Python
//! `websockets` server — and runs the same load against each: N clients receiving everything,
//! publishers at a fixed rate, then increasing rates, then many idle connections. It prints
//! delivery latency (p50/p99/max), delivered events/s and the server's RSS, then the ratios.
//!
//! Receivers are `latchkey_phone::sync_client::SyncClient`s; publishers are raw sockets that
//! stamp each event with its send time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
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
    Bench(BenchArgs),
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
    /// Which servers, in order.
    #[arg(long, value_delimiter = ',', default_value = "latchkey,bare,python")]
    targets: Vec<String>,
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
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Bare { listen } => rt.block_on(bare_server(listen)),
        Cmd::Bench(args) => rt.block_on(bench(args)),
    }
}

// ---------------------------------------------------------------------------------------------
// The bare server: one task per connection, a broadcast channel, nothing else.

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
            r = rx.recv() => match r {
                Ok((from, frame)) => {
                    if from == id || muted {
                        continue;
                    }
                    let Ok(text) = Utf8Bytes::try_from(Bytes::from_owner(Shared(frame))) else { continue };
                    if ws.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
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

async fn start(name: &str, args: &BenchArgs, devices: usize) -> anyhow::Result<Target> {
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let (child, keys) = match name {
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
            let token = String::from_utf8(token.stdout)?.trim().to_owned();
            // The benchmark measures fan-out, so each publisher's budget (20/s by default)
            // is lifted above the highest rate step.
            let config = dir.path().join("bench.toml");
            std::fs::write(
                &config,
                "[events]\npublish_rate = 100000\npublish_burst = 100000\n",
            )?;
            let child = Command::new(&args.latchkey)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--config")
                .arg(&config)
                .args(["serve", "--ble", "off", "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "warn")
                .stdout(log_file(dir.path(), "stdout.log")?)
                .stderr(log_file(dir.path(), "stderr.log")?)
                .kill_on_drop(true)
                .spawn()
                .context("latchkey serve")?;
            wait_listening(port).await?;
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
            (child, keys)
        }
        "bare" => {
            let child = Command::new(std::env::current_exe()?)
                .args(["bare", "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .kill_on_drop(true)
                .spawn()?;
            (child, Vec::new())
        }
        "python" => {
            let child = Command::new(&args.python)
                .arg(&args.python_server)
                .args(["--port", &port.to_string()])
                .stderr(log_file(dir.path(), "stderr.log")?)
                .kill_on_drop(true)
                .spawn()
                .context("python server")?;
            (child, Vec::new())
        }
        other => bail!("unknown target {other}"),
    };
    wait_listening(port).await?;
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
    /// CPU seconds the server used during the run, and the load tool.
    server_cpu: f64,
    tool_cpu: f64,
    /// Publishing started, ended, and the drain after it ended (ms since the tool started).
    window_ms: (u32, u32, u32),
    /// Deliveries that arrived while publishing / before the drain ended.
    in_window: u64,
    in_cpu_window: u64,
}

impl RunFigures {
    /// Deliveries that arrived while the publishers ran, per second: what the server
    /// actually got out, not what it owed and delivered seconds later.
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

    /// Kept up: (almost) everything delivered, p99 under 50 ms.
    fn sustained(&self) -> bool {
        self.ratio() >= 0.999 && self.p99_us <= 50_000
    }
}

fn ms(us: u32) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

struct TargetFigures {
    name: String,
    connect_secs: f64,
    runs: Vec<RunFigures>,
    idle_rss_kib: u64,
    idle_baseline_kib: u64,
    idle_connected: usize,
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let _ = epoch();
    let mut all = Vec::new();
    for name in args.targets.clone() {
        println!("== {name}");
        let figures = bench_target(&name, &args).await?;
        all.push(figures);
    }
    summary(&args, &all);
    Ok(())
}

async fn bench_target(name: &str, args: &BenchArgs) -> anyhow::Result<TargetFigures> {
    let devices = (args.clients + args.publishers).max(args.idle);
    let target = start(name, args, devices).await?;
    let pid = target.pid();

    let t0 = Instant::now();
    let clients = connect_clients(&target, 0..args.clients).await?;
    let connect_secs = t0.elapsed().as_secs_f64();
    println!(
        "  {} clients connected in {:.2} s; RSS {:.1} MB",
        clients.len(),
        connect_secs,
        rss_kib(pid) as f64 / 1024.0
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
        let (cpu0, tool0) = (cpu_secs(&pid.to_string()), cpu_secs("self"));
        let acked_before = acked.load(Ordering::Relaxed);
        let start_ms = micros() / 1000;
        let sent = publish_run(&mut pubs, run, rate, secs).await;
        let end_ms = micros() / 1000;
        // Let the last deliveries land.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let drained_ms = micros() / 1000;
        let acked = acked.load(Ordering::Relaxed) - acked_before;
        rss_stop.cancel();
        let rss = rss.await.unwrap_or(0);
        let server_cpu = cpu_secs(&pid.to_string()) - cpu0;
        let tool_cpu = cpu_secs("self") - tool0;
        println!(
            "  run {run}: {rate}/s for {secs} s: sent {sent}, acked {acked}, peak RSS {:.1} MB",
            rss as f64 / 1024.0
        );
        runs.push(RunFigures {
            rate,
            expected: sent * args.clients as u64,
            rss_kib: rss,
            server_cpu,
            tool_cpu,
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
    for (fig, samples) in runs.iter_mut().zip(per_run) {
        let (start, end, drained) = fig.window_ms;
        fig.in_window = samples
            .iter()
            .filter(|(_, at)| (start..=end).contains(at))
            .count() as u64;
        fig.in_cpu_window = samples
            .iter()
            .filter(|(_, at)| (start..=drained).contains(at))
            .count() as u64;
        let mut s: Vec<u32> = samples.into_iter().map(|(l, _)| l).collect();
        fig.delivered = s.len() as u64;
        (fig.p50_us, fig.p99_us, fig.max_us) = load::p50_p99_max(&mut s);
        println!(
            "    {:>5}/s: delivered {:>9}/{:<9} ({:6.2}%), {:>9.0} ev/s while publishing,  p50 {:>9} p99 {:>9} max {:>9}  server CPU {:.2} µs/event ({:.1} s), load tool CPU {:.1} s",
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
            "  {} idle connections in {:.1} s: RSS {:.1} MB (before: {:.1} MB)",
            idle_n,
            t0.elapsed().as_secs_f64(),
            idle_rss as f64 / 1024.0,
            idle_base as f64 / 1024.0
        );
        drop(idle);
    }
    target.stop().await;
    Ok(TargetFigures {
        name: name.to_owned(),
        connect_secs,
        runs,
        idle_rss_kib: idle_rss,
        idle_baseline_kib: idle_base,
        idle_connected: idle_n,
    })
}

fn summary(args: &BenchArgs, all: &[TargetFigures]) {
    println!();
    println!(
        "## Summary ({} receiving clients, {} publishers)",
        args.clients, args.publishers
    );
    println!();
    println!(
        "| server | {}/s: p50 | p99 | max | delivered ev/s | server CPU/event | peak RSS | best sustained ev/s (rate) | max delivered ev/s | {} idle: RSS |",
        args.rate, args.idle
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut best = BTreeMap::new();
    for t in all {
        let Some(first) = t.runs.first() else {
            continue;
        };
        let sustained = t
            .runs
            .iter()
            .filter(|r| r.sustained())
            .max_by(|a, b| a.delivered_per_sec().total_cmp(&b.delivered_per_sec()));
        let max_delivered = t
            .runs
            .iter()
            .map(RunFigures::delivered_per_sec)
            .fold(0.0, f64::max);
        // CPU per event over every run.
        let (cpu, n) = t.runs.iter().fold((0.0, 0u64), |(c, n), r| {
            (c + r.server_cpu, n + r.in_cpu_window)
        });
        let cpu_per_event = if n > 0 { cpu * 1e6 / n as f64 } else { 0.0 };
        best.insert(
            t.name.clone(),
            (
                sustained.map(RunFigures::delivered_per_sec),
                max_delivered,
                cpu_per_event,
            ),
        );
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} µs | {:.1} MB | {} | {:.0} | {} |",
            t.name,
            ms(first.p50_us),
            ms(first.p99_us),
            ms(first.max_us),
            first.delivered_per_sec(),
            cpu_per_event,
            first.rss_kib as f64 / 1024.0,
            sustained
                .map(|r| format!("{:.0} ({}/s)", r.delivered_per_sec(), r.rate))
                .unwrap_or_else(|| "none".into()),
            max_delivered,
            if t.idle_connected > 0 {
                format!(
                    "{:.1} MB ({} conns, {:.1} MB before)",
                    t.idle_rss_kib as f64 / 1024.0,
                    t.idle_connected,
                    t.idle_baseline_kib as f64 / 1024.0
                )
            } else {
                "-".into()
            },
        );
        let _ = t.connect_secs;
    }
    println!();
    if let Some((lk_s, lk_max, lk_cpu)) = best.get("latchkey") {
        for other in ["bare", "python"] {
            if let Some((o_s, o_max, o_cpu)) = best.get(other) {
                let sus = match (lk_s, o_s) {
                    (Some(a), Some(b)) if *b > 0.0 => format!("{:.2}×", a / b),
                    _ => "n/a".into(),
                };
                println!(
                    "latchkey / {other}: sustained throughput {sus}, max delivered {:.2}×, events per CPU-second {:.2}×",
                    if *o_max > 0.0 { lk_max / o_max } else { 0.0 },
                    if *lk_cpu > 0.0 { o_cpu / lk_cpu } else { 0.0 },
                );
            }
        }
    }
}
