//! Prints the test vectors of `docs/PROTOCOL.md`:
//! `cargo run -p latchkey-proto --example vectors`.

use latchkey_proto::vectors::{self, compute};
use latchkey_proto::{UuidText, AUTH_UUID, CHALLENGE_UUID, RESULT_UUID, SERVICE_UUID};

fn main() -> Result<(), latchkey_proto::Error> {
    let v = compute()?;
    println!("# inputs");
    println!("totp_secret      {}", hex::encode(vectors::TOTP_SECRET));
    println!("device_id        {}", hex::encode(vectors::DEVICE_ID));
    println!("nonce            {}", hex::encode(vectors::NONCE));
    println!("gateway_time     {}", vectors::GATEWAY_TIME);
    println!("phone_time       {}", vectors::PHONE_TIME);
    println!("endpoint         {}", vectors::ENDPOINT);
    println!("# derived");
    println!("auth_key         {}", hex::encode(v.keys.auth_key()));
    println!("result_key       {}", hex::encode(v.keys.result_key()));
    println!("totp_step        {}", v.step);
    println!("totp             {:06}", v.totp);
    println!("# frames");
    println!("challenge        {}", hex::encode(v.challenge));
    println!("auth             {}", hex::encode(v.auth_frame()));
    println!("auth_tag         {}", hex::encode(v.auth_tag()));
    println!("result_granted   {}", hex::encode(v.result_granted));
    println!("result_locked    {}", hex::encode(v.result_locked_out));
    println!("result_unknown   {}", hex::encode(v.result_unknown_device));
    println!("result_peer_lock {}", hex::encode(v.result_peer_locked_out));
    println!("# advertisement");
    println!("gateway_id       {}", vectors::GATEWAY_ID);
    println!("adv_data         {}", hex::encode(v.adv_data));
    println!("advertising      {}", hex::encode(v.advertising));
    println!("# uuids");
    println!("service          {}", UuidText(SERVICE_UUID));
    println!("challenge        {}", UuidText(CHALLENGE_UUID));
    println!("auth             {}", UuidText(AUTH_UUID));
    println!("result           {}", UuidText(RESULT_UUID));
    Ok(())
}
