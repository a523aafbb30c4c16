//! Pieces the load tools share (`ws_load`, `node_load`, `soak`): the daemon's process figures,
//! pairing phones and provisioning nodes over the real API.
// Each tool uses a different subset of this module.
#![allow(dead_code)]

#[path = "../../tests/support/node.rs"]
pub mod node;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use latchkey_phone::secret::SecretString;
use latchkey_phone::sync_client::SyncClient;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// The tool's time origin: publishers stamp events with `micros()` and receivers in the same
/// process subtract it.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub fn micros() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// The `p` quantile of sorted samples (nearest rank).
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sorts latency samples; their p50, p99 and max.
pub fn p50_p99_max(samples: &mut [u32]) -> (u32, u32, u32) {
    samples.sort_unstable();
    (
        percentile(samples, 0.50),
        percentile(samples, 0.99),
        samples.last().copied().unwrap_or(0),
    )
}

/// Lets one process hold thousands of sockets.
pub fn raise_fd_limit() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub async fn wait_listening(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on port {port}")
}

/// A process's resident set (VmRSS), KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// A process's threads.
pub fn threads(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?.count())
}

/// A process's open file descriptors.
pub fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// A phone paired over `POST /api/pair`.
pub struct Paired {
    pub device_id: String,
    pub device_key: String,
    /// The TOTP secret, base32 as the API gives it.
    pub totp_secret: String,
}

/// Pairs `n` phones over the API, 16 at a time.
pub async fn pair(port: u16, token: &str, n: usize) -> anyhow::Result<Vec<Paired>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    let results = futures_util::stream::iter(0..n)
        .map(|i| {
            let (http, base, token) = (http.clone(), base.clone(), token.to_owned());
            async move {
                let t: Value = http
                    .post(format!("{base}/api/pair-tokens"))
                    .bearer_auth(&token)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let p: Value = http
                    .post(format!("{base}/api/pair"))
                    .json(&json!({"pairToken": t["pairToken"], "deviceInfo": {"name": format!("bench {i}"), "type": "mobile"}}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                anyhow::Ok(Paired {
                    device_id: s(&p["deviceId"]),
                    device_key: s(&p["deviceKey"]),
                    totp_secret: s(&p["totp"]["secret"]),
                })
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// Connects one `SyncClient` per key, 100 at a time.
pub async fn connect_clients(url: &str, keys: Vec<String>) -> anyhow::Result<Vec<SyncClient>> {
    let clients = futures_util::stream::iter(keys)
        .map(|k| {
            let url = url.to_owned();
            async move {
                let mut c = SyncClient::new(url, SecretString::new(k)).max_attempts(5);
                c.connect().await.map(|_| c)
            }
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>()
        .await;
    Ok(clients.into_iter().collect::<Result<Vec<_>, _>>()?)
}

/// Provisions and registers `n` door nodes, 16 at a time.
pub async fn provision_nodes(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    n: usize,
) -> anyhow::Result<Vec<node::Creds>> {
    let mut creds = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let mut batch = Vec::new();
        for i in chunk {
            let (http, base, admin) = (http.clone(), base.to_owned(), admin.to_owned());
            let name = format!("Load door {i}");
            batch.push(tokio::spawn(async move {
                node::provisioned(&http, &base, &admin, &name).await
            }));
        }
        for b in batch {
            creds.push(b.await?);
        }
    }
    Ok(creds)
}

async fn online_count(http: &reqwest::Client, base: &str, admin: &str) -> anyhow::Result<usize> {
    let v: Value = http
        .get(format!("{base}/api/nodes"))
        .bearer_auth(admin)
        .send()
        .await?
        .json()
        .await?;
    Ok(v["nodes"]
        .as_array()
        .map(|a| a.iter().filter(|n| n["online"] == true).count())
        .unwrap_or(0))
}

/// Waits until the gateway lists at least `n` nodes online, or `limit` passes.
pub async fn wait_online(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    n: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while online_count(http, base, admin).await? < n {
        if Instant::now() > deadline {
            bail!("not every node came online");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
