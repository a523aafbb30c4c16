//! Endpoint-node figures (docs/PERFORMANCE.md): gateway RSS idle and with N scripted nodes
//! connected, and the `unlock` round trip `POST /api/endpoints/{id}/open` → node `result` →
//! HTTP answer at a steady command rate. The nodes are scripted from docs/NODES.md in this one
//! process; the gateway is a running `latchkey serve` (`scripts/bench-nodes.sh` starts one).
//!
//! ```text
//! node_load --base http://127.0.0.1:PORT --admin TOKEN --pid PID [--nodes 500] [--rate 10] [--seconds 30]
//! ```

mod load;

use load::{node, rss_kib};

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// The gateway's base URL.
    #[arg(long)]
    base: String,
    /// An admin API token (`latchkey admin token`).
    #[arg(long)]
    admin: String,
    /// The gateway's process id (its RSS is read from /proc/PID/status).
    #[arg(long)]
    pid: u32,
    /// Nodes to provision and connect.
    #[arg(long, default_value_t = 500)]
    nodes: usize,
    /// Unlock commands per second.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// How long to send commands.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

/// Nothing here waits longer than this for one step.
const LIMIT: Duration = Duration::from_secs(120);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let idle = rss_kib(args.pid)?;
    println!("gateway RSS idle: {idle} KiB");

    // Provision and register, a few at a time.
    let started = Instant::now();
    let creds = load::provision_nodes(&http, &args.base, &args.admin, args.nodes).await?;
    println!(
        "{} nodes provisioned and registered in {:.1} s",
        creds.len(),
        started.elapsed().as_secs_f64()
    );
    let registered = rss_kib(args.pid)?;

    // Connect every node; each answers `unlock` at once.
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(creds.len());
    for c in &creds {
        let (ws, _) = node::session(c).await;
        tasks.push(node::serve(ws, node::Answer::Ok));
    }
    load::wait_online(&http, &args.base, &args.admin, creds.len(), LIMIT).await?;
    println!(
        "{} nodes online in {:.1} s",
        creds.len(),
        started.elapsed().as_secs_f64()
    );
    // Let allocations settle before reading the figure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = rss_kib(args.pid)?;
    println!(
        "gateway RSS with {} nodes registered, none connected: {registered} KiB",
        creds.len()
    );
    println!(
        "gateway RSS with {} nodes connected: {connected} KiB ({} KiB over idle, {:.1} KiB per node)",
        creds.len(),
        connected.saturating_sub(idle),
        connected.saturating_sub(idle) as f64 / creds.len().max(1) as f64
    );

    // Unlocks at a steady rate, round robin over the doors.
    let total = args.rate as u64 * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    let mut running = Vec::with_capacity(total as usize);
    for i in 0..total {
        tick.tick().await;
        let (http, url, admin) = (
            http.clone(),
            format!(
                "{}/api/endpoints/{}/open",
                args.base,
                creds[i as usize % creds.len()].endpoint
            ),
            args.admin.clone(),
        );
        running.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http.post(url).bearer_auth(admin).send().await?;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or_default();
            let http_ms = t.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(status == 200, "open answered {status}: {body}");
            Ok::<_, anyhow::Error>((http_ms, body["ms"].as_f64().unwrap_or(0.0)))
        }));
    }
    let mut http_ms = Vec::new();
    let mut gw_ms = Vec::new();
    let mut failed = 0;
    for r in running {
        match r.await? {
            Ok((h, g)) => {
                http_ms.push(h);
                gw_ms.push(g);
            }
            Err(e) => {
                failed += 1;
                eprintln!("{e}");
            }
        }
    }
    http_ms.sort_by(f64::total_cmp);
    gw_ms.sort_by(f64::total_cmp);
    println!(
        "unlock round trip at {}/s for {} s ({} ok, {failed} failed), HTTP open → node result → answer: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.rate,
        args.seconds,
        http_ms.len(),
        percentile(&http_ms, 50.0),
        percentile(&http_ms, 99.0),
        http_ms.last().copied().unwrap_or(0.0)
    );
    println!(
        "  measured at the gateway (command sent → result, whole ms): p50 {} ms, p99 {} ms",
        percentile(&gw_ms, 50.0),
        percentile(&gw_ms, 99.0)
    );
    for (t, _) in tasks {
        t.abort();
    }
    Ok(())
}
