//! Test scaffolding for the phone's door protocol version 2, before the real v2 doors exist on
//! this branch: a **test door** (a GATT application with the version-2 service, registered
//! through bluer on an adapter of the BlueZ stand-in, deciding with `latchkey_proto::v2`'s
//! `GrantSet`, `IssuedChallenge`, `decide` and `Decision::reply`), advertised as a node
//! (v2 UUID + `02 ‖ door tag`) or as a gateway (v1 UUID + gateway tag); and a **fake
//! gateway** serving `POST /device/register` and `POST /device/refresh` in spec A's JSON,
//! which pushes a signed snapshot to its doors on every change, as the real gateway does over
//! the node session.
//!
//! Issue 12: a **test vehicle** ([`Kind::Vehicle`]: a node advertisement, the door service and
//! the Vehicle pairing service of spec §1, deciding with `latchkey_proto::v2::pairing`), and
//! the fake gateway's pairing sessions (spec §2: `POST /pairing-sessions`, `…/complete`,
//! `DELETE …`, `GET /device/keys`; [`FakeGateway::with_vehicle`]). That gateway never pushes to
//! the vehicle (a car in a garage): the vehicle learns its key from the BLE pairing response.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bluer::adv::{Advertisement, AdvertisementHandle, Type as AdvType};
use bluer::gatt::local::{
    Application, ApplicationHandle, Characteristic, CharacteristicNotifier, CharacteristicNotify,
    CharacteristicNotifyMethod, CharacteristicRead, CharacteristicWrite, CharacteristicWriteMethod,
    ReqError, Service,
};
use bluer::Uuid;
use futures_util::FutureExt;
use latchkey_bluez_standin::Adapter;
use latchkey_phone::secret::SecretString;
use latchkey_phone::Credentials;
use latchkey_proto::v2::{self, ed25519_dalek, p256, pairing, GrantSet, IssuedChallenge, Status};
use serde_json::{json, Value};

pub const DEVICE_KEY: &str = "dev_v2testdevicekey";

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("OS randomness");
    b
}

/// A P-256 key from the OS CSPRNG.
pub fn random_key() -> p256::SecretKey {
    loop {
        if let Ok(k) = v2::parse_secret_key(&random32()) {
            return k;
        }
    }
}

/// How a test door answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// As PROTOCOL.md §20 says.
    Honest,
    /// A vehicle that refuses every pairing response (an ATT error).
    RefusePairing,
    /// A plain `GRANTED` for the request's nonce (what a spoofer would send).
    PlainGranted,
    /// A sealed `GRANTED` under keys of another secret (a forger without the door's key).
    ForgedSealed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    /// The gateway's own door: advertised as version 1 (UUID + gateway tag), version 2 in GATT.
    Gateway,
    /// A vehicle node: advertised as a node, with the pairing service besides the door service.
    Vehicle,
}

/// The deciding part of a test door.
pub struct DoorCore {
    pub kind: Kind,
    pub id: v2::DoorId,
    /// The node id (nodes) or the gatewayId (the gateway), as the gateway's JSON writes it.
    pub name: String,
    pub public: v2::PublicKeyBytes,
    key: p256::SecretKey,
    gateway_key: ed25519_dalek::VerifyingKey,
    set: Mutex<GrantSet>,
    challenges: Mutex<HashMap<String, IssuedChallenge>>,
    notifier: tokio::sync::Mutex<Option<CharacteristicNotifier>>,
    behaviour: Mutex<Behaviour>,
    started: Instant,
    /// Every decision's status, in order.
    pub decisions: Mutex<Vec<Status>>,
    /// Challenges read.
    pub challenges_read: AtomicU32,
    /// A vehicle's live pairing nonces, per connection (peer), with when each was read.
    pairing_nonces: Mutex<HashMap<String, (latchkey_proto::Nonce, Instant)>>,
    /// Pairing responses accepted.
    pub pairings: AtomicU32,
}

impl DoorCore {
    fn new(kind: Kind, gateway_key: ed25519_dalek::VerifyingKey) -> Arc<DoorCore> {
        let id: v2::DoorId = random32()[..16].try_into().expect("16 bytes");
        Self::identified(kind, id, random_key(), gateway_key)
    }

