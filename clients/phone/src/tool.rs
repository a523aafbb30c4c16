//! The phone's access tool (CONTRACT §6, seed 002 "BLE access tool refresh"): its P-256 key
//! pair, `POST /device/register` and `POST /device/refresh`, and the doors the tool opens with
//! door protocol version 2 (docs/PROTOCOL.md §13–§21).
//!
//! The private key is the 32-byte scalar from the OS CSPRNG, kept (std base64) in the
//! credentials file, which is 0600; nothing here prints it. What the gateway answers is kept
//! as it came ([`AccessTool`]) and checked when it arrives and again when it is used
//! ([`AccessTool::doors`]). Functions that judge time take `now` (Unix seconds).

use std::time::Duration;

use latchkey_proto::v2::{self, p256};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::provisioning::{answer, error_of, reason};
use crate::secret::SecretString;
use crate::Credentials;

/// How long `phone unlock` waits for register or refresh before going on with what it has:
/// the gateway may be down, and opening a door offline is the point.
pub const UNLOCK_HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// `phone pair` is online by definition: the usual HTTP limit.
pub const PAIR_HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// Refresh when the tool expires within this (seed 002's threshold): 2 days.
pub const DEFAULT_REFRESH_WITHIN: u64 = 2 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("the gateway at {url} does not answer ({reason})")]
    Unreachable { url: String, reason: String },
    /// 404: a gateway without access tools (register), or a voided or unknown tool (refresh).
    #[error("the gateway has no such access tool or endpoint (404)")]
    NotFound,
    #[error("the gateway refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("the gateway answered something unexpected: {0}")]
    Protocol(String),
    #[error("the phone key in the credentials is not valid")]
    BadKey,
    #[error("the OS random number generator failed")]
    Random,
}

/// A door kind as the gateway names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DoorKind {
    Node,
    Gateway,
    /// A kind this phone does not know (more may follow): never used.
    #[serde(other)]
    Other,
}

impl DoorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DoorKind::Node => "node",
            DoorKind::Gateway => "gateway",
            DoorKind::Other => "other",
        }
    }
}

/// One door of an endpoint, as the gateway lists it (spec A).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolDoor {
    pub door_id: String,
    pub kind: DoorKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub pubkey: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolEndpoint {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub doors: Vec<ToolDoor>,
}

/// The gateway's answer to register and refresh, kept in the credentials (public data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessTool {
    pub access_tool_id: String,
    pub device_pub_key: String,
    pub issued_on: String,
    pub expires_on: String,
    pub endpoints: Vec<ToolEndpoint>,
    /// The gateway's own door, also when no endpoint lists it (PROTOCOL.md §26.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_door: Option<ToolDoor>,
}

/// A door this phone can speak version 2 to, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Door {
    pub kind: DoorKind,
    pub id: v2::DoorId,
    /// The node's id as the gateway wrote it (nodes only).
    pub node_id: Option<String>,
    pub public: v2::PublicKeyBytes,
}

impl Door {
    /// How people and `--door` name it: a node by its node id, the gateway by its door id in
    /// hex (which is its gatewayId).
    pub fn name(&self) -> String {
        match &self.node_id {
            Some(n) => n.clone(),
            None => data_encoding::HEXLOWER.encode(&self.id),
        }
    }
}

impl AccessTool {
    /// `expiresOn` as Unix seconds.
    pub fn expires_at(&self) -> Option<i64> {
        crate::clock::parse_rfc3339(&self.expires_on)
    }

    /// The tool id's 16 bytes.
    pub fn tool_id(&self) -> Option<v2::ToolId> {
        uuid::Uuid::try_parse(&self.access_tool_id)
            .ok()
            .map(uuid::Uuid::into_bytes)
    }

    /// The endpoint `wanted` (default: the first the tool opens) and its doors, or `None` when
    /// the tool does not open it.
    ///
    /// # Errors
    /// [`ToolError::Protocol`] for a door whose id or key does not decode (the tool is bad).
    pub fn doors(&self, wanted: Option<&str>) -> Result<Option<(String, Vec<Door>)>, ToolError> {
        let endpoint = match wanted {
            Some(id) => self.endpoints.iter().find(|e| e.id == id),
            None => self.endpoints.first(),
        };
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        let mut doors = Vec::with_capacity(endpoint.doors.len());
        for d in endpoint.doors.iter().filter(|d| d.kind != DoorKind::Other) {
            doors.push(decode_door(d)?);
        }
        Ok(Some((endpoint.id.clone(), doors)))
    }

