//! AFL++ target `gateway_ws`: [`latchkey_fuzz::gateway::ws`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::gateway::ws(data));
    latchkey_fuzz::gateway::cleanup();
}
