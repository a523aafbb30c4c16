//! Prints what the node's grant store costs on this machine for a full door (256 grants, 256
//! phones): applying a `grants` frame (256 ECDH), re-applying the stored blob at boot with the
//! cached `Z` and without it (a damaged cache), and the blob's size.
//!
//! `cargo run --release -p latchkey-node-core --example grant_store`

use std::time::Instant;

use data_encoding::BASE64;
use latchkey_node_core::grants::{GrantStore, Outcome};
use latchkey_node_core::identity::Identity;
use latchkey_node_core::storage::Credentials;
use latchkey_proto::v2::ed25519_dalek::SigningKey;
use latchkey_proto::v2::{
    encode_snapshot, parse_secret_key, public_key_bytes, snapshot_len, vectors, EndpointId, Grant,
    SnapshotHeader, GRANT_CAPACITY,
};
use zeroize::Zeroizing;

const RUNS: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gateway = SigningKey::from_bytes(&vectors::GATEWAY_SEED);
    let door = Identity::from_secret_bytes(&vectors::DOOR_SECRET).ok_or("door key")?;
    let credentials = Credentials {
        node_id: String::from("3d9a5c1e-7b2f-4c80-9e41-5a6b7c8d9e0f"),
        node_key: Zeroizing::new(String::new()),
        gateway_id: String::new(),
        gateway_pubkey: BASE64.encode(gateway.verifying_key().as_bytes()),
        ws_url: String::new(),
        room: String::new(),
        wifi_ssid: String::new(),
        wifi_password: Zeroizing::new(String::new()),
        revoked: false,
    };
    let endpoint = EndpointId::new("front-door").map_err(|e| e.to_string())?;
    let mut grants = Vec::new();
    for i in 0..GRANT_CAPACITY {
        // 256 distinct phones: one ECDH each.
        let mut seed = [0x11u8; 32];
        seed[..2].copy_from_slice(&(i as u16).to_be_bytes());
        let phone = parse_secret_key(&seed).map_err(|e| e.to_string())?;
        grants.push(Grant {
            tool_id: (i as u128).to_be_bytes(),
            node_id: vectors::DOOR_ID,
            endpoint,
            not_before: vectors::NOT_BEFORE,
            expires: vectors::EXPIRES,
            epoch: 0,
            phone_key: public_key_bytes(&phone.public_key()),
        });
    }
    let header = SnapshotHeader {
        node_id: vectors::DOOR_ID,
        version: 1,
        epoch: 0,
        issued_at: vectors::ISSUED_AT,
    };
    let mut bytes = vec![0; snapshot_len(grants.len())];
    let len = encode_snapshot(&header, &grants, &gateway, &mut bytes).map_err(|e| e.to_string())?;
    let frame = BASE64.encode(&bytes[..len]);
    let store = || GrantStore::new(&credentials, door.door_key()).ok_or("grant store");

    let mut blob = None;
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let mut s = store()?;
        let t = Instant::now();
        let outcome = s.apply_frame(&frame, Some(3000));
        times.push(t.elapsed());
        if let Outcome::Applied { blob: b, .. } = outcome {
            blob = Some(b);
        }
    }
    let blob = blob.ok_or("not applied")?;
    report("grants frame, 256 new phones (256 ECDH)", &mut times);
    println!(
        "snapshot {len} B, base64 {} chars, stored blob {} B",
        frame.len(),
        blob.len()
    );

    let mut cached = Vec::new();
    let mut damaged = Vec::new();
    let mut bad = blob.to_vec();
    let at = bad.len() - 33;
    bad[at] ^= 1;
    for _ in 0..RUNS {
        let t = Instant::now();
        let applied = store()?.boot(&blob).map_err(|e| e.to_string())?;
        cached.push(t.elapsed());
        if applied.new_keys != 0 {
            return Err("the cache was not used".into());
        }
        let t = Instant::now();
        let applied = store()?.boot(&bad).map_err(|e| e.to_string())?;
        damaged.push(t.elapsed());
        if applied.new_keys != GRANT_CAPACITY {
            return Err("a damaged cache was used".into());
        }
    }
    report("boot, cached Z", &mut cached);
    report("boot, cache damaged (256 ECDH)", &mut damaged);
    Ok(())
}

fn report(what: &str, times: &mut [std::time::Duration]) {
    times.sort();
    let ms = |i: usize| times.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    println!(
        "{what}: median {:.2} ms (min {:.2}, max {:.2}, {RUNS} runs)",
        ms(times.len() / 2),
        ms(0),
        ms(times.len().saturating_sub(1)),
    );
}