    /// The gateway's own door (its P-256 door key): `gatewayDoor`, else from whichever
    /// endpoint lists it (gateways before `gatewayDoor`). What a vehicle pairing's approval is
    /// sealed to.
    pub fn gateway_door(&self) -> Option<Door> {
        self.gateway_door
            .iter()
            .chain(self.endpoints.iter().flat_map(|e| e.doors.iter()))
            .filter(|d| d.kind == DoorKind::Gateway)
            .find_map(|d| decode_door(d).ok())
    }

    /// Checks an answer of the gateway: a UUID tool id, our key, an expiry, doors that decode.
    fn check(&self, ours: &v2::PublicKeyBytes) -> Result<(), ToolError> {
        let bad = |what: &str| ToolError::Protocol(format!("{what} in the access tool"));
        if self.tool_id().is_none() {
            return Err(bad("accessToolId is not a UUID"));
        }
        if decode_key(&self.device_pub_key).as_ref() != Some(ours) {
            return Err(bad("devicePubKey is not this phone's key"));
        }
        if self.expires_at().is_none() || crate::clock::parse_rfc3339(&self.issued_on).is_none() {
            return Err(bad("issuedOn or expiresOn is not RFC 3339"));
        }
        for e in &self.endpoints {
            for d in e.doors.iter().filter(|d| d.kind != DoorKind::Other) {
                decode_door(d)?;
            }
        }
        Ok(())
    }
}

pub(crate) fn decode_key(b64: &str) -> Option<v2::PublicKeyBytes> {
    let bytes = data_encoding::BASE64.decode(b64.as_bytes()).ok()?;
    v2::parse_public_key(&bytes).ok()?;
    bytes.try_into().ok()
}

fn decode_door(d: &ToolDoor) -> Result<Door, ToolError> {
    let id = data_encoding::HEXLOWER_PERMISSIVE
        .decode(d.door_id.as_bytes())
        .ok()
        .and_then(|v| v2::DoorId::try_from(v).ok())
        .ok_or_else(|| ToolError::Protocol("a doorId is not 32 hex digits".into()))?;
    let public = decode_key(&d.pubkey)
        .ok_or_else(|| ToolError::Protocol("a door pubkey is not a P-256 point".into()))?;
    if d.kind == DoorKind::Node && d.node_id.is_none() {
        return Err(ToolError::Protocol("a node door without nodeId".into()));
    }
    Ok(Door {
        kind: d.kind,
        id,
        node_id: d.node_id.clone(),
        public,
    })
}

/// A new phone key from the OS CSPRNG, as stored (std base64 of the 32-byte scalar).
///
/// # Errors
/// [`ToolError::Random`] if the OS has no randomness to give.
pub fn generate_key() -> Result<SecretString, ToolError> {
    // A scalar ≥ n happens with probability ~2⁻³²: draw again (a few times at most).
    for _ in 0..8 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *bytes).map_err(|_| ToolError::Random)?;
        if v2::parse_secret_key(&bytes).is_ok() {
            return Ok(SecretString::new(data_encoding::BASE64.encode(&*bytes)));
        }
    }
    Err(ToolError::Random)
}

/// The credentials' phone key.
///
/// # Errors
/// [`ToolError::BadKey`] when there is none or it does not decode.
pub fn secret_key(creds: &Credentials) -> Result<p256::SecretKey, ToolError> {
    let stored = creds.phone_key.as_ref().ok_or(ToolError::BadKey)?;
    let bytes = Zeroizing::new(
        data_encoding::BASE64
            .decode(stored.expose().as_bytes())
            .map_err(|_| ToolError::BadKey)?,
    );
    let scalar: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| ToolError::BadKey)?;
    v2::parse_secret_key(scalar).map_err(|_| ToolError::BadKey)
}

/// Gives the credentials a phone key if they have none (credentials from before version 2);
/// returns whether it did (the caller saves them).
///
/// # Errors
/// [`ToolError::Random`].
pub fn ensure_key(creds: &mut Credentials) -> Result<bool, ToolError> {
    if creds.phone_key.is_some() {
        return Ok(false);
    }
    creds.phone_key = Some(generate_key()?);
    Ok(true)
}

/// `POST /device/register`'s body: the SEC1 key in std base64 and its SHA-256 in lower-case hex.
pub fn register_body(public: &v2::PublicKeyBytes) -> serde_json::Value {
    json!({
        "pubkey": data_encoding::BASE64.encode(public),
        "hash": data_encoding::HEXLOWER.encode(&Sha256::digest(public)),
    })
}

