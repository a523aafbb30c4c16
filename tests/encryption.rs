//! The registry encrypted as a whole (CONTRACT §2, issue 13): nothing readable in the file or its
//! WAL, a plain registry made by an older version encrypted in place on first start with its data
//! kept, and a wrong master key refused with a one-line reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::Gateway;
use daemon::{command, run, stderr, stdout, Daemon};
use latchkey::secret::TokenHash;
use serde_json::Value;

/// The admin token `latchkey admin token --name fixture-token` printed when the fixture was made.
const FIXTURE_ADMIN_TOKEN: &str = "lka_pFocUoVlV_vTl8hPQLCzot5Ivd4gOz7sS6_zeOwpvVA";
const PLAIN_MAGIC: &[u8] = b"SQLite format 3\0";

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plain-registry")
        .join(name)
}

fn private_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads the registry and its WAL (when there is one), for a grep of their bytes.
fn registry_bytes(data: &Path) -> Vec<(String, Vec<u8>)> {
    ["latchkey.db", "latchkey.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(data.join(f)).ok().map(|b| (f.to_string(), b)))
        .collect()
}

fn assert_unreadable(data: &Path, needles: &[Vec<u8>]) {
    let files = registry_bytes(data);
    assert!(files.iter().any(|(f, _)| f == "latchkey.db"));
    for (file, bytes) in &files {
        if file == "latchkey.db" {
            assert!(!bytes.starts_with(PLAIN_MAGIC), "{file} is plain SQLite");
        }
        for n in needles {
            assert!(
                !contains(bytes, n),
                "{file} shows {:?}",
                String::from_utf8_lossy(n)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_name_id_hash_or_event_text_in_the_file_or_its_wal() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let mut needles: Vec<Vec<u8>> = vec![
        gw.state.gateway_id.as_bytes().to_vec(),
        TokenHash::of(&gw.admin_token).as_bytes().to_vec(),
        b"device.paired".to_vec(),
        b"device.revoked".to_vec(),
        b"CREATE TABLE".to_vec(),
    ];
    let mut first = None;
    for i in 0..3 {
        let name = format!("Zebra Needle Phone {i}");
        let p = gw.pair(&http, &name).await;
        let id = p["deviceId"].as_str().unwrap().to_owned();
        let key = p["deviceKey"].as_str().unwrap();
        needles.push(name.into_bytes());
        needles.push(id.clone().into_bytes());
        needles.push(TokenHash::of(key).as_bytes().to_vec());
        first.get_or_insert(id);
    }
    let r = http
        .post(gw.url(&format!("/api/devices/{}/revoke", first.unwrap())))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!gw.events("device.").await.is_empty());
    // While the daemon runs, recent writes sit in the WAL.
    assert_unreadable(gw.dir.path(), &needles);
    let dir = gw.stop().await;
    assert_unreadable(dir.path(), &needles);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_registry_from_before_is_encrypted_on_first_start_and_keeps_its_data() {
    let data = private_dir();
    for f in ["latchkey.db", "master.key"] {
        std::fs::copy(fixture(f), data.path().join(f)).unwrap();
        std::fs::set_permissions(data.path().join(f), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    assert!(std::fs::read(data.path().join("latchkey.db"))
        .unwrap()
        .starts_with(PLAIN_MAGIC));
    let alice: Value =
        serde_json::from_slice(&std::fs::read(fixture("alice-phone.json")).unwrap()).unwrap();
    let cwd = private_dir();
    let serve = || {
        let mut c = command(
            cwd.path(),
            &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
        );
        c.arg("--data-dir").arg(data.path());
        Daemon::start(c)
    };
    let http = reqwest::Client::new();

    let d = serve();
    let devices: Value = http
        .get(d.url("/api/devices"))
        .bearer_auth(FIXTURE_ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut seen: Vec<(String, bool)> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["revoked"].as_bool().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("Fixture Alice Phone".to_owned(), false),
            ("Fixture Bob Tablet".to_owned(), true)
        ]
    );
    // The device key's hash still finds Alice, and her sealed secrets still open (GET /api/me
    // authenticates her; the daemon unsealed its own keys to start).
    let me = http
        .get(d.url("/api/me"))
        .header(
            "Authorization",
            format!("Device {}", alice["deviceKey"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["name"], "Fixture Alice Phone");
    let (status, logs) = d.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{logs}");
    assert_eq!(
        logs.matches("encrypted the registry in place").count(),
        1,
        "{logs}"
    );
    assert!(!data.path().join("latchkey.db.encrypting").exists());
    assert_unreadable(
        data.path(),
        &[
            b"Fixture Alice".to_vec(),
            b"Fixture Bob".to_vec(),
            alice["deviceId"].as_str().unwrap().as_bytes().to_vec(),
        ],
    );

    // Once only: the second start opens the encrypted file as it is.
    let d = serve();
    let (_, logs) = d.terminate(Duration::from_secs(10));
    assert!(!logs.contains("encrypted the registry in place"), "{logs}");
    let o = run(
        cwd.path(),
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "devices",
            "list",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Fixture Alice Phone"));
}

#[test]
fn a_wrong_master_key_is_refused_with_a_one_line_reason() {
    let data = private_dir();
    let cwd = private_dir();
    let dir = data.path().to_str().unwrap();
    let o = run(cwd.path(), &["--data-dir", dir, "admin", "token"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let key = data.path().join("master.key");
    std::fs::write(&key, [0x42u8; 32]).unwrap();
    let o = run(cwd.path(), &["--data-dir", dir, "devices", "list"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(
        err.contains("master key does not match the registry"),
        "{err}"
    );
    assert!(err.contains("latchkey.db"), "{err}");
}
