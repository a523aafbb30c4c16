//! The phone's side of the sync channel (CONTRACT §4), over [`crate::sync_client`]:
//! `phone listen` prints every event once, in order, across reconnects and restarts (the last
//! seq it printed is kept beside the credentials), and `phone publish` sends one event.

use std::future::Future;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use super::credentials::{self, Credentials, CredentialsError};
use crate::sync_client::{Incoming, SyncClient, SyncError};

/// How often `phone publish` dials before it gives up.
const PUBLISH_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum PhoneSyncError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("this device has been revoked (DEVICE_REVOKED): pair it again to get a new key")]
    Revoked,
    #[error("the gateway does not accept this device key (UNAUTHORIZED): pair it again")]
    Unauthorized,
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    #[error(transparent)]
    Sync(SyncError),
    #[error("writing the event out: {0}")]
    Output(std::io::Error),
    #[error(transparent)]
    Discover(#[from] crate::discover::DiscoverError),
    #[error("recording the last seen seq in {path}: {source}")]
    Seq {
        path: String,
        source: std::io::Error,
    },
}

impl From<SyncError> for PhoneSyncError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Revoked => Self::Revoked,
            SyncError::Unauthorized => Self::Unauthorized,
            SyncError::Refused { code, message } => Self::Refused { code, message },
            other => Self::Sync(other),
        }
    }
}

/// Where the gateway's WebSocket is: what it told us at pairing, else the QR's address.
fn ws_url(c: &Credentials) -> String {
    if c.ws_url.is_empty() {
        format!("{}/ws", c.base_url().replacen("http", "ws", 1))
    } else {
        c.ws_url.clone()
    }
}

/// `GET /api/me` (CONTRACT §2, "used on reconnect"): the gateway still knows this device?
/// Returns its registry name; `None` when the gateway cannot be asked now (the WebSocket
/// keeps trying).
async fn whoami(c: &Credentials) -> Result<Option<String>, PhoneSyncError> {
    let Ok(http) = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
    else {
        return Ok(None);
    };
    let Ok(mut auth) =
        reqwest::header::HeaderValue::from_str(&format!("Device {}", c.device_key.expose()))
    else {
        return Err(PhoneSyncError::Unauthorized);
    };
    auth.set_sensitive(true);
    let Ok(resp) = http
        .get(format!("{}/api/me", c.base_url()))
        .header(reqwest::header::AUTHORIZATION, auth)
        .send()
        .await
    else {
        return Ok(None);
    };
    match resp.status().as_u16() {
        401 => Err(PhoneSyncError::Unauthorized),
        403 => Err(PhoneSyncError::Revoked),
        // A capped read, as every answer the phone takes from the network.
        200 => Ok(crate::provisioning::answer(resp)
            .await
            .ok()
            .and_then(|a| a.body["name"].as_str().map(str::to_owned))),
        _ => Ok(None),
    }
}

/// One output line per event (the frame as the gateway sent it) or reset.
fn line(x: &Incoming) -> (i64, Value) {
    match x {
        Incoming::Event(ev) => (
            ev.seq,
            json!({ "type": "event", "seq": ev.seq, "topic": ev.topic, "ts": ev.ts, "data": ev.data }),
        ),
        Incoming::Reset { seq } => (*seq, json!({ "type": "reset", "seq": seq })),
    }
}

/// Listens until `stop` resolves (then `Ok`) or the device is revoked. Starts after `since`,
/// else after the seq recorded beside the credentials, else from now. Each event is written
/// as one JSON line and flushed before its seq is recorded, so a crash can repeat the last
/// event but never skip one. `status` hears progress for humans (stderr).
pub async fn listen(
    path: &Path,
    since: Option<u64>,
    mut out: impl Write,
    mut status: impl FnMut(&str),
    stop: impl Future<Output = ()>,
) -> Result<(), PhoneSyncError> {
    tokio::pin!(stop);
    let mut creds = Credentials::load(path)?;
    tokio::select! {
        r = crate::discover::refresh_address(&mut creds, path, &mut status) => r?,
        _ = &mut stop => return Ok(()),
    };
    let name = tokio::select! {
        r = whoami(&creds) => r?,
        _ = &mut stop => return Ok(()),
    };
    let record = |seq: i64| {
        credentials::store_seq(path, u64::try_from(seq).unwrap_or(0)).map_err(|source| {
            PhoneSyncError::Seq {
                path: credentials::Credentials::seq_path(path)
                    .display()
                    .to_string(),
                source,
            }
        })
    };
    let since = since.or_else(|| credentials::has_seq(path).then(|| credentials::load_seq(path)));
    let mut client = SyncClient::new(ws_url(&creds), creds.device_key.clone());
    if let Some(s) = since {
        client = client.since(i64::try_from(s).unwrap_or(i64::MAX));
    }
    tokio::select! {
        r = client.connect() => r?,
        _ = &mut stop => return Ok(()),
    }
    let from = client.last_seq().unwrap_or(0);
    if since.is_none() {
        // From now on; a later run resumes here.
        record(from)?;
    }
    let who = match name {
        Some(n) => format!("{n:?} ({})", creds.device_id),
        None => format!("device {}", creds.device_id),
    };
    status(&format!(
        "listening to {} as {who} (events after seq {from})",
        creds.gateway_id
    ));
    loop {
        let next = tokio::select! {
            n = client.next() => n?,
            _ = &mut stop => {
                client.close().await;
                return Ok(());
            }
        };
        let (seq, value) = line(&next);
        writeln!(out, "{value}").map_err(PhoneSyncError::Output)?;
        out.flush().map_err(PhoneSyncError::Output)?;
        record(seq)?;
    }
}

/// Publishes one event; returns its seq once the gateway acknowledged it. `status` hears
/// progress for humans (a gateway found at a new address).
pub async fn publish(
    path: &Path,
    topic: &str,
    data: Value,
    status: impl FnMut(&str),
) -> Result<i64, PhoneSyncError> {
    let mut creds = Credentials::load(path)?;
    crate::discover::refresh_address(&mut creds, path, status).await?;
    let mut client =
        SyncClient::new(ws_url(&creds), creds.device_key.clone()).max_attempts(PUBLISH_ATTEMPTS);
    let seq = client.publish(topic, data).await?;
    client.close().await;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_the_frames() {
        let ev = crate::sync_client::SyncEvent {
            seq: 7,
            topic: "access.granted".into(),
            ts: "2026-01-13T10:40:00Z".into(),
            data: json!({"endpoint": "demo-door"}),
        };
        let (seq, v) = line(&Incoming::Event(ev));
        assert_eq!(seq, 7);
        assert_eq!(
            v.to_string(),
            r#"{"type":"event","seq":7,"topic":"access.granted","ts":"2026-01-13T10:40:00Z","data":{"endpoint":"demo-door"}}"#
        );
        assert_eq!(
            line(&Incoming::Reset { seq: 9 }).1,
            json!({"type":"reset","seq":9})
        );
    }
}
