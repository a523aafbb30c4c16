//! The HTTP API and web UI against the real daemon on loopback (CONTRACT §2–3): pairing, the
//! redemption race, expiry on an injected clock, every error code, limits, restart, and that
//! secrets never print.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Gateway, T0};
use futures_util::future::join_all;
use latchkey::admin;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "correct horse battery staple";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Asserts the contract's error body and status; returns the body.
async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let got = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "status for {code}: {text}");
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "{code}: content-type {ct:?}, body {text:?}"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["error"]["code"], code, "{text}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "{text}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{text}");
    assert_eq!(body["error"].as_object().unwrap().len(), 2, "{text}");
    body
}

fn pair_body(token: &Value, name: &str) -> Value {
    json!({ "pairToken": token, "deviceInfo": { "name": name, "type": "mobile" } })
}

async fn redeem(gw: &Gateway, http: &reqwest::Client, token: &Value) -> reqwest::Response {
    http.post(gw.url("/api/pair"))
        .json(&pair_body(token, "Pixel 7"))
        .send()
        .await
        .unwrap()
}

fn set_password(gw: &Gateway, password: &str) {
    let now = gw.state.now();
    gw.state
        .store
        .write_blocking(|tx| Ok(admin::set_password(tx, password, now)))
        .unwrap()
        .unwrap();
}

fn cookie_from(resp: &reqwest::Response, name: &str) -> Option<(String, String)> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let value = v[name.len() + 1..].split(';').next().unwrap().to_owned();
            (value, v.to_owned())
        })
}