/// What the tool needs at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upkeep {
    Register,
    Refresh,
    Keep,
}

/// No tool (or one whose expiry we cannot read) → register; expiring within `within`
/// seconds, or expired (the gateway refreshes an expired tool that was not voided) →
/// refresh; else keep.
pub fn upkeep(tool: Option<&AccessTool>, now: i64, within: u64) -> Upkeep {
    let Some(expires) = tool.and_then(AccessTool::expires_at) else {
        return Upkeep::Register;
    };
    let left = expires.saturating_sub(now);
    if left <= i64::try_from(within).unwrap_or(i64::MAX) {
        Upkeep::Refresh
    } else {
        Upkeep::Keep
    }
}

/// What [`maintain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Registered,
    Refreshed,
    Kept,
}

/// Registers or refreshes the credentials' tool as [`upkeep`] says, with `timeout` for each
/// request; a refresh the gateway answers 404 (the tool was voided) registers again. On
/// success the credentials hold the new tool (the caller saves them); on failure they are
/// unchanged.
///
/// # Errors
/// [`ToolError`]: the caller decides whether to go on with the stored tool.
pub async fn maintain(
    creds: &mut Credentials,
    now: i64,
    within: u64,
    timeout: Duration,
) -> Result<Done, ToolError> {
    let action = upkeep(creds.access_tool.as_ref(), now, within);
    if action == Upkeep::Keep {
        return Ok(Done::Kept);
    }
    let public = v2::public_key_bytes(&secret_key(creds)?.public_key());
    let api = Api::new(creds, timeout)?;
    let (tool, done) = match (action, creds.access_tool.as_ref()) {
        (Upkeep::Refresh, Some(t)) => match api.refresh(&t.access_tool_id).await {
            Err(ToolError::NotFound) => (api.register(&public).await?, Done::Registered),
            other => (other?, Done::Refreshed),
        },
        _ => (api.register(&public).await?, Done::Registered),
    };
    tool.check(&public)?;
    creds.access_tool = Some(tool);
    Ok(done)
}

/// The device-authenticated endpoints of one gateway (access tools, vehicle keys, pairing
/// sessions), each request bounded by the client's timeout.
pub(crate) struct Api {
    http: reqwest::Client,
    pub(crate) base: String,
    auth: reqwest::header::HeaderValue,
}

impl Api {
    pub(crate) fn new(creds: &Credentials, timeout: Duration) -> Result<Self, ToolError> {
        let base = creds.base_url();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ToolError::Unreachable {
                url: base.clone(),
                reason: reason(e),
            })?;
        let mut auth = reqwest::header::HeaderValue::from_str(&format!(
            "Device {}",
            creds.device_key.expose()
        ))
        .map_err(|_| ToolError::Protocol("the device key is not a header value".into()))?;
        auth.set_sensitive(true);
        Ok(Self { http, base, auth })
    }

    async fn register(&self, public: &v2::PublicKeyBytes) -> Result<AccessTool, ToolError> {
        self.post("/device/register", register_body(public), 201)
            .await
    }

    async fn refresh(&self, tool_id: &str) -> Result<AccessTool, ToolError> {
        self.post("/device/refresh", json!({ "accessToolId": tool_id }), 200)
            .await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
        expect: u16,
    ) -> Result<T, ToolError> {
        let a = self.call(reqwest::Method::POST, path, Some(body)).await?;
        expected(path, a, expect)
    }

    /// One request; the answer whatever its status.
    ///
    /// # Errors
    /// [`ToolError::Unreachable`] when no answer came (refused, timed out, cut).
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<crate::provisioning::Answer, ToolError> {
        let unreachable = |e| ToolError::Unreachable {
            url: self.base.clone(),
            reason: reason(e),
        };
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, self.auth.clone());
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(unreachable)?;
        answer(resp).await.map_err(unreachable)
    }
}

