//! Door-service test support: a gateway with BLE on, serving on an adapter of the BlueZ
//! stand-in, and phones paired over HTTP that talk to it through simulated LE links.
#![allow(dead_code)]

use std::time::Duration;

use latchkey::clock::Clock;
use latchkey::config::{ActionConfig, BleMode, Config, EndpointConfig};
use latchkey::registry::DeviceId;
use latchkey_bluez_standin::phone::{Attempt, Phone};
use latchkey_bluez_standin::{Adapter, AppInfo, Link};
use latchkey_proto::{UuidText, CHALLENGE_UUID, RESULT_UUID};
use serde_json::Value;

use crate::common::Gateway;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn uuid(u: u128) -> String {
    UuidText(u).to_string()
}

pub fn challenge() -> String {
    uuid(CHALLENGE_UUID)
}
pub fn auth() -> String {
    uuid(latchkey_proto::AUTH_UUID)
}
pub fn result() -> String {
    uuid(RESULT_UUID)
}

/// An endpoint whose action is `none`.
pub fn endpoint(id: &str, devices: Option<Vec<String>>) -> EndpointConfig {
    EndpointConfig {
        id: id.into(),
        name: None,
        devices,
        action: ActionConfig::None,
    }
}

/// Sets a config up for BLE on `adapter`.
pub fn ble_on(c: &mut Config, adapter: &Adapter, endpoints: Vec<EndpointConfig>) {
    c.ble = BleMode::On;
    c.ble_adapter = Some(adapter.name().to_owned());
    c.endpoints = endpoints;
}

/// A gateway with BLE on a fresh adapter of the shared stand-in.
pub struct Door {
    pub gw: Gateway,
    pub adapter: Adapter,
    pub app: AppInfo,
    pub http: reqwest::Client,
}

impl Door {
    pub async fn start(endpoints: Vec<EndpointConfig>) -> Door {
        Self::start_with(endpoints, |_| {}).await
    }

    pub async fn start_with(
        endpoints: Vec<EndpointConfig>,
        tweak: impl FnOnce(&mut Config),
    ) -> Door {
        let shared = latchkey_bluez_standin::shared().expect("private bus and stand-in");
        let adapter = shared.new_adapter().await.expect("adapter");
        let gw = Gateway::start_with(|c| {
            ble_on(c, &adapter, endpoints);
            tweak(c);
        })
        .await;
        let app = adapter
            .wait_application(0, WAIT)
            .await
            .expect("the gateway registers its GATT application");
        Door {
            gw,
            adapter,
            app,
            http: reqwest::Client::new(),
        }
    }

    pub fn now(&self) -> u64 {
        u64::try_from(self.gw.clock.now()).expect("positive time")
    }

    /// Pairs a phone over HTTP; returns it and the pair answer.
    pub async fn pair(&self, name: &str) -> (Phone, Value) {
        let answer = self.gw.pair(&self.http, name).await;
        (phone_from(&answer), answer)
    }

    /// A phone connects (as `address`) and subscribes to Result: one ATT operation.
    pub async fn connect(&self, address: &str) -> Link {
        let link = self.adapter.connect(address, 185).await.expect("connect");
        link.subscribe(&result())
            .await
            .expect("subscribe to Result");
        link
    }

    /// Revokes a device through the HTTP API.
    pub async fn revoke(&self, device_id: &str) {
        let r = self
            .http
            .post(self.gw.url(&format!("/api/devices/{device_id}/revoke")))
            .bearer_auth(&self.gw.admin_token)
            .send()
            .await
            .expect("revoke");
        assert_eq!(r.status(), 200);
    }

    /// The `access.*` events in the log, oldest first, as (topic, data).
    pub async fn access_events(&self) -> Vec<(String, Value)> {
        self.gw.events("access.").await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.gw.url("/metrics"))
            .bearer_auth(&self.gw.admin_token)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

pub fn phone_from(answer: &Value) -> Phone {
    let id = DeviceId::parse(answer["deviceId"].as_str().expect("deviceId")).expect("uuid");
    let secret = data_encoding::BASE32_NOPAD
        .decode(
            answer["totp"]["secret"]
                .as_str()
                .expect("secret")
                .trim_end_matches('=')
                .as_bytes(),
        )
        .expect("base32 secret");
    Phone::new(id.to_bytes(), secret).expect("phone keys")
}

/// Reads a challenge: one ATT operation.
pub async fn read_challenge(link: &Link) -> Vec<u8> {
    link.read(&challenge(), 0).await.expect("read challenge")
}

/// Writes an auth frame and waits for its result notification. BlueZ notifies every
/// subscribed connection, so, as a phone does, it skips results for other attempts: those
/// already queued, and (when the frame carries a nonce) those with another nonce.
pub async fn write_and_wait(link: &Link, frame: &[u8]) -> Vec<u8> {
    link.drain_notifications().await;
    let nonce = latchkey_proto::AuthFrame::decode(frame)
        .ok()
        .map(|f| f.nonce);
    link.write(&auth(), frame).await.expect("write auth");
    loop {
        let r = link
            .notification(&result(), WAIT)
            .await
            .expect("a result notification");
        match nonce {
            Some(n) if r.get(5..21) != Some(&n[..]) => continue,
            _ => return r,
        }
    }
}

/// One full unlock: read the challenge, answer it, write, wait for the result.
pub async fn unlock(
    link: &Link,
    phone: &mut Phone,
    now: u64,
    endpoint: &str,
) -> (Attempt, Vec<u8>) {
    let c = read_challenge(link).await;
    let attempt = phone.answer(&c, now, endpoint).expect("auth frame");
    let result = write_and_wait(link, &attempt.frame).await;
    (attempt, result)
}

/// Decodes a result frame's status (no verification).
pub fn status_of(result: &[u8]) -> latchkey_proto::Status {
    latchkey_proto::ResultFrame::decode(result)
        .expect("a well-formed result frame")
        .0
        .status
}

/// Whether a result frame carries the all-zero (unauthenticated) tag.
pub fn unsigned(result: &[u8]) -> bool {
    result.len() == 53 && result[21..].iter().all(|b| *b == 0)
}

/// The value of a metric line in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
