//! `phone unlock`: open a door over BLE as a phone app would, following seed 000's states
//! (idle → scanning → deviceSelected → connecting → challenge → completing → completed | error)
//! with a timeout per stage. Three ATT operations after connecting: subscribe to Result, read
//! Challenge, write the request (docs/PROTOCOL.md §8 for version 1, §21 for version 2). Every
//! exit path stops the scan and disconnects.
//!
//! Which door and which protocol ([`Plan`]): the doors of the endpoint that the access tool
//! lists (nodes advertise the version-2 service and `02 ‖ door tag`), and the gateway
//! (version-1 service and its gateway tag). The first heard wins, except that a node heard
//! within [`NODE_WINDOW`] after the gateway wins over it. A node speaks version 2 only; at the
//! gateway the phone speaks version 2 when it holds a tool for the gateway's door and the
//! gateway's GATT database has the version-2 service, else version 1.
//!
//! Choices a real app must make too, and what BlueZ needs for them:
//! - a device counts as found only when it was heard during this scan (it has an `RSSI`);
//!   BlueZ also lists devices it merely remembers;
//! - and only when its advertisement names a door we mean (the gateway's short id, or a node's
//!   door tag): another door in range would only answer `UNKNOWN_DEVICE` / `UNKNOWN_TOOL`;
//! - the request is written with a write *request*: bluer's `write()` sends a write command
//!   (no response), which the door's write-only characteristic does not answer;
//! - the notify session is kept until after the disconnect, so ending it costs no fourth ATT
//!   operation (disabling the CCCD); the link's end ends it anyway;
//! - version 1's TOTP step: one step per attempt, never one already sent (PROTOCOL.md §4.2);
//!   the caller picks it with [`next_step`] and remembers it from [`Stage::Completing`] on;
//! - version 2: one request per challenge (a session key encrypts once, §15.2); a result that
//!   does not verify (another phone's, forged, a plain `GRANTED`) is ignored, not believed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bluer::gatt::remote::CharacteristicWriteRequest;
use bluer::gatt::WriteOp;
use bluer::{AdapterEvent, DiscoveryFilter, DiscoveryTransport, Uuid};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use latchkey_proto as proto;
use latchkey_proto::v2;
use latchkey_proto::v2::pairing;

use super::Credentials;
use crate::tool::{self, Door, DoorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Idle,
    Scanning,
    DeviceSelected,
    Connecting,
    Challenge,
    /// Pairing a vehicle only: the gateway's pairing session (`phone pair-vehicle`).
    Registering,
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
            Stage::Registering => "registering",
            Stage::Completing => "completing",
            Stage::Completed => "completed",
            Stage::Error => "error",
        }
    }
}

/// The door protocol version spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V1,
    V2,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::V1 => 1,
            Protocol::V2 => 2,
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
/// After hearing the gateway, how long the scan goes on for a node of the same endpoint (a
/// node opens the door itself, without the gateway's round trip to it). A node in range
/// advertises every 100–160 ms (PERFORMANCE.md, time to open), so two of its advertising events
/// fall in this window; waiting longer would only delay every open at the gateway's own door.
pub const NODE_WINDOW: Duration = Duration::from_millis(350);
/// The format byte of a node's manufacturer data, in front of its door tag (PROTOCOL.md §16).
const NODE_ADV_FORMAT: u8 = 0x02;

#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error("no latchkey door found nearby")]
    TimeoutScan,
    #[error("the door did not accept the connection in time")]
    TimeoutConnect,
    #[error("the door did not hand out a challenge in time")]
    TimeoutChallenge,
    #[error("the door did not answer in time{}", ignored_note(*.ignored))]
    TimeoutServer { ignored: u32 },
    #[error("the door does not offer the latchkey door service")]
    NoService,
    #[error("{0}")]
    NoDoor(String),
    #[error("Bluetooth adapter {0} is powered off")]
    PoweredOff(String),
    #[error("bluetooth: {0}")]
    Bluetooth(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("credentials: {0}")]
    Credentials(String),
}

fn ignored_note(ignored: u32) -> String {
    if ignored == 0 {
        String::new()
    } else {
        format!(" ({ignored} result(s) that did not verify were ignored)")
    }
}

impl UnlockError {
    /// Seed 000's error codes (and `NO_DOOR` for a `--door` the tool does not name).
    pub fn code(&self) -> &'static str {
        match self {
            UnlockError::TimeoutScan => "TIMEOUT_SCAN",
            UnlockError::TimeoutConnect => "TIMEOUT_CONNECT",
            UnlockError::TimeoutChallenge => "TIMEOUT_CHALLENGE",
            UnlockError::TimeoutServer { .. } => "TIMEOUT_SERVER",
            UnlockError::NoService => "NO_SERVICE",
            UnlockError::NoDoor(_) => "NO_DOOR",
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

/// `--door`: which doors of the endpoint may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorChoice {
    /// The first heard (a node wins over the gateway within [`NODE_WINDOW`]).
    Auto,
    Gateway,
    /// Any node of the endpoint.
    Node,
    /// That node (its node id, or its door id in hex).
    NodeId(String),
}

impl std::str::FromStr for DoorChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "gateway" => Ok(Self::Gateway),
            "node" => Ok(Self::Node),
            id if uuid::Uuid::try_parse(id).is_ok() => Ok(Self::NodeId(id.to_ascii_lowercase())),
            other => Err(format!(
                "{other:?}: expected auto, gateway, node or a node id"
            )),
        }
    }
}

