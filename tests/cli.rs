//! The `latchkey` binary (CONTRACT §1): the admin commands against a running daemon on the same
//! data dir, exit statuses, configuration precedence, signals, the master key file, and no
//! secrets at rest or in the logs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/daemon.rs"]
mod daemon;
#[path = "support/node.rs"]
mod node;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use daemon::{command, run, run_with_stdin, stderr, stdout, Daemon};
use reqwest::header::COOKIE;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn serve(cwd: &Path, data: &Path) -> Daemon {
    let mut c = command(cwd, &["serve", "--listen", "127.0.0.1:0", "--ble", "off"]);
    c.arg("--data-dir").arg(data);
    Daemon::start(c)
}

fn cli(cwd: &Path, data: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--data-dir", data.to_str().unwrap()];
    all.extend_from_slice(args);
    run(cwd, &all)
}

/// Exit status 1 and exactly one line on stderr that says `what`.
fn assert_fails_with(o: &std::process::Output, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("latchkey: "), "{err}");
    assert!(err.contains(what), "{err:?} should mention {what:?}");
}

/// Logs in through the form; returns the session cookie.
async fn web_login(http: &reqwest::Client, base: &str, password: &str) -> Option<String> {
    let page = http.get(format!("{base}/login")).send().await.unwrap();
    let nonce = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("latchkey_login="))
        .map(|v| v.split(';').next().unwrap().to_owned())
        .expect("login cookie");
    let html = page.text().await.unwrap();
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker)? + marker.len();
    let csrf = html[start..].split('"').next().unwrap();
    let r = http
        .post(format!("{base}/login"))
        .header(COOKIE, format!("latchkey_login={nonce}"))
        .form(&[("password", password), ("csrf", csrf)])
        .send()
        .await
        .unwrap();
    if r.status() != 303 {
        return None;
    }
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("latchkey_session="))
        .map(|v| format!("latchkey_session={}", v.split(';').next().unwrap()))
}

/// Decodes the QR code `latchkey pair` drew with Unicode half blocks.
fn decode_terminal_qr(text: &str) -> Option<String> {
    let rows: Vec<Vec<char>> = text
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| " ▀▄█".contains(c)))
        .map(|l| l.chars().collect())
        .collect();
    let width = rows.iter().map(Vec::len).max()?;
    let height = rows.len() * 2;
    // Each character is two modules, top and bottom; a drawn half is "ink".
    let ink = |x: usize, y: usize| -> bool {
        let c = rows[y / 2].get(x).copied().unwrap_or(' ');
        matches!((c, y % 2), ('█', _) | ('▀', 0) | ('▄', 1))
    };
    const SCALE: usize = 4;
    // The terminal draws light modules as ink (for light-on-dark terminals); try both ways.
    for ink_is_dark in [false, true] {
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(
            (width + 8) * SCALE,
            (height + 8) * SCALE,
            |x, y| {
                let (mx, my) = (x / SCALE, y / SCALE);
                if mx < 4 || my < 4 || mx >= width + 4 || my >= height + 4 {
                    return 255;
                }
                if ink(mx - 4, my - 4) == ink_is_dark {
                    0
                } else {
                    255
                }
            },
        );
        for grid in img.detect_grids() {
            if let Ok((_, content)) = grid.decode() {
                return Some(content);
            }
        }
    }
    None
}

