//! AFL++ target `gateway_http`: [`latchkey_fuzz::gateway::http`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::gateway::http(data));
    latchkey_fuzz::gateway::cleanup();
}