/// What the phone holds for version 2.
struct V2Creds {
    tool_id: v2::ToolId,
    key: v2::p256::SecretKey,
    endpoint: v2::EndpointId,
}

/// Which doors to look for and what to say to each, worked out before the radio is touched.
pub struct Plan {
    /// The endpoint asked for (version 1: `""` is the gateway's default endpoint).
    pub endpoint: String,
    gateway_id: String,
    /// Whether the gateway is a candidate.
    gateway: bool,
    /// The gateway's version-2 door, when the tool lists it for this endpoint.
    gateway_v2: Option<Door>,
    /// Candidate nodes.
    nodes: Vec<Door>,
    v2: Option<V2Creds>,
    /// The version-1 TOTP step, if one may be sent now.
    step: Option<u64>,
}

impl Plan {
    /// The doors of `endpoint` (default: the tool's first endpoint, else the gateway's
    /// default) that `choice` allows; `step` is version 1's TOTP step (see [`next_step`]).
    ///
    /// # Errors
    /// [`UnlockError::NoDoor`] when `choice` names nodes the tool does not list for it.
    pub fn new(
        creds: &Credentials,
        endpoint: Option<&str>,
        choice: &DoorChoice,
        step: Option<u64>,
    ) -> Result<Plan, UnlockError> {
        let mut plan = Plan {
            endpoint: endpoint.unwrap_or_default().to_owned(),
            gateway_id: creds.gateway_id.clone(),
            gateway: true,
            gateway_v2: None,
            nodes: Vec::new(),
            v2: None,
            step,
        };
        let key = tool::secret_key(creds).ok();
        let tool = creds.access_tool.as_ref();
        if let (Some(t), Some(key)) = (tool, key) {
            let doors = t
                .doors(endpoint)
                .map_err(|e| UnlockError::Credentials(e.to_string()))?;
            if let (Some((id, doors)), Some(tool_id)) = (doors, t.tool_id()) {
                match v2::EndpointId::new(&id) {
                    Ok(ep) => {
                        plan.v2 = Some(V2Creds {
                            tool_id,
                            key,
                            endpoint: ep,
                        });
                        for d in doors {
                            match d.kind {
                                DoorKind::Node => plan.nodes.push(d),
                                DoorKind::Gateway => plan.gateway_v2 = Some(d),
                                DoorKind::Other => {}
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "the tool's endpoint id is not valid"),
                }
                plan.endpoint = id;
            }
        }
        let nothing = |what: String| {
            UnlockError::NoDoor(if plan.v2.is_some() {
                format!(
                    "the access tool lists {what} for endpoint {:?}",
                    plan.endpoint
                )
            } else {
                format!(
                    "no access tool for endpoint {:?}: only the gateway can be asked (version 1)",
                    plan.endpoint
                )
            })
        };
        match choice {
            DoorChoice::Auto => {}
            DoorChoice::Gateway => plan.nodes.clear(),
            DoorChoice::Node => {
                plan.gateway = false;
                if plan.nodes.is_empty() {
                    return Err(nothing("no node".into()));
                }
            }
            DoorChoice::NodeId(id) => {
                plan.gateway = false;
                plan.nodes.retain(|d| {
                    d.node_id
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(id))
                        || d.name() == *id
                });
                if plan.nodes.is_empty() {
                    return Err(nothing(format!("no node {id}")));
                }
            }
        }
        Ok(plan)
    }

    /// The vehicle `vehicle` with its stored key (`phone unlock --vehicle`): that node only,
    /// the key's tool id, the endpoint `vehicle`.
    ///
    /// # Errors
    /// [`UnlockError::NoDoor`] without a live key for it, [`UnlockError::Credentials`]
    /// without a phone key.
    pub fn vehicle(
        creds: &Credentials,
        vehicle: &uuid::Uuid,
        now: i64,
    ) -> Result<Plan, UnlockError> {
        let key = crate::vehicle::key_for(creds, vehicle, now)
            .ok_or_else(|| {
                UnlockError::NoDoor(format!(
                    "no live vehicle key for {vehicle}: pair with `latchkey phone pair-vehicle {vehicle}`"
                ))
            })?
            .usable()
            .map_err(|e| UnlockError::Credentials(e.to_string()))?;
        let phone = tool::secret_key(creds).map_err(|e| UnlockError::Credentials(e.to_string()))?;
        let endpoint = v2::EndpointId::new(crate::vehicle::ENDPOINT)
            .map_err(|e| UnlockError::Credentials(e.to_string()))?;
        Ok(Plan {
            endpoint: crate::vehicle::ENDPOINT.to_owned(),
            gateway_id: creds.gateway_id.clone(),
            gateway: false,
            gateway_v2: None,
            nodes: vec![Door {
                kind: DoorKind::Node,
                id: key.door_id,
                node_id: Some(vehicle.to_string()),
                public: key.public,
            }],
            v2: Some(V2Creds {
                tool_id: key.key_id,
                key: phone,
                endpoint,
            }),
            step: None,
        })
    }

    /// The manufacturer data node `i` advertises.
    fn node_adv(&self, i: usize) -> Option<[u8; 1 + v2::DOOR_TAG_LEN]> {
        self.nodes.get(i).map(|d| node_adv(&d.id))
    }
}

/// The manufacturer data a node (door or vehicle) advertises: `02 ‖ door tag`.
pub(crate) fn node_adv(id: &v2::DoorId) -> [u8; 1 + v2::DOOR_TAG_LEN] {
    let mut data = [NODE_ADV_FORMAT; 1 + v2::DOOR_TAG_LEN];
    for (dst, src) in data.iter_mut().skip(1).zip(v2::door_tag(id)) {
        *dst = src;
    }
    data
}

/// The door found, as seed 000's `device` context plus which door it is.
#[derive(Debug, Clone)]
pub struct FoundDoor {
    pub kind: DoorKind,
    /// A node's id, or the gatewayId.
    pub id: String,
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
    /// Whether the result was authenticated: signed (version 1) or sealed (version 2). A
    /// grant always is; an unauthenticated denial is only a hint.
    pub authenticated: bool,
    pub retry_after: u16,
    /// The door's wall time in a sealed version-2 result, when it knows it.
    pub door_time: Option<u64>,
    pub protocol: Protocol,
    pub door: FoundDoor,
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

/// One version-2 attempt: the sealed request for one challenge, and the keys that open its
/// answer (PROTOCOL.md §21 steps 4–5).
pub struct V2Attempt {
    pub frame: [u8; v2::Request::LEN],
    nonce: proto::Nonce,
    keys: v2::SessionKeys,
}

impl V2Attempt {
    /// Seals the request for `challenge` with the tool `tool_id`, the endpoint and the
    /// phone's time `now`; `secret` is the (phone, door) secret of the door `door_id`.
    pub fn new(
        secret: &v2::PeerSecret,
        door_id: &v2::DoorId,
        challenge: &v2::Challenge,
        tool_id: v2::ToolId,
        endpoint: v2::EndpointId,
        now: u64,
    ) -> Result<Self, UnlockError> {
        let keys = secret.session(&challenge.nonce, door_id);
        let body = v2::RequestBody {
            tool_id,
            phone_time: now,
            endpoint,
        };
        let frame = v2::Request::seal(
            &body,
            &keys,
            &secret.hint(&challenge.nonce),
            &challenge.nonce,
        )
        .map_err(|e| UnlockError::Protocol(e.to_string()))?;
        Ok(Self {
            frame,
            nonce: challenge.nonce,
            keys,
        })
    }

