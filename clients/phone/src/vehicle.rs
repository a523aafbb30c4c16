//! Vehicle keys (issue 12): the keys the phone holds, the gateway's pairing-session endpoints
//! (`POST /pairing-sessions`, `…/complete`, `DELETE …`, `GET /device/keys`), and the upkeep
//! that refreshes a key through `POST /device/refresh` like the general access tool.
//!
//! A vehicle key is public data (the private half is the phone key); it is kept in the
//! credentials file (0600) as the gateway wrote it, checked on arrival and again on use.
//! Functions that judge time take `now` (Unix seconds).

use std::time::Duration;

use latchkey_proto::v2;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::tool::{self, Api, ToolError};
use crate::Credentials;

/// The endpoint id of every vehicle grant (issue 12 spec §4's `pairing::ENDPOINT`).
pub const ENDPOINT: &str = "vehicle";

/// A vehicle key as the gateway answers it (`key` of `/complete`, items of `/device/keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VehicleKey {
    pub key_id: String,
    pub vehicle_id: String,
    pub device_id: String,
    pub issued_on: String,
    pub expires_on: String,
    pub endpoint: String,
    /// The vehicle's door id: 32 hex digits, the vehicle id's bytes.
    pub door_id: String,
    /// The vehicle's P-256 key (SEC1 uncompressed, std base64).
    pub pubkey: String,
}

/// What `phone unlock --vehicle` needs of a key, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsableKey {
    pub key_id: v2::ToolId,
    pub door_id: v2::DoorId,
    pub public: v2::PublicKeyBytes,
}

impl VehicleKey {
    pub fn expires_at(&self) -> Option<i64> {
        crate::clock::parse_rfc3339(&self.expires_on)
    }

    /// Decodes and checks the key: UUIDs, the endpoint `vehicle`, a door id that is the
    /// vehicle id's bytes, a P-256 point, RFC 3339 times.
    ///
    /// # Errors
    /// [`ToolError::Protocol`] naming what is wrong.
    pub fn usable(&self) -> Result<UsableKey, ToolError> {
        let bad = |what: &str| ToolError::Protocol(format!("{what} in the vehicle key"));
        let key_id = uuid::Uuid::try_parse(&self.key_id)
            .map_err(|_| bad("keyId is not a UUID"))?
            .into_bytes();
        let vehicle = uuid::Uuid::try_parse(&self.vehicle_id)
            .map_err(|_| bad("vehicleId is not a UUID"))?
            .into_bytes();
        let door_id = data_encoding::HEXLOWER_PERMISSIVE
            .decode(self.door_id.as_bytes())
            .ok()
            .and_then(|v| v2::DoorId::try_from(v).ok())
            .ok_or_else(|| bad("doorId is not 32 hex digits"))?;
        if door_id != vehicle {
            return Err(bad("doorId is not the vehicle's"));
        }
        if self.endpoint != ENDPOINT {
            return Err(bad("endpoint is not \"vehicle\""));
        }
        let public = tool::decode_key(&self.pubkey).ok_or_else(|| bad("pubkey is not P-256"))?;
        if self.expires_at().is_none() || crate::clock::parse_rfc3339(&self.issued_on).is_none() {
            return Err(bad("issuedOn or expiresOn is not RFC 3339"));
        }
        Ok(UsableKey {
            key_id,
            door_id,
            public,
        })
    }

    /// Whether this is a key for `vehicle` (a UUID, compared as one).
    pub fn is_for(&self, vehicle: &uuid::Uuid) -> bool {
        uuid::Uuid::try_parse(&self.vehicle_id).is_ok_and(|v| v == *vehicle)
    }
}

/// The stored key for `vehicle` that is still live at `now` and decodes (the latest expiry
/// wins should there be several).
pub fn key_for<'a>(
    creds: &'a Credentials,
    vehicle: &uuid::Uuid,
    now: i64,
) -> Option<&'a VehicleKey> {
    creds
        .vehicle_keys
        .iter()
        .filter(|k| k.is_for(vehicle) && k.usable().is_ok())
        .filter(|k| k.expires_at().is_some_and(|e| e > now))
        .max_by_key(|k| k.expires_at())
}

