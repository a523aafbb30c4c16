//! A phone speaking door protocol v2 to the real node on the BlueZ stand-in (PROTOCOL.md §21).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use latchkey_proto::v2::{
    parse_secret_key, Challenge, EndpointId, PeerSecret, Request, RequestBody, ResultFrame, Status,
    CHALLENGE_UUID, REQUEST_UUID, RESULT_UUID,
};

/// Guards against a hang; never a pass/fail timer.
pub const WAIT: Duration = Duration::from_secs(10);

/// A UUID as BlueZ spells it.
pub fn uuid(u: u128) -> String {
    latchkey_proto::UuidText(u).to_string()
}

/// The scripted gateway's node id as 16 bytes.
pub fn node_id() -> [u8; 16] {
    u128::from_str_radix(&super::common::NODE_ID.replace('-', ""), 16)
        .unwrap()
        .to_be_bytes()
}

/// The phone with P-256 key `secret` and tool `tool`.
pub struct V2Phone {
    pub secret: [u8; 32],
    pub tool: [u8; 16],
}

impl V2Phone {
    /// Its unlock of `endpoint` at the node on `hci0` whose door key is `door_key`: subscribe,
    /// read, write, result; the status and whether the result was sealed. The node must know
    /// the time no earlier than `not_before`.
    pub async fn unlock(
        &self,
        hci0: &latchkey_bluez_standin::Adapter,
        door_key: &[u8],
        addr: &str,
        endpoint: &str,
        not_before: u64,
    ) -> (Status, bool) {
        let link = hci0.connect(addr, 185).await.unwrap();
        link.subscribe(&uuid(RESULT_UUID)).await.unwrap();
        let challenge = link.read(&uuid(CHALLENGE_UUID), 0).await.unwrap();
        let c = Challenge::decode(&challenge).unwrap();
        assert_eq!(c.door_id, node_id());
        assert!(
            c.door_time >= not_before,
            "the door knows the time: {}",
            c.door_time
        );
        let phone = parse_secret_key(&self.secret).unwrap();
        let peer = PeerSecret::derive(&phone, door_key, &c.door_id).unwrap();
        let keys = peer.session(&c.nonce, &c.door_id);
        let body = RequestBody {
            tool_id: self.tool,
            phone_time: c.door_time,
            endpoint: EndpointId::new(endpoint).unwrap(),
        };
        let request = Request::seal(&body, &keys, &peer.hint(&c.nonce), &c.nonce).unwrap();
        link.write(&uuid(REQUEST_UUID), &request).await.unwrap();
        let result = link
            .notification(&uuid(RESULT_UUID), WAIT)
            .await
            .expect("a result");
        let r = ResultFrame::open(&result, &keys, &c.nonce).unwrap();
        link.disconnect().await.unwrap();
        (r.status, r.authenticated)
    }
}