    /// The door's answer to this attempt, or `None` for a notification to ignore: another
    /// attempt's (nonce), one that does not authenticate under our keys (forged, another
    /// phone's), a plain `GRANTED` (never believed), or anything that does not decode.
    pub fn check(&self, notification: &[u8]) -> Option<v2::VerifiedResult> {
        match v2::ResultFrame::open(notification, &self.keys, &self.nonce) {
            Ok(v) => Some(v),
            Err(v2::Error::NonceMismatch) => None,
            Err(e) => {
                tracing::warn!(error = %e, "ignored a result notification that does not verify");
                None
            }
        }
    }
}

fn uuid(u: u128) -> Uuid {
    Uuid::from_u128(u)
}

pub(crate) async fn within<T, E>(
    limit: Duration,
    on_timeout: E,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(on_timeout))
}

/// Runs one unlock along `plan`. `now` gives Unix seconds (injected so tests control the
/// phone's clock); `on_stage` sees every state transition, with the protocol once it is
/// chosen (after discovery).
pub async fn unlock(
    adapter: &bluer::Adapter,
    creds: &Credentials,
    plan: &Plan,
    timeouts: Timeouts,
    now: impl Fn() -> u64,
    mut on_stage: impl FnMut(Stage, Option<Protocol>),
) -> Result<Outcome, UnlockError> {
    on_stage(Stage::Idle, None);
    let mut protocol = None;
    let result = run(adapter, creds, plan, timeouts, &now, &mut |stage, p| {
        protocol = p.or(protocol);
        on_stage(stage, p);
    })
    .await;
    on_stage(
        if result.is_ok() {
            Stage::Completed
        } else {
            Stage::Error
        },
        protocol,
    );
    result
}

/// What stays open while talking to the door, closed only after the disconnect.
#[derive(Default)]
struct Session {
    notifications: Option<BoxStream<'static, Vec<u8>>>,
    att_ops: u32,
}

/// The door chosen by the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    Gateway,
    Node(usize),
}