/// The body of an answer with status `expect`, else the refusal (404 as [`ToolError::NotFound`]).
///
/// # Errors
/// [`ToolError::Protocol`] for a body that does not decode, the refusal otherwise.
pub(crate) fn expected<T: serde::de::DeserializeOwned>(
    path: &str,
    a: crate::provisioning::Answer,
    expect: u16,
) -> Result<T, ToolError> {
    match a.status {
        s if s == expect => serde_json::from_value(a.body).map_err(|e| {
            ToolError::Protocol(format!("{path}: {}", e.to_string().replace('"', "'")))
        }),
        404 => Err(ToolError::NotFound),
        _ => {
            let (code, message) = error_of(&a);
            Err(ToolError::Refused { code, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(expires_on: &str) -> AccessTool {
        AccessTool {
            access_tool_id: "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d".into(),
            device_pub_key: String::new(),
            issued_on: "2026-11-27T12:00:00Z".into(),
            expires_on: expires_on.into(),
            endpoints: Vec::new(),
            gateway_door: None,
        }
    }

    #[test]
    fn refreshes_only_within_the_threshold() {
        let t = tool("2026-12-04T12:00:00Z");
        let expires = t.expires_at().unwrap();
        let day = 86_400;
        assert_eq!(upkeep(None, expires, 86_400), Upkeep::Register);
        assert_eq!(
            upkeep(Some(&t), expires - 3 * day, 2 * 86_400),
            Upkeep::Keep
        );
        assert_eq!(
            upkeep(Some(&t), expires - 2 * day, 2 * 86_400),
            Upkeep::Refresh
        );
        assert_eq!(upkeep(Some(&t), expires + 1, 2 * 86_400), Upkeep::Refresh);
        assert_eq!(upkeep(Some(&tool("soon")), 0, 0), Upkeep::Register);
    }

    #[test]
    fn keys_are_fresh_valid_and_registered_as_the_contract_says() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a.expose(), b.expose());
        let mut c = crate::credentials::tests_support::sample();
        c.phone_key = Some(a);
        let sk = secret_key(&c).unwrap();
        let public = v2::public_key_bytes(&sk.public_key());
        let body = register_body(&public);
        let raw = data_encoding::BASE64
            .decode(body["pubkey"].as_str().unwrap().as_bytes())
            .unwrap();
        assert_eq!(raw.len(), 65);
        assert_eq!(raw[0], 4);
        let hash = body["hash"].as_str().unwrap();
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, hash.to_ascii_lowercase());
        c.phone_key = Some(SecretString::new("AAAA".into()));
        assert!(matches!(secret_key(&c), Err(ToolError::BadKey)));
    }

    #[test]
    fn vector_key_registers_with_its_hash() {
        // PROTOCOL.md §24.1: phone_secret 32 × 0x11 → phone_public (§24.2).
        let sk = v2::parse_secret_key(&[0x11; 32]).unwrap();
        let public = v2::public_key_bytes(&sk.public_key());
        assert_eq!(
            data_encoding::HEXLOWER.encode(&public),
            "040217e617f0b6443928278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed194a7debcb97712d2dda3ca85aa8765a56f45fc758599652f2897c65306e5794"
        );
        let body = register_body(&public);
        assert_eq!(
            body["hash"].as_str().unwrap(),
            data_encoding::HEXLOWER.encode(&Sha256::digest(public))
        );
    }

    #[test]
    fn doors_decode_and_bad_ones_are_refused() {
        let door_key =
            v2::public_key_bytes(&v2::parse_secret_key(&[0x22; 32]).unwrap().public_key());
        let mut t = tool("2026-12-04T12:00:00Z");
        t.endpoints = vec![ToolEndpoint {
            id: "front-door".into(),
            name: None,
            doors: vec![
                ToolDoor {
                    door_id: "3d9a5c1e7b2f4c809e415a6b7c8d9e0f".into(),
                    kind: DoorKind::Node,
                    node_id: Some("3d9a5c1e-7b2f-4c80-9e41-5a6b7c8d9e0f".into()),
                    pubkey: data_encoding::BASE64.encode(&door_key),
                },
                ToolDoor {
                    door_id: "00".repeat(16),
                    kind: DoorKind::Other,
                    node_id: None,
                    pubkey: String::new(),
                },
            ],
        }];
        let (ep, doors) = t.doors(None).unwrap().unwrap();
        assert_eq!(ep, "front-door");
        assert_eq!(doors.len(), 1);
        assert_eq!(doors[0].name(), "3d9a5c1e-7b2f-4c80-9e41-5a6b7c8d9e0f");
        assert!(t.doors(Some("garage")).unwrap().is_none());
        t.endpoints[0].doors[0].pubkey = data_encoding::BASE64.encode(&[4u8; 65]);
        assert!(matches!(t.doors(None), Err(ToolError::Protocol(_))));
        let unknown: DoorKind = serde_json::from_str("\"vehicle\"").unwrap();
        assert_eq!(unknown, DoorKind::Other);
    }
}
