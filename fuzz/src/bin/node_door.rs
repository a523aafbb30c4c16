//! AFL++ target `node_door`: [`latchkey_fuzz::node::door`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::node::door(data));
}
