//! AFL++ target `ble_v1`: [`latchkey_fuzz::proto::ble_v1`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::proto::ble_v1(data));
}
