#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The sync channel (CONTRACT §4) against the real daemon on loopback, with tokio-tungstenite
//! clients.

mod common;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Gateway, T0};
use futures_util::{SinkExt, StreamExt};
use latchkey::events;
use latchkey::registry::{self, DeviceId};
use latchkey::secret::SecretString;
use latchkey::store::Store;
use latchkey_phone::sync_client::{Backoff, Incoming, SyncClient, SyncError};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Guards against a hang; never a pass/fail timer.
const HANG: Duration = Duration::from_secs(20);

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Device(&'a str),
    Bearer(&'a str),
    /// A session cookie, with the `Origin` a browser on our page would send.
    Cookie(&'a str, &'a str),
    /// A raw `Authorization` header value.
    Raw(&'a str),
}

fn request(gw: &Gateway, auth: Auth<'_>) -> Request {
    let mut req = gw.ws_url().into_client_request().unwrap();
    let h = req.headers_mut();
    let mut set = |name: &'static str, v: String| {
        h.insert(name, HeaderValue::from_str(&v).unwrap());
    };
    match auth {
        Auth::None => {}
        Auth::Device(k) => set("authorization", format!("Device {k}")),
        Auth::Bearer(t) => set("authorization", format!("Bearer {t}")),
        Auth::Cookie(sid, origin) => {
            set("cookie", format!("latchkey_session={sid}"));
            set("origin", origin.to_owned());
        }
        Auth::Raw(v) => set("authorization", v.to_owned()),
    }
    req
}

async fn connect(gw: &Gateway, auth: Auth<'_>) -> Result<Ws, WsError> {
    tokio_tungstenite::connect_async(request(gw, auth))
        .await
        .map(|(ws, _)| ws)
}

/// Connects and reads `hello`.
async fn open(gw: &Gateway, auth: Auth<'_>) -> (Ws, Value) {
    let mut ws = connect(gw, auth).await.expect("upgrade");
    let hello = recv(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    (ws, hello)
}

/// Connects, reads `hello` and goes live at once (`resume` from hello's seq).
async fn live(gw: &Gateway, auth: Auth<'_>) -> (Ws, Value) {
    let (mut ws, hello) = open(gw, auth).await;
    send(&mut ws, json!({"type":"resume","since":hello["seq"]})).await;
    (ws, hello)
}

/// The refused upgrade's status and error code.
async fn refused(gw: &Gateway, auth: Auth<'_>) -> (u16, String) {
    match connect(gw, auth).await {
        Err(WsError::Http(resp)) => {
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}"))
                .expect("JSON error body");
            let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
            assert!(body["error"]["message"].is_string(), "{body}");
            (resp.status().as_u16(), code)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade should have been refused"),
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text frame as JSON (pings skipped); panics on close.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Reads until the close frame; returns its code and the text frames before it.
async fn closed(ws: &mut Ws) -> (u16, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let m = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("a frame in time");
        match m {
            Some(Ok(Message::Text(t))) => before.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), before),
            Some(Ok(Message::Close(None))) => panic!("close without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket failed before a close frame: {e}"),
            None => panic!("socket ended without a close frame"),
        }
    }
}

/// Publishes and returns the ack's seq.
async fn publish(ws: &mut Ws, id: Value, topic: &str, data: Value) -> i64 {
    send(
        ws,
        json!({"type":"publish","id":id,"topic":topic,"data":data}),
    )
    .await;
    loop {
        let f = recv(ws).await;
        if f["type"] == "ack" {
            assert_eq!(f["id"], id);
            return f["seq"].as_i64().unwrap();
        }
        assert_ne!(f["type"], "error", "{f}");
    }
}

/// The next `event` frame (other frames skipped).
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let f = recv(ws).await;
        if f["type"] == "event" {
            return f;
        }
    }
}

/// Appends `n` events the way any gateway module does (straight into the log).
async fn append(store: &Store, topic: &'static str, n: usize, data: Value) -> i64 {
    store
        .write(move |tx| {
            let mut last = 0;
            for _ in 0..n {
                last = events::append(tx, topic, &data, "test", T0 * 1000)?;
            }
            Ok(last)
        })
        .await
        .unwrap()
}

async fn latest(gw: &Gateway) -> i64 {
    gw.state.store.read(events::latest_seq).await.unwrap()
}

fn key(paired: &Value) -> String {
    paired["deviceKey"].as_str().unwrap().to_owned()
}

fn device_id(paired: &Value) -> DeviceId {
    DeviceId::parse(paired["deviceId"].as_str().unwrap()).unwrap()
}

