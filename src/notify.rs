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

/// The watchdog period systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
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
