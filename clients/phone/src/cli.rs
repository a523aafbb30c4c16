//! The `latchkey phone unlock|listen|publish` commands: argument handling and output around
//! the library functions (`phone pair` is small enough to live in `crate::cli`).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use super::credentials;
use super::unlock::{self, Stage, Timeouts};
use super::Credentials;
use crate::clock::{Clock, SystemClock};

/// Parses the JSON argument of `phone publish` (a usage error when it is not JSON).
pub fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

fn unix_now() -> u64 {
    u64::try_from(SystemClock.now()).unwrap_or(0)
}

fn timeouts(given: Option<Vec<f64>>) -> anyhow::Result<Timeouts> {
    let Some(t) = given else {
        return Ok(Timeouts::default());
    };
    let d = |s: f64| Duration::try_from_secs_f64(s).ok().filter(|d| !d.is_zero());
    match t.as_slice() {
        [a, b, c, e] => {
            let (Some(scan), Some(connect), Some(challenge), Some(server)) =
                (d(*a), d(*b), d(*c), d(*e))
            else {
                bail!("--timeouts takes four positive numbers of seconds");
            };
            Ok(Timeouts {
                scan,
                connect,
                challenge,
                server,
            })
        }
        _ => bail!("--timeouts takes four numbers: scan,connect,challenge,server"),
    }
}

/// The TOTP step for this attempt; waits for the next period when both codes of this one
/// were already sent.
async fn choose_step(path: &Path) -> u64 {
    let last = credentials::load_step(path);
    loop {
        let now = unix_now();
        if let Some(step) = unlock::next_step(last, now) {
            return step;
        }
        let wait = latchkey_proto::TOTP_PERIOD_SECS - now % latchkey_proto::TOTP_PERIOD_SECS;
        eprintln!(
            "latchkey: both codes of this TOTP period were used; waiting {wait} s for the next"
        );
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

pub async fn unlock(
    endpoint: &str,
    adapter: Option<&str>,
    json: bool,
    given: Option<Vec<f64>>,
    path: &Path,
) -> anyhow::Result<()> {
    let creds = Credentials::load(path)?;
    let limits = timeouts(given)?;
    let session = bluer::Session::new()
        .await
        .context("cannot reach BlueZ on the system D-Bus")?;
    let adapter = match adapter {
        Some(name) => session.adapter(name)?,
        None => session
            .default_adapter()
            .await
            .context("no Bluetooth adapter")?,
    };
    let step = choose_step(path).await;
    let started = std::time::Instant::now();
    let result = unlock::unlock(
        &adapter,
        &creds,
        endpoint,
        step,
        limits,
        unix_now,
        |stage| {
            tracing::debug!(stage = stage.as_str(), "unlock");
            if stage == Stage::Completing {
                // From here on the gateway may see (and spend) this step.
                if let Err(e) = credentials::store_step(path, step) {
                    tracing::warn!(error = %e, "cannot record the TOTP step sent");
                }
            }
        },
    )
    .await;
    let total = started.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let o = match result {
        Ok(o) => o,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    json!({ "status": "ERROR", "granted": false, "code": e.code(),
                            "message": e.to_string(), "ms": { "total": ms(total) } })
                );
            }
            bail!("{}: {e}", e.code())
        }
    };
    let status = o.status.as_str();
    let granted = o.status == latchkey_proto::Status::Granted;
    if json {
        println!(
            "{}",
            json!({
                "status": status,
                "granted": granted,
                "authenticated": o.authenticated,
                "retryAfter": o.retry_after,
                "gateway": { "address": o.gateway.address, "name": o.gateway.name, "rssi": o.gateway.rssi },
                "attOps": o.att_ops,
                "ms": { "scan": ms(o.timings.scan), "connect": ms(o.timings.connect),
                        "challenge": ms(o.timings.challenge), "decision": ms(o.timings.decision),
                        "total": ms(total) },
            })
        );
    } else if granted {
        println!("granted");
    } else {
        let note = if o.authenticated {
            ""
        } else {
            " (unconfirmed: the gateway could not sign it)"
        };
        let retry = if o.retry_after > 0 {
            format!(", retry in {} s", o.retry_after)
        } else {
            String::new()
        };
        println!("denied: {status}{retry}{note}");
    }
    if granted {
        Ok(())
    } else {
        bail!("access denied: {status}")
    }
}

pub async fn listen(path: &Path, since: Option<u64>) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    super::sync::listen(
        path,
        since,
        stdout.lock(),
        |msg| eprintln!("latchkey: {msg}"),
        crate::shutdown_signal()?,
    )
    .await?;
    Ok(())
}

pub async fn publish(path: &Path, topic: &str, data: serde_json::Value) -> anyhow::Result<()> {
    let seq = super::sync::publish(path, topic, data).await?;
    println!("{seq}");
    Ok(())
}
