//! The real `latchkey` binary as a child process: for what only a process shows (exit status,
//! stderr, signals, sd_notify, logs). Include with `#[path = "common/daemon.rs"] mod daemon;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a start-up may take before the test gives up (a bound on waiting, not a
/// performance assertion: debug builds on a loaded 2-core machine are slow).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_latchkey")
}

/// Environment variables that would let the caller's environment leak into a test.
const SCRUB: &[&str] = &[
    "LATCHKEY_DATA_DIR",
    "LATCHKEY_CONFIG",
    "LATCHKEY_LISTEN",
    "LATCHKEY_BLE",
    "LATCHKEY_MDNS",
    "LATCHKEY_LOG",
    "RUST_LOG",
    "STATE_DIRECTORY",
    "CREDENTIALS_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
];

/// `latchkey ARGS` with a scrubbed environment, in `cwd`.
pub fn command(cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).current_dir(cwd).stdin(Stdio::null());
    for v in SCRUB {
        c.env_remove(v);
    }
    // No test multicasts on the host's network; the discovery tests run in a namespace.
    c.env("LATCHKEY_MDNS", "off");
    c
}

/// Runs a CLI command to completion.
pub fn run(cwd: &Path, args: &[&str]) -> Output {
    command(cwd, args).output().expect("run latchkey")
}

/// Runs a CLI command with `input` on stdin.
pub fn run_with_stdin(cwd: &Path, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = command(cwd, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn latchkey");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait latchkey")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running `latchkey serve`.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    /// Everything the daemon wrote to stderr so far.
    pub logs: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `latchkey serve` from `cmd` (built with [`command`]) and waits for its ready line.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn latchkey serve");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("latchkey is ready") {
                    if let Some(addr) = field(&line, "listen").and_then(|a| a.parse().ok()) {
                        let _ = tx.send(addr);
                    }
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "latchkey serve did not become ready ({status:?}); stderr:\n{}",
                    logs.lock().unwrap()
                );
            }
        };
        Self {
            child,
            addr,
            base: format!("http://{addr}"),
            logs,
            reader: Some(reader),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits up to `limit` for the exit.
    pub fn terminate(mut self, limit: Duration) -> (Option<ExitStatus>, String) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let status = wait_timeout(&mut self.child, limit);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The pipe closed with the process: the reader has everything once it ends.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let logs = self.logs();
        (status, logs)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `name=` in a tracing fmt line.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    line[start..].split_whitespace().next()
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                // Not the control socket: it holds nothing, and is 0660 by design.
                out.push(p);
            }
        }
    }
    out
}

/// Waits until `GET url` answers 200 (bounded by [`START_TIMEOUT`]).
pub async fn wait_healthy(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
