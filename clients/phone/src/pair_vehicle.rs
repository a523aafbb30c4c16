//! `phone pair-vehicle`: seed 000's pairing flow (issue 12 spec §3), as a state machine
//! `idle → scanning → deviceSelected → connecting → challenge → registering → completing →
//! completed`, or `error` from any stage, with a timeout per stage and seed 000's codes.
//!
//! - scanning: the vehicle's node advertisement (v2 service, `02 ‖ door tag(vehicle id)`);
//! - connecting: its pairing service, with an ATT MTU of at least [`MIN_MTU`];
//! - challenge: Pairing Challenge read and decoded (it must name the vehicle), then the
//!   user's approval (the caller's prompt);
//! - registering: `POST /pairing-sessions`, then `…/complete` with the approval sealed to the
//!   gateway's door key and signed with the phone key (`latchkey_proto::v2::pairing`);
//! - completing: the gateway's `bleResponsePayload` written to Pairing Response (write with
//!   response: the vehicle's acceptance is the write's success);
//! - completed: `GET /device/keys?vehicleId=…`, what the caller stores.
//!
//! Cleanup on every exit path, cancellation included ([`pair`] takes a `cancel` future):
//! the scan stopped, the link dropped, and the session cancelled at the gateway when one was
//! created and the flow did not reach `completed`.

use std::time::Duration;

use bluer::gatt::remote::CharacteristicWriteRequest;
use bluer::gatt::WriteOp;
use latchkey_proto::v2::{self, pairing};
use serde_json::{json, Value};

use crate::tool::{self, ToolError};
use crate::unlock::{self, Heard, Stage, Timeouts, UnlockError};
use crate::vehicle::{Pairing, VehicleKey};
use crate::Credentials;