async fn revoke_api(gw: &Gateway, http: &reqwest::Client, id: &DeviceId) {
    let r = http
        .post(gw.url(&format!("/api/devices/{id}/revoke")))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A web UI session, as logging in makes one.
async fn admin_session(gw: &Gateway) -> SecretString {
    gw.state
        .store
        .write(|tx| Ok(latchkey::admin::create_session(tx, T0).unwrap()))
        .await
        .unwrap()
}

/// For tests about delivery, not about the publish budget.
fn unlimited_publishing(c: &mut latchkey::config::Config) {
    c.publish_rate = 1_000_000;
    c.publish_burst = 1_000_000;
}

fn metric(
    gw: &Gateway,
    pick: fn(&latchkey::state::Metrics) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    pick(&gw.state.metrics).load(Ordering::SeqCst)
}

// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn authentication_is_decided_before_any_upgrade() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    for (auth, want) in [
        (Auth::None, 401),
        (Auth::Device("dev_not-a-key"), 401),
        (Auth::Device("lka_wrong-prefix"), 401),
        (Auth::Raw("Device"), 401),
        (Auth::Bearer("lka_not-a-token"), 401),
        (Auth::Raw("Node node_whatever"), 401),
        (Auth::Raw("Basic YTpi"), 401),
        (Auth::Cookie("not-a-session", "http://x"), 401),
    ] {
        assert_eq!(refused(&gw, auth).await, (want, "UNAUTHORIZED".into()));
    }
    revoke_api(&gw, &http, &device_id(&a)).await;
    assert_eq!(
        refused(&gw, Auth::Device(&key(&a))).await,
        (403, "DEVICE_REVOKED".into())
    );
    // Authenticated, but not a WebSocket handshake.
    let r = http
        .get(gw.url("/ws"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BAD_REQUEST");
    assert_eq!(metric(&gw, |m| &m.ws_connections_total), 0);
}

#[tokio::test]
async fn hello_publish_ack_and_fan_out_to_every_other_client() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let b = gw.pair(&http, "b").await;
    let (mut wa, ha) = live(&gw, Auth::Device(&key(&a))).await;
    let (mut wb, hb) = live(&gw, Auth::Device(&key(&b))).await;
    let (mut wadm, hadm) = live(&gw, Auth::Bearer(&gw.admin_token)).await;
    assert_eq!(ha, json!({"type":"hello","deviceId":a["deviceId"],"seq":2}));
    assert_eq!(hb["deviceId"], b["deviceId"]);
    assert_eq!(hadm, json!({"type":"hello","deviceId":null,"seq":2}));

    let s1 = publish(&mut wa, json!(1), "ui.sync", json!({"x":1})).await;
    assert_eq!(s1, 3);
    let want = json!({"type":"event","seq":3,"topic":"ui.sync","ts":"2026-01-13T10:40:00Z","data":{"x":1}});
    assert_eq!(next_event(&mut wb).await, want);
    assert_eq!(next_event(&mut wadm).await, want);

    // String ids come back as sent; the publisher does not get its own event back, so a's
    // next event is b's.
    let s2 = publish(&mut wb, json!("b-1"), "ui.sync", json!({})).await;
    assert_eq!(s2, 4);
    assert_eq!(next_event(&mut wa).await["seq"], 4);
    assert_eq!(next_event(&mut wadm).await["seq"], 4);

    // Gateway events travel the same way, to those who may see them: c's pairing reaches the
    // admin, not the other phones (their next event is the marker after it).
    let c = gw.pair(&http, "c").await;
    let ev = next_event(&mut wadm).await;
    assert_eq!(
        (ev["seq"].as_i64(), ev["topic"].as_str()),
        (Some(5), Some("device.paired"))
    );
    assert_eq!(ev["data"]["deviceId"], c["deviceId"]);
    let marker = publish(&mut wadm, json!("m"), "ui.marker", json!({})).await;
    assert_eq!(next_event(&mut wa).await["seq"], marker);
    assert_eq!(next_event(&mut wb).await["seq"], marker);
}

