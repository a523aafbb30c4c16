//! Writes the seed corpora (`cargo run --example seeds -- corpus`): one or more valid inputs per
//! target, made with the protocol's own encoders and the PROTOCOL.md §24 keys, so the fuzzer
//! starts from frames that pass every check and mutates from there. The output is committed;
//! rerun when a format changes.

use std::path::Path;

use latchkey_node_core::board::DoorEvent;
use latchkey_node_core::door::{Door, DoorAction};
use latchkey_node_core::ring::Entry;
use latchkey_node_core::test_support::{
    at, empty_store, gateway, snapshot, store_with, Counter, Phone, DOOR_ID, NOW, WALL,
};
use latchkey_proto::v2::{EndpointId, Record};
use latchkey_proto::Status;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).ok_or("usage: seeds DIR")?;
    let out = Path::new(&out);
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)
    };

    let v1 = latchkey_proto::vectors::compute()?;
    write("ble_v1", "auth", v1.auth_frame())?;

    let v2 = latchkey_proto::v2::vectors::compute()?;
    write("ble_v2", "challenge", &v2.challenge)?;
    write("ble_v2", "request", &v2.request)?;
    write("ble_v2", "result_granted", &v2.result_granted)?;
    write("ble_v2", "result_unknown", &v2.result_unknown)?;
    write("ble_v2", "grant", &v2.grant)?;

    // A request the door grants: byte 0 even reads the challenge first (src/node.rs).
    let phone = Phone::new(1);
    let grants = store_with(&[phone.grant(DOOR_ID, "front-door")]);
    let mut door = Door::default();
    let read = door.on(
        DoorEvent::ReadChallenge { conn: 1 },
        &grants,
        at(1_000),
        WALL,
        &mut Counter::default(),
        |_| true,
    );
    let [DoorAction::Reply { value, .. }] = &read[..] else {
        return Err("no challenge".into());
    };
    let (request, _, _) = phone.request(value, "front-door");
    write(
        "node_door",
        "granted",
        &[[0u8].as_slice(), &request].concat(),
    )?;
    write(
        "node_door",
        "no_challenge",
        &[[1u8].as_slice(), &request].concat(),
    )?;

    let text = snapshot(
        &gateway(),
        1,
        0,
        NOW - 600,
        &[phone.grant(DOOR_ID, "front-door")],
    );
    write("node_grants", "snapshot", text.as_bytes())?;
    let mut store = empty_store();
    let _ = store.apply_frame(&text, Some(1_500));
    write("node_grants", "blob", &store.blob())?;

    // A vehicle's response is 151 bytes behind a gateway signature: a well-formed header with
    // a zero body, so the fuzzer learns the length and kind bytes.
    let mut response = vec![0u8; latchkey_proto::v2::pairing::RESPONSE_LEN];
    response[0] = latchkey_proto::v2::VERSION;
    write("node_pairing", "response_shape", &response)?;

    write(
        "node_session",
        "hello_command",
        concat!(
            r#"{"type":"hello","nodeId":"n","gatewayId":"g","now":1764237600}"#,
            "\n",
            r#"{"type":"command","id":42,"command":"unlock","pulse_ms":3000}"#,
            "\n",
            r#"{"type":"decisions_ack","upTo":7}"#,
        )
        .as_bytes(),
    )?;

    write("node_ap", "provision", serde_json_body().as_bytes())?;

    let entry = Entry {
        seq: 7,
        record: Record {
            status: Status::Granted,
            tool_id: Some(phone.tool),
            endpoint: EndpointId::new("front-door").ok(),
            phone_time: Some(NOW + 12),
            door_time: Some(NOW + 13),
        },
        offline: true,
    };
    write("node_ring", "entry", &entry.encode())?;

    write(
        "gateway_ws",
        "publish",
        br#"{"type":"publish","id":1,"topic":"home.lights","data":{"on":true}}"#,
    )?;
    write(
        "gateway_ws",
        "subscribe",
        br#"{"type":"subscribe","topics":["home.*","device.>"]}"#,
    )?;
    write("gateway_ws", "resume", br#"{"type":"resume","since":42}"#)?;
    write(
        "gateway_ws",
        "node_status",
        br#"{"type":"status","kind":"door","firmware":"0.1.0","relay":"idle","uptime":12}"#,
    )?;
    write(
        "gateway_ws",
        "node_result",
        br#"{"type":"result","id":7,"ok":false,"error":"HARDWARE"}"#,
    )?;
    write(
        "gateway_ws",
        "node_decisions",
        br#"{"type":"decisions","entries":[{"seq":1,"status":"GRANTED","toolId":"AAAAAAAAAAAAAAAAAAAAAA==","endpoint":"front-door","phoneTime":1767225612,"doorTime":1767225613,"offline":true}],"lost":0,"unrecognised":2}"#,
    )?;

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/latchkey.toml");
    write("gateway_config", "example", &std::fs::read(example)?)?;

    // Byte 0: the route in gateway::ROUTES, bit 7 puts a fresh token where the body says TOKEN.
    let http: &[(u8, &str, &[u8])] = &[
        (0x80, "pair", br#"{"pairToken":"TOKEN","deviceInfo":{"name":"Ana's phone","type":"phone"}}"#),
        (0x01, "pair_token", b"{}"),
        (0x83, "node_register", br#"{"provisioningToken":"TOKEN","nodeId":"550e8400-e29b-41d4-a716-446655440000","kind":"door","room":"hall","pubkey":"AAAA"}"#),
        (0x04, "node_rename", br#"{"name":"Front door"}"#),
        (0x05, "endpoint_open", b""),
        (0x06, "tool_register", br#"{"pubkey":"BHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eA==","hash":"AAAA"}"#),
        (0x07, "tool_refresh", br#"{"accessToolId":"550e8400-e29b-41d4-a716-446655440000"}"#),
        (0x08, "pairing_session", br#"{"vehicleId":"550e8400-e29b-41d4-a716-446655440000","deviceId":"550e8400-e29b-41d4-a716-446655440000","nonce":"AAAAAAAAAAAAAAAAAAAAAA==","rssi":-60}"#),
        (0x09, "pairing_complete", br#"{"encryptedResponse":"AAAA","signature":"AAAA"}"#),
        (0x0a, "login", b"password=hunter2&csrf=x"),
        (0x0b, "me", b""),
    ];
    for (pick, name, body) in http {
        write("gateway_http", name, &[&[*pick][..], body].concat())?;
    }
    Ok(())
}

/// seed 004's provisioning body.
fn serde_json_body() -> String {
    concat!(
        r#"{"wifi_ssid":"HomeWifi","wifi_password":"correct horse","room":"kitchen","#,
        r#""command_center_url":"http://10.0.0.2:8080","household_id":"h","#,
        r#""node_id":"550e8400-e29b-41d4-a716-446655440000","#,
        r#""provisioning_token":"prov_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#
    )
    .to_string()
}
