//! Prometheus text exposition for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::events;
use crate::state::AppState;
use crate::store::StoreError;

struct Gauges {
    devices: i64,
    revoked: i64,
    latest_seq: i64,
    retained: i64,
}

pub async fn render(state: &AppState) -> Result<String, StoreError> {
    let g = state
        .store
        .read(|c| {
            let (devices, revoked) =
                c.query_row("SELECT COUNT(*), COUNT(revoked_at) FROM devices", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let retained = c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
            Ok(Gauges {
                devices,
                revoked,
                latest_seq: events::latest_seq(c)?,
                retained,
            })
        })
        .await?;
    let m = &state.metrics;
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, value: i64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let c = |a: &std::sync::atomic::AtomicU64| {
        i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
    };
    line(
        "latchkey_devices",
        "gauge",
        "Paired devices, revoked included.",
        g.devices,
    );
    line(
        "latchkey_devices_revoked",
        "gauge",
        "Revoked devices.",
        g.revoked,
    );
    line(
        "latchkey_event_seq",
        "gauge",
        "Newest event sequence number.",
        g.latest_seq,
    );
    line(
        "latchkey_events_retained",
        "gauge",
        "Events kept in the log.",
        g.retained,
    );
    line(
        "latchkey_pairings_total",
        "counter",
        "Successful pairings.",
        c(&m.pairings),
    );
    line(
        "latchkey_pair_failures_total",
        "counter",
        "Refused pairings.",
        c(&m.pair_failures),
    );
    line(
        "latchkey_login_failures_total",
        "counter",
        "Failed admin logins.",
        c(&m.login_failures),
    );
    line(
        "latchkey_password_checks_total",
        "counter",
        "Admin passwords checked (argon2 runs).",
        c(&m.password_checks),
    );
    line(
        "latchkey_rate_limited_total",
        "counter",
        "Requests refused by throttling.",
        c(&m.rate_limited),
    );
    line(
        "latchkey_ws_connections",
        "gauge",
        "Open WebSocket connections.",
        c(&m.ws_connections),
    );
    line(
        "latchkey_ws_connections_total",
        "counter",
        "WebSocket connections accepted.",
        c(&m.ws_connections_total),
    );
    line(
        "latchkey_ws_dropped_slow_total",
        "counter",
        "WebSockets closed for not keeping up.",
        c(&m.ws_dropped_slow),
    );
    line(
        "latchkey_access_granted_total",
        "counter",
        "Door grants.",
        c(&m.access_granted),
    );
    line(
        "latchkey_access_denied_total",
        "counter",
        "Door denials.",
        c(&m.access_denied),
    );
    line(
        "latchkey_ble_up",
        "gauge",
        "1 when the BLE door service is registered and advertising.",
        i64::from(state.ble.is_up()),
    );
    line(
        "latchkey_ble_registrations_total",
        "counter",
        "BLE GATT registrations (more than one: BlueZ or the adapter came back).",
        c(&state.ble.registrations),
    );
    line(
        "latchkey_ble_disconnects_total",
        "counter",
        "BLE peer disconnects seen.",
        c(&state.ble.disconnects),
    );
    let clock = state.clock_trust.assess(state.now());
    line(
        "latchkey_clock_ntp_synchronized",
        "gauge",
        "systemd-timedated NTPSynchronized: 1 yes, 0 no, -1 unknown.",
        clock.ntp.gauge(),
    );
    line(
        "latchkey_clock_phone_offset_seconds",
        "gauge",
        "Median of phone time minus gateway time over recent authenticated BLE frames.",
        clock.phone_offset_secs.unwrap_or(0),
    );
    line(
        "latchkey_clock_offset_samples",
        "gauge",
        "Recent authenticated BLE frames behind the offset.",
        i64::try_from(clock.samples).unwrap_or(i64::MAX),
    );
    line(
        "latchkey_clock_suspect",
        "gauge",
        "1 when the gateway clock looks wrong (see the log or /activity).",
        i64::from(clock.suspect),
    );
    Ok(out)
}