#[tokio::test]
async fn admin_commands_work_beside_a_running_daemon() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let d = serve(cwd.path(), &data);
    let http = http();

    // admin password, from stdin; the running daemon takes it at once.
    assert!(web_login(&http, &d.base, PASSWORD).await.is_none());
    let mut args = vec!["--data-dir", data.to_str().unwrap(), "admin", "password"];
    let o = run_with_stdin(cwd.path(), &args, &format!("{PASSWORD}\n"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "the password is never echoed");
    assert!(web_login(&http, &d.base, PASSWORD).await.is_some());
    // Too short: refused with a reason, the old password stays.
    let o = run_with_stdin(cwd.path(), &args, "short\n");
    assert_fails_with(&o, "password");
    assert!(web_login(&http, &d.base, PASSWORD).await.is_some());

    // admin token: one line on stdout, good as a Bearer right away.
    args = vec![
        "--data-dir",
        data.to_str().unwrap(),
        "admin",
        "token",
        "--name",
        "ci",
    ];
    let o = run(cwd.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(out.ends_with('\n'));
    let token = out.trim_end().to_owned();
    assert!(token.starts_with("lka_"), "{token}");
    let r = http
        .get(d.url("/api/devices"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // pair: a terminal QR code plus the payload; the token redeems over HTTP.
    let o = cli(cwd.path(), &data, &["pair"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let payload_line = out.lines().last().unwrap();
    let payload: Value = serde_json::from_str(payload_line).unwrap();
    assert_eq!(payload["v"], 1);
    assert_eq!(payload["host"], "127.0.0.1");
    assert_eq!(payload["port"], d.addr.port(), "the daemon's real port");
    assert!(payload["expires"].as_i64().unwrap() > 0);
    assert_eq!(
        decode_terminal_qr(&out).as_deref(),
        Some(payload_line),
        "the terminal QR encodes the payload:\n{out}"
    );
    let r = http
        .post(d.url("/api/pair"))
        .json(&json!({"pairToken": payload["pairToken"], "deviceInfo": {"name": "Shell Phone", "type": "mobile"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let phone: Value = r.json().await.unwrap();
    let id = phone["deviceId"].as_str().unwrap();

    // devices list, as a table and as JSON.
    let o = cli(cwd.path(), &data, &["devices", "list"]);
    assert!(o.status.success());
    let table = stdout(&o);
    assert!(
        table.contains(id) && table.contains("Shell Phone") && table.contains("active"),
        "{table}"
    );
    let o = cli(cwd.path(), &data, &["devices", "list", "--json"]);
    let listed: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(listed["devices"][0]["deviceId"], id);
    assert!(!stdout(&o).contains(phone["deviceKey"].as_str().unwrap()));

    // devices revoke: the running daemon refuses the phone from then on.
    let o = cli(cwd.path(), &data, &["devices", "revoke", id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = http
        .get(d.url("/api/me"))
        .header(
            "Authorization",
            format!("Device {}", phone["deviceKey"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let api: Value = http
        .get(d.url("/api/devices"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["devices"][0]["revoked"], true);
    let o = cli(cwd.path(), &data, &["devices", "list"]);
    assert!(stdout(&o).contains("revoked"));

    // Failures: status 1, one line.
    let o = cli(cwd.path(), &data, &["devices", "revoke", "not-an-id"]);
    assert_fails_with(&o, "not-an-id");
    let o = cli(
        cwd.path(),
        &data,
        &["devices", "revoke", "00000000-0000-4000-8000-000000000000"],
    );
    assert_fails_with(&o, "no device");

    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[tokio::test]
async fn nodes_commands_work_beside_a_running_daemon() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let d = serve(cwd.path(), &data);
    let http = http();
    let o = cli(cwd.path(), &data, &["admin", "token"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim_end().to_owned();

    let creds = node::provisioned(&http, &d.base, &token, "Front door").await;
    let (ws, _) = node::session(&creds).await;
    let (task, _commands) = node::serve(ws, node::Answer::Ok);
    let o = cli(cwd.path(), &data, &["nodes", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    let row = table
        .lines()
        .find(|l| l.starts_with(&creds.node_id))
        .unwrap_or_else(|| panic!("{table}"));
    for want in [
        "Front door",
        "Hall",
        "door",
        "0.1.0",
        "online",
        "front-door",
    ] {
        assert!(row.contains(want), "{row:?} lacks {want}");
    }
    let o = cli(cwd.path(), &data, &["nodes", "list", "--json"]);
    let listed: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(listed["nodes"][0]["node_id"], creds.node_id.as_str());
    assert_eq!(listed["nodes"][0]["online"], true);
    assert!(!stdout(&o).contains(&creds.node_key));

    // nodes revoke: the running daemon closes the node's session (4403) and refuses it after.
    let o = cli(cwd.path(), &data, &["nodes", "revoke", &creds.node_id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let closed = tokio::time::timeout(node::HANG, task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed, Some(4403));
    let e = node::connect(&creds.ws_url, &creds.node_key)
        .await
        .unwrap_err();
    assert_eq!(node::refused_status(&e), Some(403));
    let o = cli(cwd.path(), &data, &["nodes", "list"]);
    assert!(stdout(&o).contains("revoked"));

    let o = cli(cwd.path(), &data, &["nodes", "revoke", "not-an-id"]);
    assert_fails_with(&o, "not-an-id");
    let o = cli(
        cwd.path(),
        &data,
        &["nodes", "revoke", "00000000-0000-4000-8000-000000000000"],
    );
    assert_fails_with(&o, "no node");
    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn exit_statuses_follow_the_contract() {
    let cwd = tempfile::tempdir().unwrap();
    let p = cwd.path();
    // Usage errors: 2.
    for args in [
        &[][..],
        &["bogus"][..],
        &["serve", "--listen", "not-an-address"][..],
        &["serve", "--ble", "maybe"][..],
        &["devices", "revoke"][..],
        &["admin", "token", "--frobnicate"][..],
    ] {
        let o = run(p, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty());
    }
    // Help and version: 0.
    for args in [
        &["--help"][..],
        &["--version"][..],
        &["serve", "--help"][..],
    ] {
        let o = run(p, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(!stdout(&o).is_empty());
    }
    // Everything else that fails: 1 with a one-line reason.
    let o = run(
        p,
        &["--config", "/nonexistent/latchkey.toml", "devices", "list"],
    );
    assert_fails_with(&o, "/nonexistent/latchkey.toml");
    let conf = p.join("typo.toml");
    std::fs::write(&conf, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let o = run(p, &["--config", conf.to_str().unwrap(), "devices", "list"]);
    assert_fails_with(&o, "lisen");
    std::fs::write(&conf, "[pairing]\ntoken_ttl_secs = 5\n").unwrap();
    let o = run(p, &["--config", conf.to_str().unwrap(), "pair"]);
    assert_fails_with(&o, "token_ttl_secs");
    // The data dir cannot be created.
    let o = run(p, &["--data-dir", "/proc/latchkey", "devices", "list"]);
    assert_fails_with(&o, "/proc/latchkey");
    // A port someone else holds.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let o = run(
        p,
        &[
            "--data-dir",
            p.join("d").to_str().unwrap(),
            "serve",
            "--ble",
            "off",
            "--listen",
            &taken,
        ],
    );
    assert_fails_with(&o, &taken);
}

#[test]
fn data_dir_precedence_is_flag_env_file_default() {
    let cwd = tempfile::tempdir().unwrap();
    let p = cwd.path();
    let conf = p.join("latchkey.toml");
    std::fs::write(
        &conf,
        format!("data_dir = \"{}\"\n", p.join("from-file").display()),
    )
    .unwrap();
    let conf = conf.to_str().unwrap();
    let flag = p.join("from-flag");
    let env = p.join("from-env");
    let state = p.join("from-state");
    let db = |d: &Path| d.join("latchkey.db").exists();

    let o = command(
        p,
        &[
            "--config",
            conf,
            "--data-dir",
            flag.to_str().unwrap(),
            "devices",
            "list",
        ],
    )
    .env("LATCHKEY_DATA_DIR", &env)
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(db(&flag) && !db(&env) && !db(&p.join("from-file")));

    let o = command(p, &["--config", conf, "devices", "list"])
        .env("LATCHKEY_DATA_DIR", &env)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(db(&env) && !db(&p.join("from-file")));

    // The config file may come from the environment too.
    let o = command(p, &["devices", "list"])
        .env("LATCHKEY_CONFIG", conf)
        .env("STATE_DIRECTORY", &state)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(db(&p.join("from-file")) && !db(&state));

    // With nothing said, systemd's StateDirectory, else ./latchkey-data.
    let o = command(p, &["devices", "list"])
        .env("STATE_DIRECTORY", &state)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(db(&state) && !db(&p.join("latchkey-data")));
    let o = run(p, &["devices", "list"]);
    assert!(o.status.success());
    assert!(db(&p.join("latchkey-data")));
}

#[test]
fn listen_precedence_is_flag_env_file_default() {
    let cwd = tempfile::tempdir().unwrap();
    let p = cwd.path();
    let conf = p.join("latchkey.toml");
    // Different loopback addresses tell which source won; port 0 keeps them free.
    std::fs::write(&conf, "listen = \"127.0.0.2:0\"\n[ble]\nmode = \"off\"\n").unwrap();
    let conf = conf.to_str().unwrap();
    let data = p.join("data");
    let start = |flag: Option<&str>, env: Option<&str>| {
        let mut c = command(
            p,
            &[
                "--config",
                conf,
                "--data-dir",
                data.to_str().unwrap(),
                "serve",
            ],
        );
        if let Some(f) = flag {
            c.args(["--listen", f]);
        }
        if let Some(e) = env {
            c.env("LATCHKEY_LISTEN", e);
        }
        let d = Daemon::start(c);
        let ip = d.addr.ip().to_string();
        let (status, _) = d.terminate(Duration::from_secs(5));
        assert_eq!(status.and_then(|s| s.code()), Some(0));
        ip
    };
    assert_eq!(start(Some("127.0.0.4:0"), Some("127.0.0.3:0")), "127.0.0.4");
    assert_eq!(start(None, Some("127.0.0.3:0")), "127.0.0.3");
    assert_eq!(start(None, None), "127.0.0.2");
    // LATCHKEY_BLE sits between the flag and the file as well: "on" without BlueZ fails fast.
    let o = command(
        p,
        &[
            "--config",
            conf,
            "--data-dir",
            data.to_str().unwrap(),
            "serve",
        ],
    )
    .env("LATCHKEY_LISTEN", "127.0.0.1:0")
    .env("LATCHKEY_BLE", "on")
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("BLE"), "{}", stderr(&o));
}

#[tokio::test]
async fn serve_on_a_fresh_dir_uses_latchkey_data_and_stops_on_signals() {
    let cwd = tempfile::tempdir().unwrap();
    let http = http();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let d = Daemon::start(command(
            cwd.path(),
            &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
        ));
        let data = cwd.path().join("latchkey-data");
        assert!(data.join("latchkey.db").exists());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("master.key")), 0o600);
        let r = http.get(d.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // A kept-alive connection must not hold the shutdown up.
        assert!(http.get(d.url("/healthz")).send().await.is_ok());
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(d.pid() as libc::pid_t, signal);
        }
        let (status, logs) = d.terminate(Duration::from_secs(5));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "exit 0 within 5 s of signal {signal}; logs:\n{logs}"
        );
        assert!(logs.contains("shutting down"), "{logs}");
    }
}

#[test]
fn the_master_key_file_must_be_private_and_well_formed() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    // First start creates it 0600.
    let d = serve(cwd.path(), &data);
    let key = data.join("master.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));

    let start = |extra_env: Option<(&str, &Path)>| {
        let mut c = command(
            cwd.path(),
            &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
        );
        c.arg("--data-dir").arg(&data);
        if let Some((k, v)) = extra_env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_fails_with(&start(None), "chmod 600");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
    assert_fails_with(&start(None), "readable by group or others");

    let original = std::fs::read(&key).unwrap();
    std::fs::write(&key, &original[..31]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_fails_with(&start(None), "32 bytes");

    // A different key than the one the database was sealed under is refused too.
    std::fs::write(&key, [0x42u8; 32]).unwrap();
    assert_fails_with(&start(None), "does not match");
    std::fs::write(&key, &original).unwrap();

    // systemd's credential wins over the file in the data dir (and must match as well).
    let creds = cwd.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let cred = creds.join("latchkey.key");
    std::fs::write(&cred, data_encoding::HEXLOWER.encode(&original) + "\n").unwrap();
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::remove_file(&key).unwrap();
    let mut c = command(
        cwd.path(),
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    c.arg("--data-dir")
        .arg(&data)
        .env("CREDENTIALS_DIRECTORY", &creds);
    let d = Daemon::start(c);
    assert!(
        !key.exists(),
        "no key file is made when the credential is there"
    );
    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[tokio::test]
async fn no_secret_reaches_the_data_dir_or_the_logs() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let mut c = command(
        cwd.path(),
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    c.arg("--data-dir").arg(&data).env("RUST_LOG", "trace");
    let d = Daemon::start(c);
    let http = http();

    let o = run_with_stdin(
        cwd.path(),
        &["--data-dir", data.to_str().unwrap(), "admin", "password"],
        &format!("{PASSWORD}\n"),
    );
    assert!(o.status.success());
    let o = cli(cwd.path(), &data, &["admin", "token"]);
    let admin_token = stdout(&o).trim().to_owned();
    let session = web_login(&http, &d.base, PASSWORD).await.expect("login");
    assert_eq!(
        http.get(d.url("/devices"))
            .header(COOKIE, &session)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let t: Value = http
        .post(d.url("/api/pair-tokens"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pair_token = t["pairToken"].as_str().unwrap().to_owned();
    let p: Value = http
        .post(d.url("/api/pair"))
        .json(&json!({"pairToken": pair_token, "deviceInfo": {"name": "Pixel", "type": "mobile"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_key = p["deviceKey"].as_str().unwrap().to_owned();
    let secret_b32 = p["totp"]["secret"].as_str().unwrap().to_owned();
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret_b32.as_bytes())
        .unwrap();
    let me = http
        .get(d.url("/api/me"))
        .header("Authorization", format!("Device {device_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    // Failed attempts log too: make sure they do not log what was tried.
    let _ = http
        .get(d.url("/api/me"))
        .header("Authorization", format!("Device {device_key}x"))
        .send()
        .await;
    let _ = http
        .post(d.url("/api/pair"))
        .json(&json!({"pairToken": pair_token, "deviceInfo": {"name": "Again", "type": "mobile"}}))
        .send()
        .await;
    let id = p["deviceId"].as_str().unwrap();
    let r = http
        .post(d.url(&format!("/api/devices/{id}/revoke")))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let session_id = session.trim_start_matches("latchkey_session=").to_owned();
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("device key", device_key.clone().into_bytes()),
        ("TOTP secret (base32)", secret_b32.clone().into_bytes()),
        ("TOTP secret (raw)", secret.clone()),
        (
            "TOTP secret (hex)",
            data_encoding::HEXLOWER.encode(&secret).into_bytes(),
        ),
        (
            "TOTP secret (HEX)",
            data_encoding::HEXUPPER.encode(&secret).into_bytes(),
        ),
        ("pair token", pair_token.clone().into_bytes()),
        ("admin token", admin_token.clone().into_bytes()),
        ("admin password", PASSWORD.as_bytes().to_vec()),
        ("session id", session_id.into_bytes()),
    ];
    let check_files = |when: &str| {
        let files = daemon::files_under(&data);
        assert!(
            files.iter().any(|f| f.ends_with("latchkey.db")),
            "{files:?}"
        );
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            for (what, needle) in &needles {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                    "{what} found in {} ({when})",
                    f.display()
                );
            }
        }
    };
    // While running (the WAL holds the recent writes) and after a clean stop.
    check_files("running");
    let (status, logs) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    check_files("stopped");
    assert!(
        logs.contains("device paired") && logs.contains(id),
        "the logs say what happened: {logs}"
    );
    for (what, needle) in &needles {
        let needle = String::from_utf8_lossy(needle);
        assert!(
            !logs.contains(needle.as_ref()),
            "{what} in the logs:\n{logs}"
        );
    }
}

/// Every regular file in `dir` with its mode.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    daemon::files_under(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            (p.display().to_string(), m)
        })
        .collect()
}

#[tokio::test]
async fn data_files_are_private_whatever_the_umask_and_open_dirs_are_refused() {
    use std::os::unix::process::CommandExt;
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    // A data dir someone made with the usual 0755.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = cli(
        cwd.path(),
        &data,
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    assert_fails_with(&o, &format!("chmod 700 {}", data.display()));
    assert!(daemon::files_under(&data).is_empty(), "nothing was written");
    let o = cli(cwd.path(), &data, &["devices", "list"]);
    assert_fails_with(&o, "open to group or others");

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut c = command(
        cwd.path(),
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    c.arg("--data-dir").arg(&data);
    // SAFETY: umask only changes the child's file-creation mask.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let d = Daemon::start(c);
    let http = http();
    let admin = stdout(&cli(cwd.path(), &data, &["admin", "token"]))
        .trim()
        .to_owned();
    let t: Value = http
        .post(d.url("/api/pair-tokens"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .post(d.url("/api/pair"))
        .json(&json!({"pairToken": t["pairToken"], "deviceInfo": {"name": "P", "type": "mobile"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The WAL and SHM exist while the daemon runs.
    let files = modes(&data);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("latchkey.db-wal")),
        "{files:?}"
    );
    for (path, mode) in &files {
        assert_eq!(*mode, 0o600, "{path} is {mode:o}");
    }
    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));

    // A database file left 0644 by an older version is made private on the next start.
    let db = data.join("latchkey.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = cli(cwd.path(), &data, &["devices", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn remains_of_a_gateway_are_never_taken_for_a_fresh_start() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let d = serve(cwd.path(), &data);
    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let key = data.join("master.key");
    let db = data.join("latchkey.db");
    let original_key = std::fs::read(&key).unwrap();
    let original_db = std::fs::read(&db).unwrap();
    let start = || {
        cli(
            cwd.path(),
            &data,
            &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
        )
    };

    // The database truncated to nothing beside its master key.
    std::fs::write(&db, b"").unwrap();
    let o = start();
    assert_fails_with(&o, "latchkey.db is truncated (0 bytes)");
    assert!(stderr(&o).contains("restore latchkey.db"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"",
        "the database was left alone"
    );
    assert_eq!(std::fs::read(&key).unwrap(), original_key);
    // Deleted outright: the same.
    std::fs::remove_file(&db).unwrap();
    assert_fails_with(&start(), "latchkey.db is missing");
    assert!(!db.exists());
    let o = cli(cwd.path(), &data, &["admin", "token"]);
    assert_fails_with(&o, "latchkey.db is missing");

    // The master key deleted from a populated data dir: refused, and no new key is written.
    std::fs::write(&db, &original_db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(&key).unwrap();
    let o = start();
    assert_fails_with(&o, "master.key is missing");
    assert!(stderr(&o).contains("restore master.key"), "{}", stderr(&o));
    assert!(!key.exists(), "no new master key was created");

    // Both back: the same gateway starts again.
    std::fs::write(&key, &original_key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = serve(cwd.path(), &data);
    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}
