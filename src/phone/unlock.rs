//! `phone unlock`: open a door over BLE as a phone app would, following seed 000's states
//! (idle → scanning → deviceSelected → connecting → challenge → completing → completed | error)
//! with a timeout per stage. Three ATT operations after connecting: subscribe to Result, read
//! Challenge, write Auth (docs/PROTOCOL.md §8). Every exit path stops the scan and disconnects.
//!
//! Choices a real app must make too, and what BlueZ needs for them:
//! - a device counts as found only when it was heard during this scan (it has an `RSSI`);
//!   BlueZ also lists devices it merely remembers;
//! - and only when its advertisement names the gateway the phone paired with (the short
//!   gateway id in its manufacturer data, PROTOCOL.md §3): another latchkey gateway in range
//!   would only answer `UNKNOWN_DEVICE`;
//! - the auth frame is written with a write *request*: bluer's `write()` sends a write command
//!   (no response), which the gateway's write-only characteristic does not answer;
//! - the notify session is kept until after the disconnect, so ending it costs no fourth ATT
//!   operation (disabling the CCCD); the link's end ends it anyway;
//! - the TOTP step: one step per attempt, never one already sent (PROTOCOL.md §4.2); the caller
//!   picks it with [`next_step`] and remembers it from [`Stage::Completing`] on.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bluer::gatt::remote::CharacteristicWriteRequest;
use bluer::gatt::WriteOp;
use bluer::{AdapterEvent, DiscoveryFilter, DiscoveryTransport, Uuid};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use latchkey_proto as proto;

use super::Credentials;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Idle,
    Scanning,
    DeviceSelected,
    Connecting,
    Challenge,
    Completing,
    Completed,
    Error,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Idle => "idle",
            Stage::Scanning => "scanning",
            Stage::DeviceSelected => "deviceSelected",
            Stage::Connecting => "connecting",
            Stage::Challenge => "challenge",
            Stage::Completing => "completing",
            Stage::Completed => "completed",
            Stage::Error => "error",
        }
    }
}

/// Per-stage limits; seed 000's numbers by default.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub scan: Duration,
    pub connect: Duration,
    pub challenge: Duration,
    pub server: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            scan: Duration::from_secs(10),
            connect: Duration::from_secs(15),
            challenge: Duration::from_secs(10),
            server: Duration::from_secs(15),
        }
    }
}

/// The smallest ATT MTU that carries every frame in one PDU (PROTOCOL.md §3).
pub const MIN_MTU: usize = 114;
/// How long cleanup (stopping the scan, disconnecting) may take before we give up on it.
const CLEANUP_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error("no latchkey gateway found nearby")]
    TimeoutScan,
    #[error("the gateway did not accept the connection in time")]
    TimeoutConnect,
    #[error("the gateway did not hand out a challenge in time")]
    TimeoutChallenge,
    #[error("the gateway did not answer in time")]
    TimeoutServer,
    #[error("the gateway does not offer the latchkey door service")]
    NoService,
    #[error("Bluetooth adapter {0} is powered off")]
    PoweredOff(String),
    #[error("bluetooth: {0}")]
    Bluetooth(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("credentials: {0}")]
    Credentials(String),
}

impl UnlockError {
    /// Seed 000's error codes.
    pub fn code(&self) -> &'static str {
        match self {
            UnlockError::TimeoutScan => "TIMEOUT_SCAN",
            UnlockError::TimeoutConnect => "TIMEOUT_CONNECT",
            UnlockError::TimeoutChallenge => "TIMEOUT_CHALLENGE",
            UnlockError::TimeoutServer => "TIMEOUT_SERVER",
            UnlockError::NoService => "NO_SERVICE",
            UnlockError::PoweredOff(_) => "BLUETOOTH_OFF",
            UnlockError::Bluetooth(_) => "BLUETOOTH",
            UnlockError::Protocol(_) => "PROTOCOL",
            UnlockError::Credentials(_) => "CREDENTIALS",
        }
    }
}

