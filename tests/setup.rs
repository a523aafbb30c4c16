//! First run in the browser (CONTRACT §2, issue 14 part 2): on a data dir with no admin
//! password the real `latchkey serve` prints a one-time set-up URL; the page it opens sets the
//! password and logs the admin in; wrong codes are 403 (throttled), and once a password exists,
//! however it was set, the page is 404.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/daemon.rs"]
mod daemon;

use std::path::Path;
use std::time::Duration;

use daemon::{command, run_with_stdin, Daemon};
use reqwest::header::COOKIE;
use serde_json::Value;

const PASSWORD: &str = "correct horse battery staple";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn serve(data: &Path) -> Daemon {
    let mut c = command(
        data.parent().unwrap(),
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    c.arg("--data-dir").arg(data);
    Daemon::start(c)
}

fn data_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    (root, data)
}

/// The set-up URL from the daemon's tracing line (`url=…`), checking it was logged once.
fn setup_url(d: &Daemon) -> String {
    let logs = d.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("open the set-up URL"))
        .collect();
    assert_eq!(lines.len(), 1, "logged once:\n{logs}");
    let url = daemon::field(lines[0], "url")
        .expect("url= field")
        .to_owned();
    // The terminal gets it too, on a line of its own.
    assert!(
        logs.lines().any(|l| l.trim() == url),
        "printed for the terminal:\n{logs}"
    );
    url
}

fn code_of(url: &str) -> String {
    url.split_once("code=").unwrap().1.to_owned()
}

fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
        .filter(|v| !v.is_empty())
}

/// The form's hidden `name` value.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    let start = html.find(&marker).expect(&marker) + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

struct Form {
    nonce: String,
    csrf: String,
}

async fn open_form(http: &reqwest::Client, url: &str) -> Form {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let nonce = set_cookie(&r, "latchkey_login").expect("pre-session cookie");
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"action="/setup""#), "{html}");
    // No inline script (the CSP would refuse it): every script comes from /static/.
    assert!(
        html.match_indices("<script").count()
            == html.match_indices(r#"<script src="/static/"#).count(),
        "{html}"
    );
    Form {
        csrf: hidden(&html, "csrf"),
        nonce,
    }
}

async fn post_setup(
    http: &reqwest::Client,
    base: &str,
    form: &Form,
    code: &str,
    password: &str,
    confirm: &str,
) -> reqwest::Response {
    http.post(format!("{base}/setup"))
        .header(COOKIE, format!("latchkey_login={}", form.nonce))
        .form(&[
            ("csrf", form.csrf.as_str()),
            ("code", code),
            ("password", password),
            ("confirm", confirm),
        ])
        .send()
        .await
        .unwrap()
}

async fn error_code(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_printed_url_sets_the_password_once_and_logs_in() {
    let (_root, data) = data_dir();
    let d = serve(&data);
    let http = http();
    let url = setup_url(&d);
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{}/setup?code=", d.addr.port())),
        "{url}"
    );
    let code = code_of(&url);
    // ≥ 64 bits: base64url of 16 bytes.
    assert!(code.len() >= 22, "{code}");

    // The login page says where the set-up URL is.
    let login = http.get(d.url("/login")).send().await.unwrap();
    let html = login.text().await.unwrap();
    assert!(
        html.contains("id=\"first-run\"") && html.contains("/setup?code="),
        "{html}"
    );

    // No code, a wrong code: 403.
    let r = http.get(d.url("/setup")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "FORBIDDEN");
    let r = http
        .get(d.url("/setup?code=AAAAAAAAAAAAAAAAAAAAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let form = open_form(&http, &url).await;
    // The form needs its CSRF token.
    let bad = Form {
        nonce: form.nonce.clone(),
        csrf: "forged".into(),
    };
    let r = post_setup(&http, &d.base, &bad, &code, PASSWORD, PASSWORD).await;
    assert_eq!(r.status(), 403);
    // A wrong code in the POST: 403.
    let r = post_setup(&http, &d.base, &form, "wrong", PASSWORD, PASSWORD).await;
    assert_eq!(r.status(), 403);
    // The password policy is the CLI's; a refused password does not spend the code.
    let r = post_setup(&http, &d.base, &form, &code, "short", "short").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("password must be"));
    let r = post_setup(&http, &d.base, &form, &code, PASSWORD, "something else").await;
    assert_eq!(r.status(), 400);

    let r = post_setup(&http, &d.base, &form, &code, PASSWORD, PASSWORD).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let session = set_cookie(&r, "latchkey_session").expect("logged in");
    let dash = http
        .get(d.url("/"))
        .header(COOKIE, format!("latchkey_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(dash.status(), 200, "the session works");
    assert!(dash.text().await.unwrap().contains("class=\"stats\""));

    // Spent: the page is gone for good, with the code or without.
    let r = post_setup(&http, &d.base, &form, &code, PASSWORD, PASSWORD).await;
    assert_eq!(r.status(), 404);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NOT_FOUND");

    // A restart with a password prints no set-up URL.
    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let d = serve(&data);
    assert!(!d.logs().contains("/setup?code="), "{}", d.logs());
    assert_eq!(
        http.get(d.url("/setup")).send().await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn a_restart_prints_a_new_code_and_the_old_one_dies() {
    let (_root, data) = data_dir();
    let d = serve(&data);
    let first = setup_url(&d);
    d.terminate(Duration::from_secs(5));
    let d = serve(&data);
    let second = setup_url(&d);
    assert_ne!(code_of(&first), code_of(&second));
    let http = http();
    let old = first.replace(
        &format!(
            ":{}/",
            first.split(':').nth(2).unwrap().split('/').next().unwrap()
        ),
        &format!(":{}/", d.addr.port()),
    );
    assert_eq!(http.get(&old).send().await.unwrap().status(), 403);
    assert_eq!(http.get(&second).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_password_set_from_the_cli_closes_the_page() {
    let (_root, data) = data_dir();
    let d = serve(&data);
    let url = setup_url(&d);
    let http = http();
    let form = open_form(&http, &url).await;
    let o = run_with_stdin(
        data.parent().unwrap(),
        &["--data-dir", data.to_str().unwrap(), "admin", "password"],
        &format!("{PASSWORD}\n"),
    );
    assert!(o.status.success(), "{}", daemon::stderr(&o));
    assert_eq!(http.get(&url).send().await.unwrap().status(), 404);
    let r = post_setup(
        &http,
        &d.base,
        &form,
        &code_of(&url),
        "another password",
        "another password",
    )
    .await;
    assert_eq!(r.status(), 404);
    let login = http
        .get(d.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(login.contains("id=\"password\"") && !login.contains("first-run"));
}

#[tokio::test]
async fn wrong_codes_are_throttled_like_logins() {
    let (_root, data) = data_dir();
    let d = serve(&data);
    let url = setup_url(&d);
    let http = http();
    for _ in 0..5 {
        let r = http.get(d.url("/setup?code=guess")).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }
    let r = http.get(d.url("/setup?code=guess")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, "RATE_LIMITED");
    // Even the right code waits: guessing is not free.
    assert_eq!(http.get(&url).send().await.unwrap().status(), 429);
}