    fn identified(
        kind: Kind,
        id: v2::DoorId,
        key: p256::SecretKey,
        gateway_key: ed25519_dalek::VerifyingKey,
    ) -> Arc<DoorCore> {
        let name = match kind {
            Kind::Node | Kind::Vehicle => uuid::Uuid::from_bytes(id).to_string(),
            Kind::Gateway => data_encoding::HEXLOWER.encode(&id),
        };
        Arc::new(DoorCore {
            kind,
            id,
            name,
            public: v2::public_key_bytes(&key.public_key()),
            key,
            gateway_key,
            set: Mutex::new(GrantSet::new(id)),
            challenges: Mutex::new(HashMap::new()),
            notifier: tokio::sync::Mutex::new(None),
            behaviour: Mutex::new(Behaviour::Honest),
            started: Instant::now(),
            decisions: Mutex::new(Vec::new()),
            challenges_read: AtomicU32::new(0),
            pairing_nonces: Mutex::new(HashMap::new()),
            pairings: AtomicU32::new(0),
        })
    }

    /// Pairing responses this vehicle accepted.
    pub fn pairings(&self) -> u32 {
        self.pairings.load(Ordering::SeqCst)
    }

    /// The tool ids of the grants held.
    pub fn grant_tools(&self) -> Vec<v2::ToolId> {
        self.set
            .lock()
            .unwrap()
            .grants()
            .map(|g| g.tool_id)
            .collect()
    }

