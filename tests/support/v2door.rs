//! Test scaffolding for the phone's door protocol version 2, before the real v2 doors exist on
//! this branch: a **test door** (a GATT application with the version-2 service, registered
//! through bluer on an adapter of the BlueZ stand-in, deciding with `latchkey_proto::v2`'s
//! `GrantSet`, `IssuedChallenge`, `decide` and `Decision::reply`), advertised as a node
//! (v2 UUID + `02 ‖ door tag`) or as a gateway (v1 UUID + gateway tag); and a **fake
//! gateway** serving `POST /device/register` and `POST /device/refresh` in spec A's JSON,
//! which pushes a signed snapshot to its doors on every change, as the real gateway does over
//! the node session.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
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
use latchkey_proto::v2::{self, ed25519_dalek, p256, GrantSet, IssuedChallenge, Status};
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

/// How a test door answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// As PROTOCOL.md §20 says.
    Honest,
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
}

impl DoorCore {
    fn new(kind: Kind, gateway_key: ed25519_dalek::VerifyingKey) -> Arc<DoorCore> {
        let id: v2::DoorId = random32()[..16].try_into().expect("16 bytes");
        let name = match kind {
            Kind::Node => uuid::Uuid::from_bytes(id).to_string(),
            Kind::Gateway => data_encoding::HEXLOWER.encode(&id),
        };
        let key = loop {
            if let Ok(k) = v2::parse_secret_key(&random32()) {
                break k;
            }
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
        })
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
            Behaviour::Honest => decision.reply(status, Some(now)).as_bytes().to_vec(),
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

fn application(door: &Arc<DoorCore>) -> Application {
    let reader = door.clone();
    let challenge = Characteristic {
        uuid: Uuid::from_u128(v2::CHALLENGE_UUID),
        read: Some(CharacteristicRead {
            read: true,
            fun: Box::new(move |req| {
                let door = reader.clone();
                async move {
                    if req.offset != 0 {
                        return Err(ReqError::InvalidOffset);
                    }
                    Ok(door.read_challenge(peer_of(&req.adapter_name, req.device_address)))
                }
                .boxed()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
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
    Application {
        services: vec![Service {
            uuid: Uuid::from_u128(v2::SERVICE_UUID),
            primary: true,
            characteristics: vec![challenge, request, result],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn advertisement(door: &DoorCore) -> Advertisement {
    let (service, data) = match door.kind {
        Kind::Node => {
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
        let shared = latchkey_bluez_standin::shared().expect("private bus and stand-in");
        let adapter = shared.new_adapter().await.expect("adapter");
        adapter.set_area(area);
        let core = DoorCore::new(kind, gateway_key);
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
        });
        let app = Router::new()
            .route("/device/register", post(register))
            .route("/device/refresh", post(refresh))
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
            "kind": match d.kind { Kind::Node => "node", Kind::Gateway => "gateway" },
            "pubkey": data_encoding::BASE64.encode(&d.public),
        });
        if d.kind == Kind::Node {
            door["nodeId"] = json!(d.name);
        }
        doors.push(door);
    }
    let rfc = |t: u64| latchkey_phone::clock::rfc3339(i64::try_from(t).expect("time"));
    json!({
        "accessToolId": t.tool_id.to_string(),
        "devicePubKey": data_encoding::BASE64.encode(&t.phone_key),
        "issuedOn": rfc(t.issued_on),
        "expiresOn": rfc(t.expires_on),
        "endpoints": [{ "id": s.endpoint, "name": "Front door", "doors": doors }],
    })
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
