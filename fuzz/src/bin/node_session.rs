//! AFL++ target `node_session`: [`latchkey_fuzz::node::session`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::node::session(data));
}
