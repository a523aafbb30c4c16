//! systemd integration: `READY=1` once we serve, `WATCHDOG=1` only while the runtime and the
//! database both answer (a hung store must get us restarted, not kept alive by a bare timer).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

pub fn ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
            tracing::warn!(error = %e, "sd_notify READY failed");
        }
    }
}

pub fn stopping() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    }
}

/// The watchdog period systemd asked for, if any. Follows sd_watchdog_enabled(3): `WATCHDOG_USEC`
/// set and non-zero, and `WATCHDOG_PID`, *when present*, naming this process. (The sd-notify
/// crate's own check insists on `WATCHDOG_PID`, so a manager that leaves it out got no pings.)
pub fn watchdog_interval() -> Option<Duration> {
    parse_watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

pub fn spawn_watchdog(store: Store, shutdown: CancellationToken) {
    let Some(period) = watchdog_interval() else {
        return;
    };
    // Half the period, as sd_watchdog_enabled(3) recommends.
    let every = period / 2;
    tracing::info!(?every, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match tokio::time::timeout(every, store.ping()).await {
                Ok(Ok(())) => {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "database check failed; withholding watchdog ping")
                }
                Err(_) => tracing::error!("database check timed out; withholding watchdog ping"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env_follows_sd_watchdog_enabled() {
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(parse_watchdog(Some("200000"), None, 7), ms(200));
        assert_eq!(parse_watchdog(Some("200000"), Some("7"), 7), ms(200));
        assert_eq!(parse_watchdog(Some("200000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("x"), None, 7), None);
        assert_eq!(parse_watchdog(None, Some("7"), 7), None);
    }
}
