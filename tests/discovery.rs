//! Discovery (CONTRACT §2, issue 14 part 3): the gateway's `_latchkey._tcp` record seen with the
//! right id by a separate mDNS browser and by an independent resolver (python3-zeroconf), a phone whose stored port is stale finding the
//! gateway again by id, and a record with another id ignored.
//!
//! No multicast leaves this machine: the outer test re-runs this binary's inner test inside a
//! private network namespace (`unshare -rn`, only `lo`, brought up with `ip`), where the daemon
//! listens on 127.0.0.1 and so announces on loopback alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::{Gateway, PATIENCE};
use latchkey_phone::credentials::Credentials;
use latchkey_phone::secret::SecretString;
use latchkey_proto::dns_sd::SERVICE_TYPE;
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

const INNER: &str = "inside_a_network_namespace";

#[test]
fn discovery_in_a_private_network_namespace() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-rn", "sh", "-c", r#"ip link set lo up && exec "$0" "$@""#])
        .arg(&exe)
        .args([
            INNER,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LATCHKEY_TEST_NETNS", "1")
        .output()
        .expect("unshare (util-linux) and ip (iproute2) are installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the inner test ran: {text}");
}

/// A Python with the `zeroconf` package: Debian's (python3-zeroconf, which .ci/run installs)
/// lives under the system interpreter, which a pyenv or venv `python3` on PATH may hide.
fn python_with_zeroconf() -> &'static str {
    for python in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(python)
            .args(["-c", "import zeroconf"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return python;
        }
    }
    panic!("no python3 with the zeroconf package: apt-get install python3-zeroconf");
}

/// The first `_latchkey._tcp` record with TXT `id`, as an independent browser resolves it:
/// its port and TXT. Blocking.
fn browse_until(daemon: &ServiceDaemon, id: &str) -> (u16, HashMap<String, String>) {
    let events = daemon.browse(SERVICE_TYPE).unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while let Ok(ev) = events.recv_deadline(deadline) {
        if let ServiceEvent::ServiceResolved(s) = ev {
            let txt: HashMap<String, String> = s
                .txt_properties
                .iter()
                .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
                .collect();
            if txt.get("id").map(String::as_str) == Some(id) {
                let _ = daemon.stop_browse(SERVICE_TYPE);
                return (s.port, txt);
            }
        }
    }
    panic!("the record of {id} was never seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by discovery_in_a_private_network_namespace inside unshare -rn"]
async fn inside_a_network_namespace() {
    assert_eq!(
        std::env::var("LATCHKEY_TEST_NETNS").as_deref(),
        Ok("1"),
        "only inside the namespace: it multicasts"
    );
    let gw = Gateway::start_with(|c| c.mdns = true).await;
    let id = gw.state.gateway_id.clone();

    // A stranger announces the same service type with another id, on a port that answers.
    let stranger = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stranger_port = stranger.local_addr().unwrap().port();
    let other = ServiceDaemon::new().unwrap();
    other
        .register(
            ServiceInfo::new(
                SERVICE_TYPE,
                "impostor",
                "impostor.local.",
                "127.0.0.1",
                stranger_port,
                &[("id", "0000feedface0000"), ("v", "1")][..],
            )
            .unwrap(),
        )
        .unwrap();

    // An independent browser sees the gateway's record, with its id, version and port.
    let browser = ServiceDaemon::new().unwrap();
    let (browser, (port, txt), (other_port, _)) = tokio::task::spawn_blocking({
        let id = id.clone();
        move || {
            let ours = browse_until(&browser, &id);
            let theirs = browse_until(&browser, "0000feedface0000");
            (browser, ours, theirs)
        }
    })
    .await
    .unwrap();
    assert_eq!(port, gw.addr.port());
    assert_eq!(txt["v"], "1");
    assert_eq!(txt["port"], gw.addr.port().to_string());
    assert_eq!(other_port, stranger_port, "both records are on the wire");

    // And so does a resolver that shares no code with it: Debian's python3-zeroconf.
    let seen = tokio::task::spawn_blocking({
        let id = id.clone();
        move || {
            Command::new(python_with_zeroconf())
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/support/mdns_browse.py"
                ))
                .args([id.as_str(), "20"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        seen.status.success(),
        "python3-zeroconf saw no record: {}",
        String::from_utf8_lossy(&seen.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&seen.stdout).unwrap();
    assert_eq!(seen["port"], gw.addr.port());
    assert_eq!(seen["txt"]["id"], id.as_str());
    assert_eq!(seen["txt"]["v"], "1");
    assert_eq!(seen["addresses"], serde_json::json!(["127.0.0.1"]));

    // The phone's browse takes only its gateway's record.
    let found = latchkey_phone::discover::browse(&id, PATIENCE)
        .await
        .unwrap();
    assert_eq!(found.map(|f| f.port), Some(gw.addr.port()));
    let nobody = latchkey_phone::discover::browse("0123456789abcdef", Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(nobody, None, "another id is never taken");

    // A paired phone whose stored port went stale (the gateway moved) finds it again.
    let http = reqwest::Client::new();
    let paired = gw.pair(&http, "Moving Phone").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stale_port = dead.local_addr().unwrap().port();
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.json");
    Credentials {
        device_id: paired["deviceId"].as_str().unwrap().into(),
        device_key: SecretString::new(paired["deviceKey"].as_str().unwrap().into()),
        totp_secret: SecretString::new(paired["totp"]["secret"].as_str().unwrap().into()),
        gateway_host: "127.0.0.1".into(),
        gateway_port: stale_port,
        gateway_id: id.clone(),
        ws_url: format!("ws://127.0.0.1:{stale_port}/ws"),
        name: "Moving Phone".into(),
        phone_key: None,
        access_tool: None,
        vehicle_keys: Vec::new(),
    }
    .save(&path)
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_latchkey"))
                .args(["phone", "publish", "ui.sync", r#"{"moved":true}"#])
                .env_remove("LATCHKEY_MDNS")
                .arg("--credentials")
                .arg(&path)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "found gateway {id} at http://127.0.0.1:{}",
            gw.addr.port()
        )),
        "the phone says so: {stderr}"
    );
    let creds = Credentials::load(&path).unwrap();
    assert_eq!(
        creds.gateway_port,
        gw.addr.port(),
        "the new address is stored"
    );
    assert_eq!(creds.ws_url, gw.ws_url());
    let published = gw.events("ui.sync").await;
    assert_eq!(published.last().unwrap().1["moved"], true);

    drop(stranger);
    let _ = other.shutdown();
    let _ = browser.shutdown();
    gw.stop().await;
}