#[tokio::test]
async fn subscribe_narrows_what_is_delivered() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let b = gw.pair(&http, "b").await;
    let (mut sub, _) = live(&gw, Auth::Device(&key(&a))).await;
    let (mut pubr, _) = live(&gw, Auth::Device(&key(&b))).await;
    send(
        &mut sub,
        json!({"type":"subscribe","topics":["door.*","ui.sync"]}),
    )
    .await;
    // Frames are handled in order: once this ack is back, the subscription is in force.
    publish(&mut sub, json!("sync"), "x.sync", json!({})).await;
    for t in [
        "door.front",
        "ui.other",
        "door.back.open",
        "doorbell",
        "door",
        "ui.sync",
    ] {
        publish(&mut pubr, json!(t), t, json!({})).await;
    }
    let mut got = Vec::new();
    while got.last() != Some(&"ui.sync".to_owned()) {
        got.push(
            next_event(&mut sub).await["topic"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(got, ["door.front", "door.back.open", "ui.sync"]);

    send(&mut sub, json!({"type":"subscribe","topics":[]})).await;
    publish(&mut sub, json!("sync2"), "x.sync", json!({})).await;
    publish(&mut pubr, json!(1), "ui.sync", json!({})).await;
    send(&mut sub, json!({"type":"subscribe","topics":["*"]})).await;
    publish(&mut sub, json!("sync3"), "x.sync", json!({})).await;
    let last = publish(&mut pubr, json!(2), "ui.other", json!({})).await;
    let ev = next_event(&mut sub).await;
    assert_eq!(
        (ev["seq"].as_i64(), ev["topic"].as_str()),
        (Some(last), Some("ui.other"))
    );
}

#[tokio::test]
async fn reserved_topics_and_bad_frames_get_error_frames_and_the_socket_stays() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let (mut ws, _) = live(&gw, Auth::Device(&key(&a))).await;
    for (i, t) in ["device.paired", "access.granted", "node.up", "gateway.x"]
        .iter()
        .enumerate()
    {
        send(
            &mut ws,
            json!({"type":"publish","id":i,"topic":t,"data":{}}),
        )
        .await;
        let e = recv(&mut ws).await;
        assert_eq!(
            (&e["type"], &e["id"], &e["code"]),
            (&json!("error"), &json!(i), &json!("TOPIC_RESERVED"))
        );
    }
    let big_data = "x".repeat(40 * 1024);
    let cases: Vec<(Message, &str, Value)> = vec![
        (Message::text("{not json"), "BAD_FRAME", Value::Null),
        (
            Message::text(r#"{"type":"dance"}"#),
            "BAD_FRAME",
            Value::Null,
        ),
        (
            Message::text(r#"{"type":"publish","topic":"ui.sync"}"#),
            "BAD_FRAME",
            Value::Null,
        ),
        (
            Message::text(r#"{"type":"resume","since":"x"}"#),
            "BAD_FRAME",
            Value::Null,
        ),
        (
            Message::text(r#"{"type":"subscribe","topics":["a..b"]}"#),
            "BAD_TOPIC",
            Value::Null,
        ),
        (
            Message::text(r#"{"type":"subscribe","topics":["DEVICE.*"]}"#),
            "BAD_TOPIC",
            Value::Null,
        ),
        (
            Message::text(r#"{"type":"publish","id":9,"topic":"bad topic"}"#),
            "BAD_TOPIC",
            json!(9),
        ),
        // Reserved prefixes are lower-case and topics are too: no way around them by case.
        (
            Message::text(r#"{"type":"publish","id":10,"topic":"DEVICE.paired"}"#),
            "BAD_TOPIC",
            json!(10),
        ),
        (
            Message::text(r#"{"type":"publish","id":11,"topic":"Access.granted"}"#),
            "BAD_TOPIC",
            json!(11),
        ),
        (
            Message::text(json!({"type":"publish","id":12,"topic":"a".repeat(129)}).to_string()),
            "BAD_TOPIC",
            json!(12),
        ),
        (
            Message::text(r#"{"type":"publish","id":8,"topic":"ui.sync","data":"x"}"#),
            "BAD_FRAME",
            json!(8),
        ),
        (
            Message::text(
                json!({"type":"publish","id":7,"topic":"ui.sync","data":{"b":big_data}})
                    .to_string(),
            ),
            "PAYLOAD_TOO_LARGE",
            json!(7),
        ),
        (
            Message::text(" ".repeat(65 * 1024)),
            "FRAME_TOO_LARGE",
            Value::Null,
        ),
        (
            Message::binary(vec![1u8, 2, 3]),
            "BINARY_UNSUPPORTED",
            Value::Null,
        ),
    ];
    for (frame, code, id) in cases {
        ws.send(frame).await.unwrap();
        let e = recv(&mut ws).await;
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e.get("id").cloned().unwrap_or(Value::Null), id);
        assert!(e["message"].is_string());
    }
    // Still up.
    assert_eq!(publish(&mut ws, json!(1), "ui.sync", json!({})).await, 2);

    // Beyond the protocol limit the socket is closed with 1009.
    let (mut ws2, _) = live(&gw, Auth::Device(&key(&a))).await;
    ws2.send(Message::text("x".repeat(300 * 1024)))
        .await
        .unwrap();
    assert_eq!(closed(&mut ws2).await.0, 1009);
}

#[tokio::test]
async fn a_flood_of_bad_frames_is_rate_limited_then_closed_with_1008() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let (mut ws, _) = live(&gw, Auth::Device(&key(&a))).await;
    for _ in 0..100 {
        if ws.feed(Message::text("garbage")).await.is_err() {
            break;
        }
    }
    let _ = ws.flush().await;
    let (code, before) = closed(&mut ws).await;
    assert_eq!(code, 1008);
    let errors = before.iter().filter(|f| f["type"] == "error").count();
    assert!((20..100).contains(&errors), "{errors} error frames");
}

#[tokio::test]
async fn resume_replays_then_goes_live_with_no_gap_or_duplicate_while_events_pour_in() {
    let gw = Gateway::start_with(unlimited_publishing).await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let b = gw.pair(&http, "b").await;
    // A backlog bigger than the socket buffers, so the replay has to wait for the reader.
    append(
        &gw.state.store,
        "ui.backlog",
        3000,
        json!({"pad": "b".repeat(4096)}),
    )
    .await;

    // Two publishers keep writing while the client replays: one straight into the log in
    // small transactions, one over its own socket.
    let store = gw.state.store.clone();
    let (halfway_tx, halfway) = tokio::sync::oneshot::channel();
    let hammer = tokio::spawn(async move {
        let mut halfway_tx = Some(halfway_tx);
        let mut last = 0;
        for i in 0..1500usize {
            last = append(&store, "ui.hammer", 1 + i % 3, json!({"i": i})).await;
            if i == 750 {
                halfway_tx.take().map(|t| t.send(()));
            }
        }
        last
    });
    let (mut pb, _) = live(&gw, Auth::Device(&key(&b))).await;
    let socket_pub = tokio::spawn(async move {
        let mut last = 0;
        for i in 0..300 {
            last = publish(&mut pb, json!(i), "ui.live", json!({"i": i})).await;
        }
        (last, pb)
    });

    // The client resumes from the very beginning as its first frame, then does not read
    // until half the hammering is done: the replay stalls on a full socket while more than
    // a queue's worth of live events arrive.
    let mut ws = connect(&gw, Auth::Device(&key(&a))).await.unwrap();
    send(&mut ws, json!({"type":"resume","since":0})).await;
    halfway.await.unwrap();
    let hello = recv(&mut ws).await;
    assert_eq!(hello["type"], "hello");

    let done = async {
        let hammer_last = hammer.await.unwrap();
        let (pub_last, pb) = socket_pub.await.unwrap();
        (hammer_last.max(pub_last), pb)
    };
    tokio::pin!(done);
    let mut seqs: Vec<i64> = Vec::new();
    let mut target = None;
    let mut _publisher = None;
    loop {
        if let (Some(t), Some(&last)) = (target, seqs.last()) {
            if last >= t {
                break;
            }
        }
        tokio::select! {
            (end, pb) = &mut done, if target.is_none() => {
                target = Some(end);
                _publisher = Some(pb);
            }
            f = recv(&mut ws) => match f["type"].as_str() {
                Some("event") => seqs.push(f["seq"].as_i64().unwrap()),
                other => panic!("unexpected {other:?}: {f}"),
            },
        }
    }
    let end = target.unwrap();
    assert_eq!(end, latest(&gw).await);
    assert!(end > 5000, "{end}");
    // Everything but seq 2, b's pairing: a phone sees only the gateway events about itself.
    let want: Vec<i64> = (1..=end).filter(|&s| s != 2).collect();
    assert_eq!(seqs.len(), want.len(), "gap or duplicate");
    assert_eq!(seqs, want);
    assert_eq!(metric(&gw, |m| &m.ws_dropped_slow), 0);
}

#[tokio::test]
async fn resume_older_than_the_log_or_beyond_it_gets_reset() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let b = gw.pair(&http, "b").await;
    append(&gw.state.store, "ui.old", 18, json!({})).await;
    // Five publishes in all, with a quota nobody exceeds: the oldest publishes go, leaving
    // 16..=20 and the two pairings (audit events are kept apart).
    let keep_five = events::Retention {
        publishes: 5,
        per_publisher: 100,
        ..gw.state.config.retention()
    };
    gw.state
        .store
        .write(move |tx| events::prune(tx, &keep_five, 0))
        .await
        .unwrap();
    // Retained: 1, 2, 16..=20.
    let (mut ws, hello) = open(&gw, Auth::Device(&key(&a))).await;
    assert_eq!(hello["seq"], 20);

    send(&mut ws, json!({"type":"resume","since":15})).await;
    for want in 16..=20 {
        assert_eq!(next_event(&mut ws).await["seq"], want);
    }
    send(&mut ws, json!({"type":"resume","since":14})).await;
    assert_eq!(recv(&mut ws).await, json!({"type":"reset","seq":20}));
    send(&mut ws, json!({"type":"resume","since":0})).await;
    assert_eq!(recv(&mut ws).await, json!({"type":"reset","seq":20}));
    send(&mut ws, json!({"type":"resume","since":999})).await;
    assert_eq!(recv(&mut ws).await, json!({"type":"reset","seq":20}));
    // After a reset the stream simply continues.
    let (mut pb, _) = live(&gw, Auth::Device(&key(&b))).await;
    let s = publish(&mut pb, json!(1), "ui.after", json!({})).await;
    assert_eq!(s, 21);
    let ev = next_event(&mut ws).await;
    assert_eq!(
        (ev["seq"].as_i64(), ev["topic"].as_str()),
        (Some(21), Some("ui.after"))
    );
    // Resuming exactly at the newest seq replays nothing and is not a reset.
    send(&mut ws, json!({"type":"resume","since":21})).await;
    let s = publish(&mut pb, json!(2), "ui.after", json!({})).await;
    assert_eq!(next_event(&mut ws).await["seq"], s);
}

#[tokio::test]
async fn resume_against_an_empty_log() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let (mut ws, hello) = open(&gw, Auth::Bearer(&gw.admin_token)).await;
    assert_eq!(hello["seq"], 0);
    send(&mut ws, json!({"type":"resume","since":3})).await;
    assert_eq!(recv(&mut ws).await, json!({"type":"reset","seq":0}));
    send(&mut ws, json!({"type":"resume","since":0})).await;
    gw.pair(&http, "a").await;
    let ev = recv(&mut ws).await;
    assert_eq!(
        (ev["seq"].as_i64(), ev["topic"].as_str()),
        (Some(1), Some("device.paired"))
    );
}

#[tokio::test]
async fn revocation_closes_the_device_sockets_with_4403_from_the_api_and_the_cli() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let b = gw.pair(&http, "b").await;
    let c = gw.pair(&http, "c").await;
    let (mut wa, _) = live(&gw, Auth::Device(&key(&a))).await;
    let (mut wa2, _) = live(&gw, Auth::Device(&key(&a))).await;
    let (mut wb, _) = live(&gw, Auth::Device(&key(&b))).await;
    let (mut wc, _) = live(&gw, Auth::Device(&key(&c))).await;
    let (mut wadm, _) = live(&gw, Auth::Bearer(&gw.admin_token)).await;

    revoke_api(&gw, &http, &device_id(&a)).await;
    assert_eq!(closed(&mut wa).await.0, 4403);
    assert_eq!(closed(&mut wa2).await.0, 4403);
    assert_eq!(
        refused(&gw, Auth::Device(&key(&a))).await,
        (403, "DEVICE_REVOKED".into())
    );
    let ev = next_event(&mut wadm).await;
    assert_eq!(
        (ev["topic"].as_str(), &ev["data"]["deviceId"]),
        (Some("device.revoked"), &a["deviceId"])
    );

    // `latchkey devices revoke` is another process on the same database file.
    let (cli, _) = latchkey::open_store(gw.dir.path(), None).unwrap();
    let bid = device_id(&b);
    cli.write(move |tx| registry::revoke(tx, &bid, T0, "cli"))
        .await
        .unwrap();
    assert_eq!(closed(&mut wb).await.0, 4403);
    let ev = next_event(&mut wadm).await;
    assert_eq!(
        (ev["topic"].as_str(), &ev["data"]["deviceId"]),
        (Some("device.revoked"), &b["deviceId"])
    );
    // Others are unaffected, and were not told who else was revoked: c's next event is the
    // admin's marker.
    let marker = publish(&mut wadm, json!(1), "ui.sync", json!({})).await;
    assert_eq!(next_event(&mut wc).await["seq"], marker);
    publish(&mut wc, json!(1), "ui.sync", json!({})).await;
}

#[tokio::test]
async fn admin_token_revocation_closes_the_sockets_it_opened() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let (tid, token) = gw
        .state
        .store
        .write(|tx| Ok(latchkey::admin::create_token(tx, "second", T0).unwrap()))
        .await
        .unwrap();
    let (mut w2, _) = live(&gw, Auth::Bearer(token.expose())).await;
    let (mut w1, _) = live(&gw, Auth::Bearer(&gw.admin_token)).await;
    let (mut wd, _) = live(&gw, Auth::Device(&key(&a))).await;
    gw.state
        .store
        .write(move |tx| latchkey::admin::revoke_token(tx, tid, T0))
        .await
        .unwrap();
    assert_eq!(closed(&mut w2).await.0, 4403);
    let ev = next_event(&mut w1).await;
    assert_eq!(ev["topic"], "gateway.admin_token_revoked");
    assert_eq!(refused(&gw, Auth::Bearer(token.expose())).await.0, 401);
    // Phones never see gateway administration: the device's next event is the marker.
    let marker = publish(&mut w1, json!(1), "ui.marker", json!({})).await;
    assert_eq!(next_event(&mut wd).await["seq"], marker);
}

#[tokio::test]
async fn the_admin_pages_socket_uses_the_session_cookie_from_our_own_origin() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let sid = admin_session(&gw).await;
    let own = format!("http://{}", gw.addr);
    assert_eq!(
        refused(&gw, Auth::Cookie(sid.expose(), "http://evil.example")).await,
        (403, "FORBIDDEN".into())
    );
    // What /pair and /devices do (static/live.js): subscribe, resume, wait for the pairing.
    let (mut ws, hello) = open(&gw, Auth::Cookie(sid.expose(), &own)).await;
    assert_eq!(hello["deviceId"], Value::Null);
    send(
        &mut ws,
        json!({"type":"subscribe","topics":["device.paired"]}),
    )
    .await;
    send(&mut ws, json!({"type":"resume","since":hello["seq"]})).await;
    let paired = gw.pair(&http, "Pixel 7").await;
    let ev = next_event(&mut ws).await;
    assert_eq!(ev["topic"], "device.paired");
    assert_eq!(ev["data"]["name"], "Pixel 7");
    assert_eq!(ev["data"]["deviceId"], paired["deviceId"]);
    assert!(ev["data"]["pairTokenId"].is_i64());
}

#[tokio::test]
async fn a_slow_reader_is_dropped_with_1008_while_a_fast_one_gets_everything() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let s = gw.pair(&http, "slow").await;
    let f = gw.pair(&http, "fast").await;
    let (mut slow, slow_hello) = live(&gw, Auth::Device(&key(&s))).await;
    let (mut fast, _) = live(&gw, Auth::Device(&key(&f))).await;
    // The fast reader reads all the time and reports each seq.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let fast_task = tokio::spawn(async move {
        loop {
            let f = recv(&mut fast).await;
            if f["type"] == "event" && seen_tx.send(f["seq"].as_i64().unwrap()).is_err() {
                return fast;
            }
        }
    });
    // Big events, each published once the fast reader has the previous one: the slow
    // reader's socket fills up, then its queue, and it is dropped.
    let pad = "p".repeat(16 * 1024);
    let mut published = Vec::new();
    while metric(&gw, |m| &m.ws_dropped_slow) == 0 {
        assert!(published.len() < 5000, "the slow reader was never dropped");
        let seq = append(&gw.state.store, "ui.big", 1, json!({ "pad": pad })).await;
        published.push(seq);
        assert_eq!(seen.recv().await, Some(seq));
    }
    // A few more: the fast one still gets every one, in order.
    for _ in 0..20 {
        let seq = append(&gw.state.store, "ui.big", 1, json!({ "pad": "" })).await;
        published.push(seq);
        assert_eq!(seen.recv().await, Some(seq));
    }
    // The slow one, reading at last, finds what fitted in its buffers, then 1008.
    let (code, before) = closed(&mut slow).await;
    assert_eq!(code, 1008);
    let got: Vec<i64> = before.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let first = slow_hello["seq"].as_i64().unwrap() + 1;
    assert_eq!(got, (first..first + got.len() as i64).collect::<Vec<_>>());
    drop(seen);
    fast_task.abort();
}