    /// Pairing Challenge read: a fresh nonce for this connection, signed by the node key.
    fn read_pairing_challenge(&self, peer: String) -> Vec<u8> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("OS randomness");
        let frame = pairing::PairingChallenge {
            vehicle_id: self.id,
            nonce,
            timestamp: unix_now(),
        }
        .sign(&self.key);
        self.pairing_nonces
            .lock()
            .unwrap()
            .insert(peer, (nonce, Instant::now()));
        frame.to_vec()
    }

    /// Pairing Response written: spec §1's checks in order, then the grant is held.
    fn write_pairing_response(&self, peer: &str, frame: &[u8]) -> Result<(), String> {
        if *self.behaviour.lock().unwrap() == Behaviour::RefusePairing {
            return Err("refused by behaviour".into());
        }
        let response = pairing::PairingResponse::verify(frame, &self.id, &self.gateway_key)
            .map_err(|e| e.to_string())?;
        let live = self.pairing_nonces.lock().unwrap().get(peer).copied();
        match live {
            Some((n, at)) if n == response.nonce && at.elapsed() < Duration::from_secs(120) => {}
            _ => return Err("no live pairing nonce for this connection".into()),
        }
        let mut set = self.set.lock().unwrap();
        if response.epoch < set.epoch() {
            return Err("stale epoch".into());
        }
        let grant = response.grant(&self.id).map_err(|e| e.to_string())?;
        set.insert(grant, &self.key).map_err(|e| e.to_string())?;
        drop(set);
        self.pairing_nonces.lock().unwrap().remove(peer);
        self.pairings.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub fn decisions(&self) -> Vec<Status> {
        self.decisions.lock().unwrap().clone()
    }

    /// Applies a snapshot as a node does (verify before store).
    pub fn apply(&self, snapshot: &[u8]) {
        self.set
            .lock()
            .unwrap()
            .apply(snapshot, &self.gateway_key, &self.key)
            .expect("the door applies the gateway's snapshot");
    }

    fn mono(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn read_challenge(&self, peer: String) -> Vec<u8> {
        self.challenges_read.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("OS randomness");
        let set = self.set.lock().unwrap();
        let (issued, frame) = IssuedChallenge::issue(&set, nonce, self.mono(), Some(unix_now()));
        self.challenges.lock().unwrap().insert(peer, issued);
        frame.to_vec()
    }

    /// Decides a request and returns the result frame to notify.
    fn decide(&self, peer: &str, request: &[u8]) -> Vec<u8> {
        let challenge = self.challenges.lock().unwrap().remove(peer);
        let now = unix_now();
        let decision = {
            let set = self.set.lock().unwrap();
            v2::decide(&set, challenge.as_ref(), request, self.mono(), Some(now))
        };
        let status = decision.status;
        self.decisions.lock().unwrap().push(status);
        let nonce = challenge.map(|c| *c.nonce()).unwrap_or([0; 16]);
        match *self.behaviour.lock().unwrap() {
            Behaviour::Honest | Behaviour::RefusePairing => {
                decision.reply(status, Some(now)).as_bytes().to_vec()
            }
            Behaviour::PlainGranted => {
                let mut f = vec![v2::VERSION, v2::KIND_PLAIN_RESULT];
                f.extend_from_slice(&nonce);
                f.push(Status::Granted.code());
                f
            }
            Behaviour::ForgedSealed => {
                let other = v2::PeerSecret::from_shared(&random32(), &self.id);
                let keys = other.session(&nonce, &self.id);
                v2::ResultFrame::seal(Status::Granted, Some(now), &keys, &nonce)
                    .expect("seal")
                    .to_vec()
            }
        }
    }

    async fn notify(&self, frame: Vec<u8>) {
        if let Some(n) = self.notifier.lock().await.as_mut() {
            let _ = n.notify(frame).await;
        }
    }
}

fn peer_of(adapter: &str, address: bluer::Address) -> String {
    format!("{adapter}/{address}")
}

/// A read-only challenge characteristic: `read` answers each read at offset 0, per peer.
fn challenge_characteristic(
    uuid: u128,
    door: &Arc<DoorCore>,
    read: fn(&DoorCore, String) -> Vec<u8>,
) -> Characteristic {
    let reader = door.clone();
    Characteristic {
        uuid: Uuid::from_u128(uuid),
        read: Some(CharacteristicRead {
            read: true,
            fun: Box::new(move |req| {
                let door = reader.clone();
                async move {
                    if req.offset != 0 {
                        return Err(ReqError::InvalidOffset);
                    }
                    Ok(read(&door, peer_of(&req.adapter_name, req.device_address)))
                }
                .boxed()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn application(door: &Arc<DoorCore>) -> Application {
    let challenge = challenge_characteristic(v2::CHALLENGE_UUID, door, DoorCore::read_challenge);
    let writer = door.clone();
    let request = Characteristic {
        uuid: Uuid::from_u128(v2::REQUEST_UUID),
        write: Some(CharacteristicWrite {
            write: true,
            method: CharacteristicWriteMethod::Fun(Box::new(move |value, req| {
                let door = writer.clone();
                async move {
                    if req.offset != 0 || value.len() > 111 {
                        return Err(ReqError::NotPermitted);
                    }
                    let frame =
                        door.decide(&peer_of(&req.adapter_name, req.device_address), &value);
                    tokio::spawn(async move {
                        // The write's reply (the ATT Write Response) leaves first.
                        tokio::task::yield_now().await;
                        door.notify(frame).await;
                    });
                    Ok(())
                }
                .boxed()
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let subscriber = door.clone();
    let result = Characteristic {
        uuid: Uuid::from_u128(v2::RESULT_UUID),
        notify: Some(CharacteristicNotify {
            notify: true,
            method: CharacteristicNotifyMethod::Fun(Box::new(move |notifier| {
                let door = subscriber.clone();
                async move {
                    *door.notifier.lock().await = Some(notifier);
                }
                .boxed()
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut services = vec![Service {
        uuid: Uuid::from_u128(v2::SERVICE_UUID),
        primary: true,
        characteristics: vec![challenge, request, result],
        ..Default::default()
    }];
    if door.kind == Kind::Vehicle {
        services.push(pairing_service(door));
    }
    Application {
        services,
        ..Default::default()
    }
}

/// The Vehicle pairing service (spec §1).
fn pairing_service(door: &Arc<DoorCore>) -> Service {
    let challenge = challenge_characteristic(
        pairing::CHALLENGE_UUID,
        door,
        DoorCore::read_pairing_challenge,
    );
    let writer = door.clone();
    let response = Characteristic {
        uuid: Uuid::from_u128(pairing::RESPONSE_UUID),
        write: Some(CharacteristicWrite {
            write: true,
            method: CharacteristicWriteMethod::Fun(Box::new(move |value, req| {
                let door = writer.clone();
                async move {
                    if req.offset != 0 || value.len() != pairing::RESPONSE_LEN {
                        return Err(ReqError::NotPermitted);
                    }
                    door.write_pairing_response(
                        &peer_of(&req.adapter_name, req.device_address),
                        &value,
                    )
                    .map_err(|_| ReqError::Failed)
                }
                .boxed()
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    Service {
        uuid: Uuid::from_u128(pairing::SERVICE_UUID),
        primary: true,
        characteristics: vec![challenge, response],
        ..Default::default()
    }
}

fn advertisement(door: &DoorCore) -> Advertisement {
    let (service, data) = match door.kind {
        Kind::Node | Kind::Vehicle => {
            let mut data = vec![0x02];
            data.extend_from_slice(&v2::door_tag(&door.id));
            (v2::SERVICE_UUID, data)
        }
        Kind::Gateway => (
            latchkey_proto::SERVICE_UUID,
            latchkey_proto::adv_data(&door.name).to_vec(),
        ),
    };
    Advertisement {
        advertisement_type: AdvType::Peripheral,
        service_uuids: [Uuid::from_u128(service)].into_iter().collect(),
        manufacturer_data: [(latchkey_proto::ADV_COMPANY_ID, data)]
            .into_iter()
            .collect(),
        local_name: Some(format!("test-{:?}", door.kind).to_lowercase()),
        discoverable: Some(true),
        min_interval: Some(Duration::from_millis(100)),
        max_interval: Some(Duration::from_millis(150)),
        ..Default::default()
    }
}

/// A test door serving on an adapter of the stand-in (in `area`).
pub struct TestDoor {
    pub core: Arc<DoorCore>,
    pub adapter: Adapter,
    _app: ApplicationHandle,
    _adv: AdvertisementHandle,
}

impl TestDoor {
    pub async fn start(
        kind: Kind,
        area: &str,
        gateway_key: ed25519_dalek::VerifyingKey,
    ) -> TestDoor {
        Self::serve(DoorCore::new(kind, gateway_key), area).await
    }

    /// A vehicle registered at a real gateway with node id `id` and key `key`, trusting
    /// `gateway_key` (the snapshots of its node session are the test's to apply).
    pub async fn registered_vehicle(
        area: &str,
        id: v2::DoorId,
        key: p256::SecretKey,
        gateway_key: ed25519_dalek::VerifyingKey,
    ) -> TestDoor {
        Self::serve(
            DoorCore::identified(Kind::Vehicle, id, key, gateway_key),
            area,
        )
        .await
    }

    async fn serve(core: Arc<DoorCore>, area: &str) -> TestDoor {
        let shared = latchkey_bluez_standin::shared().expect("private bus and stand-in");
        let adapter = shared.new_adapter().await.expect("adapter");
        adapter.set_area(area);
        let session = bluer::Session::new()
            .await
            .expect("bluer on the private bus");
        let bt = session.adapter(adapter.name()).expect("adapter");
        bt.set_powered(true).await.expect("power on");
        let app = bt
            .serve_gatt_application(application(&core))
            .await
            .expect("register the test door's GATT application");
        let adv = bt
            .advertise(advertisement(&core))
            .await
            .expect("advertise the test door");
        adapter
            .wait_application(0, Duration::from_secs(10))
            .await
            .expect("registered");
        TestDoor {
            core,
            adapter,
            _app: app,
            _adv: adv,
        }
    }
}

/// One tool the fake gateway issued.
#[derive(Debug, Clone)]
struct Issued {
    tool_id: uuid::Uuid,
    phone_key: v2::PublicKeyBytes,
    issued_on: u64,
    expires_on: u64,
}

struct GwState {
    signing: ed25519_dalek::SigningKey,
    doors: Vec<Arc<DoorCore>>,
    endpoint: String,
    lifetime: u64,
    tool: Mutex<Option<Issued>>,
    version: Mutex<u64>,
    pub registered: AtomicU32,
    pub refreshed: AtomicU32,
    pairing: Option<PairingGw>,
}

/// How the fake gateway's pairing endpoints answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GwMode {
    /// As spec §2 says.
    Honest,
    /// `…/complete` never answers (TIMEOUT_SERVER at the phone).
    StallComplete,
    /// `…/complete` answers 410 `PAIRING_SESSION_EXPIRED`.
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Open,
    Completed,
    Cancelled,
}

struct PairingSession {
    challenge: Vec<u8>,
    nonce: latchkey_proto::Nonce,
    state: SessionState,
}

/// The pairing side of the fake gateway: one vehicle, the gateway's door key.
struct PairingGw {
    vehicle: Arc<DoorCore>,
    door_id: v2::DoorId,
    door_key: p256::SecretKey,
    mode: Mutex<GwMode>,
    sessions: Mutex<HashMap<uuid::Uuid, PairingSession>>,
    /// Vehicle keys issued (key JSON, with the key's expiry as a number for refresh).
    keys: Mutex<Vec<(Value, u64)>>,
    deletes: AtomicU32,
    /// `…/complete` requests received (before any stall).
    completions: AtomicU32,
    key_refreshes: AtomicU32,
}

/// The gateway's side of spec A, for the phone's tests.
pub struct FakeGateway {
    pub addr: SocketAddr,
    state: Arc<GwState>,
    server: tokio::task::JoinHandle<()>,
}

/// A gateway signing key for test doors and the fake gateway.
pub fn signing_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&random32())
}

impl FakeGateway {
    pub async fn start(
        signing: ed25519_dalek::SigningKey,
        doors: Vec<Arc<DoorCore>>,
        endpoint: &str,
        lifetime: u64,
    ) -> FakeGateway {
        let state = Arc::new(GwState {
            signing,
            doors,
            endpoint: endpoint.to_owned(),
            lifetime,
            tool: Mutex::new(None),
            version: Mutex::new(0),
            registered: AtomicU32::new(0),
            refreshed: AtomicU32::new(0),
            pairing: None,
        });
        Self::serve(state).await
    }

    /// A gateway for one `vehicle` (spec §2): its tool lists no door but the gateway's own
    /// (whose key seals the approval), and it never pushes to the vehicle.
    pub async fn with_vehicle(
        signing: ed25519_dalek::SigningKey,
        vehicle: Arc<DoorCore>,
        lifetime: u64,
    ) -> FakeGateway {
        let door_key = random_key();
        let state = Arc::new(GwState {
            signing,
            doors: Vec::new(),
            endpoint: "front-door".into(),
            lifetime,
            tool: Mutex::new(None),
            version: Mutex::new(0),
            registered: AtomicU32::new(0),
            refreshed: AtomicU32::new(0),
            pairing: Some(PairingGw {
                vehicle,
                door_id: random32()[..16].try_into().expect("16 bytes"),
                door_key,
                mode: Mutex::new(GwMode::Honest),
                sessions: Mutex::new(HashMap::new()),
                keys: Mutex::new(Vec::new()),
                deletes: AtomicU32::new(0),
                completions: AtomicU32::new(0),
                key_refreshes: AtomicU32::new(0),
            }),
        });
        Self::serve(state).await
    }

    async fn serve(state: Arc<GwState>) -> FakeGateway {
        let app = Router::new()
            .route("/device/register", post(register))
            .route("/device/refresh", post(refresh))
            .route("/pairing-sessions", post(create_session))
            .route("/pairing-sessions/{id}/complete", post(complete_session))
            .route("/pairing-sessions/{id}", delete(cancel_session))
            .route("/device/keys", get(device_keys))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGateway {
            addr,
            state,
            server,
        }
    }

    pub fn registered(&self) -> u32 {
        self.state.registered.load(Ordering::SeqCst)
    }

    pub fn refreshed(&self) -> u32 {
        self.state.refreshed.load(Ordering::SeqCst)
    }

    /// The gateway goes away (its port refuses connections from now on).
    pub fn stop(&self) {
        self.server.abort();
    }

    fn pairing(&self) -> &PairingGw {
        self.state
            .pairing
            .as_ref()
            .expect("a gateway with a vehicle")
    }

    pub fn set_mode(&self, mode: GwMode) {
        *self.pairing().mode.lock().unwrap() = mode;
    }

    /// Every pairing session's state, in no order.
    pub fn sessions(&self) -> Vec<SessionState> {
        let sessions = self.pairing().sessions.lock().unwrap();
        sessions.values().map(|s| s.state).collect()
    }

    /// `DELETE /pairing-sessions/…` requests received.
    pub fn deletes(&self) -> u32 {
        self.pairing().deletes.load(Ordering::SeqCst)
    }

    /// `…/complete` requests received.
    pub fn completions(&self) -> u32 {
        self.pairing().completions.load(Ordering::SeqCst)
    }

    /// Vehicle keys issued.
    pub fn keys_issued(&self) -> usize {
        self.pairing().keys.lock().unwrap().len()
    }

    /// `/device/refresh` requests for a vehicle key.
    pub fn key_refreshes(&self) -> u32 {
        self.pairing().key_refreshes.load(Ordering::SeqCst)
    }
}

fn session_id(id: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::try_parse(id).ok()
}

async fn create_session(
    State(s): State<Arc<GwState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(p) = s.pairing.as_ref().filter(|_| authorised(&headers)) else {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    };
    if s.tool.lock().unwrap().is_none() {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    if body["vehicleId"].as_str() != Some(p.vehicle.name.as_str()) {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    let frame = body["nonce"]
        .as_str()
        .and_then(|n| data_encoding::BASE64.decode(n.as_bytes()).ok())
        .unwrap_or_default();
    let Ok(challenge) = pairing::PairingChallenge::verify(&frame, &p.vehicle.public) else {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    };
    let hex = data_encoding::HEXLOWER.encode(&challenge.vehicle_id);
    if challenge.vehicle_id != p.vehicle.id || body["deviceId"].as_str() != Some(hex.as_str()) {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    if !body["rssi"]
        .as_i64()
        .is_some_and(|r| (-127..=20).contains(&r))
    {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    let id = uuid::Uuid::new_v4();
    p.sessions.lock().unwrap().insert(
        id,
        PairingSession {
            challenge: frame,
            nonce: challenge.nonce,
            state: SessionState::Open,
        },
    );
    let expires = i64::try_from(unix_now() + 60).expect("time");
    (
        StatusCode::CREATED,
        Json(json!({ "sessionId": id.to_string(),
                     "expiresAt": latchkey_phone::clock::rfc3339(expires) })),
    )
}

async fn complete_session(
    State(s): State<Arc<GwState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(p) = s.pairing.as_ref().filter(|_| authorised(&headers)) else {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    };
    p.completions.fetch_add(1, Ordering::SeqCst);
    let mode = *p.mode.lock().unwrap();
    match mode {
        GwMode::Honest => {}
        GwMode::StallComplete => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        GwMode::Expired => return error(StatusCode::GONE, "PAIRING_SESSION_EXPIRED"),
    }
    let Some(sid) = session_id(&id) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    let Some(phone_key) = s.tool.lock().unwrap().as_ref().map(|t| t.phone_key) else {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    };
    let b64 = |field: &str| {
        body[field]
            .as_str()
            .and_then(|v| data_encoding::BASE64.decode(v.as_bytes()).ok())
            .unwrap_or_default()
    };
    let (sealed, signature) = (b64("encryptedResponse"), b64("signature"));
    let mut sessions = p.sessions.lock().unwrap();
    let Some(session) = sessions.get_mut(&sid) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    if session.state != SessionState::Open {
        return error(StatusCode::GONE, "PAIRING_SESSION_USED");
    }
    let sid_bytes = sid.into_bytes();
    let proven = pairing::verify_completion(
        &phone_key,
        &sid_bytes,
        &session.challenge,
        &sealed,
        &signature,
    )
    .and_then(|()| {
        pairing::open_approval(
            &p.door_key,
            &phone_key,
            &sid_bytes,
            &session.challenge,
            &sealed,
        )
    });
    if proven.is_err() {
        return error(StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    session.state = SessionState::Completed;
    let now = unix_now();
    let key_id = uuid::Uuid::new_v4();
    let (not_before, expires) = (now - 60, now + s.lifetime);
    let response = pairing::PairingResponse {
        nonce: session.nonce,
        key_id: key_id.into_bytes(),
        not_before,
        expires,
        epoch: 1,
        phone_key,
    }
    .sign(&p.vehicle.id, &s.signing);
    let key = vehicle_key(p, key_id, not_before, expires);
    let mut keys = p.keys.lock().unwrap();
    // Re-pairing voids the device's previous key for the vehicle.
    keys.clear();
    keys.push((key.clone(), expires));
    (
        StatusCode::OK,
        Json(json!({ "key": key,
                     "bleResponsePayload": data_encoding::BASE64.encode(&response) })),
    )
}

fn vehicle_key(p: &PairingGw, key_id: uuid::Uuid, issued: u64, expires: u64) -> Value {
    let rfc = |t: u64| latchkey_phone::clock::rfc3339(i64::try_from(t).expect("time"));
    json!({
        "keyId": key_id.to_string(),
        "vehicleId": p.vehicle.name,
        "deviceId": "00000000-0000-4000-8000-000000000000",
        "issuedOn": rfc(issued),
        "expiresOn": rfc(expires),
        "endpoint": "vehicle",
        "doorId": data_encoding::HEXLOWER.encode(&p.vehicle.id),
        "pubkey": data_encoding::BASE64.encode(&p.vehicle.public),
    })
}

async fn cancel_session(
    State(s): State<Arc<GwState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let Some(p) = s.pairing.as_ref().filter(|_| authorised(&headers)) else {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    };
    p.deletes.fetch_add(1, Ordering::SeqCst);
    let Some(sid) = session_id(&id) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    let mut sessions = p.sessions.lock().unwrap();
    let Some(session) = sessions.get_mut(&sid) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    match session.state {
        SessionState::Open => session.state = SessionState::Cancelled,
        SessionState::Completed => return error(StatusCode::GONE, "PAIRING_SESSION_USED"),
        SessionState::Cancelled => {}
    }
    (
        StatusCode::OK,
        Json(json!({ "sessionId": id, "cancelled": true })),
    )
}

async fn device_keys(
    State(s): State<Arc<GwState>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let Some(p) = s.pairing.as_ref().filter(|_| authorised(&headers)) else {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    };
    let keys: Vec<Value> = p
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| {
            q.get("vehicleId")
                .is_none_or(|v| k["vehicleId"] == v.as_str())
        })
        .collect();
    (StatusCode::OK, Json(json!({ "keys": keys })))
}

fn authorised(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Device {DEVICE_KEY}"))
}

fn error(status: StatusCode, code: &str) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!({ "error": { "code": code, "message": code } })),
    )
}

/// Issues the snapshot of the current tool to every door, then the answer.
fn issue(s: &GwState, t: &Issued) -> Value {
    let mut version = s.version.lock().unwrap();
    *version += 1;
    let endpoint = v2::EndpointId::new(&s.endpoint).expect("endpoint id");
    let mut doors = Vec::new();
    for d in &s.doors {
        let grant = v2::Grant {
            tool_id: t.tool_id.into_bytes(),
            node_id: d.id,
            endpoint,
            not_before: t.issued_on,
            expires: t.expires_on,
            epoch: 1,
            phone_key: t.phone_key,
        };
        let header = v2::SnapshotHeader {
            node_id: d.id,
            version: *version,
            epoch: 1,
            issued_at: unix_now(),
        };
        let mut buf = vec![0u8; v2::snapshot_len(1)];
        let n = v2::encode_snapshot(&header, &[grant], &s.signing, &mut buf).expect("snapshot");
        d.apply(&buf[..n]);
        let mut door = json!({
            "doorId": data_encoding::HEXLOWER.encode(&d.id),
            "kind": match d.kind { Kind::Node | Kind::Vehicle => "node", Kind::Gateway => "gateway" },
            "pubkey": data_encoding::BASE64.encode(&d.public),
        });
        if d.kind == Kind::Node {
            door["nodeId"] = json!(d.name);
        }
        doors.push(door);
    }
    let rfc = |t: u64| latchkey_phone::clock::rfc3339(i64::try_from(t).expect("time"));
    let mut answer = json!({
        "accessToolId": t.tool_id.to_string(),
        "devicePubKey": data_encoding::BASE64.encode(&t.phone_key),
        "issuedOn": rfc(t.issued_on),
        "expiresOn": rfc(t.expires_on),
        "endpoints": [{ "id": s.endpoint, "name": "Front door", "doors": doors }],
    });
    // The gateway's door only as `gatewayDoor` (PROTOCOL.md §26.3): what the phone seals its
    // vehicle-pairing approval to.
    if let Some(p) = s.pairing.as_ref() {
        answer["gatewayDoor"] = json!({
            "doorId": data_encoding::HEXLOWER.encode(&p.door_id),
            "kind": "gateway",
            "pubkey": data_encoding::BASE64.encode(&v2::public_key_bytes(&p.door_key.public_key())),
        });
    }
    answer
}

async fn register(
    State(s): State<Arc<GwState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorised(&headers) {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    let Some(raw) = body["pubkey"]
        .as_str()
        .and_then(|p| data_encoding::BASE64.decode(p.as_bytes()).ok())
    else {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    };
    use sha2::Digest;
    let hash = data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&raw));
    let Ok(key) = v2::PublicKeyBytes::try_from(raw.as_slice()) else {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    };
    if body["hash"].as_str() != Some(hash.as_str()) || v2::parse_public_key(&key).is_err() {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    s.registered.fetch_add(1, Ordering::SeqCst);
    let now = unix_now();
    let t = Issued {
        tool_id: uuid::Uuid::new_v4(),
        phone_key: key,
        issued_on: now - 60,
        expires_on: now + s.lifetime,
    };
    let answer = issue(&s, &t);
    *s.tool.lock().unwrap() = Some(t);
    (StatusCode::CREATED, Json(answer))
}

async fn refresh(
    State(s): State<Arc<GwState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorised(&headers) {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    if let Some(p) = s.pairing.as_ref() {
        let mut keys = p.keys.lock().unwrap();
        if let Some((key, expires)) = keys
            .iter_mut()
            .find(|(k, _)| k["keyId"] == body["accessToolId"])
        {
            p.key_refreshes.fetch_add(1, Ordering::SeqCst);
            *expires = unix_now() + s.lifetime + 60;
            let rfc = latchkey_phone::clock::rfc3339(i64::try_from(*expires).expect("time"));
            key["expiresOn"] = json!(rfc);
            // PROTOCOL.md §27.5: the key object.
            return (StatusCode::OK, Json(key.clone()));
        }
    }
    let current = s.tool.lock().unwrap().clone();
    let Some(mut t) = current.filter(|t| body["accessToolId"] == t.tool_id.to_string()) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    s.refreshed.fetch_add(1, Ordering::SeqCst);
    t.expires_on = unix_now() + s.lifetime;
    let answer = issue(&s, &t);
    *s.tool.lock().unwrap() = Some(t);
    (StatusCode::OK, Json(answer))
}

/// Credentials as `phone pair` would have written them for a gateway at `addr` whose id is
/// `gateway_id`, without a phone key or tool yet.
pub fn write_credentials(path: &Path, addr: SocketAddr, gateway_id: &str) -> Credentials {
    let c = Credentials {
        device_id: uuid::Uuid::new_v4().to_string(),
        device_key: SecretString::new(DEVICE_KEY.into()),
        totp_secret: SecretString::new("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into()),
        gateway_host: addr.ip().to_string(),
        gateway_port: addr.port(),
        gateway_id: gateway_id.to_owned(),
        ws_url: format!("ws://{addr}/ws"),
        name: "v2 phone".into(),
        phone_key: None,
        access_tool: None,
        vehicle_keys: Vec::new(),
    };
    c.save(path).expect("save credentials");
    c
}
