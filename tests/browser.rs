//! The web UI in a real browser (Debian's chromium + chromedriver, driven with fantoccini):
//! log in, open /pair, screenshot it, decode the QR from the pixels, redeem the token over HTTP
//! and watch the page say "paired: NAME" by itself.
//!
//! Without chromium and chromedriver this test fails (it does not skip): `.ci/run` installs them
//! (`apt-get install chromium chromium-driver`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "support/node.rs"]
mod node;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Gateway;
use fantoccini::{ClientBuilder, Locator};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";
/// Bounds on waiting for things to happen (not performance assertions).
const WAIT: Duration = Duration::from_secs(30);

fn find_exe(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(exe: &PathBuf, log: PathBuf) -> Driver {
    let http = reqwest::Client::new();
    // A port just released can be taken in between; try a few.
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = driver.child.try_wait() {
                break;
            }
            if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await {
                let status: Value = r.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    return driver;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = driver.child.kill();
    }
    panic!("chromedriver did not come up; see {}", log.display());
}

/// chromium and chromedriver, or a failure that says how to install them.
fn browser_exes() -> (PathBuf, PathBuf) {
    let Some(chromium) = find_exe(&["chromium", "chromium-browser", "google-chrome"]) else {
        panic!(
            "chromium is not installed: `apt-get install chromium chromium-driver` (.ci/run does)"
        );
    };
    let Some(chromedriver) = find_exe(&["chromedriver"]) else {
        panic!("chromedriver is not installed: `apt-get install chromium-driver` (.ci/run does)");
    };
    (chromium, chromedriver)
}

/// chromedriver and a headless chromium session with its own profile under `scratch`.
async fn open_browser(
    chromium: &PathBuf,
    chromedriver: &PathBuf,
    scratch: &std::path::Path,
) -> (Driver, fantoccini::Client) {
    let driver = start_driver(chromedriver, scratch.join("chromedriver.log")).await;
    let profile = scratch.join("profile");
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-default-apps", "--disable-domain-reliability",
                "--window-size=1200,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&driver.url)
        .await
        .expect("a chromium session");
    (driver, c)
}

/// The browser reported no error (a CSP violation, a missing asset, a script error).
async fn assert_no_console_errors(http: &reqwest::Client, driver: &Driver, c: &fantoccini::Client) {
    let session = c.session_id().await.unwrap().unwrap();
    let log: Value = http
        .post(format!("{}/session/{session}/se/log", driver.url))
        .json(&json!({"type": "browser"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let errors: Vec<&Value> = log["value"]
        .as_array()
        .unwrap_or_else(|| panic!("chromedriver gave no browser log: {log}"))
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "browser console errors: {errors:#?}");
}

/// Clicks the element `css` and waits until `then` is on the page.
async fn click_then(c: &fantoccini::Client, css: &str, then: Locator<'_>, what: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(WAIT)
        .for_element(then)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn decode_qr(png: &[u8]) -> Option<String> {
    let img = image::load_from_memory(png).expect("a PNG").to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(img);
    prepared
        .detect_grids()
        .into_iter()
        .find_map(|g| g.decode().ok().map(|(_, content)| content))
}

async fn text_of(c: &fantoccini::Client, id: &str) -> String {
    c.execute(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
        vec![json!(id)],
    )
    .await
    .unwrap()
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_page_in_chromium_moves_on_when_the_phone_pairs() {
    let (chromium, chromedriver) = browser_exes();

    let gw = Gateway::start().await;
    let now = gw.state.now();
    gw.state
        .store
        .write_blocking(|tx| Ok(latchkey::admin::set_password(tx, PASSWORD, now)))
        .unwrap()
        .unwrap();
    let http = reqwest::Client::new();

    let scratch = tempfile::tempdir().unwrap();
    let (driver, c) = open_browser(&chromium, &chromedriver, scratch.path()).await;

    // Log in through the form.
    c.goto(&gw.url("/login")).await.unwrap();
    c.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    click_then(
        &c,
        "form[action='/login'] button[type=submit]",
        Locator::Css("section.stats"),
        "logged in and sent to the dashboard",
    )
    .await;
    assert_eq!(c.current_url().await.unwrap().as_str(), gw.url("/"));

    // The pairing page: its QR code, read back from the pixels, is the page's payload.
    c.goto(&gw.url("/pair")).await.unwrap();
    let shot = c.screenshot().await.unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(shots.join("browser-pair.png"), &shot).unwrap();
    let payload = text_of(&c, "payload").await;
    let decoded = decode_qr(&shot).expect("the screenshot shows a readable QR code");
    assert_eq!(decoded, payload);
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["v"], 1);
    assert_eq!(payload["host"], "127.0.0.1");
    assert_eq!(payload["port"], gw.addr.port());
    let countdown = text_of(&c, "countdown").await;
    assert!(countdown.contains(':'), "countdown runs: {countdown:?}");

    // A phone redeems it over HTTP.
    let r = http
        .post(gw.url("/api/pair"))
        .json(&json!({"pairToken": payload["pairToken"], "deviceInfo": {"name": "Browser Phone", "type": "mobile"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The page moves on by itself (pushed over /ws; no reload).
    let deadline = Instant::now() + WAIT;
    let mut status = text_of(&c, "pair-status").await;
    while status != "paired: Browser Phone" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = text_of(&c, "pair-status").await;
    }
    std::fs::write(
        shots.join("browser-paired.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    assert_eq!(
        status, "paired: Browser Phone",
        "the /pair page did not show the pairing without a reload (it listens on the WebSocket /ws)"
    );

    // The devices page lists the phone.
    c.goto(&gw.url("/devices")).await.unwrap();
    let table = c
        .find(Locator::Id("devices"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(table.contains("Browser Phone"), "{table}");

    // The nodes page: add a node, its QR carries the token; the node registers and comes
    // online, and the list says so live.
    c.goto(&gw.url("/nodes")).await.unwrap();
    c.find(Locator::Css("#add-node input[name=name]"))
        .await
        .unwrap()
        .send_keys("Browser door")
        .await
        .unwrap();
    click_then(
        &c,
        "#add-node button[type=submit]",
        Locator::Id("node-token"),
        "the token is shown",
    )
    .await;
    let shot = c.screenshot().await.unwrap();
    std::fs::write(shots.join("browser-nodes-token.png"), &shot).unwrap();
    let payload = text_of(&c, "payload").await;
    assert_eq!(decode_qr(&shot).expect("a readable QR code"), payload);
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["v"], 1);
    assert_eq!(payload["port"], gw.addr.port());
    let node_id = payload["node_id"].as_str().unwrap().to_owned();
    let r = node::register(
        &http,
        &gw.base,
        &node_id,
        payload["token"].as_str().unwrap(),
        "door",
    )
    .await;
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.unwrap();
    let mut ws = node::connect(&gw.ws_url(), reg["node_key"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(node::recv(&mut ws).await["type"], "hello");
    let (_node_task, mut commands) = node::serve(ws, node::Answer::Ok);
    let state_js =
        "const r = document.querySelector('tr[data-node-id=\"' + arguments[0] + '\"] .state'); \
                    return r ? r.textContent : null;";
    let deadline = Instant::now() + WAIT;
    let mut shown = String::new();
    while shown != "online" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        shown = c
            .execute(state_js, vec![json!(node_id)])
            .await
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    std::fs::write(
        shots.join("browser-nodes-online.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    assert_eq!(
        shown, "online",
        "the /nodes page did not show the node online live"
    );
    assert!(text_of(&c, "token-status")
        .await
        .starts_with("registered: Browser door"));

    // The Doors page: the node's door, its test open drives the node, and the decision shows
    // with a time in the browser's own words.
    c.goto(&gw.url("/doors")).await.unwrap();
    let door = c
        .find(Locator::Css("section.door"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        door.contains("Browser door") && door.contains("online"),
        "{door}"
    );
    click_then(
        &c,
        "section.door form button[type=submit]",
        Locator::Id("test-open-result"),
        "the test open's result",
    )
    .await;
    let result = text_of(&c, "test-open-result").await;
    assert!(result.contains("opened"), "{result}");
    let unlock = tokio::time::timeout(WAIT, commands.recv())
        .await
        .expect("the node got a command")
        .unwrap();
    assert_eq!(unlock["command"], "unlock", "{unlock}");
    let shown = c
        .execute(
            "const t = document.querySelector('section.door time[datetime]'); \
             return t ? [t.dataset.local || '', t.textContent] : null;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        shown[0], "1",
        "time.js rendered the decision's time: {shown}"
    );
    let words = shown[1].as_str().unwrap_or_default();
    assert!(
        words.contains("ago") || words.contains("now") || words.contains("in "),
        "relative time: {words}"
    );
    std::fs::write(
        shots.join("browser-doors.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();

    // Every page came with a CSP, and the browser reported no error (a CSP violation, a
    // missing asset, a script error) on the way.
    let r = http.get(gw.url("/login")).send().await.unwrap();
    assert!(r.headers().contains_key("content-security-policy"));
    assert_no_console_errors(&http, &driver, &c).await;

    c.close().await.unwrap();
    drop(driver);
    gw.stop().await;
}

/// First run (issue 14): the set-up URL from the real daemon's log, opened in chromium, sets
/// the password, lands logged in on the dashboard, and the pairing page shows its QR code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_in_chromium_from_the_logged_url_to_the_pair_page() {
    let (chromium, chromedriver) = browser_exes();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut cmd = daemon::command(
        root.path(),
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    cmd.arg("--data-dir").arg(&data);
    let d = daemon::Daemon::start(cmd);
    let logs = d.logs();
    let url = logs
        .lines()
        .find_map(|l| daemon::field(l, "url").filter(|u| u.contains("/setup?code=")))
        .unwrap_or_else(|| panic!("no set-up URL in the log:\n{logs}"))
        .to_owned();
    let http = reqwest::Client::new();

    let scratch = tempfile::tempdir().unwrap();
    let (driver, c) = open_browser(&chromium, &chromedriver, scratch.path()).await;
    // The login page points at the set-up URL.
    c.goto(&d.url("/login")).await.unwrap();
    let hint = text_of(&c, "first-run").await;
    assert!(hint.contains("/setup?code="), "{hint}");

    c.goto(&url).await.unwrap();
    for id in ["password", "confirm"] {
        c.find(Locator::Id(id))
            .await
            .unwrap()
            .send_keys(PASSWORD)
            .await
            .unwrap();
    }
    click_then(
        &c,
        "form#setup button[type=submit]",
        Locator::Css("section.stats"),
        "the password is set and the admin is on the dashboard",
    )
    .await;
    assert_eq!(c.current_url().await.unwrap().as_str(), d.url("/"));

    click_then(
        &c,
        "a.button[href='/pair']",
        Locator::Id("payload"),
        "the pairing page",
    )
    .await;
    let shot = c.screenshot().await.unwrap();
    std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-first-run-pair.png"),
        &shot,
    )
    .unwrap();
    let payload = text_of(&c, "payload").await;
    assert_eq!(decode_qr(&shot).expect("a readable QR code"), payload);

    // The link is spent.
    assert_eq!(http.get(&url).send().await.unwrap().status(), 404);
    assert_no_console_errors(&http, &driver, &c).await;
    c.close().await.unwrap();
    drop(driver);
}