impl From<bluer::Error> for UnlockError {
    fn from(e: bluer::Error) -> Self {
        UnlockError::Bluetooth(e.to_string())
    }
}

/// What the gateway found near, as seed 000's `device` context.
#[derive(Debug, Clone)]
pub struct FoundGateway {
    pub address: String,
    pub name: Option<String>,
    pub rssi: Option<i16>,
}

#[derive(Debug, Clone)]
pub struct Timings {
    pub scan: Duration,
    pub connect: Duration,
    pub challenge: Duration,
    pub decision: Duration,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: proto::Status,
    /// Whether the result carried a valid gateway signature (a grant always does).
    pub authenticated: bool,
    pub retry_after: u16,
    pub gateway: FoundGateway,
    pub timings: Timings,
    /// ATT operations used after the connection was up.
    pub att_ops: u32,
}

/// The TOTP step to send at `now` when `last` was the last one sent to this gateway
/// (PROTOCOL.md §4.2): the current step, else the next; `None` when both were sent (wait for
/// the next step to begin).
pub fn next_step(last: Option<u64>, now: u64) -> Option<u64> {
    let current = proto::totp_step(now);
    match last {
        Some(l) if l == current => Some(current + 1),
        Some(l) if l == current + 1 => None,
        _ => Some(current),
    }
}

/// One attempt's signed auth frame and what is needed to check the answer.
pub struct Attempt {
    pub frame: Vec<u8>,
    pub nonce: proto::Nonce,
    pub tag: proto::Tag,
    keys: proto::DeviceKeys,
}

impl Attempt {
    /// Builds the auth frame answering `challenge` (PROTOCOL.md §5.2) with the code of TOTP
    /// step `step`, stamped `now`.
    pub fn new(
        creds: &Credentials,
        challenge: &proto::Challenge,
        endpoint: &str,
        now: u64,
        step: u64,
    ) -> Result<Self, UnlockError> {
        let secret = creds
            .totp_bytes()
            .ok_or_else(|| UnlockError::Credentials("the TOTP secret is not base32".into()))?;
        let device_id = uuid::Uuid::try_parse(&creds.device_id)
            .map_err(|_| UnlockError::Credentials("the device id is not a UUID".into()))?
            .into_bytes();
        let keys = proto::DeviceKeys::derive(secret.expose(), &device_id)
            .map_err(|e| UnlockError::Credentials(e.to_string()))?;
        let request = proto::AuthRequest {
            device_id,
            totp: proto::hotp(secret.expose(), step),
            timestamp: now,
            endpoint,
        };
        let mut buf = [0u8; proto::MAX_ATT_PAYLOAD];
        let n = proto::AuthFrame::encode(&request, &keys, &challenge.nonce, &mut buf)
            .map_err(|e| UnlockError::Protocol(e.to_string()))?;
        let frame = buf.get(..n).unwrap_or_default().to_vec();
        let tag_start = n.saturating_sub(proto::TAG_LEN);
        let tag = frame
            .get(tag_start..)
            .and_then(|t| <proto::Tag>::try_from(t).ok())
            .ok_or_else(|| UnlockError::Protocol("auth frame too short".into()))?;
        Ok(Self {
            frame,
            nonce: challenge.nonce,
            tag,
            keys,
        })
    }

    /// `Ok(None)` for a notification that answers someone else's attempt, or that does not
    /// verify (a spoof, PROTOCOL.md §8 step 7.4): keep waiting.
    pub fn check(&self, notification: &[u8]) -> Result<Option<proto::VerifiedResult>, UnlockError> {
        match proto::ResultFrame::verify(notification, &self.keys, &self.nonce, &self.tag) {
            Ok(v) => Ok(Some(v)),
            Err(proto::Error::NonceMismatch | proto::Error::BadTag) => Ok(None),
            Err(e) => Err(UnlockError::Protocol(format!("result frame rejected: {e}"))),
        }
    }
}

fn uuid(u: u128) -> Uuid {
    Uuid::from_u128(u)
}