#[tokio::test]
async fn shutdown_closes_with_1001_loses_nothing_acknowledged_and_a_restart_continues_the_log() {
    let gw = Gateway::start_with(unlimited_publishing).await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let (mut wa, _) = live(&gw, Auth::Device(&key(&a))).await;
    let (mut wadm, _) = live(&gw, Auth::Bearer(&gw.admin_token)).await;
    let first = publish(&mut wa, json!("first"), "ui.sync", json!({})).await;
    // A burst still in flight when the daemon is told to stop.
    for i in 0..50 {
        wa.feed(Message::text(
            json!({"type":"publish","id":i,"topic":"ui.burst","data":{"i":i}}).to_string(),
        ))
        .await
        .unwrap();
    }
    wa.flush().await.unwrap();
    let stop = tokio::spawn(gw.stop());
    let (code, before) = closed(&mut wa).await;
    assert_eq!(code, 1001);
    assert_eq!(closed(&mut wadm).await.0, 1001);
    let acked: Vec<(i64, i64)> = before
        .iter()
        .filter(|f| f["type"] == "ack")
        .map(|f| (f["id"].as_i64().unwrap(), f["seq"].as_i64().unwrap()))
        .collect();
    let dir = stop.await.unwrap();

    let gw = Gateway::start_in(dir, T0 + 10, |_| {}).await;
    let end = latest(&gw).await;
    let (mut wa, hello) = open(&gw, Auth::Device(&key(&a))).await;
    assert_eq!(hello["seq"], end);
    send(&mut wa, json!({"type":"resume","since":first})).await;
    let mut replay = Vec::new();
    for _ in first..end {
        replay.push(next_event(&mut wa).await);
    }
    for (id, seq) in &acked {
        let ev = replay
            .iter()
            .find(|e| e["seq"] == *seq)
            .expect("acknowledged event kept");
        assert_eq!(ev["data"]["i"], *id);
    }
    let seqs: Vec<i64> = replay.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (first + 1..=end).collect::<Vec<_>>());
    assert_eq!(
        publish(&mut wa, json!("next"), "ui.sync", json!({})).await,
        end + 1
    );
}

