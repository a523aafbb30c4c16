//! Phone-side test support: `latchkey` (and `latchkey phone …`) as child processes, a
//! `phone listen` child whose lines arrive on a channel, phones paired over HTTP, and a
//! gateway serving BLE on an adapter of the simulated radio with a phone adapter in range.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use latchkey::clock::{Clock, SystemClock};
use latchkey::config::{ActionConfig, BleMode, Config, EndpointConfig};
use latchkey_bluez_standin::Adapter;
use latchkey_phone::Credentials;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use crate::common::Gateway;

/// Guards against a hang; never a pass/fail timer.
pub const HANG: Duration = Duration::from_secs(30);

/// A finished command.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// The last line of stderr (the CLI's one-line reason).
    pub fn reason(&self) -> &str {
        self.stderr.lines().last().unwrap_or_default()
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// `latchkey` with a clean environment, on `bus` if given (the system bus it would use).
pub fn latchkey(bus: Option<&str>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    c.env_remove("LATCHKEY_CONFIG")
        .env_remove("LATCHKEY_DATA_DIR")
        .env_remove("LATCHKEY_PHONE_CREDENTIALS")
        .env_remove("LATCHKEY_GATEWAY")
        .env_remove("LATCHKEY_ADMIN_TOKEN")
        .env_remove("NOTIFY_SOCKET")
        // No test browses mDNS on the host's network (tests/discovery.rs runs in a namespace).
        .env("LATCHKEY_MDNS", "off")
        .env("LATCHKEY_LOG", "debug")
        .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(b) = bus {
        c.env("DBUS_SYSTEM_BUS_ADDRESS", b);
    }
    c
}

pub async fn run(mut c: Command) -> Out {
    let o = tokio::time::timeout(HANG, c.output())
        .await
        .expect("the command hung")
        .expect("spawn latchkey");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// `latchkey phone ARGS… --credentials CREDS`.
pub async fn phone(bus: Option<&str>, creds: &Path, args: &[&str]) -> Out {
    let mut c = latchkey(bus);
    c.arg("phone").args(args).arg("--credentials").arg(creds);
    run(c).await
}

/// `latchkey phone COMMAND --adapter A --json ARGS…` on `bus`: its output and JSON line. Seed
/// 000's cleanup, whatever the outcome: the phone's radio is left idle, nothing merely abandoned.
pub async fn on_radio(
    bus: &str,
    creds: &Path,
    adapter: &Adapter,
    command: &str,
    args: &[&str],
) -> (Out, Value) {
    let mut all = vec![command, "--adapter", adapter.name(), "--json"];
    all.extend_from_slice(args);
    let out = phone(Some(bus), creds, &all).await;
    let json = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
    let r = adapter.radio();
    assert!(r.is_idle(), "the phone's radio after {command}: {r:?}");
    assert_eq!(r.stats.abandoned_sessions, 0, "{r:?}");
    (out, json)
}

/// `phone unlock ENDPOINT --adapter A --json [--timeouts T]`; returns the output and the JSON.
pub async fn unlock(
    bus: &str,
    creds: &Path,
    endpoint: &str,
    adapter: &Adapter,
    timeouts: Option<&str>,
) -> (Out, Value) {
    let mut args = vec!["unlock", endpoint, "--adapter", adapter.name(), "--json"];
    if let Some(t) = timeouts {
        args.extend(["--timeouts", t]);
    }
    let out = phone(Some(bus), creds, &args).await;
    let json = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
    (out, json)
}

/// A running `phone listen`: its stdout lines on a channel, its stderr collected.
pub struct Listener {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: watch::Receiver<String>,
}

fn collect_lines(r: impl AsyncRead + Unpin + Send + 'static, tx: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
}

impl Listener {
    /// Starts `phone listen` and waits until it says it is listening.
    pub async fn start(creds: &Path, extra: &[&str]) -> Listener {
        let mut c = latchkey(None);
        c.args(["phone", "listen"])
            .args(extra)
            .arg("--credentials")
            .arg(creds)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn phone listen");
        let (tx, lines) = mpsc::unbounded_channel();
        collect_lines(child.stdout.take().expect("stdout"), tx);
        let (etx, mut erx) = mpsc::unbounded_channel();
        collect_lines(child.stderr.take().expect("stderr"), etx);
        let (stx, stderr) = watch::channel(String::new());
        tokio::spawn(async move {
            while let Some(l) = erx.recv().await {
                stx.send_modify(|s| {
                    s.push_str(&l);
                    s.push('\n');
                });
            }
        });
        let mut l = Listener {
            child,
            lines,
            stderr,
        };
        l.wait_stderr("listening to").await;
        l
    }

    pub async fn wait_stderr(&mut self, what: &str) {
        let found = tokio::time::timeout(HANG, self.stderr.wait_for(|s| s.contains(what)))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            found,
            "phone listen never said {what:?}; stderr:\n{}",
            self.stderr.borrow().as_str()
        );
    }

    pub fn stderr(&self) -> String {
        self.stderr.borrow().clone()
    }

    /// The next line it printed, as JSON.
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(HANG, self.lines.recv())
            .await
            .expect("no line from phone listen")
            .expect("phone listen closed its stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Lines printed so far and not taken.
    pub fn pending(&mut self) -> Vec<Value> {
        let mut v = Vec::new();
        while let Ok(l) = self.lines.try_recv() {
            v.push(serde_json::from_str(&l).unwrap_or(Value::String(l)));
        }
        v
    }

    /// Waits for it to exit by itself; returns its exit code.
    pub async fn exited(&mut self) -> i32 {
        let status = tokio::time::timeout(HANG, self.child.wait())
            .await
            .expect("phone listen did not exit")
            .expect("wait");
        // Let the stderr reader catch up with the last line.
        tokio::time::sleep(Duration::from_millis(50)).await;
        status.code().unwrap_or(-1)
    }

    /// SIGTERM; returns its exit code.
    pub async fn stop(&mut self) -> i32 {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(i32::try_from(pid).expect("pid"), libc::SIGTERM);
            }
        }
        self.exited().await
    }
}

