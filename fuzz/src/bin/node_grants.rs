//! AFL++ target `node_grants`: [`latchkey_fuzz::node::grants`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::node::grants(data));
}