async fn within<T>(
    limit: Duration,
    on_timeout: UnlockError,
    fut: impl std::future::Future<Output = Result<T, UnlockError>>,
) -> Result<T, UnlockError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(on_timeout))
}

/// Runs one unlock, sending the code of TOTP step `step` (see [`next_step`]). `now` gives
/// Unix seconds (injected so tests control the phone's clock); `on_stage` sees every state
/// transition.
pub async fn unlock(
    adapter: &bluer::Adapter,
    creds: &Credentials,
    endpoint: &str,
    step: u64,
    timeouts: Timeouts,
    now: impl Fn() -> u64,
    mut on_stage: impl FnMut(Stage),
) -> Result<Outcome, UnlockError> {
    on_stage(Stage::Idle);
    let result = run(
        adapter,
        creds,
        endpoint,
        step,
        timeouts,
        &now,
        &mut on_stage,
    )
    .await;
    on_stage(if result.is_ok() {
        Stage::Completed
    } else {
        Stage::Error
    });
    result
}

/// What stays open while talking to the gateway, closed only after the disconnect.
#[derive(Default)]
struct Session {
    notifications: Option<BoxStream<'static, Vec<u8>>>,
    att_ops: u32,
}

async fn run(
    adapter: &bluer::Adapter,
    creds: &Credentials,
    endpoint: &str,
    step: u64,
    timeouts: Timeouts,
    now: &impl Fn() -> u64,
    on_stage: &mut impl FnMut(Stage),
) -> Result<Outcome, UnlockError> {
    if !adapter.is_powered().await? {
        return Err(UnlockError::PoweredOff(adapter.name().to_owned()));
    }
    on_stage(Stage::Scanning);
    let t0 = Instant::now();
    let found = within(
        timeouts.scan,
        UnlockError::TimeoutScan,
        scan(adapter, &creds.gateway_id),
    )
    .await;
    // The scan ends here whatever happened (and before connecting, as controllers prefer).
    stop_scan(adapter).await;
    let (address, gateway) = found?;
    let scan_time = t0.elapsed();
    on_stage(Stage::DeviceSelected);

    let device = adapter.device(address)?;
    let mut session = Session::default();
    let talked = talk(
        &device,
        &mut session,
        creds,
        endpoint,
        step,
        timeouts,
        now,
        on_stage,
    )
    .await;
    // Whatever happened, the link is dropped on the way out (this also cancels a connection
    // attempt still pending). Bounded: a disconnect that hangs must not keep us alive.
    let _ = tokio::time::timeout(CLEANUP_LIMIT, device.disconnect()).await;
    let att_ops = session.att_ops;
    drop(session);
    let t = talked?;
    Ok(Outcome {
        status: t.verified.result.status,
        authenticated: t.verified.authenticated,
        retry_after: t.verified.result.retry_after,
        gateway,
        timings: Timings {
            scan: scan_time,
            connect: t.connect,
            challenge: t.challenge,
            decision: t.decision,
        },
        att_ops,
    })
}

struct Talked {
    verified: proto::VerifiedResult,
    connect: Duration,
    challenge: Duration,
    decision: Duration,
}