/// The ATT MTU the phone needs: the Pairing Response in one ATT Write Request, which carries
/// MTU − 3 bytes (vehicles refuse prepared writes, NODES.md §9); below the 185 phones request.
pub const MIN_MTU: usize = pairing::RESPONSE_LEN + 3;
/// What bluer subtracts from the ATT MTU it reports (`Characteristic::mtu`).
const BLUER_MTU_MARGIN: usize = 5;
/// How long cleanup (stopping the scan, disconnecting, cancelling the session) may take.
const CLEANUP_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("the vehicle was not heard nearby")]
    TimeoutScan,
    #[error("the vehicle did not accept the connection in time")]
    TimeoutConnect,
    #[error("the vehicle did not hand out a pairing challenge in time")]
    TimeoutChallenge,
    #[error("no answer in time: {0}")]
    TimeoutServer(&'static str),
    #[error("key issuance was not approved{0}")]
    Declined(&'static str),
    #[error("{0}")]
    NoVehicle(String),
    #[error("the gateway refused: {code}: {message}")]
    Server { code: String, message: String },
    #[error("the vehicle refused the pairing response: {0}")]
    VehicleRefused(String),
    #[error("{0}")]
    NoPhoneKey(String),
    #[error("Bluetooth adapter {0} is powered off")]
    PoweredOff(String),
    #[error("bluetooth: {0}")]
    Bluetooth(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("cancelled")]
    Cancelled,
}

impl PairError {
    /// Seed 000's codes, and the spec's others.
    pub fn code(&self) -> &'static str {
        match self {
            PairError::TimeoutScan => "TIMEOUT_SCAN",
            PairError::TimeoutConnect => "TIMEOUT_CONNECT",
            PairError::TimeoutChallenge => "TIMEOUT_CHALLENGE",
            PairError::TimeoutServer(_) => "TIMEOUT_SERVER",
            PairError::Declined(_) => "DECLINED",
            PairError::NoVehicle(_) => "NO_VEHICLE",
            PairError::Server { .. } => "SERVER",
            PairError::VehicleRefused(_) => "VEHICLE_REFUSED",
            PairError::NoPhoneKey(_) => "NO_PHONE_KEY",
            PairError::PoweredOff(_) => "BLUETOOTH_OFF",
            PairError::Bluetooth(_) => "BLUETOOTH",
            PairError::Protocol(_) => "PROTOCOL",
            PairError::Cancelled => "CANCELLED",
        }
    }

    /// The gateway's error code, for `SERVER`.
    pub fn server_code(&self) -> Option<&str> {
        match self {
            PairError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<UnlockError> for PairError {
    fn from(e: UnlockError) -> Self {
        match e {
            UnlockError::TimeoutScan => PairError::TimeoutScan,
            UnlockError::TimeoutConnect => PairError::TimeoutConnect,
            UnlockError::TimeoutChallenge => PairError::TimeoutChallenge,
            UnlockError::TimeoutServer { .. } => PairError::TimeoutServer("the vehicle"),
            UnlockError::NoService => {
                PairError::NoVehicle("the device offers no vehicle pairing service".into())
            }
            UnlockError::PoweredOff(a) => PairError::PoweredOff(a),
            UnlockError::Bluetooth(m) => PairError::Bluetooth(m),
            e => PairError::Protocol(e.to_string()),
        }
    }
}

impl From<bluer::Error> for PairError {
    fn from(e: bluer::Error) -> Self {
        PairError::Bluetooth(e.to_string())
    }
}

/// A gateway request's failure: no answer in time is `TIMEOUT_SERVER`, a refusal `SERVER`
/// with the gateway's code.
fn server(e: ToolError) -> PairError {
    match e {
        ToolError::Unreachable { url, reason } => PairError::Server {
            code: "GATEWAY_UNREACHABLE".into(),
            message: format!("the gateway at {url} does not answer ({reason})"),
        },
        ToolError::NotFound => PairError::Server {
            code: "NOT_FOUND".into(),
            message: "the gateway knows no such vehicle or session (404)".into(),
        },
        ToolError::Refused { code, message } => PairError::Server { code, message },
        e => PairError::Protocol(e.to_string()),
    }
}

/// Seed 000's `device`: the scan result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub name: Option<String>,
    pub rssi: Option<i16>,
}

/// Seed 000's `PairingContext`, plus the step and the steps passed.
#[derive(Debug, Clone)]
pub struct PairingContext {
    pub vehicle_id: uuid::Uuid,
    pub step: Stage,
    pub steps: Vec<Stage>,
    pub device: Option<Device>,
    /// The challenge frame as read (std base64).
    pub challenge: Option<String>,
    pub session_id: Option<String>,
    pub result: Option<VehicleKey>,
    /// `(code, message)`; the gateway's code is in the message for `SERVER`.
    pub error: Option<(String, String)>,
    /// Whether the session was cancelled at the gateway during cleanup.
    pub cancelled: bool,
}

impl PairingContext {
    fn new(vehicle_id: uuid::Uuid) -> Self {
        Self {
            vehicle_id,
            step: Stage::Idle,
            steps: vec![Stage::Idle],
            device: None,
            challenge: None,
            session_id: None,
            result: None,
            error: None,
            cancelled: false,
        }
    }

    fn enter(&mut self, stage: Stage) {
        self.step = stage;
        self.steps.push(stage);
    }

    /// The `--json` form: seed 000's field names.
    pub fn to_json(&self) -> Value {
        json!({
            "step": self.step.as_str(),
            "steps": self.steps.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "vehicleId": self.vehicle_id.to_string(),
            "device": self.device.as_ref().map(|d| json!({ "id": d.id, "name": d.name, "rssi": d.rssi })),
            "challenge": self.challenge,
            "sessionId": self.session_id,
            "result": self.result,
            "error": self.error.as_ref().map(|(code, message)| json!({ "code": code, "message": message })),
            "cancelled": self.cancelled,
        })
    }
}

/// What stays to clean up whatever happens.
#[derive(Default)]
struct Held {
    scanning: bool,
    device: Option<bluer::Device>,
    session: Option<uuid::Uuid>,
    /// The vehicle accepted the response: the session is used, not to be cancelled.
    done: bool,
}

/// What the flow needs besides the radio.
pub struct Setup<'a> {
    pub creds: &'a Credentials,
    pub vehicle: uuid::Uuid,
    pub timeouts: Timeouts,
}

/// Runs the pairing. `approve` is asked at `challenge` (`false`: `DECLINED`); `on_stage`
/// sees the context at every transition; `cancel` ends the flow (with cleanup) when it
/// resolves. On success the context's `result` is the key and the returned list is the
/// gateway's live keys for the vehicle (the caller stores them).
pub async fn pair<F: std::future::Future<Output = bool>>(
    adapter: &bluer::Adapter,
    setup: &Setup<'_>,
    approve: impl FnOnce() -> F,
    mut on_stage: impl FnMut(&PairingContext),
    cancel: impl std::future::Future<Output = ()>,
) -> (PairingContext, Result<Vec<VehicleKey>, PairError>) {
    let mut ctx = PairingContext::new(setup.vehicle);
    on_stage(&ctx);
    let mut held = Held::default();
    let result = {
        let flow = run(adapter, setup, approve, &mut ctx, &mut held, &mut on_stage);
        tokio::select! {
            r = flow => r,
            () = cancel => Err(PairError::Cancelled),
        }
    };
    cleanup(adapter, setup, &mut held, &mut ctx).await;
    if let Err(e) = &result {
        ctx.error = Some((e.code().to_owned(), e.to_string()));
        ctx.enter(Stage::Error);
        on_stage(&ctx);
    }
    (ctx, result)
}

async fn cleanup(
    adapter: &bluer::Adapter,
    setup: &Setup<'_>,
    held: &mut Held,
    ctx: &mut PairingContext,
) {
    if held.scanning {
        unlock::stop_scan(adapter).await;
    }
    if let Some(device) = held.device.take() {
        let _ = tokio::time::timeout(CLEANUP_LIMIT, device.disconnect()).await;
    }
    if let (Some(session), false) = (held.session, held.done) {
        let limit = setup.timeouts.server.min(CLEANUP_LIMIT);
        let cancelled = match Pairing::new(setup.creds, limit) {
            Ok(p) => tokio::time::timeout(limit, p.cancel(&session))
                .await
                .unwrap_or_else(|_| Err(ToolError::Protocol("no answer".into()))),
            Err(e) => Err(e),
        };
        match cancelled {
            Ok(()) => ctx.cancelled = true,
            Err(e) => tracing::warn!(error = %e, %session, "the pairing session was not cancelled"),
        }
    }
}

async fn run<F: std::future::Future<Output = bool>>(
    adapter: &bluer::Adapter,
    setup: &Setup<'_>,
    approve: impl FnOnce() -> F,
    ctx: &mut PairingContext,
    held: &mut Held,
    on_stage: &mut impl FnMut(&PairingContext),
) -> Result<Vec<VehicleKey>, PairError> {
    let t = setup.timeouts;
    // idle: what the gateway will ask for, before the radio is touched.
    let phone = tool::secret_key(setup.creds).map_err(|_| {
        PairError::NoPhoneKey("no phone key in the credentials: run `latchkey phone unlock` or `pair` with the gateway reachable".into())
    })?;
    let gateway_door = setup
        .creds
        .access_tool
        .as_ref()
        .and_then(tool::AccessTool::gateway_door)
        .ok_or_else(|| {
            PairError::NoPhoneKey(
                "the phone key is not registered (no access tool naming the gateway's door)".into(),
            )
        })?;
    let vehicle_id: v2::DoorId = setup.vehicle.into_bytes();
    if !adapter.is_powered().await? {
        return Err(PairError::PoweredOff(adapter.name().to_owned()));
    }

    ctx.enter(Stage::Scanning);
    on_stage(ctx);
    held.scanning = true;
    let wanted = unlock::node_adv(&vehicle_id);
    let found = unlock::within(
        t.scan,
        UnlockError::TimeoutScan,
        unlock::scan_for(adapter, true, |uuids, data| {
            (uuids.contains(&bluer::Uuid::from_u128(v2::SERVICE_UUID))
                && data.is_some_and(|d| d.as_slice() == wanted.as_slice()))
            .then_some(Heard::Node(0))
        }),
    )
    .await;
    unlock::stop_scan(adapter).await;
    held.scanning = false;
    let (address, (id, name, rssi), _) = found?;

    ctx.device = Some(Device { id, name, rssi });
    ctx.enter(Stage::DeviceSelected);
    on_stage(ctx);
    let device = adapter.device(address)?;
    held.device = Some(device.clone());

    ctx.enter(Stage::Connecting);
    on_stage(ctx);
    let chars = unlock::within(t.connect, PairError::TimeoutConnect, async {
        let gatt = unlock::connect(&device).await?;
        let chars = gatt.pairing.ok_or_else(|| {
            PairError::NoVehicle("the device offers no vehicle pairing service".into())
        })?;
        // Older BlueZ does not show the MTU: then trust it. bluer reports the ATT MTU less 5
        // (its workaround for BlueZ dropping a full packet's tail): add it back.
        if let Ok(mtu) = chars.response.mtu().await.map(|m| m + BLUER_MTU_MARGIN) {
            if mtu < MIN_MTU {
                return Err(PairError::Protocol(format!(
                    "the ATT MTU is {mtu}, below the {MIN_MTU} the pairing response needs"
                )));
            }
        }
        Ok(chars)
    })
    .await?;

    ctx.enter(Stage::Challenge);
    on_stage(ctx);
    let frame = unlock::within(t.challenge, PairError::TimeoutChallenge, async {
        Ok(chars.challenge.read().await?)
    })
    .await?;
    let challenge = pairing::PairingChallenge::decode(&frame)
        .map_err(|e| PairError::Protocol(format!("pairing challenge rejected: {e}")))?;
    if challenge.vehicle_id != vehicle_id {
        return Err(PairError::NoVehicle(format!(
            "the device's challenge names vehicle {}, not {}",
            data_encoding::HEXLOWER.encode(&challenge.vehicle_id),
            setup.vehicle
        )));
    }
    ctx.challenge = Some(data_encoding::BASE64.encode(&frame));
    if !approve().await {
        return Err(PairError::Declined(""));
    }

    ctx.enter(Stage::Registering);
    on_stage(ctx);
    // The stage's own limit (below) decides TIMEOUT_SERVER; the client's is a backstop.
    let api = Pairing::new(setup.creds, t.server + CLEANUP_LIMIT).map_err(server)?;
    let rssi = ctx.device.as_ref().and_then(|d| d.rssi).unwrap_or(-127);
    let session = unlock::within(t.server, PairError::TimeoutServer("the gateway"), async {
        api.create(&setup.vehicle, &frame, rssi)
            .await
            .map_err(server)
    })
    .await?;
    let session_id = uuid::Uuid::try_parse(&session.session_id)
        .map_err(|_| PairError::Protocol("the sessionId is not a UUID".into()))?;
    held.session = Some(session_id);
    ctx.session_id = Some(session_id.to_string());
    let sid = session_id.into_bytes();
    let sealed = pairing::seal_approval(&phone, &gateway_door.public, &sid, &frame)
        .map_err(|e| PairError::Protocol(format!("sealing the approval: {e}")))?;
    let signature = pairing::sign_completion(&phone, &sid, &frame, &sealed);
    let completed = unlock::within(t.server, PairError::TimeoutServer("the gateway"), async {
        api.complete(&session_id, &sealed, &signature)
            .await
            .map_err(server)
    })
    .await?;
    let key = completed.key;
    let usable = key
        .usable()
        .map_err(|e| PairError::Protocol(e.to_string()))?;
    if !key.is_for(&setup.vehicle) || usable.door_id != vehicle_id {
        return Err(PairError::Protocol(
            "the gateway issued a key for another vehicle".into(),
        ));
    }
    let payload = data_encoding::BASE64
        .decode(completed.ble_response_payload.as_bytes())
        .ok()
        .filter(|p| p.len() == pairing::RESPONSE_LEN)
        .ok_or_else(|| {
            PairError::Protocol(format!(
                "bleResponsePayload is not {} bytes of base64",
                pairing::RESPONSE_LEN
            ))
        })?;
    ctx.enter(Stage::Completing);
    on_stage(ctx);
    let request = CharacteristicWriteRequest {
        op_type: WriteOp::Request,
        ..Default::default()
    };
    unlock::within(t.server, PairError::TimeoutServer("the vehicle"), async {
        chars
            .response
            .write_ext(&payload, &request)
            .await
            .map_err(|e| PairError::VehicleRefused(e.to_string()))
    })
    .await?;
    held.done = true;
    ctx.result = Some(key.clone());

    // completed: the key list, as seed 000 refreshes it. The vehicle holds the key already:
    // without the list, the key just issued is what the phone keeps.
    ctx.enter(Stage::Completed);
    on_stage(ctx);
    let listed = unlock::within(t.server, PairError::TimeoutServer("the gateway"), async {
        api.keys(&setup.vehicle).await.map_err(server)
    })
    .await;
    Ok(match listed {
        Ok(keys) if keys.iter().any(|k| k.key_id == key.key_id) => keys,
        Ok(_) => {
            tracing::warn!("the gateway's key list lacks the key just issued");
            vec![key]
        }
        Err(e) => {
            tracing::warn!(error = %e, "the key list was not refreshed");
            vec![key]
        }
    })
}

/// Validates `keys` for storage: only usable keys of `vehicle`.
pub fn usable_keys(keys: Vec<VehicleKey>, vehicle: &uuid::Uuid) -> Vec<VehicleKey> {
    keys.into_iter()
        .filter(|k| k.is_for(vehicle) && k.usable().is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_failures_keep_the_gateway_code() {
        let e = server(ToolError::Refused {
            code: "PAIRING_SESSION_EXPIRED".into(),
            message: "expired".into(),
        });
        assert_eq!(e.code(), "SERVER");
        assert_eq!(e.server_code(), Some("PAIRING_SESSION_EXPIRED"));
        assert!(e.to_string().contains("PAIRING_SESSION_EXPIRED"), "{e}");
        assert_eq!(server(ToolError::NotFound).server_code(), Some("NOT_FOUND"));
        let down = server(ToolError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "refused".into(),
        });
        assert_eq!(down.server_code(), Some("GATEWAY_UNREACHABLE"));
        assert_eq!(
            PairError::from(UnlockError::TimeoutChallenge).code(),
            "TIMEOUT_CHALLENGE"
        );
        assert_eq!(PairError::from(UnlockError::NoService).code(), "NO_VEHICLE");
    }

    #[test]
    fn the_context_shows_seed_000_fields_and_every_step() {
        let v = uuid::Uuid::parse_str("3d9a5c1e-7b2f-4c80-9e41-5a6b7c8d9e0f").unwrap();
        let mut ctx = PairingContext::new(v);
        ctx.enter(Stage::Scanning);
        ctx.device = Some(Device {
            id: "00:AA:00:00:00:02".into(),
            name: None,
            rssi: Some(-48),
        });
        ctx.error = Some(("TIMEOUT_CONNECT".into(), "late".into()));
        ctx.enter(Stage::Error);
        let j = ctx.to_json();
        assert_eq!(j["step"], "error");
        assert_eq!(j["steps"], json!(["idle", "scanning", "error"]));
        assert_eq!(j["vehicleId"], v.to_string());
        assert_eq!(j["device"]["rssi"], -48);
        assert_eq!(j["error"]["code"], "TIMEOUT_CONNECT");
        for field in ["challenge", "sessionId", "result"] {
            assert!(j[field].is_null(), "{field}: {j}");
        }
    }
}
