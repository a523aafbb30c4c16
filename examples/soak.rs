//! The soak run (issue 15, docs/RELIABILITY.md "Soak"; `scripts/soak.sh` runs it; not a test).
//!
//! Starts the release `latchkey serve` as a child on loopback with a temp data dir and BLE on
//! through a private D-Bus and the BlueZ stand-in, pairs N phones and provisions M door nodes
//! over the API, keeps every phone (a `SyncClient`) and every node connected, and runs steady
//! load: publishes at a fixed rate from a few publisher devices, BLE unlocks through the
//! stand-in and node opens (`POST /api/endpoints/{id}/open` → node `result`), and a reconnect
//! storm every few minutes in which every phone, node and publisher drops its socket at once
//! (phones resume from their last seq). Each minute it samples the daemon's RSS, open fds,
//! event-log size and that minute's delivery latency, prints a line, appends a row to
//! `DIR/soak.csv` and redraws `DIR/soak.svg`, so a cut run still leaves its data. At the end it
//! counts, per phone, the acknowledged publishes it should have received and did not (gaps).

mod load;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use latchkey_bluez_standin::phone::Phone;
use latchkey_bluez_standin::{Adapter, Link, PrivateBus, Standin};
use latchkey_phone::secret::SecretString;
use latchkey_phone::sync_client::{Incoming, SyncClient};
use latchkey_proto::{Status, UuidText, AUTH_UUID, CHALLENGE_UUID, RESULT_UUID};
use load::{epoch, micros, node};
use serde_json::json;
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Clone)]
struct Args {
    /// The latchkey binary (build it with --release).
    #[arg(long, default_value = "target/release/latchkey")]
    latchkey: PathBuf,
    /// How long the steady load runs.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Phones paired and connected (each a receiving SyncClient).
    #[arg(long, default_value_t = 1000)]
    phones: usize,
    /// Door nodes provisioned and connected.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Where soak.csv, soak.svg, summary.txt and the daemon's log go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    /// Publishes per second, shared by the publisher devices.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// Extra paired devices that publish (each stays under the default 20/s budget).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// BLE unlocks per second, and node opens per second.
    #[arg(long, default_value_t = 1)]
    unlock_rate: u32,
    /// Minutes between reconnect storms (default: 10, or half the run if that is shorter).
    #[arg(long)]
    storm_every: Option<u64>,
    /// Run without the BLE stand-in (node opens only).
    #[arg(long)]
    no_ble: bool,
    /// The heap shim (examples/load/heapstats.c, built by `scripts/soak.sh --heap`): loaded into
    /// the daemon, it writes DIR/heap.csv, and each minute's row gets the live heap beside RSS.
    #[arg(long)]
    heap_shim: Option<PathBuf>,
}

/// Nothing here waits longer than this for one step.
const LIMIT: Duration = Duration::from_secs(120);
/// One HTTP request's limit.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Histogram bucket width (µs) and bucket count (60 s) for the whole run's percentiles.
const BUCKET_US: u64 = 100;
const BUCKETS: usize = 600_000;
/// The endpoint the gateway's own BLE door opens.
const BLE_ENDPOINT: &str = "front";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Counters every task adds to.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    /// Deliveries of load events to phones.
    delivered: AtomicU64,
    resets: AtomicU64,
    receiver_errors: AtomicU64,
    reconnects: AtomicU64,
    ble_granted: AtomicU64,
    ble_denied: AtomicU64,
    ble_errors: AtomicU64,
    node_opened: AtomicU64,
    node_failed: AtomicU64,
    node_reconnect_errors: AtomicU64,
}

