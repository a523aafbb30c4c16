//! The crash harness (`scripts/crash.sh`, docs/RELIABILITY.md "Crashes and power cuts").
//!
//! Runs the real `latchkey serve` as a child process with BLE on (a private D-Bus and the
//! BlueZ stand-in) and, round after round, drives a mixed load at it — pairings, revocations,
//! node registrations, WebSocket publishes and BLE unlocks — kills it with SIGKILL at a random
//! moment, checks the registry file with `PRAGMA integrity_check`, restarts it and checks
//! through its own API that:
//! - every acknowledged write is there: a 201 pairing or registration, a 200 revocation (and
//!   the revoked phone is refused), an `ack`ed publish with its seq, topic and id, and an
//!   `access.granted` event for every unlock the phone saw granted;
//! - nothing unacknowledged is half-applied: a pairing or registration cut off mid-request
//!   either happened whole (its device or node exists and its token is spent) or not at all
//!   (its token still works);
//! - the WebSocket `seq` never goes backwards: the gateway's latest seq after a restart is at
//!   least every seq any client was ever given.
//!
//! With `--power-loss SHIM` the daemon runs under an `LD_PRELOAD` shim
//! (`scripts/powerloss.c`) that keeps, beside the registry, what its files held at their last
//! `fsync`. After the kill the harness puts the registry back to that state plus a random
//! subset of the writes made since (sector by sector, so a page can tear), as a power cut
//! on a disk with a volatile write cache may leave it. What a power cut may lose then depends
//! on `synchronous`: the harness reports what was lost by kind and fails only on what the
//! gateway promises to keep (docs/RELIABILITY.md).
//!
//! `cargo run --example crash -- --rounds 200` (with `--latchkey target/release/latchkey` for
//! the release binary). Prints one line per round and the totals; exits 1 on any violation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod load;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use latchkey_bluez_standin::phone::Phone;
use latchkey_bluez_standin::{Adapter, PrivateBus, Standin};
use latchkey_proto::{ResultFrame, Status, UuidText, AUTH_UUID, CHALLENGE_UUID, RESULT_UUID};
use load::free_port;
use load::node::{self, HANG};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Kill-and-restart rounds.
    #[arg(long, default_value_t = 200)]
    rounds: u32,
    /// The longest a round's load runs before the kill, in ms (the kill comes at a random
    /// moment up to this).
    #[arg(long, default_value_t = 1500)]
    max_load_ms: u64,
    /// Seed for the harness's choices (kill moments, what to revoke, which sectors survive a
    /// power cut); printed so a failing run can be replayed.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value = "target/debug/latchkey")]
    latchkey: PathBuf,
    /// Simulates a power cut instead of a crash, with this compiled shim (see the module doc).
    #[arg(long, value_name = "SHIM")]
    power_loss: Option<PathBuf>,
    /// Keep the data directory here instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// Acknowledged writes the gateway commits with a sync (`Store::write_durable`), which a power
/// cut must not lose either.
const DURABLE_KINDS: &[&str] = &["pairing", "revocation", "registration"];

/// Phones that stay paired: publishers and unlockers (the revoker never picks them).
const PUBLISHERS: usize = 2;
const UNLOCKERS: usize = 24;
const ENDPOINT: &str = "front";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A phone the harness paired: what the gateway acknowledged.
#[derive(Clone)]
struct Paired {
    id: String,
    key: String,
    totp_secret: Vec<u8>,
}

/// What the gateway acknowledged or left unanswered, for the checks after the restart.
#[derive(Default)]
struct Ledger {
    devices: BTreeMap<String, Paired>,
    revoked: BTreeSet<String>,
    nodes: BTreeSet<String>,
    /// This round's acked publishes: seq → (topic, id).
    publishes: BTreeMap<i64, (String, u64)>,
    /// This round's granted unlocks, per device.
    grants: BTreeMap<String, u32>,
    /// Requests the kill cut off: (pair token, device name) and (node id, token).
    open_pairings: Vec<(String, String)>,
    open_registrations: Vec<(String, String)>,
    /// The highest seq any client was given.
    max_seq: i64,
    /// What this round's workers had acknowledged.
    round_pairings: u64,
    round_registrations: u64,
    round_revoked: Vec<String>,
    /// Broken promises the workers saw as they happened (a seq handed out twice).
    violations: Vec<String>,
}

/// Running totals for the report.
#[derive(Default)]
struct Totals {
    pairings: u64,
    revocations: u64,
    registrations: u64,
    publishes: u64,
    grants: u64,
    open_applied: u64,
    open_not_applied: u64,
    integrity_ok: u64,
    violations: Vec<String>,
    /// Acknowledged and then lost (power cuts only): kind → count.
    lost: BTreeMap<&'static str, u64>,
}

