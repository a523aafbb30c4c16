//! Gateway-core figures: cold start to `/healthz` 200, idle RSS, and `/api/pair` throughput and
//! latency under concurrent phones. Runs the real binary on loopback with throwaway data dirs and
//! stops it afterwards; bounded in requests and time. `scripts/bench-pair.sh` builds and runs it.
//!
//! ```text
//! pair_load --bin target/release/latchkey [--pairings 3000] [--concurrency 50] [--starts 10]
//! (then `--starts` restarts on the registry the pairings filled)
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// The latchkey binary to measure (a release build).
    #[arg(long, default_value = "target/release/latchkey")]
    bin: PathBuf,
    /// Pair tokens minted beforehand and then redeemed.
    #[arg(long, default_value_t = 3000)]
    pairings: usize,
    /// Phones redeeming at the same time.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Cold starts measured (each on a fresh data dir, then once more on the used one).
    #[arg(long, default_value_t = 10)]
    starts: usize,
}

/// Nothing here waits longer than this.
const LIMIT: Duration = Duration::from_secs(60);

struct Daemon {
    child: Child,
    base: String,
}

impl Daemon {
    fn spawn(bin: &Path, data: &Path, port: u16) -> anyhow::Result<Self> {
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(data)
            .args(["serve", "--ble", "off", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LATCHKEY_CONFIG")
            .env("LATCHKEY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        Ok(Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("latchkey exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("latchkey did not stop");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/PID/status"))
    }
}

/// utime + stime of a process, from /proc/PID/stat.
fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Spawns the daemon and polls `/healthz` as fast as it can: spawn → first 200.
async fn cold_start(
    bin: &Path,
    data: &Path,
    http: &reqwest::Client,
) -> anyhow::Result<(Daemon, Duration)> {
    let port = free_port()?;
    let t0 = Instant::now();
    let d = Daemon::spawn(bin, data, port)?;
    let url = format!("{}/healthz", d.base);
    loop {
        if let Ok(r) = http.get(&url).send().await {
            if r.status() == 200 {
                return Ok((d, t0.elapsed()));
            }
        }
        if t0.elapsed() > LIMIT {
            bail!("no /healthz 200 within {LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = std::fs::canonicalize(&args.bin).with_context(|| {
        format!(
            "{} (build it with cargo build --release)",
            args.bin.display()
        )
    })?;
    let scratch = tempfile::tempdir()?;
    // One connection per request for the start-up probe, so a refused connect is retried.
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()?;

    println!(
        "binary: {} ({} bytes)",
        bin.display(),
        std::fs::metadata(&bin)?.len()
    );

    // Cold starts: first run on a fresh dir (creates the database and the master key), then a
    // restart on the same dir.
    let mut fresh = Vec::new();
    let mut again = Vec::new();
    for i in 0..args.starts {
        let data = scratch.path().join(format!("start-{i}"));
        let (d, t) = cold_start(&bin, &data, &probe).await?;
        fresh.push(t);
        d.stop()?;
        let (d, t) = cold_start(&bin, &data, &probe).await?;
        again.push(t);
        d.stop()?;
    }
    fresh.sort();
    again.sort();
    println!(
        "cold start to /healthz 200, fresh data dir ({} runs): median {}, max {}",
        fresh.len(),
        ms(percentile(&fresh, 50.0)),
        ms(*fresh.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "cold start to /healthz 200, existing data dir ({} runs): median {}, max {}",
        again.len(),
        ms(percentile(&again, 50.0)),
        ms(*again.last().unwrap_or(&Duration::ZERO))
    );

    // The daemon under load.
    let data = scratch.path().join("load");
    let (d, _) = cold_start(&bin, &data, &probe).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = d.status_kib("VmRSS:")?;
    println!(
        "idle RSS after start: {idle_rss} KiB ({:.1} MiB)",
        idle_rss as f64 / 1024.0
    );

    let out = Command::new(&bin)
        .arg("--data-dir")
        .arg(&data)
        .args(["admin", "token", "--name", "bench"])
        .output()?;
    if !out.status.success() {
        bail!("admin token: {}", String::from_utf8_lossy(&out.stderr));
    }
    let admin = String::from_utf8(out.stdout)?.trim().to_owned();

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    // Mint the tokens first, so the measurement is redemption alone.
    let minted = Arc::new(AtomicUsize::new(0));
    let mut minters = Vec::new();
    let tokens = Arc::new(std::sync::Mutex::new(Vec::with_capacity(args.pairings)));
    for _ in 0..8 {
        let (http, base, admin, minted, tokens, n) = (
            http.clone(),
            d.base.clone(),
            admin.clone(),
            minted.clone(),
            tokens.clone(),
            args.pairings,
        );
        minters.push(tokio::spawn(async move {
            while minted.fetch_add(1, Ordering::SeqCst) < n {
                let r = http
                    .post(format!("{base}/api/pair-tokens"))
                    .bearer_auth(&admin)
                    .send()
                    .await?;
                if r.status() != 201 {
                    bail!("pair-tokens: {}", r.status());
                }
                let v: Value = r.json().await?;
                let t = v["pairToken"].as_str().unwrap_or_default().to_owned();
                tokens.lock().map_err(|_| anyhow::anyhow!("lock"))?.push(t);
            }
            Ok(())
        }));
    }
    for m in minters {
        m.await??;
    }
    let tokens: Arc<Vec<String>> = Arc::new(std::mem::take(
        &mut *tokens.lock().map_err(|_| anyhow::anyhow!("lock"))?,
    ));

    // Warm the connection pool so connection set-up is not measured as pairing latency.
    let warm: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (http, url) = (http.clone(), format!("{}/healthz", d.base));
            tokio::spawn(async move { http.get(url).send().await.map(|_| ()) })
        })
        .collect();
    for w in warm {
        w.await??;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let server_pid = d.child.id().to_string();
    let server_cpu0 = cpu_time(&server_pid)?;
    let client_cpu0 = cpu_time("self")?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (http, base, tokens, next) =
            (http.clone(), d.base.clone(), tokens.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(token) = tokens.get(i) else { break };
                let body = json!({"pairToken": token, "deviceInfo": {"name": format!("phone {i}"), "type": "mobile"}});
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/api/pair"))
                    .json(&body)
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) => r.status() == 201 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                lat.push(t.elapsed());
                if !ok {
                    failures += 1;
                }
            }
            (lat, failures)
        }));
    }
    let mut lat = Vec::new();
    let mut failures = 0;
    for w in workers {
        let (l, f) = w.await?;
        lat.extend(l);
        failures += f;
    }
    let wall = started.elapsed();
    let server_cpu = cpu_time(&server_pid)? - server_cpu0;
    let client_cpu = cpu_time("self")? - client_cpu0;
    lat.sort();
    let peak_rss = d.status_kib("VmHWM:")?;
    d.stop()?;

    println!(
        "/api/pair: {} pairings by {} concurrent clients in {:.2} s = {:.0} pairings/s ({} failed)",
        lat.len(),
        args.concurrency,
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64(),
        failures
    );
    println!(
        "/api/pair latency: p50 {}, p90 {}, p99 {}, max {}",
        ms(percentile(&lat, 50.0)),
        ms(percentile(&lat, 90.0)),
        ms(percentile(&lat, 99.0)),
        ms(*lat.last().unwrap_or(&Duration::ZERO))
    );
    let per = |cpu: Duration| cpu.as_secs_f64() * 1e6 / lat.len().max(1) as f64;
    println!(
        "CPU per pairing: gateway {:.0} µs, load tool {:.0} µs (both on this machine's cores)",
        per(server_cpu),
        per(client_cpu)
    );
    println!(
        "peak RSS during the run: {peak_rss} KiB ({:.1} MiB)",
        peak_rss as f64 / 1024.0
    );
    if failures > 0 {
        bail!("{failures} pairings failed");
    }

    // Restarts on the registry the run filled (every pairing a device, and its events).
    let mut full = Vec::new();
    for _ in 0..args.starts {
        let (d, t) = cold_start(&bin, &data, &probe).await?;
        full.push(t);
        d.stop()?;
    }
    full.sort();
    println!(
        "cold start to /healthz 200 with {} devices ({} runs): median {}, max {}",
        lat.len(),
        full.len(),
        ms(percentile(&full, 50.0)),
        ms(*full.last().unwrap_or(&Duration::ZERO))
    );
    Ok(())
}