/// Replaces the stored keys of `vehicle` with `keys` (the gateway's list of live ones).
pub fn store_keys(creds: &mut Credentials, vehicle: &uuid::Uuid, keys: Vec<VehicleKey>) {
    creds.vehicle_keys.retain(|k| !k.is_for(vehicle));
    creds
        .vehicle_keys
        .extend(keys.into_iter().filter(|k| k.is_for(vehicle)));
}

/// What [`maintain`] did to the stored keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upkept {
    pub refreshed: usize,
    /// Keys the gateway no longer knows (404: voided or revoked), dropped.
    pub dropped: usize,
}

/// Refreshes every stored vehicle key that expires within `within` seconds of `now`, one
/// `POST /device/refresh` each (`timeout` per request); a key the gateway answers 404 for
/// was voided and is dropped. The credentials change only for what the gateway answered (the
/// caller saves them); the first other failure ends the round with the keys kept.
///
/// # Errors
/// [`ToolError`] of the request that failed (what was refreshed before it stays refreshed).
pub async fn maintain(
    creds: &mut Credentials,
    now: i64,
    within: u64,
    timeout: Duration,
) -> Result<Upkept, ToolError> {
    let within = i64::try_from(within).unwrap_or(i64::MAX);
    let due: Vec<String> = creds
        .vehicle_keys
        .iter()
        .filter(|k| {
            k.expires_at()
                .is_none_or(|e| e.saturating_sub(now) <= within)
        })
        .map(|k| k.key_id.clone())
        .collect();
    let mut done = Upkept::default();
    if due.is_empty() {
        return Ok(done);
    }
    let api = Api::new(creds, timeout)?;
    for id in due {
        let a = api
            .call(
                reqwest::Method::POST,
                "/device/refresh",
                Some(json!({ "accessToolId": id })),
            )
            .await?;
        match tool::expected::<Refreshed>("/device/refresh", a, 200) {
            Ok(r) if crate::clock::parse_rfc3339(&r.expires_on).is_some() => {
                for k in creds.vehicle_keys.iter_mut().filter(|k| k.key_id == id) {
                    k.expires_on.clone_from(&r.expires_on);
                    if let Some(i) = &r.issued_on {
                        k.issued_on.clone_from(i);
                    }
                }
                done.refreshed += 1;
            }
            Ok(_) => {
                return Err(ToolError::Protocol(
                    "/device/refresh: expiresOn is not RFC 3339".into(),
                ))
            }
            Err(ToolError::NotFound) => {
                creds.vehicle_keys.retain(|k| k.key_id != id);
                done.dropped += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The part of `/device/refresh`'s answer (the key object, PROTOCOL.md §27.5) a stored key
/// takes: its new validity.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Refreshed {
    expires_on: String,
    #[serde(default)]
    issued_on: Option<String>,
}

/// `POST /pairing-sessions`'s answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub session_id: String,
    pub expires_at: String,
}

/// `…/complete`'s answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Completed {
    pub key: VehicleKey,
    pub ble_response_payload: String,
}

#[derive(Deserialize)]
struct Keys {
    keys: Vec<VehicleKey>,
}

/// The gateway's pairing-session endpoints (issue 12 spec §2), for one device.
pub struct Pairing {
    api: Api,
}

impl Pairing {
    /// `timeout` bounds each request.
    ///
    /// # Errors
    /// [`ToolError`] when no HTTP client can be made or the device key is not a header.
    pub fn new(creds: &Credentials, timeout: Duration) -> Result<Self, ToolError> {
        Ok(Self {
            api: Api::new(creds, timeout)?,
        })
    }

    pub async fn create(
        &self,
        vehicle: &uuid::Uuid,
        challenge_frame: &[u8],
        rssi: i16,
    ) -> Result<Session, ToolError> {
        let body = json!({
            "vehicleId": vehicle.to_string(),
            "deviceId": data_encoding::HEXLOWER.encode(vehicle.as_bytes()),
            "nonce": data_encoding::BASE64.encode(challenge_frame),
            "rssi": rssi.clamp(-127, 20),
        });
        let a = self
            .api
            .call(reqwest::Method::POST, "/pairing-sessions", Some(body))
            .await?;
        tool::expected("/pairing-sessions", a, 201)
    }

    pub async fn complete(
        &self,
        session: &uuid::Uuid,
        sealed: &[u8],
        signature: &[u8],
    ) -> Result<Completed, ToolError> {
        let body = json!({
            "encryptedResponse": data_encoding::BASE64.encode(sealed),
            "signature": data_encoding::BASE64.encode(signature),
        });
        let path = format!("/pairing-sessions/{session}/complete");
        let a = self
            .api
            .call(reqwest::Method::POST, &path, Some(body))
            .await?;
        tool::expected("/pairing-sessions/…/complete", a, 200)
    }

    /// Cancels the session; `Ok` when the gateway says it is cancelled (or already gone).
    pub async fn cancel(&self, session: &uuid::Uuid) -> Result<(), ToolError> {
        let path = format!("/pairing-sessions/{session}");
        let a = self.api.call(reqwest::Method::DELETE, &path, None).await?;
        tool::expected::<serde_json::Value>("DELETE /pairing-sessions/…", a, 200).map(|_| ())
    }

    /// The device's live keys for `vehicle`.
    pub async fn keys(&self, vehicle: &uuid::Uuid) -> Result<Vec<VehicleKey>, ToolError> {
        let path = format!("/device/keys?vehicleId={vehicle}");
        let a = self.api.call(reqwest::Method::GET, &path, None).await?;
        tool::expected::<Keys>("/device/keys", a, 200).map(|k| k.keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VEHICLE: &str = "3d9a5c1e-7b2f-4c80-9e41-5a6b7c8d9e0f";

    fn key(expires_on: &str) -> VehicleKey {
        let public = v2::public_key_bytes(&v2::parse_secret_key(&[0x22; 32]).unwrap().public_key());
        VehicleKey {
            key_id: "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d".into(),
            vehicle_id: VEHICLE.into(),
            device_id: "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b".into(),
            issued_on: "2026-11-27T12:00:00Z".into(),
            expires_on: expires_on.into(),
            endpoint: "vehicle".into(),
            door_id: VEHICLE.replace('-', ""),
            pubkey: data_encoding::BASE64.encode(&public),
        }
    }

    #[test]
    fn keys_decode_and_bad_ones_are_refused() {
        let k = key("2026-12-27T12:00:00Z");
        let u = k.usable().unwrap();
        assert_eq!(
            u.door_id,
            uuid::Uuid::parse_str(VEHICLE).unwrap().into_bytes()
        );
        let bad = [
            VehicleKey {
                door_id: "00".repeat(16),
                ..k.clone()
            },
            VehicleKey {
                endpoint: "front-door".into(),
                ..k.clone()
            },
            VehicleKey {
                pubkey: data_encoding::BASE64.encode(&[4u8; 65]),
                ..k.clone()
            },
            VehicleKey {
                key_id: "x".into(),
                ..k.clone()
            },
            VehicleKey {
                expires_on: "soon".into(),
                ..k.clone()
            },
        ];
        for b in bad {
            assert!(matches!(b.usable(), Err(ToolError::Protocol(_))), "{b:?}");
        }
    }

    #[test]
    fn the_live_key_of_the_vehicle_is_used_and_stored_keys_are_replaced() {
        let mut c = crate::credentials::tests_support::sample();
        let v = uuid::Uuid::parse_str(VEHICLE).unwrap();
        let old = key("2026-12-01T00:00:00Z");
        let new = VehicleKey {
            key_id: "b1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d".into(),
            ..key("2026-12-27T00:00:00Z")
        };
        let other = VehicleKey {
            vehicle_id: "0f1e2d3c-4b5a-4968-8778-695a4b3c2d1e".into(),
            door_id: "0f1e2d3c4b5a49688778695a4b3c2d1e".into(),
            ..key("2026-12-27T00:00:00Z")
        };
        c.vehicle_keys = vec![old.clone(), other.clone()];
        let t = old.expires_at().unwrap();
        assert_eq!(key_for(&c, &v, t - 1), Some(&old));
        assert_eq!(key_for(&c, &v, t), None, "expired");
        store_keys(&mut c, &v, vec![new.clone(), other.clone()]);
        assert_eq!(c.vehicle_keys, vec![other, new.clone()]);
        assert_eq!(key_for(&c, &v, t), Some(&new));
    }
}
