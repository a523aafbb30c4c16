//! Hostile LAN clients (issue 8) against the real daemon: login bursts, slow and stalled
//! connections, connection caps by address and by device, and the fd limit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::Gateway;
use futures_util::future::join_all;
use latchkey::admin;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;

/// Guards against a hang; never a pass/fail timer.
const HANG: Duration = Duration::from_secs(20);

fn http_from(local: Option<IpAddr>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(ip) = local {
        b = b.local_address(ip);
    }
    b.build().unwrap()
}

fn set_password(gw: &Gateway) {
    let now = gw.state.now();
    gw.state
        .store
        .write_blocking(|tx| Ok(admin::set_password(tx, "correct horse battery staple", now)))
        .unwrap()
        .unwrap();
}

/// The login page's pre-session cookie and CSRF token.
async fn login_form(gw: &Gateway, http: &reqwest::Client) -> (String, String) {
    let page = http.get(gw.url("/login")).send().await.unwrap();
    let nonce = page
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("latchkey_login="))
        .map(|v| v.split(';').next().unwrap().to_owned())
        .expect("login cookie");
    let html = page.text().await.unwrap();
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).unwrap() + marker.len();
    let csrf = html[start..].split('"').next().unwrap().to_owned();
    (format!("latchkey_login={nonce}"), csrf)
}

async fn wrong_login(gw: &Gateway, http: &reqwest::Client, form: &(String, String)) -> u16 {
    let r = http
        .post(gw.url("/login"))
        .header(COOKIE, &form.0)
        .form(&[("password", "not the password"), ("csrf", &form.1)])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 429 {
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_concurrent_wrong_logins_check_at_most_five_passwords() {
    let gw = Gateway::start().await;
    set_password(&gw);
    let http = http_from(None);
    let form = login_form(&gw, &http).await;
    let statuses = join_all((0..60).map(|_| wrong_login(&gw, &http, &form))).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + limited, 60, "{statuses:?}");
    assert!(checked <= 5, "{checked} wrong passwords were checked");
    let hashed = gw.state.metrics.password_checks.load(Ordering::Relaxed);
    assert!(hashed <= 5, "argon2 ran {hashed} times");
    gw.stop().await;
}

#[tokio::test]
async fn failed_logins_have_a_budget_across_addresses() {
    let gw = Gateway::start().await;
    set_password(&gw);
    let mut checked = 0;
    // 8 addresses x 5 tries: each within its own limit, but 40 in all.
    for last in 2..10u8 {
        let http = http_from(Some(IpAddr::from([127, 0, 0, last])));
        let form = login_form(&gw, &http).await;
        for _ in 0..5 {
            if wrong_login(&gw, &http, &form).await == 401 {
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 30, "the global budget is 30 failures a minute");
    // A minute later logins are checked again.
    gw.clock.advance(60);
    let http = http_from(Some(IpAddr::from([127, 0, 0, 20])));
    let form = login_form(&gw, &http).await;
    assert_eq!(wrong_login(&gw, &http, &form).await, 401);
    gw.stop().await;
}

fn ws_request(
    gw: &Gateway,
    key: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = gw.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Device {key}")).unwrap(),
    );
    req
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws(gw: &Gateway, key: &str) -> Result<Ws, WsError> {
    tokio::time::timeout(HANG, tokio_tungstenite::connect_async(ws_request(gw, key)))
        .await
        .expect("upgrade answered")
        .map(|(ws, _)| ws)
}

#[tokio::test]
async fn websockets_are_capped_per_device_not_per_address() {
    // Four not-yet-upgraded connections per address; eight sockets per device.
    let gw = Gateway::start_with(|c| c.http.max_connections_per_address = Some(4)).await;
    let http = http_from(None);
    let a = gw.pair(&http, "A").await["deviceKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = gw.pair(&http, "B").await["deviceKey"]
        .as_str()
        .unwrap()
        .to_owned();
    // 16 authenticated sockets from one address: upgraded ones leave the address's count.
    let mut open = Vec::new();
    for key in [&a, &b] {
        for _ in 0..8 {
            open.push(ws(&gw, key).await.expect("upgrade"));
        }
    }
    // A ninth for device A is refused with the contract's code; B is full too.
    for key in [&a, &b] {
        match ws(&gw, key).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), 429);
                assert!(resp.headers().contains_key("retry-after"));
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "RATE_LIMITED");
            }
            other => panic!("expected 429, got {:?}", other.map(|_| ())),
        }
    }
    // Plain HTTP from the same address still gets through.
    let r = http.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Closing one of A's sockets frees its place (once the session has ended).
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    let deadline = Instant::now() + HANG;
    loop {
        match ws(&gw, &a).await {
            Ok(s) => {
                open.push(s);
                break;
            }
            Err(WsError::Http(resp)) if resp.status() == 429 => {
                assert!(Instant::now() < deadline, "the place never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    drop(open);
    gw.stop().await;
}

/// Connects from `local` (any loopback address) to `to`.
async fn connect_from(local: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(local, 0)).unwrap();
    tokio::time::timeout(HANG, sock.connect(to))
        .await
        .expect("connect in time")
        .unwrap()
}

/// Reads until the peer closes (or resets); returns what arrived.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(HANG, read)
        .await
        .expect("the server closed the connection");
    String::from_utf8_lossy(&buf).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"))
}

#[tokio::test]
async fn an_address_over_its_connection_cap_gets_429_and_others_are_served() {
    let gw = Gateway::start_with(|c| c.http.max_connections_per_address = Some(4)).await;
    let lo = IpAddr::from([127, 0, 0, 1]);
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect_from(lo, gw.addr).await);
    }
    // The listener takes connections in order: a request on the fifth is answered 429.
    let mut fifth = connect_from(lo, gw.addr).await;
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut fifth).await;
    assert_eq!(status_of(&answer), 429, "{answer}");
    assert!(answer.to_lowercase().contains("retry-after:"), "{answer}");
    assert!(answer.contains(r#""code":"RATE_LIMITED""#), "{answer}");
    // Another address is not affected.
    let mut other = connect_from(IpAddr::from([127, 0, 0, 2]), gw.addr).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_to_close(&mut other).await), 200);
    drop(idle);
    gw.stop().await;
}