#[allow(clippy::too_many_arguments)]
async fn talk(
    device: &bluer::Device,
    session: &mut Session,
    creds: &Credentials,
    endpoint: &str,
    step: u64,
    timeouts: Timeouts,
    now: &impl Fn() -> u64,
    on_stage: &mut impl FnMut(Stage),
) -> Result<Talked, UnlockError> {
    on_stage(Stage::Connecting);
    let t1 = Instant::now();
    let chars = within(
        timeouts.connect,
        UnlockError::TimeoutConnect,
        connect(device),
    )
    .await?;
    let connect_time = t1.elapsed();

    on_stage(Stage::Challenge);
    let t2 = Instant::now();
    let challenge = within(timeouts.challenge, UnlockError::TimeoutChallenge, async {
        // ATT 1: subscribe to results before anything can be answered.
        session.att_ops += 1;
        session.notifications = Some(chars.result.notify().await?.boxed());
        // ATT 2: the connection's fresh nonce.
        session.att_ops += 1;
        let raw = chars.challenge.read().await?;
        proto::Challenge::decode(&raw)
            .map_err(|e| UnlockError::Protocol(format!("challenge rejected: {e}")))
    })
    .await?;
    let challenge_time = t2.elapsed();

    on_stage(Stage::Completing);
    let t3 = Instant::now();
    let attempt = Attempt::new(creds, &challenge, endpoint, now(), step)?;
    let verified = within(timeouts.server, UnlockError::TimeoutServer, async {
        // ATT 3: the signed request, as a write request (with response).
        session.att_ops += 1;
        let request = CharacteristicWriteRequest {
            op_type: WriteOp::Request,
            ..Default::default()
        };
        chars.auth.write_ext(&attempt.frame, &request).await?;
        let Some(notifications) = session.notifications.as_mut() else {
            return Err(UnlockError::Protocol("not subscribed to results".into()));
        };
        while let Some(value) = notifications.next().await {
            // BlueZ notifies every subscriber; ours is the one carrying our nonce.
            if let Some(v) = attempt.check(&value)? {
                return Ok(v);
            }
        }
        Err(UnlockError::Bluetooth(
            "the gateway dropped the connection".into(),
        ))
    })
    .await?;
    Ok(Talked {
        verified,
        connect: connect_time,
        challenge: challenge_time,
        decision: t3.elapsed(),
    })
}

/// Filtered scan for the door service; the first gateway heard during this scan whose
/// advertisement carries `gateway_id`'s short form wins.
async fn scan(
    adapter: &bluer::Adapter,
    gateway_id: &str,
) -> Result<(bluer::Address, FoundGateway), UnlockError> {
    let filter = DiscoveryFilter {
        uuids: HashSet::from([uuid(proto::SERVICE_UUID)]),
        transport: DiscoveryTransport::Le,
        ..Default::default()
    };
    adapter.set_discovery_filter(filter).await?;
    // With changes: a remembered device becomes a candidate when it is heard again (RSSI).
    let mut events = adapter.discover_devices_with_changes().await?;
    while let Some(ev) = events.next().await {
        let AdapterEvent::DeviceAdded(addr) = ev else {
            continue;
        };
        let device = adapter.device(addr)?;
        let Some(rssi) = device.rssi().await? else {
            continue;
        };
        let uuids = device.uuids().await?.unwrap_or_default();
        if !uuids.contains(&uuid(proto::SERVICE_UUID)) {
            continue;
        }
        let ours = device
            .manufacturer_data()
            .await?
            .and_then(|m| m.get(&proto::ADV_COMPANY_ID).cloned())
            .is_some_and(|data| proto::adv_matches(&data, gateway_id));
        if ours {
            let found = FoundGateway {
                address: addr.to_string(),
                name: device.name().await.ok().flatten(),
                rssi: Some(rssi),
            };
            return Ok((addr, found));
        }
    }
    Err(UnlockError::Bluetooth("discovery ended".into()))
}

