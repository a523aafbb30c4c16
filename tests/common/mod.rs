//! Test harness shared by the integration tests: the real daemon on 127.0.0.1:0 with a temp
//! data dir and a manual clock.
#![allow(dead_code)]
// Test helpers fail loudly; clippy's allow-*-in-tests only covers #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use latchkey::clock::ManualClock;
use latchkey::config::Config;
use latchkey::state::AppState;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// A fixed, realistic start time (2026-01-13T10:40:00Z) for the manual clock.
pub const T0: i64 = 1_768_300_800;

pub struct Gateway {
    pub addr: SocketAddr,
    pub base: String,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    pub admin_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Gateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a gateway; `tweak` may change the test config before it runs.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        // 0700, as the CLI requires of a data dir (tests run it on this one too).
        let dir = tempfile::Builder::new()
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .expect("tempdir");
        Self::start_in(dir, T0, tweak).await
    }

    /// Starts a gateway on an existing data dir (restart tests).
    pub async fn start_in(
        dir: tempfile::TempDir,
        now: i64,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let clock = ManualClock::new(now);
        let mut config = Config::for_test(dir.path(), clock.clone());
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = latchkey::build_state(config, addr.port()).expect("state");
        let now = state.now();
        let (_, token) = state
            .store
            .write_blocking(|tx| Ok(latchkey::admin::create_token(tx, "test", now)))
            .expect("store")
            .expect("token");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(latchkey::serve(state.clone(), listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            base: format!("http://{addr}"),
            state,
            clock,
            dir,
            admin_token: token.expose().to_owned(),
            stop: Some(tx),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stops the daemon as SIGTERM would and waits for it; returns the data dir for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            s.await.expect("join").expect("serve");
        }
        self.dir
    }

    pub async fn pair_token(&self, http: &reqwest::Client) -> Value {
        let r = http
            .post(self.url("/api/pair-tokens"))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("pair-tokens");
        assert_eq!(r.status(), 201);
        r.json().await.expect("json")
    }

    /// Pairs a phone; returns the pair answer (deviceId, deviceKey, totp, …).
    pub async fn pair(&self, http: &reqwest::Client, name: &str) -> Value {
        let t = self.pair_token(http).await;
        let r = http
            .post(self.url("/api/pair"))
            .json(&json!({ "pairToken": t["pairToken"], "deviceInfo": { "name": name, "type": "mobile" } }))
            .send()
            .await
            .expect("pair");
        assert_eq!(r.status(), 201);
        r.json().await.expect("json")
    }

    /// The events in the log whose topic starts with `prefix`, oldest first, as (topic, data).
    pub async fn events(&self, prefix: &str) -> Vec<(String, Value)> {
        self.state
            .store
            .read(|c| latchkey::events::since(c, 0, 100_000))
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.topic.starts_with(prefix))
            .map(|e| (e.topic.clone(), e.data_json()))
            .collect()
    }
}

/// A guard against hangs, never a pass/fail timer.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Asks `f` every 50 ms until it has an answer (a process or file reaching a state); panics
/// naming `what` if it never does within `PATIENCE`.
pub async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"))
}

/// Builds `latchkey-node` (a sibling workspace member) and returns its path. Blocking: call it
/// from `spawn_blocking`.
///
/// The build is the whole suite's (`cargo test --workspace --all-targets`, which makes the node
/// binary too): during that run it is a one-second check. `cargo build -p latchkey-node`
/// resolved the dependencies' features differently and rebuilt the tree (7 minutes of a CI run).
pub fn node_binary() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "test",
            "--quiet",
            "--workspace",
            "--all-targets",
            "--no-run",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "building the workspace's tests failed");
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test>-… → target/debug/latchkey-node
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("latchkey-node")
}

/// Waits until the stand-in relay of `latchkey-node --relay-sim FILE` has switched on and off
/// once (its lines are `on <ms>` and `off <ms>`, on the node's monotonic clock); returns how
/// long it was on, in milliseconds.
pub async fn relay_pulse(file: &std::path::Path) -> u64 {
    let pulse = poll("the relay released", async || {
        let text = std::fs::read_to_string(file).ok()?;
        (text.lines().count() == 2).then_some(text)
    })
    .await;
    let lines: Vec<(&str, u64)> = pulse
        .lines()
        .map(|l| {
            let (word, ms) = l.split_once(' ').expect("`on|off <ms>`");
            (word, ms.parse().expect("milliseconds"))
        })
        .collect();
    assert!(
        lines[0].0 == "on" && lines[1].0 == "off" && lines[1].1 >= lines[0].1,
        "{pulse}"
    );
    lines[1].1 - lines[0].1
}