/// Pairs a phone through the HTTP API with the library's client, as `phone pair` does, and
/// saves its credentials in `dir`. `now` is the gateway's clock.
pub async fn pair(gw: &Gateway, dir: &Path, name: &str, now: i64) -> (PathBuf, Credentials) {
    let http = reqwest::Client::new();
    let t = gw.pair_token(&http).await;
    let payload = latchkey_phone::pair::parse_payload(t["qrPayload"].as_str().expect("qrPayload"))
        .expect("payload");
    let creds = latchkey_phone::pair::redeem(&http, &payload, name, "mobile", now)
        .await
        .expect("redeem");
    let path = dir.join(format!("{}.json", name.replace(' ', "-")));
    creds.save(&path).expect("save credentials");
    (path, creds)
}

/// An endpoint whose action writes `LATCHKEY_ENDPOINT LATCHKEY_DEVICE_NAME` to `file`.
pub fn door(id: &str, file: &Path) -> EndpointConfig {
    EndpointConfig {
        id: id.into(),
        name: None,
        devices: None,
        action: ActionConfig::Command {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "printf '%s %s' \"$LATCHKEY_ENDPOINT\" \"$LATCHKEY_DEVICE_NAME\" > '{}'",
                    file.display()
                ),
            ],
            timeout_secs: 5,
        },
    }
}

/// A gateway serving BLE on an adapter of the simulated radio, a phone adapter in range (a
/// radio area of their own, so parallel tests do not hear each other), and the bus address
/// for the phone's processes.
pub struct Field {
    pub gw: Gateway,
    pub gateway: Adapter,
    pub phone: Adapter,
    pub bus: String,
    pub dir: tempfile::TempDir,
}

impl Field {
    /// The gateway runs on the system clock: the phone's processes use it too.
    pub async fn start(area: &str, endpoints: Vec<EndpointConfig>) -> Field {
        let shared = latchkey_bluez_standin::shared().expect("private bus and stand-in");
        let gateway = shared.new_adapter().await.expect("adapter");
        let phone = shared.new_adapter().await.expect("adapter");
        gateway.set_area(area);
        phone.set_area(area);
        phone.set_powered(true);
        let name = gateway.name().to_owned();
        let gw = Gateway::start_with(|c: &mut Config| {
            c.ble = BleMode::On;
            c.ble_adapter = Some(name);
            c.endpoints = endpoints;
            c.clock = Arc::new(SystemClock);
        })
        .await;
        gateway
            .wait_application(0, HANG)
            .await
            .expect("the gateway registers its GATT application");
        gateway
            .wait_advertisement(0, HANG)
            .await
            .expect("the gateway advertises");
        Field {
            gw,
            gateway,
            phone,
            bus: shared.bus.address.clone(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub async fn pair(&self, name: &str) -> (PathBuf, Credentials) {
        pair(&self.gw, self.dir.path(), name, SystemClock.now()).await
    }

    /// The `access.*` events in the gateway's log, as (topic, data).
    pub async fn access_events(&self) -> Vec<(String, Value)> {
        self.gw.events("access.").await
    }
}

/// Asserts that nothing of `creds`' secrets shows in `text`.
pub fn assert_no_secrets(creds: &Credentials, text: &str) {
    let key = creds.device_key.expose();
    let secret = creds.totp_secret.expose();
    assert!(
        !text.contains(key) && !text.contains(&key[4..]),
        "the device key leaked:\n{text}"
    );
    assert!(
        !text.contains(secret) && !text.contains(&secret.to_ascii_lowercase()),
        "the TOTP secret leaked:\n{text}"
    );
}