/// Waits until the discovery session of `scan` has stopped. bluer stops it from a task once
/// the stream is dropped; setting the filter waits for that, and fails while it is still
/// running.
async fn stop_scan(adapter: &bluer::Adapter) {
    let filter = DiscoveryFilter {
        uuids: HashSet::from([uuid(proto::SERVICE_UUID)]),
        transport: DiscoveryTransport::Le,
        ..Default::default()
    };
    let _ = tokio::time::timeout(CLEANUP_LIMIT, async {
        while adapter.set_discovery_filter(filter.clone()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

struct DoorChars {
    challenge: bluer::gatt::remote::Characteristic,
    auth: bluer::gatt::remote::Characteristic,
    result: bluer::gatt::remote::Characteristic,
}

async fn connect(device: &bluer::Device) -> Result<DoorChars, UnlockError> {
    if !device.is_connected().await? {
        device.connect().await?;
    }
    // `services()` waits for ServicesResolved.
    for service in device.services().await? {
        if service.uuid().await? != uuid(proto::SERVICE_UUID) {
            continue;
        }
        let (mut challenge, mut auth, mut result) = (None, None, None);
        for c in service.characteristics().await? {
            match c.uuid().await?.as_u128() {
                proto::CHALLENGE_UUID => challenge = Some(c),
                proto::AUTH_UUID => auth = Some(c),
                proto::RESULT_UUID => result = Some(c),
                _ => {}
            }
        }
        if let (Some(challenge), Some(auth), Some(result)) = (challenge, auth, result) {
            // Every frame must fit one ATT PDU; BlueZ negotiates the MTU itself (older BlueZ
            // does not show it: then trust it).
            if let Ok(mtu) = auth.mtu().await {
                if mtu < MIN_MTU {
                    return Err(UnlockError::Protocol(format!(
                        "the ATT MTU is {mtu}, below the {MIN_MTU} the frames need"
                    )));
                }
            }
            return Ok(DoorChars {
                challenge,
                auth,
                result,
            });
        }
    }
    Err(UnlockError::NoService)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;

    fn creds() -> Credentials {
        Credentials {
            device_id: "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b".into(),
            device_key: SecretString::new("dev_x".into()),
            totp_secret: SecretString::new("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into()),
            gateway_host: "127.0.0.1".into(),
            gateway_port: 8080,
            gateway_id: "gw".into(),
            ws_url: String::new(),
            name: "p".into(),
        }
    }

    #[test]
    fn attempt_frames_verify_like_the_gateway_would() {
        let c = creds();
        let challenge = proto::Challenge {
            nonce: [7; 16],
            gateway_time: 1_700_000_000,
        };
        let step = proto::totp_step(1_700_000_000);
        let a = Attempt::new(&c, &challenge, "front-door", 1_700_000_000, step).unwrap();
        let secret = c.totp_bytes().unwrap();
        let keys = proto::DeviceKeys::derive(
            secret.expose(),
            &uuid::Uuid::try_parse(&c.device_id).unwrap().into_bytes(),
        )
        .unwrap();
        assert!(proto::verify_tag(&keys, &[7; 16], &a.frame));
        let decoded = proto::AuthFrame::decode(&a.frame).unwrap();
        assert_eq!(
            decoded.request.totp,
            proto::totp_at(secret.expose(), 1_700_000_000)
        );
        assert_eq!(decoded.request.endpoint, "front-door");

        // A signed grant for our nonce verifies; one for another attempt is ignored.
        let mut out = [0u8; proto::ResultFrame::LEN];
        let r = proto::ResultFrame {
            status: proto::Status::Granted,
            retry_after: 0,
            nonce: [7; 16],
        };
        r.encode_signed(&keys, &a.tag, &mut out).unwrap();
        let v = a.check(&out).unwrap().unwrap();
        assert!(v.authenticated && v.result.status == proto::Status::Granted);
        let other = proto::ResultFrame {
            nonce: [8; 16],
            ..r
        };
        other.encode_signed(&keys, &a.tag, &mut out).unwrap();
        assert!(a.check(&out).unwrap().is_none());
        assert_eq!(UnlockError::TimeoutScan.code(), "TIMEOUT_SCAN");
    }

    #[test]
    fn never_sends_a_step_twice() {
        let t = 1_700_000_010; // step 56666667, 20 s before the next
        let s = proto::totp_step(t);
        assert_eq!(next_step(None, t), Some(s));
        assert_eq!(next_step(Some(s - 1), t), Some(s));
        assert_eq!(next_step(Some(s), t), Some(s + 1));
        assert_eq!(next_step(Some(s + 1), t), None);
        assert_eq!(next_step(Some(s + 1), t + 30), Some(s + 2));
        // A clock that went back: the gateway will judge.
        assert_eq!(next_step(Some(s + 5), t), Some(s));
    }
}
