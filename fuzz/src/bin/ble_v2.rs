//! AFL++ target `ble_v2`: [`latchkey_fuzz::proto::ble_v2`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::proto::ble_v2(data));
}
