//! Endpoint actions: what a grant does (PROTOCOL.md §7.2 step 11).
//!
//! - `command`: runs argv directly (no shell) in its own process group, with
//!   `LATCHKEY_ENDPOINT`, `LATCHKEY_DEVICE_ID` and `LATCHKEY_DEVICE_NAME` in its environment,
//!   stdin closed, and a timeout after which the whole group is killed. The grant's result
//!   waits for the command's exit status, so `GRANTED` means it succeeded; keep door commands
//!   short (the phone waits about 10 s for the result).
//! - `gpio`: drives one line of a Linux GPIO character device active for `pulse_ms`, then
//!   inactive, then releases it. The result is sent as soon as the line is active (the door
//!   is open); the rest of the pulse runs in the background. Pulses of one line never overlap.
//! - `node`: sends `unlock` with `pulse_ms` to the endpoint node's session and waits (bounded)
//!   for its result (docs/NODES.md §5); an offline, silent or refusing node is an error, so the
//!   grant answers `ACTION_FAILED` with the reason. Without a node hub (unit tests) it fails.
//! - `none`: nothing to drive; the decision is only recorded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::endpoint::Endpoint;
use crate::config::ActionConfig;
use crate::registry::DeviceId;

/// Bytes of a failing command's stderr kept for the log.
const STDERR_KEEP: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("command exited with {status}{}", stderr_suffix(.stderr))]
    Exit { status: String, stderr: String },
    #[error("command still running after {0} s; killed")]
    Timeout(u64),
    #[error("waiting for the command failed: {0}")]
    Wait(std::io::Error),
    #[error("GPIO {chip} line {line}: {message}")]
    Gpio {
        chip: String,
        line: u32,
        message: String,
    },
    #[error("endpoint nodes are not available here")]
    NodeUnsupported,
    #[error("{0}")]
    Node(#[from] crate::nodes::UnlockError),
}

fn stderr_suffix(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; stderr: {s}")
    }
}

/// Who a grant is for, as the action sees it.
#[derive(Debug, Clone)]
pub struct Grantee {
    pub device_id: DeviceId,
    pub device_name: String,
}

/// One lock per GPIO line (chip path, offset), so two grants pulse one after the other. An
/// async lock: a grant waiting for the line waits on the runtime, not on one of the few
/// blocking threads (`cli::BLOCKING_THREADS`) the registry's reads need.
type LineLocks = HashMap<(PathBuf, u32), Arc<tokio::sync::Mutex<()>>>;

/// Runs endpoint actions; one per gateway.
#[derive(Default)]
pub struct Actions {
    gpio_lines: Mutex<LineLocks>,
    nodes: Option<Arc<crate::nodes::NodeHub>>,
}

impl Actions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Actions that can drive endpoint nodes through `hub`.
    pub fn with_nodes(hub: Arc<crate::nodes::NodeHub>) -> Self {
        Self {
            nodes: Some(hub),
            ..Self::default()
        }
    }

    /// Runs `endpoint`'s action for `who`.
    pub async fn run(&self, endpoint: &Endpoint, who: &Grantee) -> Result<(), ActionError> {
        self.run_as(endpoint, who, &format!("device:{}", who.device_id))
            .await
    }

    /// Runs `endpoint`'s action; `origin` is who asked, as the event log records it.
    pub async fn run_as(
        &self,
        endpoint: &Endpoint,
        who: &Grantee,
        origin: &str,
    ) -> Result<(), ActionError> {
        match &endpoint.action {
            ActionConfig::None => Ok(()),
            ActionConfig::Node { node_id, pulse_ms } => match &self.nodes {
                Some(hub) => {
                    hub.unlock(node_id, *pulse_ms, &endpoint.id, origin).await?;
                    Ok(())
                }
                None => Err(ActionError::NodeUnsupported),
            },
            ActionConfig::Command { argv, timeout_secs } => {
                run_command(argv, *timeout_secs, &endpoint.id, who).await
            }
            ActionConfig::Gpio {
                chip,
                line,
                active_low,
                pulse_ms,
            } => {
                let path = chip_path(chip);
                let lock = {
                    let mut map = self.gpio_lines.lock().unwrap_or_else(|p| p.into_inner());
                    map.entry((path.clone(), *line)).or_default().clone()
                };
                pulse(
                    lock,
                    path,
                    *line,
                    *active_low,
                    Duration::from_millis(*pulse_ms),
                )
                .await
            }
        }
    }
}

/// `gpiochip0` → `/dev/gpiochip0`; a path is taken as it is.
fn chip_path(chip: &str) -> PathBuf {
    if chip.contains('/') {
        PathBuf::from(chip)
    } else {
        PathBuf::from("/dev").join(chip)
    }
}