// -------------------------------------------------------------------------------------------
// Time rules, on tokio's paused clock (no real sleeping).

/// A TCP stream whose writes vanish once muted: a peer that stopped answering pings.
struct Mutable {
    inner: TcpStream,
    mute: Arc<AtomicBool>,
}

impl AsyncRead for Mutable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Mutable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.mute.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads a socket in the background (which also answers pings); reports every message.
fn keep_reading(mut ws: Ws) -> tokio::sync::mpsc::UnboundedReceiver<Message> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn heartbeat_drops_a_peer_that_misses_two_pings() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "silent").await;
    let b = gw.pair(&http, "healthy").await;

    let mute = Arc::new(AtomicBool::new(false));
    let tcp = Mutable {
        inner: TcpStream::connect(gw.addr).await.unwrap(),
        mute: mute.clone(),
    };
    let (mut silent, _) =
        tokio_tungstenite::client_async(request(&gw, Auth::Device(&key(&a))), tcp)
            .await
            .unwrap();
    assert_eq!(recv_any(&mut silent).await, "hello");
    mute.store(true, Ordering::SeqCst);

    let (healthy, _) = live(&gw, Auth::Device(&key(&b))).await;
    let mut healthy = keep_reading(healthy);

    // Pings at 20 s and 40 s go unanswered; at 60 s the peer is dropped.
    tokio::time::sleep(Duration::from_secs(65)).await;
    let mut kinds = Vec::new();
    loop {
        match silent.next().await {
            Some(Ok(Message::Ping(_))) => kinds.push("ping".to_owned()),
            Some(Ok(Message::Close(Some(f)))) => {
                kinds.push(format!("close {}", u16::from(f.code)));
                break;
            }
            Some(Ok(other)) => kinds.push(format!("{other:?}")),
            other => panic!("no close frame: {other:?}"),
        }
    }
    assert_eq!(kinds, ["ping", "ping", "close 1011"]);

    // The one that answers stays, and still gets events.
    assert_eq!(metric(&gw, |m| &m.ws_connections), 1);
    let seq = append(&gw.state.store, "ui.sync", 1, json!({})).await;
    let mut pings = 0;
    loop {
        match healthy.recv().await.expect("healthy socket open") {
            Message::Ping(_) => pings += 1,
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["seq"], seq);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pings, 3);
}