async fn run(
    adapter: &bluer::Adapter,
    creds: &Credentials,
    plan: &Plan,
    timeouts: Timeouts,
    now: &impl Fn() -> u64,
    on_stage: &mut impl FnMut(Stage, Option<Protocol>),
) -> Result<Outcome, UnlockError> {
    if !adapter.is_powered().await? {
        return Err(UnlockError::PoweredOff(adapter.name().to_owned()));
    }
    on_stage(Stage::Scanning, None);
    let t0 = Instant::now();
    let found = within(timeouts.scan, UnlockError::TimeoutScan, scan(adapter, plan)).await;
    // The scan ends here whatever happened (and before connecting, as controllers prefer).
    stop_scan(adapter).await;
    let (address, device_info, heard) = found?;
    let scan_time = t0.elapsed();
    on_stage(Stage::DeviceSelected, None);

    let device = adapter.device(address)?;
    let mut session = Session::default();
    let talked = talk(
        &device,
        &mut session,
        creds,
        plan,
        heard,
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
    let (kind, id) = match heard {
        Heard::Gateway => (DoorKind::Gateway, plan.gateway_id.clone()),
        Heard::Node(i) => (
            DoorKind::Node,
            plan.nodes.get(i).map(Door::name).unwrap_or_default(),
        ),
    };
    Ok(Outcome {
        status: t.status,
        authenticated: t.authenticated,
        retry_after: t.retry_after,
        door_time: t.door_time,
        protocol: t.protocol,
        door: FoundDoor {
            kind,
            id,
            address: device_info.0,
            name: device_info.1,
            rssi: device_info.2,
        },
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
    protocol: Protocol,
    status: proto::Status,
    authenticated: bool,
    retry_after: u16,
    door_time: Option<u64>,
    connect: Duration,
    challenge: Duration,
    decision: Duration,
}

/// What to say to the door that was heard, once its GATT database is known.
enum Speak<'a> {
    V1(Chars),
    V2 {
        chars: Chars,
        door: &'a Door,
        creds: &'a V2Creds,
    },
}

impl Speak<'_> {
    fn protocol(&self) -> Protocol {
        match self {
            Speak::V1(_) => Protocol::V1,
            Speak::V2 { .. } => Protocol::V2,
        }
    }

    fn chars(&self) -> &Chars {
        match self {
            Speak::V1(c) | Speak::V2 { chars: c, .. } => c,
        }
    }
}

fn choose<'a>(plan: &'a Plan, heard: Heard, gatt: Gatt) -> Result<Speak<'a>, UnlockError> {
    match heard {
        Heard::Node(i) => {
            let (Some(door), Some(creds), Some(chars)) = (plan.nodes.get(i), &plan.v2, gatt.v2)
            else {
                return Err(UnlockError::NoService);
            };
            Ok(Speak::V2 { chars, door, creds })
        }
        Heard::Gateway => match (&plan.gateway_v2, &plan.v2, gatt.v2, gatt.v1) {
            (Some(door), Some(creds), Some(chars), _) => Ok(Speak::V2 { chars, door, creds }),
            (_, _, _, Some(chars)) => Ok(Speak::V1(chars)),
            _ => Err(UnlockError::NoService),
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn talk(
    device: &bluer::Device,
    session: &mut Session,
    creds: &Credentials,
    plan: &Plan,
    heard: Heard,
    timeouts: Timeouts,
    now: &impl Fn() -> u64,
    on_stage: &mut impl FnMut(Stage, Option<Protocol>),
) -> Result<Talked, UnlockError> {
    // Version 2's ECDH happens once per unlock, before the link is up (PROTOCOL.md §21 step 1).
    let secret = match heard {
        Heard::Node(i) => plan.nodes.get(i),
        Heard::Gateway => plan.gateway_v2.as_ref(),
    }
    .zip(plan.v2.as_ref())
    .map(|(door, v2c)| v2::PeerSecret::derive(&v2c.key, &door.public, &door.id))
    .transpose()
    .map_err(|e| UnlockError::Credentials(format!("door key: {e}")))?;

    on_stage(Stage::Connecting, None);
    let t1 = Instant::now();
    let speak = within(timeouts.connect, UnlockError::TimeoutConnect, async {
        let speak = choose(plan, heard, connect(device).await?)?;
        // Every frame must fit one ATT PDU; BlueZ negotiates the MTU itself (older BlueZ
        // does not show it: then trust it).
        if let Ok(mtu) = speak.chars().write.mtu().await {
            if mtu < MIN_MTU {
                return Err(UnlockError::Protocol(format!(
                    "the ATT MTU is {mtu}, below the {MIN_MTU} the frames need"
                )));
            }
        }
        Ok(speak)
    })
    .await?;
    let connect_time = t1.elapsed();
    let protocol = speak.protocol();
    let chars = speak.chars();

    on_stage(Stage::Challenge, Some(protocol));
    let t2 = Instant::now();
    let raw = within(timeouts.challenge, UnlockError::TimeoutChallenge, async {
        // ATT 1: subscribe to results before anything can be answered.
        session.att_ops += 1;
        session.notifications = Some(chars.result.notify().await?.boxed());
        // ATT 2: the connection's fresh nonce.
        session.att_ops += 1;
        Ok(chars.challenge.read().await?)
    })
    .await?;
    let challenge_time = t2.elapsed();

    let pending = match &speak {
        Speak::V1(_) => {
            let challenge = proto::Challenge::decode(&raw)
                .map_err(|e| UnlockError::Protocol(format!("challenge rejected: {e}")))?;
            let step = plan.step.ok_or_else(|| {
                UnlockError::Credentials(
                    "both TOTP codes of this period were sent already; try again in a few seconds"
                        .into(),
                )
            })?;
            on_stage(Stage::Completing, Some(protocol));
            Pending::V1(Attempt::new(
                creds,
                &challenge,
                &plan.endpoint,
                now(),
                step,
            )?)
        }
        Speak::V2 {
            door, creds: v2c, ..
        } => {
            let challenge = v2::Challenge::decode(&raw)
                .map_err(|e| UnlockError::Protocol(format!("challenge rejected: {e}")))?;
            if challenge.door_id != door.id {
                return Err(UnlockError::Protocol(format!(
                    "the challenge names door {}, not the door {} chosen",
                    data_encoding::HEXLOWER.encode(&challenge.door_id),
                    door.name()
                )));
            }
            if challenge.door_time == 0 {
                tracing::warn!("the door does not know the time: it will answer CLOCK_UNKNOWN");
            }
            let Some(secret) = secret.as_ref() else {
                return Err(UnlockError::Credentials("no key for this door".into()));
            };
            on_stage(Stage::Completing, Some(protocol));
            Pending::V2(V2Attempt::new(
                secret,
                &door.id,
                &challenge,
                v2c.tool_id,
                v2c.endpoint,
                now(),
            )?)
        }
    };

    let t3 = Instant::now();
    let ignored = std::cell::Cell::new(0u32);
    let answer = within(
        timeouts.server,
        UnlockError::TimeoutServer { ignored: 0 },
        async {
            // ATT 3: the request, as a write request (with response).
            session.att_ops += 1;
            let request = CharacteristicWriteRequest {
                op_type: WriteOp::Request,
                ..Default::default()
            };
            chars.write.write_ext(pending.frame(), &request).await?;
            let Some(notifications) = session.notifications.as_mut() else {
                return Err(UnlockError::Protocol("not subscribed to results".into()));
            };
            while let Some(value) = notifications.next().await {
                // BlueZ notifies every subscriber; ours is the one that verifies.
                match pending.check(&value)? {
                    Some(a) => return Ok(a),
                    None => ignored.set(ignored.get().saturating_add(1)),
                }
            }
            Err(UnlockError::Bluetooth(
                "the door dropped the connection".into(),
            ))
        },
    )
    .await
    .map_err(|e| match e {
        UnlockError::TimeoutServer { .. } => UnlockError::TimeoutServer {
            ignored: ignored.get(),
        },
        e => e,
    })?;
    Ok(Talked {
        protocol,
        status: answer.status,
        authenticated: answer.authenticated,
        retry_after: answer.retry_after,
        door_time: answer.door_time,
        connect: connect_time,
        challenge: challenge_time,
        decision: t3.elapsed(),
    })
}

/// The attempt written, of either version.
enum Pending {
    V1(Attempt),
    V2(V2Attempt),
}

impl Pending {
    fn frame(&self) -> &[u8] {
        match self {
            Pending::V1(a) => &a.frame,
            Pending::V2(a) => &a.frame,
        }
    }

    /// The verified answer to this attempt, or `None` for a notification to ignore.
    fn check(&self, notification: &[u8]) -> Result<Option<Answer>, UnlockError> {
        Ok(match self {
            Pending::V1(a) => a.check(notification)?.map(|v| Answer {
                status: v.result.status,
                authenticated: v.authenticated,
                retry_after: v.result.retry_after,
                door_time: None,
            }),
            Pending::V2(a) => a.check(notification).map(|v| Answer {
                status: v.status,
                authenticated: v.authenticated,
                retry_after: 0,
                door_time: v.door_time,
            }),
        })
    }
}

/// A verified answer, of either version.
struct Answer {
    status: proto::Status,
    authenticated: bool,
    retry_after: u16,
    door_time: Option<u64>,
}

/// The scan's filter: both door services.
fn filter() -> DiscoveryFilter {
    DiscoveryFilter {
        uuids: HashSet::from([uuid(proto::SERVICE_UUID), uuid(v2::SERVICE_UUID)]),
        transport: DiscoveryTransport::Le,
        ..Default::default()
    }
}

/// Which of the plan's doors a heard advertisement is, if any.
fn recognise(plan: &Plan, uuids: &HashSet<Uuid>, data: Option<&Vec<u8>>) -> Option<Heard> {
    let data = data?;
    if uuids.contains(&uuid(v2::SERVICE_UUID)) {
        let node = (0..plan.nodes.len()).find(|i| {
            plan.node_adv(*i)
                .is_some_and(|adv| adv.as_slice() == data.as_slice())
        });
        if let Some(i) = node {
            return Some(Heard::Node(i));
        }
    }
    (plan.gateway
        && uuids.contains(&uuid(proto::SERVICE_UUID))
        && proto::adv_matches(data, &plan.gateway_id))
    .then_some(Heard::Gateway)
}

/// A device heard: its address, name and RSSI (seed 000's `device`).
pub(crate) type DeviceInfo = (String, Option<String>, Option<i16>);

/// What to do with a door just heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Take,
    /// The gateway: keep it, and take it at this time unless a node is heard first.
    WaitUntil(Instant),
    Ignore,
}

/// The scan's choice among the doors heard, with the time as a parameter: a node at once;
/// the gateway at once when no node is wanted, else after [`NODE_WINDOW`] without a node.
struct Pick {
    nodes_wanted: bool,
    gateway_heard: bool,
}

impl Pick {
    fn new(nodes_wanted: bool) -> Self {
        Self {
            nodes_wanted,
            gateway_heard: false,
        }
    }

    fn heard(&mut self, heard: Heard, now: Instant) -> Verdict {
        match heard {
            Heard::Node(_) => Verdict::Take,
            Heard::Gateway if !self.nodes_wanted => Verdict::Take,
            Heard::Gateway if self.gateway_heard => Verdict::Ignore,
            Heard::Gateway => {
                self.gateway_heard = true;
                Verdict::WaitUntil(now + NODE_WINDOW)
            }
        }
    }
}

/// Filtered scan for the door services; the first door of the plan heard during this scan
/// wins, except that the gateway waits [`NODE_WINDOW`] for a node.
async fn scan(
    adapter: &bluer::Adapter,
    plan: &Plan,
) -> Result<(bluer::Address, DeviceInfo, Heard), UnlockError> {
    scan_for(adapter, !plan.nodes.is_empty(), |uuids, data| {
        recognise(plan, uuids, data)
    })
    .await
}

/// The scan itself: `recognise` says which door an advertisement is; `nodes_wanted` whether
/// the gateway waits [`NODE_WINDOW`] for a node.
pub(crate) async fn scan_for(
    adapter: &bluer::Adapter,
    nodes_wanted: bool,
    recognise: impl Fn(&HashSet<Uuid>, Option<&Vec<u8>>) -> Option<Heard>,
) -> Result<(bluer::Address, DeviceInfo, Heard), UnlockError> {
    adapter.set_discovery_filter(filter()).await?;
    // With changes: a remembered device becomes a candidate when it is heard again (RSSI).
    let mut events = adapter.discover_devices_with_changes().await?;
    let mut gateway: Option<(bluer::Address, DeviceInfo)> = None;
    let mut pick = Pick::new(nodes_wanted);
    // Armed when the gateway is heard; until then it never fires.
    let window = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(window);
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            () = &mut window, if gateway.is_some() => None,
        };
        let Some(ev) = ev else { break };
        let AdapterEvent::DeviceAdded(addr) = ev else {
            continue;
        };
        let device = adapter.device(addr)?;
        let Some(rssi) = device.rssi().await? else {
            continue;
        };
        let uuids = device.uuids().await?.unwrap_or_default();
        let data = device
            .manufacturer_data()
            .await?
            .and_then(|mut m| m.remove(&proto::ADV_COMPANY_ID));
        let Some(heard) = recognise(&uuids, data.as_ref()) else {
            continue;
        };
        let info = (
            addr.to_string(),
            device.name().await.ok().flatten(),
            Some(rssi),
        );
        match pick.heard(heard, std::time::Instant::now()) {
            Verdict::Take => return Ok((addr, info, heard)),
            Verdict::WaitUntil(deadline) => {
                window
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(deadline));
                gateway = Some((addr, info));
            }
            Verdict::Ignore => {}
        }
    }
    match gateway {
        Some((addr, info)) => Ok((addr, info, Heard::Gateway)),
        None => Err(UnlockError::Bluetooth("discovery ended".into())),
    }
}

