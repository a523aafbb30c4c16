//! The control socket (issue 13, part 2): CLI commands reach a running daemon over
//! `latchkey.sock` (so they need no master key), directly open the registry when none runs, and
//! the socket checks its peers, caps requests and drops silent clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{poll, Gateway};
use daemon::{command, run, stderr, stdout, Daemon};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// Guards against a hang; never a pass/fail timer.
const HANG: Duration = Duration::from_secs(30);

fn private_dir(parent: &Path, name: &str, mode: u32) -> std::path::PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    d
}

fn cli(cwd: &Path, data: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--data-dir", data.to_str().unwrap()];
    all.extend_from_slice(args);
    run(cwd, &all)
}

/// Exit status 1 and one line on stderr that says each of `what`.
fn assert_fails_with(o: &std::process::Output, what: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    for w in what {
        assert!(err.contains(w), "{err:?} should mention {w:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_through_the_daemon_without_the_master_key() {
    let cwd = tempfile::tempdir().unwrap();
    let data = private_dir(cwd.path(), "data", 0o700);
    let creds = private_dir(cwd.path(), "creds", 0o700);
    let runtime = private_dir(cwd.path(), "run", 0o750);
    let key = creds.join("latchkey.key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The daemon as systemd runs it: the key as a credential, the socket in the runtime dir.
    let mut c = command(
        cwd.path(),
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    c.arg("--data-dir")
        .arg(&data)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("RUNTIME_DIRECTORY", &runtime);
    let d = Daemon::start(c);
    let socket = runtime.join("latchkey.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");

    // The CLI has neither the credential nor $RUNTIME_DIRECTORY: it finds the daemon through
    // the data dir's lock and asks it.
    let o = cli(cwd.path(), &data, &["admin", "token", "--name", "shell"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim_end().to_owned();
    assert!(token.starts_with("lka_"), "{token}");
    let http = reqwest::Client::new();
    let r = http
        .get(d.url("/api/devices"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the daemon issued the token");

    let o = cli(cwd.path(), &data, &["pair"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let payload: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(payload["port"], d.addr.port());
    let r = http
        .post(d.url("/api/pair"))
        .json(&serde_json::json!({"pairToken": payload["pairToken"],
            "deviceInfo": {"name": "Socket Phone", "type": "mobile"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let o = cli(cwd.path(), &data, &["devices", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(listed["devices"][0]["name"], "Socket Phone");

    let o = daemon::run_with_stdin(
        cwd.path(),
        &["--data-dir", data.to_str().unwrap(), "admin", "password"],
        "short\n",
    );
    assert_fails_with(&o, &["password must be"]);

    // rotate-key and restore are for a stopped daemon.
    let o = cli(cwd.path(), &data, &["admin", "rotate-key"]);
    assert_fails_with(&o, &["stop it first"]);
    let o = cli(cwd.path(), &data, &["restore", "whatever.backup"]);
    assert_fails_with(&o, &["running", "stop it first"]);

    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!socket.exists(), "the socket is removed on exit");

    // No daemon now: the CLI would open the registry itself, and cannot read the key.
    let o = cli(cwd.path(), &data, &["devices", "list"]);
    assert_fails_with(&o, &["not running", "master key", "master.key"]);
    // With the key it does.
    let o = command(
        cwd.path(),
        &["--data-dir", data.to_str().unwrap(), "devices", "list"],
    )
    .env("CREDENTIALS_DIRECTORY", &creds)
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Socket Phone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_revoke_closes_the_phones_websocket_at_once() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let phone = gw.pair(&http, "Revoked Phone").await;
    let mut req = gw.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Device {}", phone["deviceKey"].as_str().unwrap())).unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    listening(&gw.dir.path().join("latchkey.sock")).await;
    let cwd = tempfile::tempdir().unwrap();
    let data = gw.dir.path().to_owned();
    let id = phone["deviceId"].as_str().unwrap().to_owned();
    // Out of the CLI's reach: only the daemon (which loaded it at start) can do the revoke.
    std::fs::rename(data.join("master.key"), data.join("master.key.away")).unwrap();
    let o =
        tokio::task::spawn_blocking(move || cli(cwd.path(), &data, &["devices", "revoke", &id]))
            .await
            .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let code = tokio::time::timeout(HANG, async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(f)) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(code, Some(4403));
}

#[test]
fn without_a_daemon_the_cli_opens_the_registry_itself() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let o = cli(cwd.path(), &data, &["admin", "token"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("lka_"));
    assert!(data.join("master.key").exists());
    assert!(!data.join("latchkey.sock").exists());
    let o = cli(cwd.path(), &data, &["devices", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim_end(), r#"{"devices":[]}"#);
}

/// Waits until the in-process daemon (whose `serve` task binds the socket) accepts on `socket`.
async fn listening(socket: &Path) {
    poll("the control socket accepts", async || {
        UnixStream::connect(socket).await.ok().map(drop)
    })
    .await;
}

/// One request line on the socket; the answer line as JSON, and whether the daemon then closed.
async fn exchange(socket: &Path, send: &[u8]) -> (Value, bool) {
    let mut s = UnixStream::connect(socket).await.unwrap();
    // The daemon may answer (and close) before taking all of an oversized request.
    let _ = s.write_all(send).await;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(HANG, r.read_line(&mut line))
        .await
        .expect("an answer in time")
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(HANG, r.read_to_end(&mut rest))
        .await
        .is_ok_and(|n| n.is_ok_and(|n| n == 0));
    (serde_json::from_str(&line).unwrap(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_malformed_and_silent_requests_are_refused() {
    let gw = Gateway::start_with(|c| c.control_timeout = Duration::from_millis(300)).await;
    let socket = gw.dir.path().join("latchkey.sock");
    listening(&socket).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    let (ok, closed) = exchange(&socket, b"{\"command\":\"devices-list\"}\n").await;
    assert_eq!(ok["ok"]["devices"], serde_json::json!([]));
    assert!(closed, "one request per connection");

    let big = vec![b'x'; 70 * 1024];
    let (e, closed) = exchange(&socket, &big).await;
    assert_eq!(e["error"]["code"], "PAYLOAD_TOO_LARGE", "{e}");
    assert!(closed);

    let (e, _) = exchange(&socket, b"{\"command\":\"rotate-key\"}\n").await;
    assert_eq!(e["error"]["code"], "BAD_REQUEST", "{e}");
    let (e, _) = exchange(&socket, b"not json\n").await;
    assert_eq!(e["error"]["code"], "BAD_REQUEST", "{e}");
    let (e, _) = exchange(
        &socket,
        b"{\"command\":\"devices-revoke\",\"id\":\"00000000-0000-4000-8000-000000000000\"}\n",
    )
    .await;
    assert_eq!(e["error"]["code"], "NOT_FOUND", "{e}");

    // A client that sends nothing is told so and dropped once the timeout passes.
    let (e, closed) = exchange(&socket, b"").await;
    assert_eq!(e["error"]["code"], "BAD_REQUEST", "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no request"));
    assert!(closed);

    // A second daemon on the same data dir is refused; the first one's socket stays.
    let clock = latchkey::clock::ManualClock::new(common::T0);
    let again = latchkey::config::Config::for_test(gw.dir.path(), clock);
    let err = latchkey::control::server::bind(&again).err().unwrap();
    assert!(err.to_string().contains("another latchkey serve"), "{err}");
    let (ok, _) = exchange(&socket, b"{\"command\":\"nodes-list\"}\n").await;
    assert!(ok["ok"]["nodes"].is_array(), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap();
    // What a crashed daemon leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("latchkey.sock")).unwrap());
    let gw = Gateway::start_in(dir, common::T0, |_| {}).await;
    listening(&gw.dir.path().join("latchkey.sock")).await;
    let (ok, _) = exchange(
        &gw.dir.path().join("latchkey.sock"),
        b"{\"command\":\"devices-list\"}\n",
    )
    .await;
    assert!(ok["ok"]["devices"].is_array(), "{ok}");
}

/// Runs the CLI as another user (uid and gid 65534) with `groups` as its supplementary groups.
fn as_other_user(runtime: &Path, data: &Path, groups: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534"])
        .arg(if groups.is_empty() {
            "--clear-groups".to_owned()
        } else {
            format!("--groups={groups}")
        })
        .arg(daemon::bin())
        .arg("--data-dir")
        .arg(data)
        .args(["devices", "list"])
        .env_clear()
        .env("RUNTIME_DIRECTORY", runtime)
        .current_dir("/")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_outside_the_daemons_group_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || std::process::Command::new("setpriv")
            .arg("--help")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and setpriv to run a client as a second uid");
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let runtime = private_dir(parent.path(), "run", 0o755);
    let gw = Gateway::start_with(|c| c.runtime_dir = Some(runtime.clone())).await;
    let socket = runtime.join("latchkey.sock");
    listening(&socket).await;
    let data = gw.dir.path().to_owned();

    // A member of the daemon's group (root's gid 0 here) passes the 0660 mode and the check.
    let (r, d) = (runtime.clone(), data.clone());
    let o = tokio::task::spawn_blocking(move || as_other_user(&r, &d, "0"))
        .await
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ID"), "{}", stdout(&o));

    // Anyone else: even with the socket's mode opened wide, the credential check refuses them.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = tokio::task::spawn_blocking(move || as_other_user(&runtime, &data, ""))
        .await
        .unwrap();
    assert_fails_with(
        &o,
        &["only root, the service user and members of its group"],
    );
}

#[test]
fn a_daemon_on_a_relative_data_dir_is_found_from_another_directory() {
    let cwd = tempfile::tempdir().unwrap();
    let mut c = command(
        cwd.path(),
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    c.args(["--data-dir", "data"]);
    let d = Daemon::start(c);
    let data = cwd.path().join("data");
    // Out of the CLI's reach, so only the daemon can answer.
    std::fs::rename(data.join("master.key"), data.join("master.key.away")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let o = cli(elsewhere.path(), &data, &["devices", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim_end(), r#"{"devices":[]}"#);
    std::fs::rename(data.join("master.key.away"), data.join("master.key")).unwrap();
    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}