#[tokio::test]
async fn slow_headers_slow_bodies_and_idle_connections_are_dropped() {
    let gw = Gateway::start_with(|c| {
        c.http.header_timeout = Duration::from_secs(1);
        c.http.body_timeout = Duration::from_secs(1);
    })
    .await;
    let lo = IpAddr::from([127, 0, 0, 1]);
    // Nothing sent at all.
    let mut silent = connect_from(lo, gw.addr).await;
    // Half a request head.
    let mut slow_head = connect_from(lo, gw.addr).await;
    slow_head
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // A whole head and part of the body it announced.
    let mut slow_body = connect_from(lo, gw.addr).await;
    slow_body
        .write_all(
            b"POST /api/pair HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"pairToken\":",
        )
        .await
        .unwrap();
    // A keep-alive connection after one answer.
    let mut idle = connect_from(lo, gw.addr).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();

    assert_eq!(read_to_close(&mut silent).await, "");
    assert_eq!(read_to_close(&mut slow_head).await, "");
    let answer = read_to_close(&mut slow_body).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains(r#""code":"BAD_REQUEST""#), "{answer}");
    assert!(!answer.contains("pairToken"), "{answer}");
    let answer = read_to_close(&mut idle).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    gw.stop().await;
}

#[tokio::test]
async fn oversized_heads_and_bad_request_lines_are_refused_and_closed() {
    let gw = Gateway::start().await;
    let lo = IpAddr::from([127, 0, 0, 1]);
    let mut big = connect_from(lo, gw.addr).await;
    let head = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let _ = big.write_all(head.as_bytes()).await;
    // hyper answers these itself (`Server::on_error` in hyper's h1 role), with a status line
    // and no body; http1::Builder has no hook to give them the contract's JSON body.
    assert_eq!(status_of(&read_to_close(&mut big).await), 431);
    let mut bad = connect_from(lo, gw.addr).await;
    bad.write_all(b"GARBAGE\x01 / NOT-HTTP\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_to_close(&mut bad).await), 400);
    gw.stop().await;
}

/// Raises this process's own fd limit (the test holds over a thousand sockets).
fn raise_own_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on our own process with a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_at_fd_limit_1024_leave_others_served() {
    use std::os::unix::process::CommandExt;
    raise_own_fd_limit();
    let cwd = tempfile::tempdir().unwrap();
    let conf = cwd.path().join("latchkey.toml");
    std::fs::write(&conf, "[http]\nheader_timeout_secs = 2\n").unwrap();
    let data = cwd.path().join("data");
    let mut cmd = daemon::command(
        cwd.path(),
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    cmd.arg("--data-dir").arg(&data).arg("--config").arg(&conf);
    // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
    unsafe {
        cmd.pre_exec(|| {
            let rl = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let d = daemon::Daemon::start(cmd);
    assert!(d.logs().contains("fd_limit=1024"), "{}", d.logs());

    // 1,100 half-sent requests from 127.0.0.1, held open.
    let lo = IpAddr::from([127, 0, 0, 1]);
    let mut stalled = Vec::new();
    for _ in 0..1100 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(lo, 0)).unwrap();
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), sock.connect(d.addr)).await
        else {
            continue;
        };
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await;
        stalled.push(s);
    }
    // Another address is served while they are held.
    let started = Instant::now();
    let mut other = connect_from(IpAddr::from([127, 0, 0, 2]), d.addr).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut other).await;
    eprintln!(
        "127.0.0.2 served in {:?} beside {} stalled connections",
        started.elapsed(),
        stalled.len()
    );
    assert_eq!(status_of(&answer), 200, "{answer}");
    // Every stalled one is dropped (after the 2 s header timeout, or refused at once).
    let closed = join_all(stalled.iter_mut().map(|s| async move {
        let mut b = [0u8; 1024];
        let gone = async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), gone)
            .await
            .is_ok()
    }))
    .await;
    let held = closed.iter().filter(|c| !**c).count();
    assert_eq!(held, 0, "{held} stalled connections were never dropped");
    let (status, logs) = d.terminate(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{logs}");
    let warnings = logs.matches("cannot accept connections").count();
    assert!(
        warnings <= 1,
        "accept errors must not flood the log:\n{logs}"
    );
}