struct Gateway {
    child: Child,
    base: String,
    ws: String,
}

struct Harness {
    args: Args,
    rng: StdRng,
    data: PathBuf,
    config: PathBuf,
    bus: String,
    adapter: Adapter,
    admin: String,
    http: reqwest::Client,
    ledger: Arc<Mutex<Ledger>>,
    totals: Totals,
    /// The phones the load uses, paired before the first round.
    publishers: Vec<Paired>,
    unlockers: Vec<Paired>,
    /// The unlockers' BLE side (each remembers the TOTP steps it used).
    phones: Arc<tokio::sync::Mutex<Vec<(String, Phone)>>>,
    pair_counter: u64,
    /// BLE connections made so far (each round connects from a new address).
    links: u32,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    println!("seed {seed} (replay with --seed {seed})");
    let tmp = tempfile::tempdir()?;
    let root = args.keep.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&root)?;
    let data = root.join("data");
    let config = root.join("latchkey.toml");
    std::fs::write(
        &config,
        format!("[[endpoint]]\nid = \"{ENDPOINT}\"\naction = {{ type = \"none\" }}\n"),
    )?;

    let bus = latchkey_bluez_standin::PrivateBus::start().context("private D-Bus")?;
    let standin = Standin::start(&bus.address)
        .await
        .context("BlueZ stand-in")?;
    let adapter = standin.add_adapter("hci0").await?;

    let admin = cli(&args.latchkey, &data, &["admin", "token"]).await?;
    let mut h = Harness {
        args,
        rng: StdRng::seed_from_u64(seed),
        data,
        config,
        bus: bus.address.clone(),
        adapter,
        admin,
        http: reqwest::Client::builder().timeout(HANG).build()?,
        ledger: Arc::default(),
        totals: Totals::default(),
        publishers: Vec::new(),
        unlockers: Vec::new(),
        phones: Arc::default(),
        pair_counter: 0,
        links: 0,
    };
    let started = Instant::now();
    h.run().await?;
    let _keep_alive: &PrivateBus = &bus;
    h.report(started.elapsed());
    if h.totals.violations.is_empty() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

