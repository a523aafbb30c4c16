//! Replays the committed corpora through every target without AFL: each seed, and each input
//! that once crashed a target (kept in its corpus after the fix), must run to the end.

#[test]
fn every_target_runs_its_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in latchkey_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: empty corpus");
        for input in inputs {
            target(&std::fs::read(&input).unwrap());
        }
    }
}

/// The HTTP target's gateway starts, and its seeds reach the handlers: a pairing with a
/// fresh token succeeds, and the paired phone's key is accepted.
#[test]
fn the_http_target_reaches_the_handlers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/gateway_http");
    let status = |seed: &str| {
        let input = std::fs::read(root.join(seed)).unwrap();
        latchkey_fuzz::gateway::request(&input)
            .expect("the gateway started")
            .0
    };
    assert_eq!(status("pair"), 201);
    assert_eq!(status("me"), 200);
    assert_eq!(status("node_rename"), 404);
    latchkey_fuzz::gateway::cleanup();
}
