#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `latchkey phone listen` and `phone publish` as child processes against the real daemon:
//! every event once, in order, across a gateway restart and across the listener's own
//! restarts; revocation cuts it off (4403 while connected, 403 on reconnect); publish acks and
//! refusals.

mod common;
#[path = "support/phone.rs"]
mod phone;

use common::{Gateway, T0};
use latchkey::events;
use latchkey::registry::{self, DeviceId};
use latchkey_phone::credentials;
use latchkey_phone::sync_client::SyncClient;
use serde_json::{json, Value};

use phone::*;

const REVOKED: &str =
    "latchkey: this device has been revoked (DEVICE_REVOKED): pair it again to get a new key";

/// (seq, data.n) of an event line.
fn n(ev: &Value) -> (i64, i64) {
    assert_eq!(ev["type"], "event", "{ev}");
    assert_eq!(ev["topic"], "ui.sync", "{ev}");
    (
        ev["seq"].as_i64().unwrap(),
        ev["data"]["n"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_resumes_across_restarts_without_loss_or_duplicates() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (creds, _) = pair(&gw, dir.path(), "listener", T0).await;
    let (_, p) = pair(&gw, dir.path(), "publisher", T0).await;
    let mut pubs = SyncClient::new(gw.ws_url(), p.device_key.clone());

    let mut l = Listener::start(&creds, &[]).await;
    let s1 = pubs.publish("ui.sync", json!({"n": 1})).await.unwrap();
    let s2 = pubs.publish("ui.sync", json!({"n": 2})).await.unwrap();
    assert_eq!(n(&l.next().await), (s1, 1));
    assert_eq!(n(&l.next().await), (s2, 2));
    pubs.close().await;

    // The gateway goes down; meanwhile two events are committed (as a restarting gateway
    // would, e.g. its own device.* events), then it comes back on the same address.
    let addr = gw.addr;
    let data = gw.stop().await;
    let (s3, s4) = {
        let (store, _) = latchkey::open_store(data.path(), None).unwrap();
        store
            .write_blocking(|tx| {
                let a = events::append(tx, "ui.sync", &json!({"n": 3}), "test", T0 * 1000)?;
                let b = events::append(tx, "ui.sync", &json!({"n": 4}), "test", T0 * 1000)?;
                Ok((a, b))
            })
            .unwrap()
    };
    let gw = Gateway::start_in(data, T0 + 60, |c| c.listen = addr).await;

    // The listener reconnects by itself and resumes after s2: the two it missed, in order…
    assert_eq!(n(&l.next().await), (s3, 3));
    assert_eq!(n(&l.next().await), (s4, 4));
    // …then live, with nothing repeated in between.
    let mut pubs = SyncClient::new(gw.ws_url(), p.device_key.clone());
    let s5 = pubs.publish("ui.sync", json!({"n": 5})).await.unwrap();
    assert_eq!(n(&l.next().await), (s5, 5));

    // SIGTERM: exit 0, the last printed seq is on disk.
    assert_eq!(l.stop().await, 0);
    assert_eq!(credentials::load_seq(&creds), u64::try_from(s5).unwrap());

    // While it is stopped, one more; a new run starts right after what the last one printed.
    let s6 = pubs.publish("ui.sync", json!({"n": 6})).await.unwrap();
    let mut l = Listener::start(&creds, &[]).await;
    assert!(
        l.stderr().contains(&format!("events after seq {s5}")),
        "{}",
        l.stderr()
    );
    assert_eq!(n(&l.next().await), (s6, 6));
    assert_eq!(l.stop().await, 0);

    // --since replays from where it is told.
    let mut l = Listener::start(&creds, &["--since", &s4.to_string()]).await;
    assert_eq!(n(&l.next().await), (s5, 5));
    assert_eq!(n(&l.next().await), (s6, 6));
    let s7 = pubs.publish("ui.sync", json!({"n": 7})).await.unwrap();
    assert_eq!(n(&l.next().await), (s7, 7));
    assert_eq!(l.stop().await, 0);
    pubs.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cuts_the_listener_off_while_connected_and_on_reconnect() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (creds_a, a) = pair(&gw, dir.path(), "phone a", T0).await;
    let (creds_b, b) = pair(&gw, dir.path(), "phone b", T0).await;
    let mut la = Listener::start(&creds_a, &[]).await;
    let mut lb = Listener::start(&creds_b, &[]).await;

    // Revoked while connected: the socket closes with 4403, the listener exits 1 at once.
    let r = reqwest::Client::new()
        .post(gw.url(&format!("/api/devices/{}/revoke", a.device_id)))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(la.exited().await, 1);
    assert_eq!(la.stderr().lines().last().unwrap(), REVOKED);

    // The other phone is not told who else was revoked (CONTRACT §4): its next event is the
    // one published after. Then the gateway goes down, b is revoked while it is, and b's
    // reconnect is answered 403.
    let (_, c) = pair(&gw, dir.path(), "phone c", T0).await;
    let mut pubs = SyncClient::new(gw.ws_url(), c.device_key.clone());
    let marker = pubs.publish("ui.sync", json!({"n": 1})).await.unwrap();
    assert_eq!(n(&lb.next().await), (marker, 1));
    pubs.close().await;
    let addr = gw.addr;
    let data = gw.stop().await;
    {
        let (store, _) = latchkey::open_store(data.path(), None).unwrap();
        let id = DeviceId::parse(&b.device_id).unwrap();
        store
            .write_blocking(|tx| registry::revoke(tx, &id, T0 + 5, "test"))
            .unwrap();
    }
    let gw = Gateway::start_in(data, T0 + 10, |c| c.listen = addr).await;
    assert_eq!(lb.exited().await, 1);
    assert_eq!(lb.stderr().lines().last().unwrap(), REVOKED);

    // A revoked phone that starts listening is refused at once.
    let out = phone(None, &creds_a, &["listen"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.reason(), REVOKED);
    for (c, text) in [(&a, la.stderr()), (&b, lb.stderr()), (&a, out.all())] {
        assert_no_secrets(c, &text);
    }
    drop(gw);
}

#[tokio::test]
async fn publish_prints_the_acked_seq_and_refuses_reserved_topics() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (creds, c) = pair(&gw, dir.path(), "publishing phone", T0).await;

    let out = phone(None, &creds, &["publish", "ui.sync", r#"{"door":"open"}"#]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let seq: i64 = out.stdout.trim().parse().expect("the seq alone");
    let logged = gw
        .state
        .store
        .read(move |conn| events::since(conn, seq - 1, 1))
        .await
        .unwrap();
    assert_eq!(logged[0].seq, seq);
    assert_eq!(logged[0].topic, "ui.sync");
    assert_eq!(logged[0].data_json(), json!({"door": "open"}));

    let refused = phone(None, &creds, &["publish", "access.granted", "{}"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.reason().starts_with("latchkey: TOPIC_RESERVED"),
        "{}",
        refused.all()
    );

    let usage = phone(None, &creds, &["publish", "ui.sync", "not json"]).await;
    assert_eq!(usage.code, 2, "{}", usage.all());

    for out in [&out, &refused, &usage] {
        assert_no_secrets(&c, &out.all());
    }

    // The gateway gone: a bounded number of attempts, then a one-line reason.
    drop(gw.stop().await);
    let out = phone(None, &creds, &["publish", "ui.sync", "{}"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.reason().contains("gave up after 3 connection attempts"),
        "{}",
        out.all()
    );
}
