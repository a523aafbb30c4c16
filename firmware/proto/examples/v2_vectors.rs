//! Prints the version-2 test vectors of `docs/PROTOCOL.md`:
//! `cargo run -p latchkey-proto --example v2_vectors`.

use latchkey_proto::v2::vectors::{self, compute};
use latchkey_proto::v2::{door_tag, to_base64, SignedGrant};

fn main() -> Result<(), latchkey_proto::v2::Error> {
    let v = compute()?;
    let rows: [(&str, &[u8]); 21] = [
        ("phone_secret", &vectors::PHONE_SECRET),
        ("phone_public", &v.phone_public),
        ("door_secret", &vectors::DOOR_SECRET),
        ("door_public", &v.door_public),
        ("other_phone_public", &v.other_phone_public),
        ("gateway_seed", &vectors::GATEWAY_SEED),
        ("gateway_public", &v.gateway_public),
        ("door_id", &vectors::DOOR_ID),
        ("door_tag", &door_tag(&vectors::DOOR_ID)),
        ("shared_z", v.secret.shared()),
        ("hint_key", v.secret.hint_key()),
        ("hint", &v.hint),
        ("session_prk", &v.session_prk),
        ("to_door", &v.to_door),
        ("to_phone", &v.to_phone),
        ("challenge", &v.challenge),
        ("request_plain", &v.request_plain),
        ("request", &v.request),
        ("result_granted", &v.result_granted),
        ("result_unknown", &v.result_unknown),
        ("grant", &v.grant),
    ];
    for (name, bytes) in rows {
        println!("{name:<20} {}", hex::encode(bytes));
    }
    println!("{:<20} {}", "signed_grant", hex::encode(v.signed_grant));
    let mut b64 = [0u8; SignedGrant::LEN * 2];
    println!(
        "{:<20} {}",
        "signed_grant_b64",
        to_base64(&v.signed_grant, &mut b64)?
    );
    println!("{:<20} {}", "snapshot", hex::encode(v.snapshot));
    Ok(())
}