/// The value of the first hidden `csrf` input on a page.
fn csrf_in(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("page has a csrf field") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// A logged-in browser, as the web UI sees it.
struct Session {
    cookie: String,
    csrf: String,
}

async fn login_form(gw: &Gateway, http: &reqwest::Client) -> (String, String) {
    let page = http.get(gw.url("/login")).send().await.unwrap();
    let (nonce, _) = cookie_from(&page, "latchkey_login").expect("login cookie");
    let csrf = csrf_in(&page.text().await.unwrap());
    (format!("latchkey_login={nonce}"), csrf)
}

async fn try_login(gw: &Gateway, http: &reqwest::Client, password: &str) -> reqwest::Response {
    let (cookie, csrf) = login_form(gw, http).await;
    http.post(gw.url("/login"))
        .header(COOKIE, cookie)
        .form(&[("password", password), ("csrf", &csrf)])
        .send()
        .await
        .unwrap()
}

async fn login(gw: &Gateway, http: &reqwest::Client) -> Session {
    let resp = try_login(gw, http, PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/");
    let (sid, raw) = cookie_from(&resp, "latchkey_session").expect("session cookie");
    assert!(raw.contains("HttpOnly"), "{raw}");
    assert!(raw.contains("SameSite=Strict"), "{raw}");
    let cookie = format!("latchkey_session={sid}");
    let home = http
        .get(gw.url("/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), 200);
    let csrf = csrf_in(&home.text().await.unwrap());
    Session { cookie, csrf }
}

/// One raw HTTP/1.1 exchange, for what reqwest will not send (chunked bodies, lying lengths).
/// The body is written while the answer is read, so an early answer is seen, not a reset.
async fn raw_exchange(gw: &Gateway, head: String, body: Vec<u8>) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let read = async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("answer in time");
    writer.abort();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head.to_owned(), body.to_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn assert_raw_error(status: u16, head: &str, body: &str, want: u16, code: &str) {
    assert_eq!(status, want, "{head}\n{body}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v["error"]["code"], code, "{body}");
}

#[tokio::test]
async fn pairing_flow_matches_the_contract() {
    let gw = Gateway::start().await;
    let http = http();

    let health = http.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );

    let r = http
        .post(gw.url("/api/pair-tokens"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t.as_object().unwrap().len(), 3, "{t}");
    let token = t["pairToken"].as_str().unwrap();
    // ≥128 bits: "pt_" + base64url of 16 bytes.
    let raw = data_encoding::BASE64URL_NOPAD
        .decode(token.strip_prefix("pt_").unwrap().as_bytes())
        .unwrap();
    assert!(raw.len() >= 16, "{token}");
    assert_eq!(t["expires"], T0 + 300);
    let port = gw.addr.port();
    assert_eq!(
        t["qrPayload"].as_str().unwrap(),
        format!(
            r#"{{"v":1,"host":"127.0.0.1","port":{port},"pairToken":"{token}","expires":{}}}"#,
            T0 + 300
        )
    );

    let r = redeem(&gw, &http, &t["pairToken"]).await;
    assert_eq!(r.status(), 201);
    let p: Value = r.json().await.unwrap();
    let mut keys: Vec<_> = p.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["deviceId", "deviceKey", "gatewayId", "totp", "wsUrl"],
        "{p}"
    );
    let device_id = p["deviceId"].as_str().unwrap();
    let key = p["deviceKey"].as_str().unwrap();
    let key_bits = data_encoding::BASE64URL_NOPAD
        .decode(key.strip_prefix("dev_").expect("dev_ prefix").as_bytes())
        .unwrap()
        .len()
        * 8;
    assert!(key_bits >= 256, "{key}");
    assert_eq!(p["gatewayId"], gw.state.gateway_id.as_str());
    assert_eq!(p["wsUrl"], format!("ws://127.0.0.1:{port}/ws"));

    // TOTP: RFC 6238, 160-bit secret, SHA1, 30 s, 6 digits; the uri is a standard otpauth URI
    // whose codes match the ones from the bare secret.
    let totp = &p["totp"];
    assert_eq!(totp.as_object().unwrap().len(), 5, "{totp}");
    assert_eq!(totp["period"], 30);
    assert_eq!(totp["digits"], 6);
    assert_eq!(totp["algorithm"], "SHA1");
    let secret = data_encoding::BASE32_NOPAD
        .decode(totp["secret"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(secret.len(), 20);
    let uri = totp["uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let from_uri = totp_rs::Totp::from_url(uri).unwrap_or_else(|e| panic!("{e:?}: {uri}"));
    let from_secret = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(secret)
        .build_noncompliant();
    for t in [T0 as u64, T0 as u64 + 30, 59] {
        let a = from_uri.generate(t).to_string();
        assert_eq!(a, from_secret.generate(t).to_string());
        assert_eq!(a.len(), 6);
    }

    // The registry shows the phone, never its key.
    let r = http
        .get(gw.url("/api/devices"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(key) && !text.contains(totp["secret"].as_str().unwrap()));
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        list,
        json!({"devices": [{
            "deviceId": device_id, "name": "Pixel 7", "type": "mobile",
            "pairedAt": "2026-01-13T10:40:00Z", "lastSeen": null, "revoked": false
        }]})
    );

    // The phone reconnects with its key.
    gw.clock.advance(90);
    let r = http
        .get(gw.url("/api/me"))
        .header("Authorization", format!("Device {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({
            "deviceId": device_id, "name": "Pixel 7", "type": "mobile",
            "pairedAt": "2026-01-13T10:40:00Z", "lastSeen": "2026-01-13T10:41:30Z",
            "revoked": false, "endpoints": [], "accessTool": null, "vehicleKeys": []
        })
    );

    // Used once, never again.
    let again = redeem(&gw, &http, &t["pairToken"]).await;
    expect_error(again, 410, "PAIR_TOKEN_USED").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_redemptions_exactly_one_wins() {
    let gw = Gateway::start().await;
    let http = http();
    let t = gw.pair_token(&http).await;
    let attempts = (0..50).map(|i| {
        let http = http.clone();
        let url = gw.url("/api/pair");
        let body = pair_body(&t["pairToken"], &format!("phone {i}"));
        async move { http.post(url).json(&body).send().await.unwrap() }
    });
    let answers = join_all(attempts).await;
    let mut created = 0;
    let mut used = 0;
    for r in answers {
        match r.status().as_u16() {
            201 => created += 1,
            410 => {
                expect_error(r, 410, "PAIR_TOKEN_USED").await;
                used += 1;
            }
            s => panic!("unexpected {s}: {}", r.text().await.unwrap()),
        }
    }
    assert_eq!((created, used), (1, 49));
    let list: Value = http
        .get(gw.url("/api/devices"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn tokens_expire_on_the_injected_clock() {
    let gw = Gateway::start().await;
    let http = http();
    let early = gw.pair_token(&http).await;
    let late = gw.pair_token(&http).await;
    gw.clock.advance(299);
    assert_eq!(redeem(&gw, &http, &early["pairToken"]).await.status(), 201);
    gw.clock.advance(2);
    let r = redeem(&gw, &http, &late["pairToken"]).await;
    expect_error(r, 410, "PAIR_TOKEN_EXPIRED").await;
    gw.stop().await;
}

#[tokio::test]
async fn token_ttl_is_configurable() {
    let gw = Gateway::start_with(|c| c.pair_token_ttl_secs = 60).await;
    let http = http();
    let a = gw.pair_token(&http).await;
    let b = gw.pair_token(&http).await;
    assert_eq!(a["expires"], T0 + 60);
    let payload: Value = serde_json::from_str(a["qrPayload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["expires"], T0 + 60);
    gw.clock.advance(59);
    assert_eq!(redeem(&gw, &http, &a["pairToken"]).await.status(), 201);
    gw.clock.advance(1);
    let r = redeem(&gw, &http, &b["pairToken"]).await;
    expect_error(r, 410, "PAIR_TOKEN_EXPIRED").await;
    gw.stop().await;
}

#[tokio::test]
async fn bad_requests_are_400_with_the_contract_body() {
    let gw = Gateway::start().await;
    let http = http();
    let t = gw.pair_token(&http).await;
    let tok = t["pairToken"].clone();
    let post = |body: String, ct: Option<&str>| {
        let mut b = http.post(gw.url("/api/pair")).body(body);
        if let Some(ct) = ct {
            b = b.header(CONTENT_TYPE, ct);
        }
        b.send()
    };
    let json_ct = Some("application/json");
    let valid = pair_body(&tok, "Pixel").to_string();
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("malformed JSON", r#"{"pairToken": "#.into(), json_ct),
        ("not an object", "[1,2]".into(), json_ct),
        (
            "missing deviceInfo",
            json!({"pairToken": tok}).to_string(),
            json_ct,
        ),
        (
            "missing pairToken",
            json!({"deviceInfo": {"name": "a", "type": "b"}}).to_string(),
            json_ct,
        ),
        (
            "missing type",
            json!({"pairToken": tok, "deviceInfo": {"name": "a"}}).to_string(),
            json_ct,
        ),
        (
            "wrong types",
            json!({"pairToken": 5, "deviceInfo": "x"}).to_string(),
            json_ct,
        ),
        ("text/plain", valid.clone(), Some("text/plain")),
        (
            "form type",
            valid.clone(),
            Some("application/x-www-form-urlencoded"),
        ),
        ("no content type", valid.clone(), None),
        ("empty body", String::new(), json_ct),
    ];
    for (what, body, ct) in cases {
        let r = post(body, ct).await.unwrap();
        let b = expect_error(r, 400, "BAD_REQUEST").await;
        eprintln!("{what}: {b}");
    }
    let bad_infos = [
        json!({"name": "", "type": "mobile"}),
        json!({"name": "   ", "type": "mobile"}),
        json!({"name": "x".repeat(65), "type": "mobile"}),
        json!({"name": "bell\u{7}", "type": "mobile"}),
        json!({"name": "ok", "type": "mob ile"}),
        json!({"name": "ok", "type": ""}),
        json!({"name": "ok", "type": "t".repeat(33)}),
    ];
    for info in bad_infos {
        let r = http
            .post(gw.url("/api/pair"))
            .json(&json!({"pairToken": tok, "deviceInfo": info}))
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "BAD_REQUEST").await;
    }
    // None of that consumed the token.
    assert_eq!(redeem(&gw, &http, &tok).await.status(), 201);

    // Wrong methods and bad path parameters are client errors too, never plain text.
    let r = http.get(gw.url("/api/pair")).send().await.unwrap();
    assert!(r.headers().contains_key("allow"));
    expect_error(r, 400, "BAD_REQUEST").await;
    let r = http.delete(gw.url("/api/devices")).send().await.unwrap();
    expect_error(r, 400, "BAD_REQUEST").await;
    let r = http
        .post(gw.url("/tokens/not-a-number/revoke"))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "BAD_REQUEST").await;
    let r = http
        .post(gw.url("/login"))
        .body("password=x")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "BAD_REQUEST").await;
    let r = http
        .post(gw.url("/login"))
        .form(&[("nothing", "here")])
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "BAD_REQUEST").await;
    gw.stop().await;
}

#[tokio::test]
async fn missing_or_bad_credentials_are_401() {
    let gw = Gateway::start().await;
    let http = http();
    let device = gw.pair(&http, "Pixel").await;
    let id = device["deviceId"].as_str().unwrap();

    let admin_routes = [
        ("POST", "/api/pair-tokens".to_owned()),
        ("GET", "/api/devices".to_owned()),
        ("POST", format!("/api/devices/{id}/revoke")),
        ("GET", "/metrics".to_owned()),
    ];
    let bad_admin: [Option<&str>; 6] = [
        None,
        Some("Bearer lka_not-a-real-token"),
        Some("Bearer "),
        Some("Basic YWRtaW46YWRtaW4="),
        Some("Device dev_xyz"),
        Some("bearer"),
    ];
    for (method, path) in &admin_routes {
        for auth in bad_admin {
            let mut b = http.request(method.parse().unwrap(), gw.url(path));
            if let Some(a) = auth {
                b = b.header("Authorization", a);
            }
            expect_error(b.send().await.unwrap(), 401, "UNAUTHORIZED").await;
        }
        // A stale session cookie is no admin either.
        let r = http
            .request(method.parse().unwrap(), gw.url(path))
            .header(COOKIE, "latchkey_session=forged")
            .send()
            .await
            .unwrap();
        expect_error(r, 401, "UNAUTHORIZED").await;
    }
    // A device key is not an admin credential, even as a Bearer.
    let key = device["deviceKey"].as_str().unwrap();
    let r = http
        .get(gw.url("/api/devices"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;

    let bad_device: [Option<String>; 5] = [
        None,
        Some("Device dev_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
        Some(format!("Device {}x", key)),
        Some(format!("Bearer {}", gw.admin_token)),
        Some("Device lka_nope".into()),
    ];
    for auth in bad_device {
        let mut b = http.get(gw.url("/api/me"));
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        expect_error(b.send().await.unwrap(), 401, "UNAUTHORIZED").await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn cookie_sessions_need_the_csrf_token() {
    let gw = Gateway::start().await;
    set_password(&gw, PASSWORD);
    let http = http();
    let s = login(&gw, &http).await;

    // Reads need no CSRF token.
    let r = http
        .get(gw.url("/api/devices"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Writes do.
    let r = http
        .post(gw.url("/api/pair-tokens"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "FORBIDDEN").await;
    let r = http
        .post(gw.url("/api/pair-tokens"))
        .header(COOKIE, &s.cookie)
        .header("X-CSRF-Token", "forged")
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "FORBIDDEN").await;
    let r = http
        .post(gw.url("/api/pair-tokens"))
        .header(COOKIE, &s.cookie)
        .header("X-CSRF-Token", &s.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The forms: a revoke without the token is refused and changes nothing.
    let device = gw.pair(&http, "Pixel").await;
    let id = device["deviceId"].as_str().unwrap();
    let r = http
        .post(gw.url(&format!("/devices/{id}/revoke")))
        .header(COOKIE, &s.cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "FORBIDDEN").await;
    let r = http
        .post(gw.url("/pair"))
        .header(COOKIE, &s.cookie)
        .form(&[("csrf", "")])
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "FORBIDDEN").await;
    let me = http
        .get(gw.url("/api/me"))
        .header(
            "Authorization",
            format!("Device {}", device["deviceKey"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    // A login form posted without its pre-session cookie is refused as well.
    let r = http
        .post(gw.url("/login"))
        .form(&[("password", PASSWORD), ("csrf", "x")])
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "FORBIDDEN").await;
    gw.stop().await;
}

#[tokio::test]
async fn unknown_things_are_404() {
    let gw = Gateway::start().await;
    let http = http();
    for id in ["00000000-0000-4000-8000-000000000000", "pixel7", "A"] {
        let r = http
            .post(gw.url(&format!("/api/devices/{id}/revoke")))
            .bearer_auth(&gw.admin_token)
            .send()
            .await
            .unwrap();
        expect_error(r, 404, "NOT_FOUND").await;
    }
    for path in [
        "/nope",
        "/api/nope",
        "/api/devices/x",
        "/static/nope.js",
        "/static/../Cargo.toml",
    ] {
        let r = http.get(gw.url(path)).send().await.unwrap();
        expect_error(r, 404, "NOT_FOUND").await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn invalid_tokens_are_401_and_used_tokens_410() {
    let gw = Gateway::start().await;
    let http = http();
    for tok in [
        json!("pt_doesnotexist"),
        json!("garbage"),
        json!(""),
        json!("pt_".to_owned() + &"a".repeat(500)),
    ] {
        let r = redeem(&gw, &http, &tok).await;
        expect_error(r, 401, "PAIR_TOKEN_INVALID").await;
    }
    let t = gw.pair_token(&http).await;
    assert_eq!(redeem(&gw, &http, &t["pairToken"]).await.status(), 201);
    expect_error(
        redeem(&gw, &http, &t["pairToken"]).await,
        410,
        "PAIR_TOKEN_USED",
    )
    .await;
    // Used wins over expired: a used token stays "used" after its deadline.
    gw.clock.advance(600);
    expect_error(
        redeem(&gw, &http, &t["pairToken"]).await,
        410,
        "PAIR_TOKEN_USED",
    )
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn revoked_devices_are_refused() {
    let gw = Gateway::start().await;
    let http = http();
    let a = gw.pair(&http, "Phone A").await;
    let b = gw.pair(&http, "Phone B").await;
    let id = a["deviceId"].as_str().unwrap();
    let r = http
        .post(gw.url(&format!("/api/devices/{id}/revoke")))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"deviceId": id, "revoked": true})
    );
    // Revoking twice is harmless and answers the same.
    let r = http
        .post(gw.url(&format!("/api/devices/{id}/revoke")))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let me = |key: &Value| {
        http.get(gw.url("/api/me"))
            .header("Authorization", format!("Device {}", key.as_str().unwrap()))
            .send()
    };
    expect_error(me(&a["deviceKey"]).await.unwrap(), 403, "DEVICE_REVOKED").await;
    assert_eq!(me(&b["deviceKey"]).await.unwrap().status(), 200);
    let list: Value = http
        .get(gw.url("/api/devices"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revoked: Vec<_> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["revoked"].as_bool().unwrap()))
        .collect();
    assert_eq!(revoked, [("Phone A", true), ("Phone B", false)]);
    gw.stop().await;
}

#[tokio::test]
async fn bodies_over_64_kib_are_413_with_or_without_a_length() {
    let gw = Gateway::start().await;
    let big = format!(
        r#"{{"pairToken":"pt_x","deviceInfo":{{"name":"{}","type":"mobile"}}}}"#,
        "a".repeat(70 * 1024)
    )
    .into_bytes();

    // Declared length over the limit.
    let head = format!(
        "POST /api/pair HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    let (s, h, b) = raw_exchange(&gw, head, big.clone()).await;
    assert_raw_error(s, &h, &b, 413, "PAYLOAD_TOO_LARGE");

    // Chunked, so the server only learns the size by reading.
    let mut chunked = Vec::new();
    for part in big.chunks(8000) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /api/pair HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned();
    let (s, h, b) = raw_exchange(&gw, head, chunked).await;
    assert_raw_error(s, &h, &b, 413, "PAYLOAD_TOO_LARGE");

    // Same for an admin route and a form.
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    let (s, h, b) = raw_exchange(&gw, head, big.clone()).await;
    assert_raw_error(s, &h, &b, 413, "PAYLOAD_TOO_LARGE");

    // Just under the limit is read and judged on its content.
    let ok_size = format!(
        r#"{{"pairToken":"pt_x","deviceInfo":{{"name":"a","type":"mobile"}},"pad":"{}"}}"#,
        "a".repeat(60 * 1024)
    );
    let head = format!(
        "POST /api/pair HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        ok_size.len()
    );
    let (s, h, b) = raw_exchange(&gw, head, ok_size.into_bytes()).await;
    assert_raw_error(s, &h, &b, 401, "PAIR_TOKEN_INVALID");
    gw.stop().await;
}

#[tokio::test]
async fn guessing_pair_tokens_is_rate_limited() {
    let gw = Gateway::start().await;
    let http = http();
    let good = gw.pair_token(&http).await;
    for i in 0..10 {
        let r = redeem(&gw, &http, &json!(format!("pt_guess{i}"))).await;
        expect_error(r, 401, "PAIR_TOKEN_INVALID").await;
    }
    let r = redeem(&gw, &http, &json!("pt_guess11")).await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    expect_error(r, 429, "RATE_LIMITED").await;
    // While limited even a real token waits, so guessing cannot continue between real tries.
    let r = redeem(&gw, &http, &good["pairToken"]).await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "RATE_LIMITED").await;
    // A minute later the address may try again, and the real token still works.
    gw.clock.advance(60);
    assert_eq!(redeem(&gw, &http, &good["pairToken"]).await.status(), 201);
    gw.stop().await;
}

#[tokio::test]
async fn admin_login_is_throttled_per_address() {
    let gw = Gateway::start().await;
    let http = http();

    // Before a password exists, the page says how to set one.
    let page = http.get(gw.url("/login")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers().contains_key("content-security-policy"));
    let html = page.text().await.unwrap();
    assert!(html.contains("latchkey admin password"), "{html}");
    assert!(!html.contains(r#"type="password""#));

    set_password(&gw, PASSWORD);
    for _ in 0..5 {
        let r = try_login(&gw, &http, "wrong password!").await;
        assert_eq!(r.status(), 401);
        assert!(cookie_from(&r, "latchkey_session").is_none());
        assert!(r.text().await.unwrap().contains("Wrong password"));
    }
    // Sixth try in the minute: refused before the password is even looked at.
    let r = try_login(&gw, &http, PASSWORD).await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    expect_error(r, 429, "RATE_LIMITED").await;
    gw.clock.advance(60);
    let r = try_login(&gw, &http, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(cookie_from(&r, "latchkey_session").is_some());
    gw.stop().await;
}

#[tokio::test]
async fn the_web_ui_pairs_lists_and_revokes() {
    let gw = Gateway::start().await;
    let http = http();
    set_password(&gw, PASSWORD);

    // Without a session every page sends the browser to the login form.
    for path in ["/", "/pair", "/devices", "/tokens"] {
        let r = http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers()[LOCATION], "/login");
    }
    let s = login(&gw, &http).await;

    let page = http
        .get(gw.url("/pair"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("<svg"), "inline SVG QR");
    assert!(!html.contains("<script>"), "no inline script");
    for attr in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!html.contains(attr), "every asset is served by the gateway");
    }
    let payload_start = html.find(r#"<pre id="payload">"#).unwrap() + r#"<pre id="payload">"#.len();
    let payload_html = &html[payload_start..];
    let payload_html = &payload_html[..payload_html.find("</pre>").unwrap()];
    let payload: Value =
        serde_json::from_str(&payload_html.replace("&quot;", "\"").replace("&#34;", "\"")).unwrap();
    assert_eq!(payload["v"], 1);
    assert_eq!(payload["port"], gw.addr.port());
    let r = http
        .post(gw.url("/api/pair"))
        .json(&pair_body(&payload["pairToken"], "Web Phone"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // "New code" mints a fresh token.
    let r = http
        .post(gw.url("/pair"))
        .header(COOKIE, &s.cookie)
        .form(&[("csrf", &s.csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r
        .text()
        .await
        .unwrap()
        .contains(payload["pairToken"].as_str().unwrap()));

    let devices = http
        .get(gw.url("/devices"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(devices.contains("Web Phone"), "{devices}");
    let id_start = devices.find(r#"data-device-id=""#).unwrap() + r#"data-device-id=""#.len();
    let id = devices[id_start..].split('"').next().unwrap().to_owned();
    let r = http
        .post(gw.url(&format!("/devices/{id}/revoke")))
        .header(COOKIE, &s.cookie)
        .form(&[("csrf", &s.csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let list: Value = http
        .get(gw.url("/api/devices"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["devices"][0]["revoked"], true);

    // Tokens page: a token made there is shown once and works as a Bearer.
    let r = http
        .post(gw.url("/tokens"))
        .header(COOKIE, &s.cookie)
        .form(&[("csrf", s.csrf.as_str()), ("name", "home-assistant")])
        .send()
        .await
        .unwrap();
    let html = r.text().await.unwrap();
    let start = html.find(r#"<pre id="new-token">"#).unwrap() + r#"<pre id="new-token">"#.len();
    let token = &html[start..start + html[start..].find('<').unwrap()];
    assert!(token.starts_with("lka_"));
    let r = http
        .get(gw.url("/api/devices"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listing = http
        .get(gw.url("/tokens"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("home-assistant") && !listing.contains(token));
    // …and revoking it there ends it.
    let row = &listing[listing.find("home-assistant").unwrap()..];
    let action_start = row.find(r#"action="/tokens/"#).unwrap() + r#"action=""#.len();
    let action = row[action_start..].split('"').next().unwrap().to_owned();
    let r = http
        .post(gw.url(&action))
        .header(COOKIE, &s.cookie)
        .form(&[("csrf", &s.csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = http
        .get(gw.url("/api/devices"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;

    // Logging out ends the session server-side.
    let r = http
        .post(gw.url("/logout"))
        .header(COOKIE, &s.cookie)
        .form(&[("csrf", &s.csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = http
        .get(gw.url("/api/devices"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
    gw.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_for_admins() {
    let gw = Gateway::start().await;
    let http = http();
    gw.pair(&http, "Pixel").await;
    let r = http
        .get(gw.url("/metrics"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(text.contains("\nlatchkey_devices 1\n"), "{text}");
    assert!(text.contains("\nlatchkey_pairings_total 1\n"), "{text}");
    gw.stop().await;
}

fn metric(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing: {text}"))
}

#[tokio::test]
async fn a_restart_on_the_same_data_dir_keeps_everything() {
    let gw = Gateway::start().await;
    let http = http();
    let phone = gw.pair(&http, "Pixel").await;
    let pending = gw.pair_token(&http).await;
    let first_admin = gw.admin_token.clone();
    let gateway_id = gw.state.gateway_id.clone();
    let seq_before = metric(
        &http
            .get(gw.url("/metrics"))
            .bearer_auth(&first_admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "latchkey_event_seq",
    );
    assert!(seq_before >= 1);
    let dir = gw.stop().await;

    let gw = Gateway::start_in(dir, T0 + 10, |_| {}).await;
    assert_eq!(gw.state.gateway_id, gateway_id);
    // The admin token from before the restart still works.
    let list: Value = http
        .get(gw.url("/api/devices"))
        .bearer_auth(&first_admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["devices"][0]["deviceId"], phone["deviceId"]);
    // The device key still opens /api/me.
    let r = http
        .get(gw.url("/api/me"))
        .header(
            "Authorization",
            format!("Device {}", phone["deviceKey"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The pair token minted before the restart is still good, once.
    assert_eq!(
        redeem(&gw, &http, &pending["pairToken"]).await.status(),
        201
    );
    expect_error(
        redeem(&gw, &http, &pending["pairToken"]).await,
        410,
        "PAIR_TOKEN_USED",
    )
    .await;
    // Event numbering carries on where it left off.
    let seq_after = metric(
        &http
            .get(gw.url("/metrics"))
            .bearer_auth(&first_admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "latchkey_event_seq",
    );
    assert_eq!(seq_after, seq_before + 1);
    // A password set before the restart still logs in.
    set_password(&gw, PASSWORD);
    let dir = gw.stop().await;
    let gw = Gateway::start_in(dir, T0 + 20, |_| {}).await;
    login(&gw, &http).await;
    gw.stop().await;
}

#[tokio::test]
async fn secret_types_never_show_through_debug() {
    use latchkey::pairing;
    let gw = Gateway::start().await;
    let now = gw.state.now();
    let t = gw
        .state
        .store
        .write_blocking(|tx| Ok(pairing::create_token(tx, now, 300)))
        .unwrap()
        .unwrap();
    let token = t.token.expose().to_owned();
    assert!(!format!("{t:?}").contains(&token));
    assert!(!format!("{:?} {}", t.token, t.token).contains(&token));

    let info = pairing::DeviceInfo::validate("Pixel", "mobile").unwrap();
    let master = &gw.state.master;
    let p = gw
        .state
        .store
        .write_blocking(|tx| Ok(pairing::redeem(tx, master, &token, &info, now)))
        .unwrap()
        .unwrap();
    let debug = format!("{p:?} {:?} {:?}", p.device_key, p.totp_secret);
    let secret_b32 = p.totp_secret.to_base32().expose().to_owned();
    let secret_hex = data_encoding::HEXLOWER.encode(p.totp_secret.expose());
    for s in [p.device_key.expose(), &secret_b32, &secret_hex] {
        assert!(!debug.contains(s), "{debug}");
    }
    assert!(!format!("{:?}", p.totp_secret.expose()).is_empty());
    assert_eq!(format!("{master:?}"), "MasterKey([redacted])");
    let config = format!("{:?}", gw.state.config);
    assert!(config.contains("data_dir"));

    let (_, admin) = gw
        .state
        .store
        .write_blocking(|tx| Ok(admin::create_token(tx, "x", now)))
        .unwrap()
        .unwrap();
    assert!(!format!("{admin:?}").contains(admin.expose()));
    let sid = gw
        .state
        .store
        .write_blocking(|tx| Ok(admin::create_session(tx, now)))
        .unwrap()
        .unwrap();
    let who = latchkey::web::auth::Admin::Session(sid.expose().to_owned());
    assert!(!format!("{who:?}").contains(sid.expose()), "{who:?}");
    gw.stop().await;
}

#[tokio::test]
async fn device_names_are_visible_text_of_at_most_64_characters() {
    let gw = Gateway::start().await;
    let http = http();
    for bad in [
        "evil\u{202E}gnp.exe",
        "\u{200B}",
        "a\u{2028}b",
        "a\u{2029}b",
        "zero\u{200D}width",
        "bom\u{FEFF}",
        "tab\there",
        &"é".repeat(65),
    ] {
        let t = gw.pair_token(&http).await;
        let r = http
            .post(gw.url("/api/pair"))
            .json(&pair_body(&t["pairToken"], bad))
            .send()
            .await
            .unwrap();
        let body = expect_error(r, 400, "BAD_REQUEST").await;
        assert!(
            !body.to_string().contains(bad),
            "the name is not echoed: {body}"
        );
    }
    // 64 characters of two bytes each are fine, and names are trimmed.
    let t = gw.pair_token(&http).await;
    let name = "é".repeat(64);
    let r = http
        .post(gw.url("/api/pair"))
        .json(&pair_body(&t["pairToken"], &format!("  {name}\u{2028}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key = r.json::<Value>().await.unwrap()["deviceKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Value = http
        .get(gw.url("/api/me"))
        .header("authorization", format!("Device {key}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], name.as_str());
    gw.stop().await;
}

#[tokio::test]
async fn error_bodies_never_echo_input_or_name_internals() {
    let gw = Gateway::start().await;
    let http = http();
    // The message of the 400 that `POST /api/pair` answers to `body`.
    let message = |body: Value| {
        let r = http.post(gw.url("/api/pair")).json(&body).send();
        async move {
            let err = expect_error(r.await.unwrap(), 400, "BAD_REQUEST").await;
            err["error"]["message"].as_str().unwrap().to_owned()
        }
    };
    let secret = "dev_SECRETVALUE0123456789";
    let cases = [
        json!({"pairToken": secret, "deviceInfo": secret}),
        json!({"pairToken": secret, "deviceInfo": {"name": secret, "type": 7}}),
        json!({"pairToken": [secret], "deviceInfo": {"name": "a", "type": "b"}}),
        json!({"pairToken": {"x": secret}, "deviceInfo": {"name": "a", "type": "b"}}),
        json!({"deviceInfo": {"name": secret, "type": "b"}, secret: 1}),
        json!(secret),
    ];
    for body in cases {
        let text = message(body).await;
        for leak in [
            "SECRETVALUE",
            "struct",
            "DeviceInfoBody",
            "PairRequest",
            "serde",
            "expected",
        ] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
    }
    // The message still names the field.
    assert_eq!(
        message(json!({"pairToken": "pt_x", "deviceInfo": secret})).await,
        "deviceInfo has the wrong type or value"
    );
    assert_eq!(
        message(json!({"pairToken": "pt_x", "deviceInfo": {"type": "mobile"}})).await,
        "deviceInfo.name is missing"
    );
    gw.stop().await;
}

#[tokio::test]
async fn me_lists_the_endpoints_this_device_may_open() {
    use latchkey::clock::Clock;
    use latchkey::config::{ActionConfig, EndpointConfig};
    let ep = |id: &str, name: Option<&str>, devices: Option<Vec<String>>| EndpointConfig {
        id: id.into(),
        name: name.map(str::to_owned),
        devices,
        action: ActionConfig::None,
    };
    let endpoints = |allowed: Vec<String>| {
        vec![
            ep("front", Some("Front door"), None),
            ep("vault", None, Some(vec![])),
            ep("garage", Some("Garage"), Some(allowed)),
        ]
    };
    let gw = Gateway::start_with(|c| c.endpoints = endpoints(vec![])).await;
    let http = http();
    let paired = gw.pair(&http, "Pixel 7").await;
    let id = paired["deviceId"].as_str().unwrap().to_owned();
    let key = paired["deviceKey"].as_str().unwrap().to_owned();
    let me = |gw: &Gateway| {
        http.get(gw.url("/api/me"))
            .header("Authorization", format!("Device {key}"))
            .send()
    };
    let r = me(&gw).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["deviceId"], id.as_str());
    assert_eq!(
        body["endpoints"],
        json!([{"id": "front", "name": "Front door"}]),
        "the vault and the garage allow nobody"
    );

    // The garage's allowlist names this device (after a restart with that configuration);
    // an endpoint without a name is listed under its id.
    let t = gw.clock.now();
    let dir = gw.stop().await;
    let allowed = vec![id.clone()];
    let gw = Gateway::start_in(dir, t, |c| {
        c.endpoints = endpoints(allowed);
        c.endpoints[1].devices = None;
    })
    .await;
    let body: Value = me(&gw).await.unwrap().json().await.unwrap();
    assert_eq!(
        body["endpoints"],
        json!([
            {"id": "front", "name": "Front door"},
            {"id": "vault", "name": "vault"},
            {"id": "garage", "name": "Garage"}
        ])
    );
    gw.stop().await;
}

/// Issue 14 part 4: the Doors page lists each door with its action, who may open it and its
/// recent decisions; its "test open" needs the CSRF token, runs the action as a grant would
/// and is audited; the dashboard shows BLE, clock trust, nodes and the last decisions, with
/// times as `<time datetime>` for the browser to show in its own zone.
#[tokio::test]
async fn the_doors_page_test_opens_with_csrf_and_the_dashboard_shows_health() {
    use latchkey::config::{ActionConfig, EndpointConfig};
    let scratch = tempfile::tempdir().unwrap();
    let opened = scratch.path().join("front-opened");
    let argv = vec!["/usr/bin/touch".to_owned(), opened.display().to_string()];
    let gw = Gateway::start_with(|c| {
        c.endpoints = vec![
            EndpointConfig {
                id: "front".into(),
                name: Some("Front door".into()),
                devices: None,
                action: ActionConfig::Command {
                    argv,
                    timeout_secs: 10,
                },
            },
            EndpointConfig {
                id: "garage".into(),
                name: None,
                devices: Some(vec![]),
                action: ActionConfig::None,
            },
        ]
    })
    .await;
    let http = http();
    set_password(&gw, PASSWORD);
    let r = http.get(gw.url("/doors")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let s = login(&gw, &http).await;

    let page = http
        .get(gw.url("/doors"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"data-endpoint="front""#), "{html}");
    assert!(
        html.contains("Front door") && html.contains("runs /usr/bin/touch"),
        "{html}"
    );
    assert!(html.contains("every paired device"), "{html}");
    assert!(
        html.contains(r#"data-endpoint="garage""#) && html.contains("nobody"),
        "{html}"
    );
    assert!(html.contains(r#"action="/doors/front/open""#), "{html}");
    assert!(!html.contains("<script>"), "no inline script");

    // Without the CSRF token nothing runs and nothing is recorded.
    let r = http
        .post(gw.url("/doors/front/open"))
        .header(COOKIE, &s.cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!opened.exists(), "a forged test open ran the action");
    assert!(gw.events("access.").await.is_empty());

    let r = http
        .post(gw.url("/doors/front/open"))
        .header(COOKIE, &s.cookie)
        .form(&[("csrf", s.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"test-open-result\""), "{html}");
    assert!(html.contains("Test open of front: opened"), "{html}");
    assert!(opened.exists(), "the test open ran the door's action");
    let audit = gw.events("access.").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "access.granted");
    assert_eq!(audit[0].1["endpoint"], "front");
    assert_eq!(audit[0].1["transport"], "admin");
    assert_eq!(audit[0].1["peer"], "admin-web");
    // The decision is listed under its door, with a machine-readable time.
    let ts = latchkey::clock::rfc3339_ms(gw.state.clock.now_ms());
    assert!(
        html.contains(&format!(r#"<time datetime="{ts}">"#)),
        "{html}"
    );
    // An unknown door is 404.
    let r = http
        .post(gw.url("/doors/nope/open"))
        .header(COOKIE, &s.cookie)
        .form(&[("csrf", s.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let home = http
        .get(gw.url("/"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        home.contains("id=\"ble-state\"") && home.contains("off:"),
        "{home}"
    );
    assert!(home.contains("id=\"clock-state\""), "{home}");
    assert!(home.contains("id=\"nodes-online\""), "{home}");
    assert!(home.contains("id=\"last-decisions\""), "{home}");
    assert!(
        home.contains(&format!(r#"<time datetime="{ts}">"#)),
        "{home}"
    );
    assert!(home.contains("<td>front</td>"), "{home}");
    assert!(home.contains(r#"<script src="/static/time.js">"#), "{home}");
    let js = http.get(gw.url("/static/time.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
}
