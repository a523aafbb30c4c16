#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The reference phone (`latchkey phone …` as child processes) against the gateway through
//! the simulated radio of the BlueZ stand-in on a private bus: the demo's story, pairing from
//! a picture of the QR code, each stage's timeout, and cleanup after every failure.

mod common;
#[path = "support/phone.rs"]
mod phone;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use latchkey::clock::SystemClock;
use latchkey_bluez_standin::Withhold;
use latchkey_phone::Credentials;
use serde_json::Value;

use common::Gateway;
use phone::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn healthy(port: u16) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + HANG;
    while Instant::now() < deadline {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not come up");
}

/// Nothing is left open on the phone's radio, and the client closed everything itself
/// (nothing was merely abandoned when its process exited).
fn assert_clean(f: &Field) {
    let r = f.phone.radio();
    assert!(r.is_idle(), "the phone's radio: {r:?}");
    assert_eq!(r.stats.abandoned_sessions, 0, "{r:?}");
    let g = f.gateway.radio();
    assert!(g.inbound.is_empty(), "the gateway's radio: {g:?}");
}

/// scripts/demo.sh as a test: the gateway and the phone are separate processes on one
/// private bus; pair from the QR payload, listen, unlock, revoke, be refused and cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_story_end_to_end() {
    let shared = latchkey_bluez_standin::shared().unwrap();
    let bus = shared.bus.address.clone();
    let hci_gw = shared.new_adapter().await.unwrap();
    let hci_phone = shared.new_adapter().await.unwrap();
    hci_gw.set_area("story");
    hci_phone.set_area("story");
    hci_phone.set_powered(true);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gateway");
    let opened = dir.path().join("door-opened");
    let config = dir.path().join("latchkey.toml");
    std::fs::write(
        &config,
        format!(
            r#"name = "latchkey-story"

[ble]
mode = "on"
adapter = "{}"

[[endpoint]]
id = "demo-door"
name = "Demo door"
action = {{ type = "command", timeout_secs = 5, argv = ["/bin/sh", "-c", "printf '%s %s' \"$LATCHKEY_ENDPOINT\" \"$LATCHKEY_DEVICE_NAME\" > '{}'"] }}
"#,
            hci_gw.name(),
            opened.display()
        ),
    )
    .unwrap();
    let gateway_cmd = |args: &[&str]| {
        let mut c = latchkey(Some(&bus));
        c.args(args)
            .env("LATCHKEY_DATA_DIR", &data)
            .env("LATCHKEY_CONFIG", &config)
            .env("LATCHKEY_LOG", "info");
        c
    };

    // The gateway, as `latchkey serve`.
    let port = free_port();
    let mut serve = gateway_cmd(&["serve", "--listen", &format!("127.0.0.1:{port}")]);
    serve
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut gateway = serve.spawn().unwrap();
    healthy(port).await;
    hci_gw.wait_application(0, HANG).await.unwrap();
    hci_gw.wait_advertisement(0, HANG).await.unwrap();

    // `latchkey pair` shows the QR code and, last, its payload.
    let pair = run(gateway_cmd(&["pair"])).await;
    assert_eq!(pair.code, 0, "{}", pair.all());
    let payload = pair.stdout.lines().last().unwrap().to_owned();
    assert!(payload.contains(&format!("\"port\":{port}")), "{payload}");

    // The phone pairs from it; its credentials are private to it.
    let creds = dir.path().join("phone/phone.json");
    let paired = phone(
        None,
        &creds,
        &["pair", "--payload", &payload, "--name", "Story phone"],
    )
    .await;
    assert_eq!(paired.code, 0, "{}", paired.all());
    assert!(
        paired.stderr.contains("paired as \"Story phone\""),
        "{}",
        paired.stderr
    );
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let c = Credentials::load(&creds).unwrap();

    // It listens in the background.
    let mut listener = Listener::start(&creds, &[]).await;

    // It opens the demo door over BLE: the action runs, the event arrives.
    let (granted, json) = unlock(&bus, &creds, "demo-door", &hci_phone, None).await;
    assert_eq!(granted.code, 0, "{}", granted.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(json["granted"], true);
    assert_eq!(json["authenticated"], true);
    assert_eq!(json["attOps"], 3);
    assert_eq!(json["gateway"]["name"], "latchkey-story");
    assert_eq!(
        std::fs::read_to_string(&opened).unwrap(),
        "demo-door Story phone"
    );
    let ev = listener.next().await;
    assert_eq!(ev["type"], "event");
    assert_eq!(ev["topic"], "access.granted", "{ev}");
    assert_eq!(ev["data"]["deviceId"], c.device_id.as_str());
    assert_eq!(ev["data"]["endpoint"], "demo-door");
    assert_eq!(ev["data"]["reason"], "GRANTED");
    let r = hci_phone.radio();
    assert!(r.is_idle(), "{r:?}");
    assert_eq!(r.stats.closed_att_ops, [3], "three ATT operations");
    assert_eq!(r.stats.abandoned_sessions, 0);

    // The admin revokes it: the listener is cut off at once, with a clear message.
    let revoke = run(gateway_cmd(&["devices", "revoke", &c.device_id])).await;
    assert_eq!(revoke.code, 0, "{}", revoke.all());
    assert_eq!(listener.exited().await, 1);
    let said = listener.stderr();
    assert_eq!(
        said.lines().last().unwrap(),
        "latchkey: this device has been revoked (DEVICE_REVOKED): pair it again to get a new key"
    );
    assert!(
        listener.pending().is_empty(),
        "one event, printed once, nothing else"
    );

    // And the door stays shut for it.
    std::fs::remove_file(&opened).unwrap();
    let denied = phone(
        Some(&bus),
        &creds,
        &["unlock", "demo-door", "--adapter", hci_phone.name()],
    )
    .await;
    assert_eq!(denied.code, 1, "{}", denied.all());
    // Its access tool went with the device: the gateway's door (version 2) no longer knows its
    // key, and says so in a plain (unauthenticated) answer.
    assert_eq!(
        denied.stdout,
        "denied: UNKNOWN_TOOL (unconfirmed: the door could not authenticate it)\n"
    );
    assert_eq!(denied.reason(), "latchkey: access denied: UNKNOWN_TOOL");
    assert!(!opened.exists());
    let r = hci_phone.radio();
    assert!(r.is_idle(), "{r:?}");
    assert_eq!(r.stats.closed_att_ops, [3, 3]);

    // Nothing secret was ever shown, even at debug level.
    for out in [&paired, &granted, &denied] {
        assert_no_secrets(&c, &out.all());
    }
    assert_no_secrets(&c, &said);

    // SIGTERM: the gateway exits 0 and unregisters.
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(i32::try_from(gateway.id().unwrap()).unwrap(), libc::SIGTERM);
    }
    let status = tokio::time::timeout(HANG, gateway.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Renders `latchkey pair`'s terminal QR as a screenshot of a light-on-dark terminal would
/// show it: each character is two modules, a block is lit.
fn terminal_to_png(qr: &str, path: &std::path::Path) {
    let rows: Vec<Vec<char>> = qr.lines().map(|l| l.chars().collect()).collect();
    let width = rows.iter().map(Vec::len).max().unwrap();
    let scale = 4u32;
    let img = image::GrayImage::from_fn(
        u32::try_from(width).unwrap() * scale,
        u32::try_from(rows.len() * 2).unwrap() * scale,
        |x, y| {
            let (col, half) = ((x / scale) as usize, (y / scale) as usize);
            let ch = rows[half / 2].get(col).copied().unwrap_or(' ');
            let lit = matches!((ch, half % 2), ('█', _) | ('▀', 0) | ('▄', 1));
            image::Luma([if lit { 255 } else { 0 }])
        },
    );
    img.save(path).unwrap();
}

#[tokio::test]
async fn pairs_from_a_picture_of_the_terminal_qr() {
    let gw = Gateway::start_with(|c| c.clock = std::sync::Arc::new(SystemClock)).await;
    let mut pair = latchkey(None);
    pair.arg("pair").arg("--data-dir").arg(gw.dir.path());
    let shown = run(pair).await;
    assert_eq!(shown.code, 0, "{}", shown.all());
    let qr: String = shown
        .stdout
        .lines()
        .take_while(|l| !l.starts_with("Scan with"))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("qr.png");
    terminal_to_png(&qr, &png);

    let creds = dir.path().join("phone.json");
    let png_arg = png.to_str().unwrap();
    let out = phone(
        None,
        &creds,
        &["pair", "--qr-image", png_arg, "--name", "QR phone"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.all());
    let c = Credentials::load(&creds).unwrap();
    assert_eq!(c.gateway_port, gw.addr.port());
    assert_eq!(c.name, "QR phone");
    assert_no_secrets(&c, &out.all());
    let devices: Value = reqwest::Client::new()
        .get(gw.url("/api/devices"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(devices["devices"][0]["name"], "QR phone");
    assert_eq!(devices["devices"][0]["deviceId"], c.device_id.as_str());

    // The same picture again: the token was single-use.
    let again = phone(
        None,
        &dir.path().join("other.json"),
        &["pair", "--qr-image", png_arg],
    )
    .await;
    assert_eq!(again.code, 1);
    assert!(
        again.reason().contains("PAIR_TOKEN_USED"),
        "{}",
        again.all()
    );

    // A picture without a code.
    let blank = dir.path().join("blank.png");
    image::GrayImage::from_pixel(64, 64, image::Luma([255]))
        .save(&blank)
        .unwrap();
    let none = phone(
        None,
        &dir.path().join("x.json"),
        &["pair", "--qr-image", blank.to_str().unwrap()],
    )
    .await;
    assert_eq!(none.code, 1);
    assert_eq!(none.reason(), "latchkey: no QR code found in the image");
}

/// The stage under test gets half a second, the others ten: what is tested is the timeout
/// path (its code, its message, its cleanup), not timing.
async fn times_out(area: &str, what: Withhold, timeouts: &str, code: &str, message: &str) -> Field {
    let opened = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let f = Field::start(area, vec![door("front", &opened)]).await;
    let (creds, c) = f.pair("timeout phone").await;
    f.gateway.withhold(what, true);
    let (out, json) = unlock(&f.bus, &creds, "front", &f.phone, Some(timeouts)).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(json["status"], "ERROR", "{json}");
    assert_eq!(json["code"], code, "{json}");
    assert_eq!(out.reason(), format!("latchkey: {code}: {message}"));
    assert_no_secrets(&c, &out.all());
    assert_clean(&f);

    // Once the radio behaves, the same phone gets in (a fresh TOTP step, a fresh link).
    f.gateway.withhold(what, false);
    let (out, json) = unlock(&f.bus, &creds, "front", &f.phone, None).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED");
    assert_eq!(
        std::fs::read_to_string(&opened).unwrap(),
        "front timeout phone"
    );
    assert_clean(&f);
    f
}

#[tokio::test]
async fn timeout_scan_when_no_gateway_is_heard() {
    let f = times_out(
        "scan",
        Withhold::Device,
        "0.5,10,10,10",
        "TIMEOUT_SCAN",
        "no latchkey door found nearby",
    )
    .await;
    let s = f.phone.radio().stats;
    // Never connected while withheld; then one connection with the protocol's three ops.
    assert_eq!(s.connections_made, 1);
    assert_eq!(s.closed_att_ops, [3]);

    // BlueZ remembers the gateway, but a remembered device is not one in range: the scan
    // still times out rather than picking it.
    assert_eq!(f.phone.radio().devices.len(), 1);
    f.gateway.withhold(Withhold::Device, true);
    let (creds, _) = f.pair("second phone").await;
    let (out, json) = unlock(&f.bus, &creds, "front", &f.phone, Some("0.5,10,10,10")).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(json["code"], "TIMEOUT_SCAN", "{json}");
    assert_clean(&f);
    assert_eq!(f.phone.radio().stats.connections_made, 1);
}

#[tokio::test]
async fn timeout_connect_when_the_gateway_does_not_accept() {
    let f = times_out(
        "connect",
        Withhold::Connection,
        "10,0.5,10,10",
        "TIMEOUT_CONNECT",
        "the door did not accept the connection in time",
    )
    .await;
    // The pending attempt was cancelled, not completed.
    let s = f.phone.radio().stats;
    assert_eq!(s.connections_made, 1);
    assert_eq!(s.closed_att_ops, [3]);
}

#[tokio::test]
async fn timeout_challenge_when_the_read_is_not_answered() {
    let f = times_out(
        "challenge",
        Withhold::Challenge,
        "10,10,0.5,10",
        "TIMEOUT_CHALLENGE",
        "the door did not hand out a challenge in time",
    )
    .await;
    // The first link subscribed; its read never reached the gateway; it was closed anyway.
    assert_eq!(f.phone.radio().stats.closed_att_ops, [1, 3]);
    assert_eq!(f.access_events().await.len(), 1, "only the later grant");
}

#[tokio::test]
async fn timeout_server_when_the_result_is_lost() {
    let f = times_out(
        "server",
        Withhold::Result,
        "10,10,10,0.5",
        "TIMEOUT_SERVER",
        "the door did not answer in time",
    )
    .await;
    assert_eq!(f.phone.radio().stats.closed_att_ops, [3, 3]);
    assert!(f.gateway.radio().stats.withheld_notifications >= 1);
    // The gateway decided both times; the phone heard only the second answer.
    let topics: Vec<String> = f.access_events().await.into_iter().map(|e| e.0).collect();
    assert_eq!(topics, ["access.granted", "access.granted"]);
}

#[tokio::test]
async fn a_denial_and_a_powered_off_adapter_also_leave_nothing_open() {
    let out_dir = tempfile::tempdir().unwrap();
    let opened = out_dir.path().join("opened");
    let f = Field::start("denial", vec![door("front", &opened)]).await;
    let (creds, _) = f.pair("denied phone").await;

    let (out, json) = unlock(&f.bus, &creds, "back-door", &f.phone, None).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(json["status"], "ENDPOINT_DENIED", "{json}");
    assert_eq!(json["authenticated"], true);
    assert_eq!(json["attOps"], 3);
    assert_eq!(out.reason(), "latchkey: access denied: ENDPOINT_DENIED");
    assert!(!opened.exists());
    assert_clean(&f);
    assert_eq!(f.phone.radio().stats.closed_att_ops, [3]);

    f.phone.set_powered(false);
    let (out, json) = unlock(&f.bus, &creds, "front", &f.phone, None).await;
    assert_eq!(out.code, 1);
    assert_eq!(json["code"], "BLUETOOTH_OFF", "{json}");
    assert_eq!(
        out.reason(),
        format!(
            "latchkey: BLUETOOTH_OFF: Bluetooth adapter {} is powered off",
            f.phone.name()
        )
    );
    assert_clean(&f);
}

/// `phone add-node` as a process: its help documents seed 004's error table, a bad URL is a
/// usage error (2), and a gateway that does not answer is seed 004's "connect to your home
/// WiFi" on one line (1), without the admin token in it.
#[tokio::test]
async fn add_node_documents_its_errors_and_reports_them_on_one_line() {
    let mut c = latchkey(None);
    c.args(["phone", "add-node", "--help"]);
    let help = run(c).await;
    assert_eq!(help.code, 0, "{}", help.all());
    for code in [
        "LOGIN_REQUIRED",
        "GATEWAY_UNREACHABLE",
        "TOKEN_REFRESH_FAILED",
        "TOKEN_EXPIRED_AFTER_SEND",
        "PROVISIONING_REJECTED",
        "NOT_READY",
        "WIFI_FAILED",
        "Please log in again",
        "--wifi-password-file",
    ] {
        assert!(
            help.stdout.contains(code),
            "{code} missing:\n{}",
            help.stdout
        );
    }
    assert!(
        !help.stdout.contains("--wifi-password <"),
        "{}",
        help.stdout
    );

    let mut c = latchkey(None);
    c.args([
        "phone",
        "add-node",
        "--gateway",
        "ftp://x",
        "--room",
        "Hall",
    ])
    .env("LATCHKEY_ADMIN_TOKEN", "adm_x");
    assert_eq!(run(c).await.code, 2);

    let gateway = format!("http://127.0.0.1:{}", free_port());
    let mut c = latchkey(None);
    c.args(["phone", "add-node", "--gateway", &gateway, "--room", "Hall"])
        .env("LATCHKEY_ADMIN_TOKEN", "adm_secret_x");
    let out = run(c).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.reason()
            .starts_with("latchkey: GATEWAY_UNREACHABLE: Please connect to your home WiFi first"),
        "{}",
        out.all()
    );
    assert!(!out.all().contains("adm_secret_x"), "{}", out.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_picks_its_own_gateway_among_several() {
    use latchkey::config::{BleMode, Config};
    use std::sync::Arc;

    let out_dir = tempfile::tempdir().unwrap();
    let opened = out_dir.path().join("opened");
    let f = Field::start("two-gateways", vec![door("front", &opened)]).await;
    let (creds, _) = f.pair("two-gateway phone").await;

    // Another latchkey gateway in range: same service, same endpoint id, another gatewayId.
    let shared = latchkey_bluez_standin::shared().unwrap();
    let other = shared.new_adapter().await.unwrap();
    other.set_area("two-gateways");
    let name = other.name().to_owned();
    let other_opened = out_dir.path().join("other-opened");
    let other_gw = Gateway::start_with(|c: &mut Config| {
        c.ble = BleMode::On;
        c.ble_adapter = Some(name);
        c.endpoints = vec![door("front", &other_opened)];
        c.clock = Arc::new(SystemClock);
    })
    .await;
    other.wait_advertisement(0, HANG).await.unwrap();
    assert_ne!(other_gw.state.gateway_id, f.gw.state.gateway_id);

    // Ours stays silent until the phone has heard the other one first.
    f.gateway.withhold(Withhold::Device, true);
    let ours_later = async {
        tokio::time::timeout(HANG, async {
            while f.phone.radio().devices.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the phone hears the other gateway");
        f.gateway.withhold(Withhold::Device, false);
    };
    let ((out, json), ()) =
        tokio::join!(unlock(&f.bus, &creds, "front", &f.phone, None), ours_later);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(
        std::fs::read_to_string(&opened).unwrap(),
        "front two-gateway phone"
    );
    assert!(!other_opened.exists());
    // It heard both, connected once, and never wrote to the other one.
    assert_eq!(f.phone.radio().devices.len(), 2);
    assert_eq!(f.phone.radio().stats.connections_made, 1);
    let other_events = other_gw
        .state
        .store
        .read(|c| latchkey::events::since(c, 0, 1000))
        .await
        .unwrap();
    assert!(
        !other_events.iter().any(|e| e.topic.starts_with("access.")),
        "the other gateway decided nothing"
    );
    assert_clean(&f);
}
