//! Finding the gateway again (seed 001: "attempts connection to last known host"): when the
//! stored host and port do not answer, browse DNS-SD over mDNS for `_latchkey._tcp`, take the
//! record whose TXT `id` is the paired gateway's (never another), store its address and go on.

use std::path::Path;
use std::time::Duration;

pub use latchkey_proto::dns_sd::Found;
use latchkey_proto::dns_sd::{browsing_enabled, find};

use crate::credentials::{Credentials, CredentialsError};

/// How long the stored address gets to accept a TCP connection.
pub const PROBE_LIMIT: Duration = Duration::from_secs(3);
/// How long a browse waits for the gateway's record.
pub const BROWSE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("mDNS: {0}")]
    Mdns(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// Whether `host:port` accepts a TCP connection within `limit`.
pub async fn answers(host: &str, port: u16, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

/// Browses for the gateway `gateway_id` for at most `limit`; records of other ids are skipped.
pub async fn browse(gateway_id: &str, limit: Duration) -> Result<Option<Found>, DiscoverError> {
    let id = gateway_id.to_owned();
    tokio::task::spawn_blocking(move || find(&id, limit))
        .await
        .map_err(|e| DiscoverError::Mdns(e.to_string()))?
        .map_err(DiscoverError::Mdns)
}

/// If the stored address does not answer, finds the gateway by id, stores its new address in
/// `path` and says so through `status`. Returns whether the credentials changed.
pub async fn refresh_address(
    creds: &mut Credentials,
    path: &Path,
    mut status: impl FnMut(&str),
) -> Result<bool, DiscoverError> {
    if !browsing_enabled() || answers(&creds.gateway_host, creds.gateway_port, PROBE_LIMIT).await {
        return Ok(false);
    }
    status(&format!(
        "gateway {} does not answer at {}; looking for it on the LAN (mDNS)",
        creds.gateway_id,
        creds.base_url()
    ));
    let Some(found) = browse(&creds.gateway_id, BROWSE_LIMIT).await? else {
        status("not found on the LAN; trying the stored address");
        return Ok(false);
    };
    let host = found.ip.to_string();
    if host == creds.gateway_host && found.port == creds.gateway_port {
        return Ok(false);
    }
    creds.gateway_host = host;
    creds.gateway_port = found.port;
    creds.ws_url = format!("{}/ws", creds.base_url().replacen("http", "ws", 1));
    creds.save(path)?;
    status(&format!(
        "found gateway {} at {}; stored the new address",
        creds.gateway_id,
        creds.base_url()
    ));
    Ok(true)
}