async fn recv_any<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match ws.next().await {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            v["type"].as_str().unwrap().to_owned()
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn last_seen_is_written_on_connect_then_at_most_once_a_minute() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let id = device_id(&a);
    let last_seen = || {
        let id = id.clone();
        let store = gw.state.store.clone();
        async move {
            store
                .read(move |c| Ok(registry::get(c, &id)?.unwrap().last_seen_unix))
                .await
                .unwrap()
        }
    };
    // The write lands on the store's own thread, so a read right after the heartbeat may
    // still see the old value: wait for the expected one (bounded in attempts, not time).
    let settles_to = |want: Option<i64>| {
        let last_seen = &last_seen;
        async move {
            let mut got = None;
            for _ in 0..200 {
                got = last_seen().await;
                if got == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("lastSeen stayed {got:?}, expected {want:?}");
        }
    };
    assert_eq!(last_seen().await, None);
    let (ws, _) = live(&gw, Auth::Device(&key(&a))).await;
    let _reading = keep_reading(ws);
    settles_to(Some(T0)).await;

    gw.clock.advance(30);
    tokio::time::sleep(Duration::from_secs(21)).await; // one heartbeat
    assert_eq!(
        last_seen().await,
        Some(T0),
        "written again within the minute"
    );
    gw.clock.advance(31);
    tokio::time::sleep(Duration::from_secs(20)).await; // the next one
    settles_to(Some(T0 + 61)).await;
}

// -------------------------------------------------------------------------------------------
// The reusable client.

fn client(gw_url: String, key: &str) -> SyncClient {
    SyncClient::new(
        gw_url,
        latchkey_phone::secret::SecretString::new(key.to_owned()),
    )
    .backoff(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    })
}

#[tokio::test]
async fn the_client_reconnects_resumes_and_reports_revocation() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let b = gw.pair(&http, "b").await;
    let addr = gw.addr;
    let mut c = client(gw.ws_url(), &key(&a));
    c.connect().await.unwrap();
    assert_eq!(c.device_id(), a["deviceId"].as_str());
    assert_eq!(c.last_seq(), Some(2));

    let mut other = client(gw.ws_url(), &key(&b));
    let s1 = other.publish("ui.sync", json!({"n":1})).await.unwrap();
    let Incoming::Event(ev) = c.next().await.unwrap() else {
        panic!("not an event")
    };
    assert_eq!(
        (ev.seq, ev.topic.as_str(), &ev.data),
        (s1, "ui.sync", &json!({"n":1}))
    );

    // The gateway restarts on the same address; meanwhile events happen.
    let dir = gw.stop().await;
    let gw = Gateway::start_in(dir, T0, |cfg| cfg.listen = addr).await;
    let s2 = append(&gw.state.store, "ui.offline", 1, json!({})).await;
    let Incoming::Event(ev) = c.next().await.unwrap() else {
        panic!("not an event")
    };
    assert_eq!((ev.seq, ev.topic.as_str()), (s2, "ui.offline"));
    assert!(c.is_connected());

    // Publishing through the client; others see it.
    let mut other = client(gw.ws_url(), &key(&b));
    other.connect().await.unwrap();
    let s3 = c.publish("ui.sync", json!({"from":"a"})).await.unwrap();
    let Incoming::Event(ev) = other.next().await.unwrap() else {
        panic!("not an event")
    };
    assert_eq!(ev.seq, s3);
    assert!(matches!(
        c.publish("device.fake", json!({})).await,
        Err(SyncError::Refused { code, .. }) if code == "TOPIC_RESERVED"
    ));

    revoke_api(&gw, &http, &device_id(&a)).await;
    assert!(matches!(c.next().await, Err(SyncError::Revoked)));
    let mut again = client(gw.ws_url(), &key(&a));
    assert!(matches!(again.connect().await, Err(SyncError::Revoked)));
    let mut wrong = client(gw.ws_url(), "dev_not-a-key");
    assert!(matches!(
        wrong.connect().await,
        Err(SyncError::Unauthorized)
    ));
    let mut nobody = client("ws://127.0.0.1:9/ws".into(), &key(&b)).max_attempts(2);
    assert!(matches!(
        nobody.connect().await,
        Err(SyncError::GaveUp { attempts: 2, .. })
    ));
}

// -------------------------------------------------------------------------------------------
// Hostile clients (issue 8): publish floods, privacy, catch-up, protocol violations.