/// Runs a CLI command against the data dir (no daemon running) and returns its stdout.
async fn cli(latchkey: &Path, data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(latchkey)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("LATCHKEY_MDNS", "off")
        .env_remove("LATCHKEY_CONFIG")
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "latchkey {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

impl Harness {
    async fn run(&mut self) -> anyhow::Result<()> {
        // The phones the load needs, paired on a first clean start.
        let mut gw = self.start().await?;
        for _ in 0..PUBLISHERS + UNLOCKERS {
            let token = self.pair_token(&gw).await?;
            let name = self.next_name();
            let p = pair_raw(&self.http, &gw.base, &token, &name)
                .await?
                .2
                .context("pairing a load phone")?;
            self.ledger
                .lock()
                .unwrap()
                .devices
                .insert(p.id.clone(), p.clone());
            if self.publishers.len() < PUBLISHERS {
                self.publishers.push(p);
            } else {
                let phone = Phone::new(uuid_bytes(&p.id)?, p.totp_secret.clone())?;
                self.phones.lock().await.push((p.id.clone(), phone));
                self.unlockers.push(p);
            }
        }
        for round in 1..=self.args.rounds {
            let load_ms = self.rng.random_range(50..=self.args.max_load_ms);
            let before = self.ledger.lock().unwrap().max_seq;
            self.load(&gw, load_ms).await?;
            let line = self.after_kill(&mut gw).await?;
            gw = self.start().await?;
            let checked = self.check(&gw, round, before).await?;
            println!("round {round:>3}: load {load_ms:>4} ms; {line}; {checked}");
            if !self.totals.violations.is_empty() && self.args.keep.is_some() {
                break;
            }
        }
        let _ = self.kill(&mut gw).await;
        Ok(())
    }

    fn next_name(&mut self) -> String {
        self.pair_counter += 1;
        format!("crash phone {}", self.pair_counter)
    }

    async fn start(&mut self) -> anyhow::Result<Gateway> {
        let port = free_port()?;
        let seen = self.adapter.registrations();
        let mut cmd = Command::new(&self.args.latchkey);
        cmd.args([
            "serve",
            "--ble",
            "on",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data-dir")
        .arg(&self.data)
        .arg("--config")
        .arg(&self.config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
        .env("LATCHKEY_MDNS", "off")
        .env("LATCHKEY_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        if let Some(shim) = &self.args.power_loss {
            powerloss::prepare(&self.data)?;
            cmd.env("LD_PRELOAD", shim)
                .env("POWERLOSS_WATCH", &self.data)
                .env("POWERLOSS_STATE", powerloss::state_dir(&self.data));
        }
        let child = cmd.spawn().context("starting latchkey")?;
        let gw = Gateway {
            child,
            base: format!("http://127.0.0.1:{port}"),
            ws: format!("ws://127.0.0.1:{port}/ws"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", gw.base)).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("latchkey did not answer /healthz in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.adapter
            .wait_application(seen, Duration::from_secs(30))
            .await
            .context("the restarted gateway registers its BLE service")?;
        Ok(gw)
    }

    async fn kill(&self, gw: &mut Gateway) -> anyhow::Result<()> {
        gw.child.start_kill()?;
        gw.child.wait().await?;
        Ok(())
    }

    async fn pair_token(&self, gw: &Gateway) -> anyhow::Result<String> {
        let post = self.http.post(format!("{}/api/pair-tokens", gw.base));
        let r = as_admin(post, &self.admin).await?;
        Ok(r["pairToken"].as_str().context("pairToken")?.to_owned())
    }

    /// One round of mixed load, then SIGKILL at the chosen moment.
    async fn load(&mut self, gw: &Gateway, load_ms: u64) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let base = gw.base.clone();
        let revocable: Vec<String> = {
            let l = self.ledger.lock().unwrap();
            let keep: BTreeSet<&String> = self
                .publishers
                .iter()
                .chain(&self.unlockers)
                .map(|p| &p.id)
                .collect();
            l.devices
                .keys()
                .filter(|id| !keep.contains(id) && !l.revoked.contains(*id))
                .cloned()
                .collect()
        };
        let names: Vec<String> = (0..64).map(|_| self.next_name()).collect();
        tasks.spawn(pairer(self.ctx(&base, &stop), names));
        tasks.spawn(revoker(self.ctx(&base, &stop), revocable));
        tasks.spawn(registrar(self.ctx(&base, &stop)));
        for p in self.publishers.clone() {
            tasks.spawn(publisher(self.ctx(&base, &stop), gw.ws.clone(), p));
        }
        self.links += 1;
        tasks.spawn(unlocker(
            self.ctx(&base, &stop),
            self.adapter.clone(),
            self.links,
            self.phones.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        // The kill lands while requests are in flight; the workers stop only after it.
        let pid = gw.child.id().context("the gateway exited by itself")?;
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(i32::try_from(pid)?, libc::SIGKILL);
        }
        stop.cancel();
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok(())
    }

    fn ctx(&self, base: &str, stop: &CancellationToken) -> Ctx {
        Ctx {
            http: self.http.clone(),
            base: base.to_owned(),
            admin: self.admin.clone(),
            ledger: self.ledger.clone(),
            stop: stop.clone(),
        }
    }

    /// After the kill: the power cut (if simulated), then the file check.
    async fn after_kill(&mut self, gw: &mut Gateway) -> anyhow::Result<String> {
        gw.child.wait().await?;
        let mut line = String::new();
        if self.args.power_loss.is_some() {
            let cut = powerloss::cut(&self.data, &mut self.rng)?;
            line.push_str(&format!(
                "power cut kept {}/{} unsynced writes; ",
                cut.0, cut.1
            ));
        }
        let master = latchkey::crypto::MasterKey::read(&self.data.join("master.key"))?;
        match latchkey::store::check_integrity(&self.data.join(latchkey::DB_FILE), &master)? {
            Ok(()) => {
                self.totals.integrity_ok += 1;
                line.push_str("integrity ok");
            }
            Err(problem) => {
                line.push_str("INTEGRITY FAILED");
                self.totals
                    .violations
                    .push(format!("integrity_check: {problem}"));
            }
        }
        Ok(line)
    }

    /// Whether a lost acknowledged write of `kind` breaks a promise: always after a crash;
    /// after a power cut, only for what the gateway commits with a sync (docs/RELIABILITY.md).
    fn must_keep(&self, kind: &'static str) -> bool {
        self.args.power_loss.is_none() || DURABLE_KINDS.contains(&kind)
    }

    fn lost(&mut self, kind: &'static str, what: String) {
        if self.must_keep(kind) {
            self.totals.violations.push(what);
        } else {
            *self.totals.lost.entry(kind).or_default() += 1;
        }
    }

    /// The checks after a restart. Returns a summary for the round's line.
    async fn check(&mut self, gw: &Gateway, round: u32, before: i64) -> anyhow::Result<String> {
        let problems_before = self.totals.violations.len();
        let lost_before: u64 = self.totals.lost.values().sum();
        let ledger = std::mem::take(&mut *self.ledger.lock().unwrap());
        let mut next = Ledger {
            devices: ledger.devices.clone(),
            revoked: ledger.revoked.clone(),
            nodes: ledger.nodes.clone(),
            max_seq: ledger.max_seq,
            ..Ledger::default()
        };

        // Devices: every acked pairing and revocation.
        let get = self.http.get(format!("{}/api/devices", gw.base));
        let listed = as_admin(get, &self.admin).await?;
        let mut by_id = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        for d in listed["devices"].as_array().context("devices")? {
            let id = d["deviceId"].as_str().unwrap_or_default().to_owned();
            by_name.insert(
                d["name"].as_str().unwrap_or_default().to_owned(),
                id.clone(),
            );
            by_id.insert(id, d["revoked"].as_bool().unwrap_or(false));
        }
        for id in ledger.devices.keys() {
            if !by_id.contains_key(id) {
                self.lost(
                    "pairing",
                    format!("round {round}: paired device {id} is gone"),
                );
                next.devices.remove(id);
            }
        }
        for id in &ledger.revoked {
            if by_id.get(id) != Some(&true) {
                self.lost(
                    "revocation",
                    format!("round {round}: revoked device {id} is not revoked"),
                );
                next.revoked.remove(id);
            } else if let Some(p) = ledger
                .round_revoked
                .contains(id)
                .then(|| ledger.devices.get(id))
                .flatten()
            {
                // And it is refused as a revoked device is.
                if let Some(status) = ws_refusal(&gw.ws, &format!("Device {}", p.key)).await {
                    if status != 403 {
                        self.totals.violations.push(format!(
                            "round {round}: revoked device {id} got {status} on /ws, not 403"
                        ));
                    }
                } else {
                    self.totals.violations.push(format!(
                        "round {round}: revoked device {id} was let onto /ws"
                    ));
                }
            }
        }
        // Pairings the kill cut off: whole or not at all.
        for (token, name) in &ledger.open_pairings {
            let again = pair_raw(&self.http, &gw.base, token, name).await?;
            match (by_name.get(name), again.0) {
                (Some(_), 410) if again.1 == "PAIR_TOKEN_USED" => self.totals.open_applied += 1,
                (None, 201) => {
                    self.totals.open_not_applied += 1;
                    if let Some(p) = again.2 {
                        next.devices.insert(p.id.clone(), p);
                    }
                }
                (seen, status) => self.totals.violations.push(format!(
                    "round {round}: pairing {name:?} cut off: device {} but redeeming its token \
                     again gives {status} {}",
                    if seen.is_some() { "exists" } else { "absent" },
                    again.1
                )),
            }
        }

        // Nodes: every acked registration; cut-off ones whole or not at all.
        let get = self.http.get(format!("{}/api/nodes", gw.base));
        let listed = as_admin(get, &self.admin).await?;
        let nodes: BTreeSet<String> = listed["nodes"]
            .as_array()
            .context("nodes")?
            .iter()
            .filter(|n| n["state"].as_str() != Some("pending"))
            .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
            .collect();
        for id in &ledger.nodes {
            if !nodes.contains(id) {
                self.lost("registration", format!("round {round}: node {id} is gone"));
                next.nodes.remove(id);
            }
        }
        for (id, token) in &ledger.open_registrations {
            let r = node::register(&self.http, &gw.base, id, token, "door").await;
            let status = r.status().as_u16();
            let code = error_code(r).await;
            match (nodes.contains(id), status) {
                (true, 410) if code == "PROVISIONING_TOKEN_USED" => self.totals.open_applied += 1,
                (false, 201) => {
                    self.totals.open_not_applied += 1;
                    next.nodes.insert(id.clone());
                }
                (seen, status) => self.totals.violations.push(format!(
                    "round {round}: registration of {id} cut off: node {} but registering \
                     again gives {status} {code}",
                    if seen { "exists" } else { "absent" },
                )),
            }
        }

        // The log: acked publishes and granted unlocks, and seq never backwards.
        let (latest, events) = self.read_log(gw, before).await?;
        if latest <= ledger.max_seq {
            self.totals.violations.push(format!(
                "round {round}: seq {latest} issued after the restart, but a client was \
                 already given {}",
                ledger.max_seq
            ));
        }
        let mut seqs = events.iter().map(|e| e.0);
        if let Some(first) = seqs.next() {
            let mut prev = first;
            for s in seqs {
                if s <= prev {
                    self.totals
                        .violations
                        .push(format!("round {round}: replay gave seq {s} after {prev}"));
                }
                prev = s;
            }
        }
        let by_seq: BTreeMap<i64, &Value> = events.iter().map(|(s, v)| (*s, v)).collect();
        for (seq, (topic, id)) in &ledger.publishes {
            let found = by_seq.get(seq).is_some_and(|e| {
                e["topic"].as_str() == Some(topic) && e["data"]["id"].as_u64() == Some(*id)
            });
            if !found {
                self.lost(
                    "publish",
                    format!("round {round}: acked publish {topic}#{id} (seq {seq}) is missing"),
                );
            }
        }
        let mut granted: BTreeMap<&str, u32> = BTreeMap::new();
        for (_, e) in &events {
            if e["topic"] == "access.granted" {
                if let Some(d) = e["data"]["deviceId"].as_str() {
                    *granted.entry(d).or_default() += 1;
                }
            }
        }
        for (device, n) in &ledger.grants {
            let logged = granted.get(device.as_str()).copied().unwrap_or_default();
            if logged < *n {
                for _ in logged..*n {
                    self.lost(
                        "unlock audit",
                        format!("round {round}: {n} unlocks of {device} granted, {logged} logged"),
                    );
                }
            }
        }
        next.max_seq = next.max_seq.max(latest);

        let t = &mut self.totals;
        t.violations.extend(ledger.violations.iter().cloned());
        t.pairings += ledger.round_pairings;
        t.revocations += ledger.round_revoked.len() as u64;
        t.registrations += ledger.round_registrations;
        t.publishes += ledger.publishes.len() as u64;
        t.grants += ledger.grants.values().map(|n| u64::from(*n)).sum::<u64>();
        let round_problems = self.totals.violations.len() - problems_before;
        let round_lost: u64 = self.totals.lost.values().sum::<u64>() - lost_before;
        *self.ledger.lock().unwrap() = next;
        Ok(format!(
            "acked {} publishes, {} unlocks, {} cut off; {}",
            ledger.publishes.len(),
            ledger.grants.values().sum::<u32>(),
            ledger.open_pairings.len() + ledger.open_registrations.len(),
            match (round_problems, round_lost) {
                (0, 0) => "all found".to_owned(),
                (0, lost) => format!("{lost} lost (allowed)"),
                (p, _) => format!("{p} VIOLATIONS"),
            }
        ))
    }

    /// Replays the log from `since` on an admin socket, up to a marker a phone publishes
    /// after the replay began (the log is delivered in seq order, so everything before the
    /// marker has arrived when it does). Returns the marker's seq and the events before it.
    async fn read_log(&self, gw: &Gateway, since: i64) -> anyhow::Result<(i64, Vec<(i64, Value)>)> {
        let mut admin = connect(&gw.ws, &format!("Bearer {}", self.admin)).await?;
        next_json(&mut admin).await?;
        admin
            .send(Message::text(
                json!({"type": "resume", "since": since}).to_string(),
            ))
            .await?;
        let marker = {
            let phone = &self.publishers[0];
            let mut ws = connect(&gw.ws, &format!("Device {}", phone.key)).await?;
            let frame = json!({"type": "publish", "id": 1, "topic": "crash.mark", "data": {}});
            ws.send(Message::text(frame.to_string())).await?;
            loop {
                let v = next_json(&mut ws).await?;
                if v["type"] == "ack" {
                    break v["seq"].as_i64().context("ack seq")?;
                }
                if v["type"] == "error" {
                    bail!("the marker was refused: {v}");
                }
            }
        };
        let mut events = Vec::new();
        loop {
            let v = next_json(&mut admin).await?;
            match v["type"].as_str() {
                Some("event") => {
                    let seq = v["seq"].as_i64().context("seq")?;
                    if seq >= marker {
                        break;
                    }
                    events.push((seq, v));
                }
                Some("reset") => {
                    // The log went back behind what clients hold: checked by the caller (the
                    // marker's seq); read everything retained to count what is left.
                    admin
                        .send(Message::text(
                            json!({"type": "resume", "since": 0}).to_string(),
                        ))
                        .await?;
                }
                _ => {}
            }
        }
        let _ = admin.close(None).await;
        Ok((marker, events))
    }

    fn report(&self, took: Duration) {
        let t = &self.totals;
        println!();
        println!(
            "{} rounds in {:.0} s; integrity_check ok after {} of them",
            self.args.rounds,
            took.as_secs_f64(),
            t.integrity_ok
        );
        println!("acknowledged and checked after the restart:");
        for (what, n) in [
            ("pairings (201)", t.pairings),
            ("revocations (200)", t.revocations),
            ("node registrations (201)", t.registrations),
            ("publishes (ack)", t.publishes),
            ("granted unlocks (audit event)", t.grants),
        ] {
            println!("  {what:<30} {n}");
        }
        println!(
            "cut off by the kill: {} applied whole, {} not applied (token still good), 0 half",
            t.open_applied, t.open_not_applied
        );
        if self.args.power_loss.is_some() {
            let lost: Vec<String> = t.lost.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!(
                "lost to power cuts (allowed under synchronous=NORMAL): {}",
                if lost.is_empty() {
                    "nothing".to_owned()
                } else {
                    lost.join(", ")
                }
            );
        }
        if t.violations.is_empty() {
            println!("violations: none");
        } else {
            println!("VIOLATIONS ({}):", t.violations.len());
            for v in &t.violations {
                println!("  {v}");
            }
        }
    }
}

/// Sends an admin request; its JSON answer, or an error for no answer or a non-2xx one.
async fn as_admin(req: reqwest::RequestBuilder, admin: &str) -> anyhow::Result<Value> {
    let r = req.bearer_auth(admin).send().await?.error_for_status()?;
    Ok(r.json().await?)
}

/// Device ids are UUIDs; the BLE frames carry their 16 bytes.
fn uuid_bytes(id: &str) -> anyhow::Result<[u8; 16]> {
    Ok(*uuid::Uuid::parse_str(id)?.as_bytes())
}

/// What every load worker shares.
struct Ctx {
    http: reqwest::Client,
    base: String,
    admin: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
}

impl Ctx {
    fn note(&self, f: impl FnOnce(&mut Ledger)) {
        f(&mut self.ledger.lock().unwrap());
    }
}

/// A pairing's answer: status, error code, and the phone when it was 201. `Err` when no answer
/// came (the kill cut the request off).
async fn pair_raw(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
) -> anyhow::Result<(u16, String, Option<Paired>)> {
    let r = http
        .post(format!("{base}/api/pair"))
        .json(&json!({"pairToken": token, "deviceInfo": {"name": name, "type": "mobile"}}))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await?;
    if status != 201 {
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        return Ok((status, code, None));
    }
    let secret = body["totp"]["secret"].as_str().context("totp secret")?;
    let paired = Paired {
        id: body["deviceId"].as_str().context("deviceId")?.to_owned(),
        key: body["deviceKey"].as_str().context("deviceKey")?.to_owned(),
        totp_secret: data_encoding::BASE32_NOPAD.decode(secret.trim_end_matches('=').as_bytes())?,
    };
    Ok((status, String::new(), Some(paired)))
}

async fn error_code(r: reqwest::Response) -> String {
    r.json::<Value>()
        .await
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The HTTP status `/ws` refused these credentials with, or `None` if it let them on.
async fn ws_refusal(url: &str, auth: &str) -> Option<u16> {
    use tokio_tungstenite::tungstenite::Error;
    let mut req = url.into_client_request().ok()?;
    req.headers_mut()
        .insert("authorization", HeaderValue::from_str(auth).ok()?);
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => None,
        Err(Error::Http(r)) => Some(r.status().as_u16()),
        Err(_) => Some(0),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, auth: &str) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", HeaderValue::from_str(auth)?);
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(HANG, ws.next())
            .await
            .context("no frame from the gateway")?
            .context("the gateway closed the socket")??;
        if let Message::Text(t) = msg {
            return Ok(serde_json::from_str(&t)?);
        }
    }
}

/// Pairs phones until stopped: a token from the admin API, then its redemption.
async fn pairer(ctx: Ctx, names: Vec<String>) -> anyhow::Result<()> {
    for name in names {
        if ctx.stop.is_cancelled() {
            break;
        }
        let post = ctx.http.post(format!("{}/api/pair-tokens", ctx.base));
        let Ok(token) = as_admin(post, &ctx.admin).await else {
            break;
        };
        let token = token["pairToken"].as_str().unwrap_or_default().to_owned();
        match pair_raw(&ctx.http, &ctx.base, &token, &name).await {
            Ok((201, _, Some(p))) => ctx.note(|l| {
                l.round_pairings += 1;
                l.devices.insert(p.id.clone(), p);
            }),
            Ok((status, code, _)) => ctx.note(|l| {
                l.violations
                    .push(format!("pairing refused: {status} {code}"))
            }),
            Err(_) => {
                ctx.note(|l| l.open_pairings.push((token, name)));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    Ok(())
}

/// Revokes the given phones one after another until stopped.
async fn revoker(ctx: Ctx, ids: Vec<String>) -> anyhow::Result<()> {
    for id in ids {
        if ctx.stop.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = ctx
            .http
            .post(format!("{}/api/devices/{id}/revoke", ctx.base))
            .bearer_auth(&ctx.admin)
            .send()
            .await;
        match r.map(|r| r.status().as_u16()) {
            Ok(200) => ctx.note(|l| {
                l.revoked.insert(id.clone());
                l.round_revoked.push(id);
            }),
            Ok(status) => ctx.note(|l| l.violations.push(format!("revoking {id}: {status}"))),
            // Cut off: either outcome is whole (one row); nothing to check after the restart.
            Err(_) => break,
        }
    }
    Ok(())
}

/// Registers door nodes until stopped: a provisioning token, then the node's registration.
async fn registrar(ctx: Ctx) -> anyhow::Result<()> {
    while !ctx.stop.is_cancelled() {
        let body = json!({"name": "crash door"});
        let Ok(r) = node::try_token_request(&ctx.http, &ctx.base, &ctx.admin, body).await else {
            break;
        };
        let Ok(t) = r.json::<Value>().await else {
            break;
        };
        let (Some(id), Some(token)) = (t["node_id"].as_str(), t["token"].as_str()) else {
            break;
        };
        let (id, token) = (id.to_owned(), token.to_owned());
        let r = node::try_register(&ctx.http, &ctx.base, &id, &token, "door").await;
        match r.map(|r| r.status().as_u16()) {
            Ok(201) => ctx.note(|l| {
                l.round_registrations += 1;
                l.nodes.insert(id);
            }),
            Ok(status) => ctx.note(|l| l.violations.push(format!("registering {id}: {status}"))),
            Err(_) => {
                ctx.note(|l| l.open_registrations.push((id, token)));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Publishes on one phone's socket, one at a time under its budget, until the socket dies.
async fn publisher(ctx: Ctx, url: String, phone: Paired) -> anyhow::Result<()> {
    let Ok(mut ws) = connect(&url, &format!("Device {}", phone.key)).await else {
        return Ok(());
    };
    let floor = ctx.ledger.lock().unwrap().max_seq;
    let mut id: u64 = u64::from(rand::random::<u32>());
    loop {
        if ctx.stop.is_cancelled() {
            break;
        }
        id += 1;
        let topic = "crash.load";
        let frame = json!({"type": "publish", "id": id, "topic": topic, "data": {"id": id}});
        if ws.send(Message::text(frame.to_string())).await.is_err() {
            break;
        }
        let acked = loop {
            let Ok(v) = next_json(&mut ws).await else {
                break None;
            };
            if let Some(seq) = v["seq"].as_i64() {
                ctx.note(|l| l.max_seq = l.max_seq.max(seq));
            }
            match v["type"].as_str() {
                Some("ack") if v["id"].as_u64() == Some(id) => break v["seq"].as_i64(),
                Some("error") if v["id"].as_u64() == Some(id) => break Some(0),
                _ => {}
            }
        };
        match acked {
            Some(0) => {}
            Some(seq) => ctx.note(|l| {
                if seq <= floor {
                    l.violations.push(format!(
                        "seq {seq} handed out again (a client was already given {floor})"
                    ));
                }
                l.publishes.insert(seq, (topic.to_owned(), id));
            }),
            // Cut off: the event may or may not be in the log; either is allowed.
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    Ok(())
}

/// Opens the door over BLE with whichever phone has a TOTP step left, until the link dies.
async fn unlocker(
    ctx: Ctx,
    adapter: Adapter,
    link_no: u32,
    phones: Arc<tokio::sync::Mutex<Vec<(String, Phone)>>>,
) -> anyhow::Result<()> {
    let [a, b, c, d] = link_no.to_be_bytes();
    let Ok(link) = adapter
        .connect(&format!("42:42:{a:02X}:{b:02X}:{c:02X}:{d:02X}"), 185)
        .await
    else {
        return Ok(());
    };
    let (challenge, auth, result) = (
        UuidText(CHALLENGE_UUID).to_string(),
        UuidText(AUTH_UUID).to_string(),
        UuidText(RESULT_UUID).to_string(),
    );
    if link.subscribe(&result).await.is_err() {
        return Ok(());
    }
    let mut phones = phones.lock().await;
    while !ctx.stop.is_cancelled() {
        let now = unix_now();
        let Some((id, phone)) = phones.iter_mut().find(|(_, p)| p.next_step(now).is_some()) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(c) = link.read(&challenge, 0).await else {
            break;
        };
        let attempt = phone.answer(&c, now, ENDPOINT)?;
        if link.write(&auth, &attempt.frame).await.is_err() {
            break;
        }
        let Some(r) = link.notification(&result, Duration::from_secs(5)).await else {
            break;
        };
        let v = ResultFrame::verify(&r, phone.keys(), &attempt.nonce, &attempt.tag())?;
        if v.result.status == Status::Granted {
            ctx.note(|l| *l.grants.entry(id.clone()).or_default() += 1);
        } else {
            let status = v.result.status;
            ctx.note(|l| {
                l.violations
                    .push(format!("unlock by {id} refused: {status:?}"))
            });
        }
    }
    let _ = link.disconnect().await;
    Ok(())
}

/// The harness's side of the power-cut model (tests/support/powerloss.c keeps the logs).
mod powerloss {
    use std::path::{Path, PathBuf};

    use anyhow::Context;
    use rand::Rng;

    const FILES: &[&str] = &["latchkey.db", "latchkey.db-wal"];
    const SECTOR: u64 = 512;

    pub fn state_dir(data: &Path) -> PathBuf {
        let mut s = data.as_os_str().to_owned();
        s.push(".powerloss");
        PathBuf::from(s)
    }

    /// Before a start: the files as they are are what a cut would keep.
    pub fn prepare(data: &Path) -> anyhow::Result<()> {
        let state = state_dir(data);
        std::fs::create_dir_all(&state)?;
        for f in FILES {
            let durable = state.join(format!("{f}.durable"));
            match std::fs::read(data.join(f)) {
                Ok(bytes) => std::fs::write(&durable, bytes)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let _ = std::fs::remove_file(&durable);
                }
                Err(e) => return Err(e.into()),
            }
            std::fs::write(state.join(format!("{f}.pending")), b"")?;
        }
        Ok(())
    }

    /// After the kill: each file becomes its last synced content plus a random subset of the
    /// sectors written since (in order; a truncate survives or not as a whole). Returns the
    /// sectors kept and the sectors written.
    pub fn cut(data: &Path, rng: &mut impl Rng) -> anyhow::Result<(u64, u64)> {
        let state = state_dir(data);
        let (mut kept, mut total) = (0, 0);
        for f in FILES {
            let durable = state.join(format!("{f}.durable"));
            let pending = std::fs::read(state.join(format!("{f}.pending"))).unwrap_or_default();
            let mut file = match std::fs::read(&durable) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            let mut at = 0;
            while at < pending.len() {
                let word = |i: usize| -> anyhow::Result<u64> {
                    let b = pending.get(i..i + 8).context("a torn pending log")?;
                    Ok(u64::from_ne_bytes(b.try_into()?))
                };
                let (off, len) = (word(at)?, word(at + 8)?);
                at += 16;
                if len == u64::MAX {
                    total += 1;
                    if rng.random_bool(0.5) {
                        kept += 1;
                        file.get_or_insert_with(Vec::new)
                            .resize(usize::try_from(off)?, 0);
                    }
                    continue;
                }
                let bytes = pending
                    .get(at..at + usize::try_from(len)?)
                    .context("a torn pending log")?;
                at += bytes.len();
                // Sector by sector: a write larger than a sector can land in part.
                let mut s = off;
                while s < off + len {
                    let end = ((s / SECTOR) + 1) * SECTOR;
                    let end = end.min(off + len);
                    total += 1;
                    if rng.random_bool(0.5) {
                        kept += 1;
                        let buf = file.get_or_insert_with(Vec::new);
                        if buf.len() < usize::try_from(end)? {
                            buf.resize(usize::try_from(end)?, 0);
                        }
                        let (a, b) = (usize::try_from(s - off)?, usize::try_from(end - off)?);
                        buf[usize::try_from(s)?..usize::try_from(end)?]
                            .copy_from_slice(&bytes[a..b]);
                    }
                    s = end;
                }
            }
            match file {
                Some(bytes) => std::fs::write(data.join(f), bytes)?,
                None => {
                    let _ = std::fs::remove_file(data.join(f));
                }
            }
        }
        // The WAL index is shared memory in a file; after a cut SQLite rebuilds it from the WAL.
        let _ = std::fs::remove_file(data.join("latchkey.db-shm"));
        Ok((kept, total))
    }
}
