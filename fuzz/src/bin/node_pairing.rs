//! AFL++ target `node_pairing`: [`latchkey_fuzz::node::pairing`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::node::pairing(data));
}
