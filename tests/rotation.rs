//! `latchkey admin rotate-key` (issue 13, part 4): the registry re-keyed and every sealed secret
//! re-sealed under a new master key; killed (SIGKILL) at every step, it always leaves a registry
//! that one of the two keys opens entirely, and the next start carries on from there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::Gateway;
use daemon::{command, run, stderr, Daemon};
use latchkey::crypto::MasterKey;
use latchkey::registry::{self, DeviceId};
use latchkey::store::{Store, StoreError};

/// Every sealed secret of the test gateway, as first made.
struct Secrets {
    totp: Vec<(String, String)>,
    signing: [u8; 32],
    door: Vec<u8>,
}

async fn gateway_with_every_kind_of_secret() -> (tempfile::TempDir, Secrets) {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let mut totp = Vec::new();
    for name in ["Rotation Phone A", "Rotation Phone B"] {
        let p = gw.pair(&http, name).await;
        totp.push((
            p["deviceId"].as_str().unwrap().to_owned(),
            p["totp"]["secret"].as_str().unwrap().to_owned(),
        ));
    }
    let master = MasterKey::read(&gw.dir.path().join("master.key")).unwrap();
    let (signing, door) = gw
        .state
        .store
        .write_blocking(move |tx| {
            let s = latchkey::nodes::signing::get_or_create(tx, &master).unwrap();
            let d = latchkey::grants::doorkey::get_or_create(tx, &master).unwrap();
            Ok((s.to_bytes(), d.to_bytes().to_vec()))
        })
        .unwrap();
    let dir = gw.stop().await;
    (
        dir,
        Secrets {
            totp,
            signing,
            door,
        },
    )
}

/// Whether `key` opens the registry and every secret in it (and they are the originals).
fn opens_everything(data: &Path, key: &MasterKey, secrets: &Secrets) -> bool {
    let store = match Store::open(&data.join(latchkey::DB_FILE), key) {
        Ok(s) => s,
        Err(StoreError::WrongKey { .. }) => return false,
        Err(e) => panic!("registry does not open: {e}"),
    };
    store
        .read_blocking(|c| {
            for (id, secret) in &secrets.totp {
                let id = DeviceId::parse(id).unwrap();
                match registry::totp_secret(c, key, &id) {
                    Ok(Some(s)) => assert_eq!(s.to_base32().expose(), secret),
                    other => panic!("TOTP secret of {id:?} does not open: {other:?}"),
                }
            }
            let signing = latchkey::nodes::signing::signing_key(c, key)
                .unwrap()
                .unwrap();
            assert_eq!(signing.to_bytes(), secrets.signing);
            let door = latchkey::grants::doorkey::secret(c, key).unwrap().unwrap();
            assert_eq!(door.to_bytes().to_vec(), secrets.door);
            Ok(())
        })
        .unwrap();
    true
}

/// The keys on disk: `master.key`, and `master.key.new` when a rotation left one.
fn keys_on_disk(data: &Path) -> Vec<MasterKey> {
    ["master.key", "master.key.new"]
        .iter()
        .filter(|f| data.join(f).exists())
        .map(|f| MasterKey::read(&data.join(f)).unwrap())
        .collect()
}

fn rotate(cwd: &Path, data: &Path) -> std::process::Output {
    run(
        cwd,
        &["--data-dir", data.to_str().unwrap(), "admin", "rotate-key"],
    )
}

/// Starts a rotation that stops at `step`, waits until it is there, and SIGKILLs it.
fn kill_rotation_at(cwd: &Path, data: &Path, step: &str) {
    let mut child = command(
        cwd,
        &["--data-dir", data.to_str().unwrap(), "admin", "rotate-key"],
    )
    .env("LATCHKEY_TEST_ROTATION_PAUSE", step)
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(&format!("rotation paused at {step}")) {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
    }
    panic!(
        "rotate-key never reached {step} ({:?}): {seen}",
        child.wait()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_killed_at_any_step_leaves_a_registry_one_key_opens() {
    let (data, secrets) = gateway_with_every_kind_of_secret().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = data.path();
    let steps = [
        "new-key-written",
        "copied",
        "resealed",
        "rekeyed",
        "registry-replaced",
    ];
    for step in steps {
        kill_rotation_at(cwd.path(), dir, step);
        let keys = keys_on_disk(dir);
        let opening = keys
            .iter()
            .filter(|k| opens_everything(dir, k, &secrets))
            .count();
        assert!(opening >= 1, "killed at {step}: no key opens the registry");
        // The next command carries on: finishes the rotation or drops it, and works.
        let o = run(
            cwd.path(),
            &["--data-dir", dir.to_str().unwrap(), "devices", "list"],
        );
        assert!(o.status.success(), "after {step}: {}", stderr(&o));
        assert!(!dir.join("master.key.new").exists(), "after {step}");
        assert!(!dir.join("latchkey.db.rotating").exists(), "after {step}");
        let key = MasterKey::read(&dir.join("master.key")).unwrap();
        assert!(opens_everything(dir, &key, &secrets), "after {step}");
    }

    // Uninterrupted: the old key opens nothing any more, the new one everything.
    let before = MasterKey::read(&dir.join("master.key")).unwrap();
    let o = rotate(cwd.path(), dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("back it up"), "{}", stderr(&o));
    let after = MasterKey::read(&dir.join("master.key")).unwrap();
    assert!(!opens_everything(dir, &before, &secrets));
    assert!(opens_everything(dir, &after, &secrets));
    assert!(!dir.join("master.key.new").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_refused_while_the_daemon_runs() {
    let (data, secrets) = gateway_with_every_kind_of_secret().await;
    let cwd = tempfile::tempdir().unwrap();
    let before = MasterKey::read(&data.path().join("master.key")).unwrap();
    let mut c = command(
        cwd.path(),
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    c.arg("--data-dir").arg(data.path());
    let d = Daemon::start(c);
    let o = rotate(cwd.path(), data.path());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(err.contains("stop it first"), "{err}");
    let (status, logs) = d.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{logs}");
    assert!(!data.path().join("master.key.new").exists());
    assert!(opens_everything(data.path(), &before, &secrets));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_systemd_credential_the_new_key_waits_beside_the_registry_until_installed() {
    let (data, secrets) = gateway_with_every_kind_of_secret().await;
    let dir = data.path();
    let cwd = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let cred = creds.path().join("latchkey.key");
    std::fs::copy(dir.join("master.key"), &cred).unwrap();
    std::fs::remove_file(dir.join("master.key")).unwrap();
    let with_cred = |args: &[&str]| {
        let mut all = vec!["--data-dir", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        command(cwd.path(), &all)
            .env("CREDENTIALS_DIRECTORY", creds.path())
            .output()
            .unwrap()
    };

    let o = with_cred(&["admin", "rotate-key"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("install it as the latchkey.key credential"),
        "{}",
        stderr(&o)
    );
    let new = MasterKey::read(&dir.join("master.key.new")).unwrap();
    assert!(!dir.join("master.key").exists());
    assert!(opens_everything(dir, &new, &secrets));
    assert!(!opens_everything(
        dir,
        &MasterKey::read(&cred).unwrap(),
        &secrets
    ));

    // The old credential still in place: the new key beside the registry opens it, and stays.
    let o = with_cred(&["devices", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("master.key.new").exists());

    // Installed as the credential: it opens the registry, and the file is no longer needed.
    std::fs::write(&cred, std::fs::read(dir.join("master.key.new")).unwrap()).unwrap();
    let o = with_cred(&["devices", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dir.join("master.key.new").exists());
    assert!(opens_everything(dir, &new, &secrets));
}
