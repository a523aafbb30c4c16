//! AFL++ target `node_ap`: [`latchkey_fuzz::node::ap`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::node::ap(data));
}