/// A gateway event about `device` (or about nobody), as the access module records decisions.
async fn gateway_event(store: &Store, topic: &'static str, device: Option<&Value>) -> i64 {
    let data = json!({ "deviceId": device, "endpoint": "front", "reason": "TEST", "peer": "p" });
    store
        .write(move |tx| events::append(tx, topic, &data, "ble", T0 * 1000))
        .await
        .unwrap()
}

/// Resumes from `since` and collects every event frame up to and including seq `until`.
async fn replay(ws: &mut Ws, since: i64, until: i64) -> Vec<Value> {
    send(ws, json!({"type":"resume","since":since})).await;
    let mut got: Vec<Value> = Vec::new();
    while got.last().and_then(|e| e["seq"].as_i64()) != Some(until) {
        let f = recv(ws).await;
        assert_ne!(f["type"], "reset", "{f}");
        if f["type"] == "event" {
            got.push(f);
        }
    }
    got
}

fn seqs_of(evs: &[Value]) -> Vec<i64> {
    evs.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn a_publish_flood_is_budgeted_and_evicts_neither_the_audit_log_nor_other_devices() {
    // Small retention, so the flood fills the log (the pruner runs `prune` with these bounds;
    // the test calls it directly rather than wait for its timer).
    let gw = Gateway::start_with(|c| {
        c.event_retention = 100;
        c.event_retention_per_publisher = 30;
    })
    .await;
    let http = reqwest::Client::new();
    let flooder = gw.pair(&http, "flooder").await;
    let b = gw.pair(&http, "b").await;
    let c = gw.pair(&http, "c").await;

    // b publishes a little, remembers where it was, and goes away.
    let (mut wb, _) = live(&gw, Auth::Device(&key(&b))).await;
    let mut b_own = Vec::new();
    for i in 0..3 {
        b_own.push(publish(&mut wb, json!(i), "ui.b", json!({})).await);
    }
    let b_last = *b_own.last().unwrap();
    drop(wb);

    // Door decisions before the flood, about c and about b.
    let door_c = gateway_event(&gw.state.store, "access.granted", Some(&c["deviceId"])).await;
    let door_b = gateway_event(&gw.state.store, "access.denied", Some(&b["deviceId"])).await;

    // The flood: as fast as the socket takes it, for 8 s, while the gateway's clock moves on
    // with real time (the budget refills on the injected clock).
    let (ws, _) = live(&gw, Auth::Device(&key(&flooder))).await;
    let (mut sink, mut stream) = ws.split();
    let clock = gw.clock.clone();
    let ticker = tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        t.tick().await;
        for _ in 0..8 {
            t.tick().await;
            clock.advance(1);
        }
    });
    let counter = tokio::spawn(async move {
        let (mut acked, mut limited) = (Vec::new(), 0u64);
        while let Some(Ok(m)) = stream.next().await {
            let Message::Text(t) = m else { continue };
            let f: Value = serde_json::from_str(t.as_str()).unwrap();
            if f["id"] == "last" {
                break;
            }
            match f["type"].as_str() {
                Some("ack") => acked.push(f["seq"].as_i64().unwrap()),
                Some("error") => {
                    assert_eq!(f["code"], "RATE_LIMITED", "{f}");
                    assert!(f["id"].is_i64() && f["retryAfterMs"].is_u64(), "{f}");
                    limited += 1;
                }
                _ => {}
            }
        }
        (acked, limited, stream)
    });
    let pad = "f".repeat(1024);
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(8) {
        let frame = json!({"type":"publish","id":sent,"topic":"ui.flood","data":{"pad":pad}});
        sink.send(Message::text(frame.to_string())).await.unwrap();
        sent += 1;
    }
    ticker.await.unwrap();
    // A marker to know every answer is in (its answer is a BAD_TOPIC error).
    sink.send(Message::text(
        json!({"type":"publish","id":"last","topic":"BAD"}).to_string(),
    ))
    .await
    .unwrap();
    let (acked, limited, _stream) = counter.await.unwrap();
    eprintln!(
        "flood: {sent} publishes in 8 s, {} acked, {limited} RATE_LIMITED",
        acked.len()
    );
    // 40 at once, then 20 for each of the 8 seconds the clock moved.
    assert!((40..=200).contains(&acked.len()), "{} acked", acked.len());
    assert_eq!(acked.len() as u64 + limited, sent);

    // The pruner's pass over the log (the daemon's own may have run already; either way):
    // the flooder's oldest go, nobody else's, and nothing that would move the horizon.
    let retention = gw.state.config.retention();
    let now = gw.state.clock.now_ms();
    let pruned = gw
        .state
        .store
        .write(move |tx| events::prune(tx, &retention, now))
        .await
        .unwrap();
    assert_eq!((pruned.audit, pruned.publishes), (0, 0), "{pruned:?}");
    let flood_kept = 100 - b_own.len();

    // b resumes from where it was: no reset; its own door decision and the flooder's retained
    // (newest) events, in order; c's decision is none of its business.
    let end = latest(&gw).await;
    let (mut wb, _) = open(&gw, Auth::Device(&key(&b))).await;
    let got = replay(&mut wb, b_last, end).await;
    let mut want = vec![door_b];
    want.extend(&acked[acked.len() - flood_kept..]);
    assert_eq!(seqs_of(&got), want);
    // b's own publishes are all still there.
    let got = replay(&mut wb, b_own[0] - 1, end).await;
    assert_eq!(seqs_of(&got)[..3], b_own[..]);

    // And the admin's activity page still lists both door decisions.
    let sid = admin_session(&gw).await;
    let page = http
        .get(gw.url("/activity"))
        .header("cookie", format!("latchkey_session={}", sid.expose()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for seq in [door_c, door_b] {
        assert!(page.contains(&format!("data-seq=\"{seq}\"")), "{seq}");
    }
}

#[tokio::test]
async fn a_phone_sees_the_gateway_events_about_itself_only() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await; // 1
    let b = gw.pair(&http, "b").await; // 2
    let c = gw.pair(&http, "c").await; // 3
    let store = &gw.state.store;
    let mut mine = vec![1];
    gateway_event(store, "access.granted", Some(&b["deviceId"])).await; // 4
    mine.push(gateway_event(store, "access.denied", Some(&a["deviceId"])).await); // 5
    gateway_event(store, "access.denied", None).await; // 6: an unknown sender
    revoke_api(&gw, &http, &device_id(&c)).await; // 7
    append(store, "node.online", 1, json!({"nodeId":"n1"})).await; // 8
    let (mut wb, _) = live(&gw, Auth::Device(&key(&b))).await;
    mine.push(publish(&mut wb, json!(1), "ui.sync", json!({})).await); // 9

    // On replay.
    let (mut wa, hello) = open(&gw, Auth::Device(&key(&a))).await;
    let end = hello["seq"].as_i64().unwrap();
    let got = replay(&mut wa, 0, end).await;
    assert_eq!(seqs_of(&got), mine);
    assert_eq!(got[0]["data"]["deviceId"], a["deviceId"]);

    // Live, the same rule.
    gateway_event(store, "access.granted", Some(&b["deviceId"])).await;
    let own = gateway_event(store, "access.granted", Some(&a["deviceId"])).await;
    gateway_event(store, "device.revoked", Some(&b["deviceId"])).await;
    assert_eq!(next_event(&mut wa).await["seq"], own);
    let (mut wc2, _) = live(&gw, Auth::Bearer(&gw.admin_token)).await;
    let marker = publish(&mut wc2, json!(1), "ui.marker", json!({})).await;
    assert_eq!(next_event(&mut wa).await["seq"], marker);

    // The admin sees everything.
    let (mut wadm, _) = open(&gw, Auth::Bearer(&gw.admin_token)).await;
    let got = replay(&mut wadm, 0, marker).await;
    assert_eq!(seqs_of(&got), (1..=marker).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_slow_but_steady_reader_catches_up_from_the_oldest_of_13000_events() {
    // 10,000 publishes (the default total) plus 3,000 decisions about the reader: 13,000
    // events it may see, all retained.
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let pad = "r".repeat(512);
    append(&gw.state.store, "ui.backlog", 10_000, json!({ "pad": pad })).await;
    let about_a = json!({"deviceId": a["deviceId"], "reason": "TEST"});
    append(&gw.state.store, "access.denied", 2_999, about_a).await;
    let end = latest(&gw).await;
    assert_eq!(end, 13_000);

    let (mut ws, _) = open(&gw, Auth::Device(&key(&a))).await;
    send(&mut ws, json!({"type":"resume","since":0})).await;
    let mut got = Vec::with_capacity(13_000);
    while got.last() != Some(&end) {
        let f = recv(&mut ws).await;
        assert_eq!(f["type"], "event", "{f}");
        got.push(f["seq"].as_i64().unwrap());
        // Slow but steady: a pause every 50 events (6.5 MB at about 5 MB/s).
        if got.len() % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(got, (1..=end).collect::<Vec<_>>());
    assert_eq!(metric(&gw, |m| &m.ws_dropped_slow), 0);
}

/// A raw client for protocol violations: our own handshake, then hand-made frames.
mod raw {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub async fn connect(gw: &Gateway, key: &str) -> TcpStream {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Device {key}\r\n\r\n",
            gw.addr
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        tcp
    }

    /// One client frame: FIN, `opcode`, masked unless told otherwise.
    pub fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                f.push(mask_bit | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        if masked {
            let mask = [0x12, 0x34, 0x56, 0x78];
            f.extend(mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            f.extend(payload);
        }
        f
    }

    /// Reads server frames until a close frame; returns its code.
    pub async fn close_code(tcp: &mut TcpStream) -> u16 {
        loop {
            let b0 = tcp
                .read_u8()
                .await
                .expect("a close frame before the socket ends");
            let b1 = tcp.read_u8().await.unwrap();
            assert_eq!(b1 & 0x80, 0, "server frames are not masked");
            let len = match b1 & 0x7f {
                126 => u64::from(tcp.read_u16().await.unwrap()),
                127 => tcp.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mut payload = vec![0; len as usize];
            tcp.read_exact(&mut payload).await.unwrap();
            if b0 & 0x0f == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_the_rfc_6455_codes() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let a = gw.pair(&http, "a").await;
    let big = vec![b'x'; 300 * 1024];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "text that is not UTF-8",
            raw::frame(0x1, &[0xff, 0xfe, 0x80], true),
            1007,
        ),
        ("unmasked client frame", raw::frame(0x1, b"{}", false), 1002),
        ("reserved data opcode", raw::frame(0x3, b"x", true), 1002),
        ("reserved control opcode", raw::frame(0xb, b"", true), 1002),
        (
            "ping over 125 bytes",
            raw::frame(0x9, &[0u8; 126], true),
            1002,
        ),
        (
            "frame over the size limit",
            raw::frame(0x1, &big, true),
            1009,
        ),
    ];
    for (what, bytes, want) in cases {
        let mut tcp = raw::connect(&gw, &key(&a)).await;
        // Errors are fine here: the gateway may close before it read everything.
        let _ = tcp.write_all(&bytes).await;
        let code = tokio::time::timeout(HANG, raw::close_code(&mut tcp))
            .await
            .expect("a close frame in time");
        assert_eq!(code, want, "{what}");
    }
    // A well-formed frame on the same kind of socket still works.
    let mut tcp = raw::connect(&gw, &key(&a)).await;
    let publish = json!({"type":"publish","id":1,"topic":"ui.sync"}).to_string();
    tcp.write_all(&raw::frame(0x1, publish.as_bytes(), true))
        .await
        .unwrap();
    tcp.write_all(&raw::frame(0x8, &1000u16.to_be_bytes(), true))
        .await
        .unwrap();
    assert_eq!(raw::close_code(&mut tcp).await, 1000);
}