async fn run_command(
    argv: &[String],
    timeout_secs: u64,
    endpoint: &str,
    who: &Grantee,
) -> Result<(), ActionError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(ActionError::Spawn {
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"),
        });
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("LATCHKEY_ENDPOINT", endpoint)
        .env("LATCHKEY_DEVICE_ID", who.device_id.as_str())
        .env("LATCHKEY_DEVICE_NAME", &who.device_name)
        // The child must not speak to systemd on the daemon's behalf.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ActionError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let stderr = child.stderr.take().map(|mut s| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = (&mut s)
                .take(STDERR_KEEP as u64)
                .read_to_end(&mut buf)
                .await;
            // Drain the rest so the child never blocks on a full pipe.
            let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
            String::from_utf8_lossy(&buf).trim().to_owned()
        })
    });
    let waited = tokio::time::timeout(Duration::from_secs(timeout_secs), child.wait()).await;
    let outcome = match waited {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(ActionError::Exit {
            status: status.to_string(),
            stderr: String::new(),
        }),
        Ok(Err(e)) => Err(ActionError::Wait(e)),
        Err(_) => {
            if let Some(pgid) = pgid {
                kill_group(pgid);
            }
            let _ = child.kill().await;
            Err(ActionError::Timeout(timeout_secs))
        }
    };
    match outcome {
        Err(ActionError::Exit { status, .. }) => {
            let stderr = match stderr {
                Some(h) => tokio::time::timeout(Duration::from_secs(1), h)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default(),
                None => String::new(),
            };
            Err(ActionError::Exit { status, stderr })
        }
        other => other,
    }
}

/// Kills a command's whole process group (it may have started children of its own).
fn kill_group(pgid: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the process
    // group the child leads (`process_group(0)` above), never our own group.
    let _ = unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

async fn pulse(
    lock: Arc<tokio::sync::Mutex<()>>,
    chip: PathBuf,
    line: u32,
    active_low: bool,
    length: Duration,
) -> Result<(), ActionError> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let chip_name = chip.display().to_string();
    let serial = lock.lock_owned().await;
    tokio::task::spawn_blocking(move || {
        let _serial = serial;
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(&chip)
            .with_consumer("latchkey")
            .with_line(line)
            .as_output(gpiocdev::line::Value::Active);
        if active_low {
            builder.as_active_low();
        }
        let req = match builder.request() {
            Ok(r) => r,
            Err(e) => {
                let _ = started_tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = started_tx.send(Ok(()));
        std::thread::sleep(length);
        if let Err(e) = req.set_value(line, gpiocdev::line::Value::Inactive) {
            tracing::error!(chip = %chip.display(), line, error = %e, "cannot end the GPIO pulse");
        }
        // Dropping the request releases the line.
    });
    match started_rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(ActionError::Gpio {
            chip: chip_name,
            line,
            message,
        }),
        Err(_) => Err(ActionError::Gpio {
            chip: chip_name,
            line,
            message: "the GPIO worker stopped".into(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::access::endpoint::Endpoints;
    use crate::config::EndpointConfig;

    fn endpoint(action: ActionConfig) -> Endpoint {
        Endpoints::from_config(&[EndpointConfig {
            id: "front".into(),
            name: None,
            devices: None,
            action,
        }])
        .resolve("")
        .cloned()
        .unwrap()
    }

    fn who() -> Grantee {
        Grantee {
            device_id: DeviceId::from_bytes([3; 16]),
            device_name: "Ana's phone; rm -rf /".into(),
        }
    }

    #[tokio::test]
    async fn command_gets_env_and_no_shell() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "printf '%s|%s|%s|%s' \"$LATCHKEY_ENDPOINT\" \"$LATCHKEY_DEVICE_ID\" \"$LATCHKEY_DEVICE_NAME\" \"$1\" > {}",
            out.display()
        );
        let ep = endpoint(ActionConfig::Command {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                script,
                "sh".into(),
                "$HOME;x".into(),
            ],
            timeout_secs: 5,
        });
        Actions::new().run(&ep, &who()).await.unwrap();
        let got = std::fs::read_to_string(out).unwrap();
        assert_eq!(
            got,
            format!(
                "front|{}|Ana's phone; rm -rf /|$HOME;x",
                DeviceId::from_bytes([3; 16])
            )
        );
    }

    #[tokio::test]
    async fn failures_and_timeouts() {
        let a = Actions::new();
        let fail = endpoint(ActionConfig::Command {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo nope >&2; exit 3".into(),
            ],
            timeout_secs: 5,
        });
        let e = a.run(&fail, &who()).await.unwrap_err();
        assert!(e.to_string().contains("exit status: 3"), "{e}");
        assert!(e.to_string().contains("nope"), "{e}");

        let missing = endpoint(ActionConfig::Command {
            argv: vec!["/nonexistent/latchkey-door".into()],
            timeout_secs: 5,
        });
        assert!(matches!(
            a.run(&missing, &who()).await,
            Err(ActionError::Spawn { .. })
        ));

        // The child and its own child are both killed at the timeout.
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let slow = endpoint(ActionConfig::Command {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("(sleep 2; touch {}) & sleep 30", marker.display()),
            ],
            timeout_secs: 1,
        });
        let started = std::time::Instant::now();
        assert!(matches!(
            a.run(&slow, &who()).await,
            Err(ActionError::Timeout(1))
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the grandchild survived the kill");

        assert!(matches!(
            a.run(
                &endpoint(ActionConfig::Node {
                    node_id: "n1".into(),
                    pulse_ms: 3000,
                }),
                &who()
            )
            .await,
            Err(ActionError::NodeUnsupported)
        ));
        assert!(a.run(&endpoint(ActionConfig::None), &who()).await.is_ok());
    }

    #[tokio::test]
    async fn gpio_without_a_chip_fails_cleanly() {
        let ep = endpoint(ActionConfig::Gpio {
            chip: "/nonexistent/gpiochip9".into(),
            line: 4,
            active_low: false,
            pulse_ms: 10,
        });
        let e = Actions::new().run(&ep, &who()).await.unwrap_err();
        assert!(matches!(e, ActionError::Gpio { line: 4, .. }), "{e}");
        assert_eq!(chip_path("gpiochip0"), PathBuf::from("/dev/gpiochip0"));
    }
}
