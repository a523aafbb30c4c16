//! AFL++ target `node_ring`: [`latchkey_fuzz::node::ring`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::node::ring(data));
}
