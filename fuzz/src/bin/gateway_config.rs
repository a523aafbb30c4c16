//! AFL++ target `gateway_config`: [`latchkey_fuzz::gateway::config`].
fn main() {
    afl::fuzz!(|data: &[u8]| latchkey_fuzz::gateway::config(data));
    latchkey_fuzz::gateway::cleanup();
}