impl Counters {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Delivery latencies: per minute of publishing (exact percentiles) and the whole run (100 µs
/// buckets).
struct Latencies {
    per_minute: Vec<Vec<u32>>,
    hist: Vec<u64>,
}

impl Latencies {
    fn new(minutes: usize) -> Self {
        Self {
            per_minute: vec![Vec::new(); minutes + 1],
            hist: vec![0; BUCKETS],
        }
    }

    fn add(&mut self, minute: usize, us: u64) {
        if let Some(v) = self.per_minute.get_mut(minute) {
            v.push(us.min(u64::from(u32::MAX)) as u32);
        }
        let b = ((us / BUCKET_US) as usize).min(BUCKETS - 1);
        if let Some(h) = self.hist.get_mut(b) {
            *h += 1;
        }
    }

    /// The bucket's upper edge holding the `p` quantile, µs.
    fn hist_quantile(&self, p: f64) -> u64 {
        let total: u64 = self.hist.iter().sum();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= want {
                return (i as u64 + 1) * BUCKET_US;
            }
        }
        BUCKETS as u64 * BUCKET_US
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// What one phone saw.
struct PhoneTally {
    /// The gateway's newest seq at first connect: the phone owes every publish after it.
    start_seq: i64,
    received: u64,
}

/// One sample row.
#[derive(Clone, Default)]
struct Row {
    minute: u64,
    rss_kib: u64,
    fds: usize,
    /// The daemon's threads (tokio's blocking pool grows in a storm).
    threads: usize,
    events_retained: i64,
    db_bytes: u64,
    published: u64,
    delivered: usize,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
    storm: bool,
    load1: f64,
    heap: Option<Heap>,
}

/// The daemon's allocator at a moment (the last line of heap.csv).
#[derive(Clone, Copy)]
struct Heap {
    in_use: u64,
    free: u64,
    arenas: u64,
}

impl Heap {
    /// The last sample in the heap shim's file.
    fn last(path: &Path) -> Option<Heap> {
        let text = std::fs::read_to_string(path).ok()?;
        let f: Vec<u64> = text
            .lines()
            .last()?
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let &[_, in_use, free, _, arenas] = f.as_slice() else {
            return None;
        };
        Some(Heap {
            in_use,
            free,
            arenas,
        })
    }
}

const CSV_HEADER: &str = "minute,rss_kib,fds,events_retained,db_wal_bytes,published,delivered,p50_ms,p99_ms,max_ms,storm,loadavg1,heap_in_use_kib,heap_free_kib,arenas,threads";

impl Row {
    fn csv(&self) -> String {
        let heap = self.heap.map_or_else(
            || ",,".to_owned(),
            |h| format!("{},{},{}", h.in_use / 1024, h.free / 1024, h.arenas),
        );
        format!(
            "{},{},{},{},{},{},{},{:.2},{:.2},{:.2},{},{:.2},{heap},{}",
            self.minute,
            self.rss_kib,
            self.fds,
            self.events_retained,
            self.db_bytes,
            self.published,
            self.delivered,
            ms(u64::from(self.p50_us)),
            ms(u64::from(self.p99_us)),
            ms(u64::from(self.max_us)),
            u8::from(self.storm),
            self.load1,
            self.threads
        )
    }
}

fn main() -> anyhow::Result<()> {
    load::raise_fd_limit();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // A signal would end the process without drops: the daemon (kill_on_drop) and the
        // stand-in's bus would outlive the tool. Dropping the run stops them.
        let interrupted = latchkey::shutdown_signal()?;
        tokio::select! {
            done = run(args) => done,
            () = interrupted => bail!("interrupted: the daemon and the private bus were stopped"),
        }
    })
}

fn admin_token(bin: &Path, data: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new(bin)
        .arg("--data-dir")
        .arg(data)
        .args(["admin", "token", "--name", "soak"])
        .output()
        .context("latchkey admin token")?;
    if !out.status.success() {
        bail!(
            "latchkey admin token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The registry file and its WAL, bytes.
fn db_bytes(data: &Path) -> u64 {
    ["latchkey.db", "latchkey.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// `latchkey_events_retained` from `/metrics`.
async fn events_retained(http: &reqwest::Client, base: &str, admin: &str) -> i64 {
    let Ok(r) = http
        .get(format!("{base}/metrics"))
        .bearer_auth(admin)
        .send()
        .await
    else {
        return -1;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("latchkey_events_retained "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or(-1)
}

struct Ble {
    bus: PrivateBus,
    _standin: Standin,
    adapter: Adapter,
}

async fn start_ble() -> anyhow::Result<Ble> {
    let bus = PrivateBus::start().context("private D-Bus")?;
    let standin = Standin::start(&bus.address)
        .await
        .context("BlueZ stand-in")?;
    let adapter = standin.add_adapter("hci0").await?;
    Ok(Ble {
        bus,
        _standin: standin,
        adapter,
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = epoch();
    let minutes = args.minutes.max(1);
    let storm_every = args
        .storm_every
        .unwrap_or_else(|| 10.min((minutes / 2).max(1)))
        .max(1);
    std::fs::create_dir_all(&args.out)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let token = admin_token(&args.latchkey, &data)?;

    let ble = if args.no_ble {
        None
    } else {
        Some(start_ble().await?)
    };
    let config = dir.path().join("soak.toml");
    std::fs::write(
        &config,
        format!("[[endpoint]]\nid = \"{BLE_ENDPOINT}\"\naction = {{ type = \"none\" }}\n"),
    )?;
    let port = load::free_port()?;
    let mut cmd = Command::new(&args.latchkey);
    cmd.arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        // The tool's own LATCHKEY_LOG, if set, reaches the daemon (e.g. `latchkey::listener=debug`).
        .env(
            "LATCHKEY_LOG",
            std::env::var("LATCHKEY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("LATCHKEY_MDNS", "off")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(args.out.join("serve.log"))?)
        .stderr(std::fs::File::create(args.out.join("serve.err.log"))?)
        .kill_on_drop(true);
    let heap_csv = args.out.join("heap.csv");
    if let Some(shim) = &args.heap_shim {
        cmd.env("LD_PRELOAD", std::path::absolute(shim)?)
            .env("HEAPSTATS_FILE", &heap_csv);
    }
    let heap = || args.heap_shim.as_ref().and_then(|_| Heap::last(&heap_csv));
    match &ble {
        Some(b) => cmd
            .args(["--ble", "on"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &b.bus.address),
        None => cmd.args(["--ble", "off"]),
    };
    let mut child = cmd.spawn().context("latchkey serve")?;
    let pid = child.id().context("daemon pid")?;
    load::wait_listening(port).await?;
    if let Some(b) = &ble {
        b.adapter
            .wait_application(0, Duration::from_secs(30))
            .await
            .context("the daemon registers its GATT service")?;
    }
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("ws://127.0.0.1:{port}/ws");
    let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;
    println!(
        "latchkey serve pid {pid} on {base}; BLE {}; {} phones, {} nodes, {} min, storms every {} min, {}/s publishes, {}/s BLE unlocks + {}/s node opens",
        if ble.is_some() { "on (private bus + stand-in)" } else { "off" },
        args.phones,
        args.nodes,
        minutes,
        storm_every,
        args.rate,
        if ble.is_some() { args.unlock_rate } else { 0 },
        args.unlock_rate
    );

    let t0 = Instant::now();
    let paired = load::pair(port, &token, args.phones + args.publishers).await?;
    println!(
        "paired {} devices over the API in {:.1} s",
        paired.len(),
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let creds = load::provision_nodes(&http, &base, &token, args.nodes).await?;
    println!(
        "{} nodes provisioned and registered in {:.1} s",
        creds.len(),
        t0.elapsed().as_secs_f64()
    );

    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let stop_publishing = CancellationToken::new();
    let (storm_tx, storm_rx) = watch::channel(0u64);
    let lat = Arc::new(Mutex::new(Latencies::new(minutes as usize)));
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    // Phones reconnected since the last storm began.
    let back = Arc::new(AtomicU64::new(0));

    // Nodes.
    let t0 = Instant::now();
    let mut node_tasks = Vec::new();
    for c in creds.iter().cloned() {
        node_tasks.push(tokio::spawn(run_node(
            c,
            storm_rx.clone(),
            stop.clone(),
            counters.clone(),
        )));
    }
    load::wait_online(&http, &base, &token, creds.len(), LIMIT).await?;
    println!(
        "{} nodes online in {:.1} s",
        creds.len(),
        t0.elapsed().as_secs_f64()
    );

    // Phones.
    let (phones, pubs) = paired.split_at(args.phones.min(paired.len()));
    let t0 = Instant::now();
    let clients =
        load::connect_clients(&url, phones.iter().map(|p| p.device_key.clone()).collect()).await?;
    println!(
        "{} phones connected in {:.1} s",
        clients.len(),
        t0.elapsed().as_secs_f64()
    );
    let run_start = micros();
    let mut receivers = Vec::new();
    for (c, p) in clients.into_iter().zip(phones) {
        receivers.push(tokio::spawn(run_phone(
            c,
            url.clone(),
            p.device_key.clone(),
            run_start,
            storm_rx.clone(),
            stop.clone(),
            counters.clone(),
            lat.clone(),
            back.clone(),
        )));
    }

    // Publishers.
    let mut publishers = Vec::new();
    let every = Duration::from_secs_f64(pubs.len().max(1) as f64 / args.rate.max(1) as f64);
    for (i, p) in pubs.iter().enumerate() {
        publishers.push(tokio::spawn(run_publisher(
            url.clone(),
            p.device_key.clone(),
            every,
            // Spread the publishers' ticks over one interval.
            every.mul_f64(i as f64 / pubs.len().max(1) as f64),
            storm_rx.clone(),
            stop_publishing.clone(),
            counters.clone(),
            acked.clone(),
        )));
    }

    // Unlocks.
    let tick = Duration::from_secs(1) / args.unlock_rate.max(1);
    let mut unlockers = Vec::new();
    if let Some(b) = &ble {
        let phones: Vec<(String, String)> = phones
            .iter()
            .map(|p| (p.device_id.clone(), p.totp_secret.clone()))
            .collect();
        unlockers.push(tokio::spawn(run_ble_unlocks(
            b.adapter.clone(),
            phones,
            tick,
            stop_publishing.clone(),
            counters.clone(),
        )));
    }
    unlockers.push(tokio::spawn(run_node_opens(
        http.clone(),
        base.clone(),
        token.clone(),
        creds.iter().map(|c| c.endpoint.clone()).collect(),
        tick,
        stop_publishing.clone(),
        counters.clone(),
    )));

    // Storms.
    let storm_times: Vec<u64> = (1..)
        .map(|k| k * storm_every * 60 + 30)
        .take_while(|&s| s < minutes * 60)
        .collect();
    let storms = tokio::spawn(run_storms(
        storm_times.clone(),
        run_start,
        args.phones as u64,
        storm_tx,
        back.clone(),
    ));

    // Samples.
    let csv_path = args.out.join("soak.csv");
    std::fs::write(&csv_path, format!("{CSV_HEADER}\n"))?;
    let mut csv = std::fs::OpenOptions::new().append(true).open(&csv_path)?;
    let start_rss = load::rss_kib(pid).unwrap_or(0);
    let start_fds = load::open_fds(pid).unwrap_or(0);
    println!("start: RSS {start_rss} KiB, {start_fds} fds");
    // Minute 0: everything connected, no load yet (no latency figures).
    let start = Row {
        minute: 0,
        rss_kib: start_rss,
        fds: start_fds,
        threads: load::threads(pid).unwrap_or(0),
        events_retained: events_retained(&http, &base, &token).await,
        db_bytes: db_bytes(&data),
        load1: load1(),
        heap: heap(),
        ..Row::default()
    };
    {
        use std::io::Write;
        writeln!(csv, "{}", start.csv())?;
    }
    let mut rows: Vec<Row> = vec![start];
    println!("minute  RSS KiB   fds  events  db+wal KiB  published  delivered   p50 ms   p99 ms   max ms  storm  load1");
    let mut published_before = 0;
    for m in 0..minutes {
        let boundary = Duration::from_micros(run_start) + Duration::from_secs((m + 1) * 60);
        tokio::time::sleep(boundary.saturating_sub(epoch().elapsed())).await;
        let mut row = Row {
            minute: m + 1,
            rss_kib: load::rss_kib(pid).unwrap_or(0),
            fds: load::open_fds(pid).unwrap_or(0),
            threads: load::threads(pid).unwrap_or(0),
            events_retained: events_retained(&http, &base, &token).await,
            db_bytes: db_bytes(&data),
            storm: storm_times.iter().any(|&s| s / 60 == m),
            load1: load1(),
            heap: heap(),
            ..Row::default()
        };
        let published = Counters::get(&counters.published);
        row.published = published - published_before;
        published_before = published;
        // The minute's last publishes land within a few ms; this leaves room for a slow one.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut samples = {
            let mut l = lat.lock().unwrap_or_else(|p| p.into_inner());
            l.per_minute
                .get_mut(m as usize)
                .map(std::mem::take)
                .unwrap_or_default()
        };
        row.delivered = samples.len();
        (row.p50_us, row.p99_us, row.max_us) = load::p50_p99_max(&mut samples);
        println!(
            "{:>6} {:>8} {:>5} {:>7} {:>11} {:>10} {:>10} {:>8.2} {:>8.2} {:>8.2}  {:>5}  {:.2}",
            row.minute,
            row.rss_kib,
            row.fds,
            row.events_retained,
            row.db_bytes / 1024,
            row.published,
            row.delivered,
            ms(u64::from(row.p50_us)),
            ms(u64::from(row.p99_us)),
            ms(u64::from(row.max_us)),
            if row.storm { "yes" } else { "" },
            row.load1
        );
        if let Some(h) = row.heap {
            println!(
                "        heap in use {} KiB, free in arenas {} KiB, {} arenas, {} threads",
                h.in_use / 1024,
                h.free / 1024,
                h.arenas,
                row.threads
            );
        }
        use std::io::Write;
        writeln!(csv, "{}", row.csv())?;
        csv.flush()?;
        rows.push(row);
        std::fs::write(args.out.join("soak.svg"), svg(&rows, minutes, &storm_times))?;
    }

    // Stop publishing and unlocking, let the last deliveries land, then count.
    stop_publishing.cancel();
    for t in publishers.into_iter().chain(unlockers) {
        let _ = t.await;
    }
    storms.abort();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end_rss = load::rss_kib(pid).unwrap_or(0);
    let end_fds = load::open_fds(pid).unwrap_or(0);
    let end_events = events_retained(&http, &base, &token).await;
    stop.cancel();
    let mut tallies = Vec::new();
    for r in receivers {
        match r.await {
            Ok(t) => tallies.push(t),
            Err(_) => {
                counters.receiver_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    for t in node_tasks {
        let _ = t.await;
    }
    let mut acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));
    acked.sort_unstable();
    let (mut gaps, mut extra, mut owed) = (0u64, 0u64, 0u64);
    for t in &tallies {
        let expected = (acked.len() - acked.partition_point(|&s| s <= t.start_seq)) as u64;
        owed += expected;
        gaps += expected.saturating_sub(t.received);
        extra += t.received.saturating_sub(expected);
    }
    let (p50, p99, max) = {
        let l = lat.lock().unwrap_or_else(|p| p.into_inner());
        let max = l.hist.iter().rposition(|&n| n > 0).unwrap_or(0) as u64 * BUCKET_US;
        (l.hist_quantile(0.50), l.hist_quantile(0.99), max)
    };
    let c = &counters;
    let g = Counters::get;
    let summary = format!(
        "summary ({} phones, {} nodes, {} min, {} storms):\n\
         RSS start {start_rss} KiB, end {end_rss} KiB; open fds start {start_fds}, end {end_fds}\n\
         events retained at the end: {end_events}; registry+WAL {} KiB\n\
         delivery over the whole run (100 µs buckets): p50 {:.1} ms, p99 {:.1} ms, max ≥ {:.1} ms\n\
         published (acked) {}, publish errors {}; delivered {} of {} owed to phones; gaps {gaps}, extra {extra}, resets {}\n\
         phone reconnects {}, receiver errors {}; node reconnect errors {}\n\
         BLE unlocks granted {}, denied {}, errors {}; node opens ok {}, failed {}",
        tallies.len(),
        creds.len(),
        minutes,
        storm_times.len(),
        db_bytes(&data) / 1024,
        ms(p50),
        ms(p99),
        ms(max),
        acked.len(),
        g(&c.publish_errors),
        g(&c.delivered),
        owed,
        g(&c.resets),
        g(&c.reconnects),
        g(&c.receiver_errors),
        g(&c.node_reconnect_errors),
        g(&c.ble_granted),
        g(&c.ble_denied),
        g(&c.ble_errors),
        g(&c.node_opened),
        g(&c.node_failed),
    );
    println!("{summary}");
    std::fs::write(args.out.join("summary.txt"), format!("{summary}\n"))?;

    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let _ = child.kill().await;
    Ok(())
}

/// Fires each storm at its time (seconds after `run_start`) and reports how long it took until
/// every phone was back.
async fn run_storms(
    times: Vec<u64>,
    run_start: u64,
    phones: u64,
    tx: watch::Sender<u64>,
    back: Arc<AtomicU64>,
) {
    for (k, s) in times.into_iter().enumerate() {
        let at = Duration::from_micros(run_start) + Duration::from_secs(s);
        tokio::time::sleep(at.saturating_sub(epoch().elapsed())).await;
        back.store(0, Ordering::Relaxed);
        let t0 = Instant::now();
        tx.send_replace(k as u64 + 1);
        while back.load(Ordering::Relaxed) < phones && t0.elapsed() < LIMIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "storm {} at {s} s: {} of {phones} phones back in {:.2} s",
            k + 1,
            back.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64()
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_phone(
    mut c: SyncClient,
    url: String,
    key: String,
    run_start: u64,
    mut storm: watch::Receiver<u64>,
    stop: CancellationToken,
    counters: Arc<Counters>,
    lat: Arc<Mutex<Latencies>>,
    back: Arc<AtomicU64>,
) -> PhoneTally {
    let mut t = PhoneTally {
        start_seq: c.last_seq().unwrap_or(0),
        received: 0,
    };
    loop {
        let r = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Ok(()) = storm.changed() => {
                // Drop the socket and resume from the last seq on a new one, as a phone does.
                let since = c.last_seq().unwrap_or(t.start_seq);
                c.close().await;
                c = SyncClient::new(url.clone(), SecretString::new(key.clone())).since(since);
                match tokio::time::timeout(LIMIT, c.connect()).await {
                    Ok(Ok(())) => {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        back.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        counters.receiver_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            r = c.next() => r,
        };
        match r {
            Ok(Incoming::Event(ev)) if ev.topic == "soak.load" => {
                let now = micros();
                t.received += 1;
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(sent) = ev.data["t"].as_u64() {
                    let minute = (sent.saturating_sub(run_start) / 60_000_000) as usize;
                    lat.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(minute, now.saturating_sub(sent));
                }
            }
            Ok(Incoming::Event(_)) => {}
            Ok(Incoming::Reset { .. }) => {
                counters.resets.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counters.receiver_errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    c.close().await;
    t
}

#[allow(clippy::too_many_arguments)]
async fn run_publisher(
    url: String,
    key: String,
    every: Duration,
    offset: Duration,
    mut storm: watch::Receiver<u64>,
    stop: CancellationToken,
    counters: Arc<Counters>,
    acked: Arc<Mutex<Vec<i64>>>,
) {
    let new_client = || {
        // Muted: a publisher receives nothing, so its queue stays empty.
        SyncClient::new(url.clone(), SecretString::new(key.clone())).topics(Vec::new())
    };
    let mut c = new_client();
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pad = "x".repeat(64);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Ok(()) = storm.changed() => {
                // Only between publishes, so every publish sent is acked or counted as an error.
                c.close().await;
                c = new_client();
            }
            _ = tick.tick() => {
                let data = json!({"t": micros(), "pad": pad});
                match tokio::time::timeout(HTTP_TIMEOUT, c.publish("soak.load", data)).await {
                    Ok(Ok(seq)) => {
                        counters.published.fetch_add(1, Ordering::Relaxed);
                        acked.lock().unwrap_or_else(|p| p.into_inner()).push(seq);
                    }
                    _ => {
                        counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                        c.close().await;
                        c = new_client();
                    }
                }
            }
        }
    }
    c.close().await;
}

/// Keeps one node connected, answering every command `ok`; reconnects on a storm or a drop.
async fn run_node(
    creds: node::Creds,
    mut storm: watch::Receiver<u64>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    loop {
        // `node::session` is the tests' helper, which panics on a refused upgrade: a task
        // contains it, and the failure is counted and retried.
        let c = creds.clone();
        let session = tokio::spawn(async move { node::session(&c).await });
        let ws = tokio::select! {
            _ = stop.cancelled() => return,
            r = session => r,
        };
        let Ok((ws, _hello)) = ws else {
            counters
                .node_reconnect_errors
                .fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let (task, _commands) = node::serve(ws, node::Answer::Ok);
        let abort = task.abort_handle();
        tokio::select! {
            _ = stop.cancelled() => {
                abort.abort();
                return;
            }
            Ok(()) = storm.changed() => abort.abort(),
            _ = task => {}
        }
    }
}

async fn ble_link(adapter: &Adapter) -> anyhow::Result<Link> {
    let link = adapter.connect("42:42:42:42:42:42", 185).await?;
    link.subscribe(&UuidText(RESULT_UUID).to_string()).await?;
    Ok(link)
}

/// One BLE unlock of the gateway's own door: read the challenge, write the auth frame, check
/// the signed result.
async fn ble_unlock(link: &Link, phone: &mut Phone) -> anyhow::Result<Status> {
    let c = link.read(&UuidText(CHALLENGE_UUID).to_string(), 0).await?;
    let attempt = phone
        .answer(&c, unix_now(), BLE_ENDPOINT)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    link.write(&UuidText(AUTH_UUID).to_string(), &attempt.frame)
        .await?;
    let r = link
        .notification(&UuidText(RESULT_UUID).to_string(), HTTP_TIMEOUT)
        .await
        .context("no result notification")?;
    let v = phone
        .verify(&r, &attempt)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(v.result.status)
}

/// BLE unlocks round robin over the phones (each phone's TOTP step is used once).
async fn run_ble_unlocks(
    adapter: Adapter,
    phones: Vec<(String, String)>,
    every: Duration,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let mut ready = Vec::with_capacity(phones.len());
    for (id, secret) in phones {
        let (Ok(id), Ok(secret)) = (
            uuid::Uuid::try_parse(&id),
            data_encoding::BASE32_NOPAD.decode(secret.trim_end_matches('=').as_bytes()),
        ) else {
            counters.ble_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Ok(p) = Phone::new(id.into_bytes(), secret) {
            ready.push(p);
        }
    }
    let mut link = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    while !ready.is_empty() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if link.is_none() {
            link = tokio::time::timeout(HTTP_TIMEOUT, ble_link(&adapter))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let at = i % ready.len().max(1);
        let (Some(l), Some(p)) = (link.as_ref(), ready.get_mut(at)) else {
            counters.ble_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        i += 1;
        match tokio::time::timeout(HTTP_TIMEOUT, ble_unlock(l, p)).await {
            Ok(Ok(Status::Granted)) => counters.ble_granted.fetch_add(1, Ordering::Relaxed),
            Ok(Ok(_)) => counters.ble_denied.fetch_add(1, Ordering::Relaxed),
            _ => {
                // A fresh link for the next one.
                if let Some(l) = link.take() {
                    let _ = l.disconnect().await;
                }
                counters.ble_errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Node opens (`POST /api/endpoints/{id}/open`) round robin over the doors.
async fn run_node_opens(
    http: reqwest::Client,
    base: String,
    admin: String,
    endpoints: Vec<String>,
    every: Duration,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    while let Some(e) = endpoints.get(i % endpoints.len().max(1)) {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        i += 1;
        let r = http
            .post(format!("{base}/api/endpoints/{e}/open"))
            .bearer_auth(&admin)
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => {
                counters.node_opened.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                counters.node_failed.fetch_add(1, Ordering::Relaxed);
                let why = match other {
                    Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                    Err(e) => e.to_string(),
                };
                let at = epoch().elapsed().as_secs();
                eprintln!("node open of {e} failed at {at} s: {why}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plot: four panels over time, the storms as dashed red lines. Hand-written SVG (a few
// polylines do not need a plotting crate).

fn svg(rows: &[Row], minutes: u64, storms: &[u64]) -> String {
    type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);
    // One point a row; latency from minute 1 (minute 0 has no publishes).
    let over = |from: u64, f: fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.minute >= from)
            .map(|r| (r.minute as f64, f(r)))
            .collect()
    };
    let panels: [(&str, Vec<Series>); 4] = [
        (
            "daemon RSS (MiB), heap in use (orange, with --heap)",
            vec![
                ("RSS", "#1f77b4", over(0, |r| r.rss_kib as f64 / 1024.0)),
                (
                    "heap",
                    "#ff7f0e",
                    rows.iter()
                        .filter_map(|r| Some((r.minute as f64, r.heap?.in_use as f64 / 1048576.0)))
                        .collect(),
                ),
            ],
        ),
        (
            "open fds",
            vec![("fds", "#2ca02c", over(0, |r| r.fds as f64))],
        ),
        (
            "event log: rows retained (blue), registry+WAL MiB ×1000 (grey)",
            vec![
                ("rows", "#1f77b4", over(0, |r| r.events_retained as f64)),
                (
                    "bytes",
                    "#999999",
                    over(0, |r| r.db_bytes as f64 / 1048.576),
                ),
            ],
        ),
        (
            "delivery latency (ms): p50 (blue), p99 (orange)",
            vec![
                ("p50", "#1f77b4", over(1, |r| ms(u64::from(r.p50_us)))),
                ("p99", "#ff7f0e", over(1, |r| ms(u64::from(r.p99_us)))),
            ],
        ),
    ];
    let (w, h) = (440.0, 220.0);
    let (left, top, right, bottom) = (56.0, 28.0, 12.0, 30.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * w,
        2.0 * h
    );
    let xmax = minutes.max(1) as f64;
    for (k, (title, series)) in panels.iter().enumerate() {
        let (ox, oy) = ((k % 2) as f64 * w, (k / 2) as f64 * h);
        let (pw, ph) = (w - left - right, h - top - bottom);
        let ymax = series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1))
            .fold(0.0, f64::max)
            .max(1e-9)
            * 1.1;
        let x = |min: f64| ox + left + pw * min / xmax;
        let y = |v: f64| oy + top + ph * (1.0 - v / ymax);
        out += &format!(
            "<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{title}</text>\n",
            ox + left,
            oy + 16.0
        );
        out += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n",
            ox + left,
            oy + top
        );
        for t in 0..=4 {
            let v = ymax * f64::from(t) / 4.0;
            out += &format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n<line x1=\"{4}\" x2=\"{5}\" y1=\"{3}\" y2=\"{3}\" stroke=\"#ddd\"/>\n",
                ox + left - 4.0,
                y(v) + 4.0,
                if ymax >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") },
                y(v),
                ox + left,
                ox + left + pw,
            );
        }
        let step = (xmax / 6.0).ceil().max(1.0);
        let mut m = 0.0;
        while m <= xmax {
            out += &format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{m:.0}</text>\n",
                x(m),
                oy + top + ph + 14.0
            );
            m += step;
        }
        out += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">minutes</text>\n",
            ox + left + pw / 2.0,
            oy + h - 2.0
        );
        for &s in storms {
            let sx = x(s as f64 / 60.0);
            out += &format!(
                "<line x1=\"{sx}\" x2=\"{sx}\" y1=\"{}\" y2=\"{}\" stroke=\"red\" stroke-dasharray=\"4 3\"/>\n",
                oy + top,
                oy + top + ph
            );
        }
        for (_, color, values) in series {
            let points: Vec<String> = values
                .iter()
                .map(|(m, v)| format!("{:.1},{:.1}", x(*m), y(*v)))
                .collect();
            out += &format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                points.join(" ")
            );
            for p in &points {
                let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
                out += &format!("<circle cx=\"{px}\" cy=\"{py}\" r=\"2\" fill=\"{color}\"/>\n");
            }
        }
    }
    out += &format!(
        "<text x=\"{}\" y=\"{}\" fill=\"red\" text-anchor=\"end\">dashed red: reconnect storm</text>\n</svg>\n",
        2.0 * w - right,
        16.0
    );
    out
}
