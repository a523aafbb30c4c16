//! Reads `NTPSynchronized` from systemd-timedated (`org.freedesktop.timedate1`) now and then
//! and hands it to the clock-trust tracker. An absent service means "unknown".

use std::time::Duration;

use zbus::zvariant::OwnedValue;

use crate::clocktrust::NtpSync;
use crate::state::AppState;

/// timedated is bus-activated and exits when idle; asking every few minutes is plenty.
const POLL_EVERY: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn spawn(conn: zbus::Connection, state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = state.shutdown.cancelled() => return,
            }
            let ntp = read(&conn).await;
            state.clock_trust.set_ntp(ntp, state.now());
        }
    });
}

/// One reading.
pub async fn read(conn: &zbus::Connection) -> NtpSync {
    let call = conn.call_method(
        Some("org.freedesktop.timedate1"),
        "/org/freedesktop/timedate1",
        Some("org.freedesktop.DBus.Properties"),
        "Get",
        &("org.freedesktop.timedate1", "NTPSynchronized"),
    );
    let reply = match tokio::time::timeout(TIMEOUT, call).await {
        Ok(Ok(r)) => r,
        _ => return NtpSync::Unknown,
    };
    let value = match reply.body().deserialize::<OwnedValue>() {
        Ok(v) => v,
        Err(_) => return NtpSync::Unknown,
    };
    match bool::try_from(&value) {
        Ok(true) => NtpSync::Yes,
        Ok(false) => NtpSync::No,
        Err(_) => NtpSync::Unknown,
    }
}