/// Waits until the discovery session of `scan` has stopped. bluer stops it from a task once
/// the stream is dropped; setting the filter waits for that, and fails while it is still
/// running.
pub(crate) async fn stop_scan(adapter: &bluer::Adapter) {
    let _ = tokio::time::timeout(CLEANUP_LIMIT, async {
        while adapter.set_discovery_filter(filter()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A door service's three characteristics (version 1: Auth is `write`; version 2: Request).
struct Chars {
    challenge: bluer::gatt::remote::Characteristic,
    write: bluer::gatt::remote::Characteristic,
    result: bluer::gatt::remote::Characteristic,
}

/// A vehicle's pairing service (issue 12 spec §1): Pairing Challenge (read) and Pairing
/// Response (write with response).
pub(crate) struct PairingChars {
    pub(crate) challenge: bluer::gatt::remote::Characteristic,
    pub(crate) response: bluer::gatt::remote::Characteristic,
}

/// The door services found on a connected device.
#[derive(Default)]
pub(crate) struct Gatt {
    v1: Option<Chars>,
    v2: Option<Chars>,
    pub(crate) pairing: Option<PairingChars>,
}

/// Connects (unless connected) and finds the door services and a vehicle's pairing service.
pub(crate) async fn connect(device: &bluer::Device) -> Result<Gatt, UnlockError> {
    if !device.is_connected().await? {
        device.connect().await?;
    }
    let mut gatt = Gatt::default();
    // `services()` waits for ServicesResolved.
    for service in device.services().await? {
        let uuid = service.uuid().await?.as_u128();
        if uuid == pairing::SERVICE_UUID {
            let (mut challenge, mut response) = (None, None);
            for c in service.characteristics().await? {
                let u = c.uuid().await?.as_u128();
                if u == pairing::CHALLENGE_UUID {
                    challenge = Some(c);
                } else if u == pairing::RESPONSE_UUID {
                    response = Some(c);
                }
            }
            if let (Some(challenge), Some(response)) = (challenge, response) {
                gatt.pairing = Some(PairingChars {
                    challenge,
                    response,
                });
            }
            continue;
        }
        let (wanted, slot) = match uuid {
            proto::SERVICE_UUID => (
                [proto::CHALLENGE_UUID, proto::AUTH_UUID, proto::RESULT_UUID],
                &mut gatt.v1,
            ),
            v2::SERVICE_UUID => (
                [v2::CHALLENGE_UUID, v2::REQUEST_UUID, v2::RESULT_UUID],
                &mut gatt.v2,
            ),
            _ => continue,
        };
        let (mut challenge, mut write, mut result) = (None, None, None);
        for c in service.characteristics().await? {
            let u = c.uuid().await?.as_u128();
            if u == wanted[0] {
                challenge = Some(c);
            } else if u == wanted[1] {
                write = Some(c);
            } else if u == wanted[2] {
                result = Some(c);
            }
        }
        if let (Some(challenge), Some(write), Some(result)) = (challenge, write, result) {
            *slot = Some(Chars {
                challenge,
                write,
                result,
            });
        }
    }
    if gatt.v1.is_none() && gatt.v2.is_none() && gatt.pairing.is_none() {
        return Err(UnlockError::NoService);
    }
    Ok(gatt)
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
            phone_key: None,
            access_tool: None,
            vehicle_keys: Vec::new(),
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
        assert_eq!(
            UnlockError::TimeoutServer { ignored: 2 }.to_string(),
            "the door did not answer in time (2 result(s) that did not verify were ignored)"
        );
    }

    const NODE_ID: &str = "3d9a5c1e-7b2f-4c80-9e41-5a6b7c8d9e0f";

    fn door_public(secret: u8) -> v2::PublicKeyBytes {
        v2::public_key_bytes(&v2::parse_secret_key(&[secret; 32]).unwrap().public_key())
    }

    /// Credentials with a phone key (§24.1's) and a tool opening `front-door` at a node and
    /// at the gateway.
    fn creds_with_tool() -> Credentials {
        let mut c = creds();
        c.gateway_id = "0123456789abcdef0123456789abcdef".into();
        c.phone_key = Some(SecretString::new(data_encoding::BASE64.encode(&[0x11; 32])));
        let tool = serde_json::json!({
            "accessToolId": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
            "devicePubKey": "", "issuedOn": "2026-01-01T00:00:00Z",
            "expiresOn": "2026-01-08T00:00:00Z",
            "endpoints": [{ "id": "front-door", "doors": [
                { "doorId": NODE_ID.replace('-', ""), "kind": "node", "nodeId": NODE_ID,
                  "pubkey": data_encoding::BASE64.encode(&door_public(0x22)) },
                { "doorId": c.gateway_id, "kind": "gateway",
                  "pubkey": data_encoding::BASE64.encode(&door_public(0x33)) }] }],
        });
        c.access_tool = Some(serde_json::from_value(tool).unwrap());
        c
    }

    #[test]
    fn the_plan_follows_the_door_choice() {
        let c = creds_with_tool();
        let p = Plan::new(&c, None, &DoorChoice::Auto, None).unwrap();
        assert_eq!(p.endpoint, "front-door");
        assert_eq!(
            (p.nodes.len(), p.gateway, p.gateway_v2.is_some()),
            (1, true, true)
        );
        let p = Plan::new(&c, None, &DoorChoice::Gateway, None).unwrap();
        assert!(p.nodes.is_empty() && p.gateway);
        let p = Plan::new(&c, None, &"node".parse().unwrap(), None).unwrap();
        assert!(!p.gateway && p.nodes.len() == 1);
        let p = Plan::new(&c, None, &NODE_ID.to_uppercase().parse().unwrap(), None).unwrap();
        assert_eq!(p.nodes.len(), 1);
        let other = DoorChoice::NodeId("0f1e2d3c-4b5a-4968-8778-695a4b3c2d1e".into());
        let e = Plan::new(&c, None, &other, None).err().unwrap();
        assert_eq!(e.code(), "NO_DOOR");
        assert!("garage".parse::<DoorChoice>().is_err());
        // An endpoint the tool does not open, or no tool: the gateway, version 1.
        let p = Plan::new(&c, Some("garage"), &DoorChoice::Auto, Some(1)).unwrap();
        assert!(p.nodes.is_empty() && p.v2.is_none() && p.endpoint == "garage");
        let plain = creds();
        let p = Plan::new(&plain, None, &DoorChoice::Auto, Some(1)).unwrap();
        assert!(p.nodes.is_empty() && p.v2.is_none() && p.endpoint.is_empty());
        let e = Plan::new(&plain, None, &DoorChoice::Node, None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no access tool"), "{e}");
    }

    #[test]
    fn advertisements_are_recognised_by_service_and_tag() {
        let c = creds_with_tool();
        let plan = Plan::new(&c, None, &DoorChoice::Auto, None).unwrap();
        let v1: HashSet<Uuid> = [uuid(proto::SERVICE_UUID)].into();
        let v2u: HashSet<Uuid> = [uuid(v2::SERVICE_UUID)].into();
        let mut node = vec![0x02];
        node.extend_from_slice(&v2::door_tag(&plan.nodes[0].id));
        let gateway = proto::adv_data(&c.gateway_id).to_vec();
        assert_eq!(recognise(&plan, &v2u, Some(&node)), Some(Heard::Node(0)));
        assert_eq!(recognise(&plan, &v1, Some(&gateway)), Some(Heard::Gateway));
        assert_eq!(recognise(&plan, &v1, Some(&node)), None);
        assert_eq!(recognise(&plan, &v2u, Some(&gateway)), None);
        node[5] ^= 1;
        assert_eq!(recognise(&plan, &v2u, Some(&node)), None);
        assert_eq!(recognise(&plan, &v2u, None), None);
        let only_nodes = Plan::new(&c, None, &DoorChoice::Node, None).unwrap();
        assert_eq!(recognise(&only_nodes, &v1, Some(&gateway)), None);
    }

    #[test]
    fn v2_attempts_are_what_the_door_decrypts_and_only_its_answers_count() {
        let door_id: v2::DoorId = [0x3d; 16];
        let phone = v2::parse_secret_key(&[0x11; 32]).unwrap();
        let door = v2::parse_secret_key(&[0x22; 32]).unwrap();
        let phone_side = v2::PeerSecret::derive(&phone, &door_public(0x22), &door_id).unwrap();
        let door_side =
            v2::PeerSecret::derive(&door, &v2::public_key_bytes(&phone.public_key()), &door_id)
                .unwrap();
        let challenge = v2::Challenge {
            door_id,
            nonce: [7; 16],
            door_time: 1_767_225_600,
        };
        let endpoint = v2::EndpointId::new("front-door").unwrap();
        let a = V2Attempt::new(&phone_side, &door_id, &challenge, [9; 16], endpoint, 42).unwrap();
        let keys = door_side.session(&[7; 16], &door_id);
        let body = v2::Request::open(&a.frame, &keys, &[7; 16]).unwrap();
        assert_eq!(
            (body.tool_id, body.phone_time, body.endpoint),
            ([9; 16], 42, endpoint)
        );
        assert_eq!(
            v2::Request::hint(&a.frame).unwrap(),
            door_side.hint(&[7; 16])
        );

        let sealed =
            v2::ResultFrame::seal(proto::Status::Granted, Some(5), &keys, &[7; 16]).unwrap();
        let v = a.check(&sealed).unwrap();
        assert!(v.authenticated && v.status == proto::Status::Granted && v.door_time == Some(5));
        let denial = v2::ResultFrame::plain(proto::Status::UnknownTool, &[7; 16]).unwrap();
        assert!(!a.check(&denial).unwrap().authenticated);
        // Never believed: a plain GRANTED, another attempt's answer, a forgery, garbage.
        let mut plain_grant = denial;
        plain_grant[18] = proto::Status::Granted.code();
        assert!(a.check(&plain_grant).is_none());
        let theirs = v2::ResultFrame::seal(proto::Status::Granted, None, &keys, &[8; 16]).unwrap();
        assert!(a.check(&theirs).is_none());
        let forger = v2::PeerSecret::from_shared(&[1; 32], &door_id).session(&[7; 16], &door_id);
        let forged =
            v2::ResultFrame::seal(proto::Status::Granted, None, &forger, &[7; 16]).unwrap();
        assert!(a.check(&forged).is_none());
        assert!(a.check(&[2, 3, 0]).is_none());
    }

    #[test]
    fn a_node_wins_over_the_gateway_within_the_window() {
        let t0 = Instant::now();
        let mut pick = Pick::new(true);
        assert_eq!(
            pick.heard(Heard::Gateway, t0),
            Verdict::WaitUntil(t0 + NODE_WINDOW)
        );
        // Heard again: the window is not extended.
        let later = t0 + Duration::from_millis(300);
        assert_eq!(pick.heard(Heard::Gateway, later), Verdict::Ignore);
        assert_eq!(pick.heard(Heard::Node(0), later), Verdict::Take);
        // No node wanted: the gateway at once; a node is always taken at once.
        assert_eq!(Pick::new(false).heard(Heard::Gateway, t0), Verdict::Take);
        assert_eq!(Pick::new(true).heard(Heard::Node(1), t0), Verdict::Take);
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
