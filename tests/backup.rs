//! `latchkey backup` and `latchkey restore` (issue 13, part 3): a consistent online copy made
//! through the daemon while phones pair, encrypted and self-describing; a restore that checks the
//! file, the key and the gateway before it replaces anything; the daemon's daily backups.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{poll, Gateway, T0};
use daemon::{run, stderr};
use latchkey::config::BackupPolicy;
use latchkey::crypto::MasterKey;
use latchkey::store::Store;

fn cli(data: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--data-dir", data.to_str().unwrap()];
    all.extend_from_slice(args);
    run(Path::new("/"), &all)
}

/// Exit status 1 and one line on stderr that says `what`.
fn assert_fails_with(o: &std::process::Output, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(what), "{err:?} should mention {what:?}");
}

/// A new 0700 data dir holding only a copy of `from`'s master key.
fn fresh_with_key_of(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap();
    std::fs::copy(from.join("master.key"), dir.path().join("master.key")).unwrap();
    std::fs::set_permissions(
        dir.path().join("master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    dir
}

/// Device names and the gateway id of the registry in `data` (opened with its master key).
fn registry(data: &Path) -> (HashSet<String>, HashSet<String>, String) {
    let key = MasterKey::read(&data.join("master.key")).unwrap();
    let store = Store::open(&data.join(latchkey::DB_FILE), &key).unwrap();
    let devices = store.read_blocking(latchkey::registry::list).unwrap();
    let gid = store
        .read_blocking(|c| latchkey::store::meta_get(c, "gateway_id"))
        .unwrap()
        .unwrap();
    (
        devices.iter().map(|d| d.device_id.to_string()).collect(),
        devices.iter().map(|d| d.name.clone()).collect(),
        gid,
    )
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_during_50_pairings_holds_every_pairing_acknowledged_before_it() {
    let gw = Arc::new(Gateway::start().await);
    let http = reqwest::Client::new();
    let acked = Arc::new(AtomicUsize::new(0));
    let pairings: Vec<_> = (0..50)
        .map(|i| {
            let (gw, http, acked) = (gw.clone(), http.clone(), acked.clone());
            tokio::spawn(async move {
                let p = gw.pair(&http, &format!("Phone {i}")).await;
                let at = Instant::now();
                acked.fetch_add(1, Ordering::SeqCst);
                (p["deviceId"].as_str().unwrap().to_owned(), at)
            })
        })
        .collect();
    // Some pairings done, the rest still running while the daemon makes the copy.
    poll("ten pairings acknowledged", async || {
        (acked.load(Ordering::SeqCst) >= 10).then_some(())
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("online.backup");
    let data = gw.dir.path().to_owned();
    let target = file.clone();
    // Through the daemon: its socket is up, and the key is out of the CLI's reach meanwhile.
    let socket = data.join("latchkey.sock");
    poll("the control socket accepts", async || {
        tokio::net::UnixStream::connect(&socket)
            .await
            .ok()
            .map(drop)
    })
    .await;
    let (key, away) = (data.join("master.key"), data.join("master.key.away"));
    std::fs::rename(&key, &away).unwrap();
    let began = Instant::now();
    let o = tokio::task::spawn_blocking(move || cli(&data, &["backup", target.to_str().unwrap()]))
        .await
        .unwrap();
    std::fs::rename(&away, &key).unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut before = HashSet::new();
    for p in pairings {
        let (id, at) = p.await.unwrap();
        if at < began {
            before.insert(id);
        }
    }
    assert!(before.len() >= 10, "{}", before.len());
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let fresh = fresh_with_key_of(gw.dir.path());
    let o = cli(fresh.path(), &["restore", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (restored, _, gid) = registry(fresh.path());
    assert_eq!(gid, gw.state.gateway_id);
    let missing: Vec<_> = before.difference(&restored).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup but not in it: {missing:?}"
    );
}

/// A stopped gateway with one paired phone; its data dir.
async fn gateway_with(phone: &str) -> (tempfile::TempDir, serde_json::Value) {
    let gw = Gateway::start().await;
    let p = gw.pair(&reqwest::Client::new(), phone).await;
    (gw.stop().await, p)
}

fn backup_of(data: &Path, into: &Path) -> PathBuf {
    let file = into.join(format!(
        "{}.backup",
        data.file_name().unwrap().to_string_lossy()
    ));
    let o = cli(data, &["backup", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    file
}

/// What a refused restore must not have touched.
fn untouched(data: &Path, was: &(HashSet<String>, HashSet<String>, String)) {
    assert_eq!(&registry(data), was);
    for e in std::fs::read_dir(data).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains("before-restore") && !name.contains("restoring"),
            "{name} left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_wrong_key_another_gateway_and_junk_changing_nothing() {
    let out = tempfile::tempdir().unwrap();
    let (a, _) = gateway_with("Phone of A").await;
    let (b, _) = gateway_with("Phone of B").await;
    let file_a = backup_of(a.path(), out.path());
    let b_was = registry(b.path());

    // B's key is not A's: the key check fails first.
    let o = cli(b.path(), &["restore", file_a.to_str().unwrap()]);
    assert_fails_with(&o, "made under another master key");
    untouched(b.path(), &b_was);

    // Another gateway under the same key: started afresh with A's key as its credential.
    let creds = fresh_with_key_of(a.path());
    std::fs::rename(
        creds.path().join("master.key"),
        creds.path().join("latchkey.key"),
    )
    .unwrap();
    let cred_dir = creds.path().to_owned();
    let gw_c = Gateway::start_with(|cfg| cfg.credentials_dir = Some(cred_dir)).await;
    let c = gw_c.stop().await;
    std::fs::copy(
        creds.path().join("latchkey.key"),
        c.path().join("master.key"),
    )
    .unwrap();
    let c_was = registry(c.path());
    assert_ne!(c_was.2, registry(a.path()).2);
    let o = cli(c.path(), &["restore", file_a.to_str().unwrap()]);
    assert_fails_with(&o, "backup of another gateway");
    untouched(c.path(), &c_was);

    let junk = out.path().join("junk.backup");
    std::fs::write(&junk, b"SQLite format 3\0 and then some").unwrap();
    let o = cli(a.path(), &["restore", junk.to_str().unwrap()]);
    assert_fails_with(&o, "not a latchkey backup");
    // A header that lies: the database after it is cut short.
    let mut cut = std::fs::read(&file_a).unwrap();
    cut.truncate(cut.len() / 2);
    std::fs::write(&junk, &cut).unwrap();
    let a_was = registry(a.path());
    let o = cli(a.path(), &["restore", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    untouched(a.path(), &a_was);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_with_the_daemon_stopped() {
    let out = tempfile::tempdir().unwrap();
    let (a, p) = gateway_with("Round Trip Phone").await;
    let file = backup_of(a.path(), out.path());

    // Nothing of the registry is readable in the backup.
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"latchkey-backup 1\n"));
    let (_, _, gid) = registry(a.path());
    for needle in [
        "Round Trip Phone",
        p["deviceId"].as_str().unwrap(),
        gid.as_str(),
        "device.paired",
        "CREATE TABLE",
        "SQLite format 3",
    ] {
        assert!(
            !contains(&bytes, needle),
            "{needle:?} is readable in the backup"
        );
    }

    // A phone paired after the backup is gone once it is restored.
    let gw = Gateway::start_in(a, T0 + 60, |_| {}).await;
    gw.pair(&reqwest::Client::new(), "After Backup").await;
    let a = gw.stop().await;
    let o = cli(a.path(), &["restore", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("kept as"), "{}", stderr(&o));
    let aside: Vec<_> = std::fs::read_dir(a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("latchkey.db.before-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let gw = Gateway::start_in(a, T0 + 120, |_| {}).await;
    let names: Vec<String> = gw
        .state
        .store
        .read(latchkey::registry::list)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["Round Trip Phone"]);
    // The backup's own stamps do not stay in the registry.
    let stamp = gw
        .state
        .store
        .read(|c| latchkey::store::meta_get(c, "backup_format"))
        .await
        .unwrap();
    assert_eq!(stamp, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_backups_follow_the_clock_and_keep_the_newest() {
    let gw = Gateway::start_with(|c| {
        c.backup = BackupPolicy {
            keep: 3,
            interval_secs: 86_400,
            check_every: Duration::from_millis(50),
        }
    })
    .await;
    let dir = gw.dir.path().join("backups");
    let names = || -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".backup"))
                    .collect()
            })
            .unwrap_or_default();
        n.sort();
        n
    };
    // None yet: one at once, stamped with the clock's time (2026-01-13T10:40:00Z).
    let first = "latchkey-20260113T104000Z.backup";
    poll("the first daily backup", async || {
        names().contains(&first.to_owned()).then_some(())
    })
    .await;
    let mut want = vec![first.to_owned()];
    for day in 1..=4 {
        gw.clock.advance(86_400);
        let name = format!("latchkey-202601{:02}T104000Z.backup", 13 + day);
        poll("the next daily backup", async || {
            names().contains(&name).then_some(())
        })
        .await;
        want.push(name);
    }
    let want: Vec<String> = want[want.len() - 3..].to_vec();
    poll("pruned to the newest 3", async || {
        (names() == want).then_some(())
    })
    .await;
    let newest = std::fs::read(dir.join(&want[2])).unwrap();
    assert!(newest.starts_with(b"latchkey-backup 1\n"));
    assert!(!std::fs::read_dir(&dir).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".snapshot")));
}
