//! The agent fuzz target's corpus, replayed on stable (see docs/testing.md, "Fuzzing").

#[path = "../../fuzz/src/agent.rs"]
mod agent;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn agent_spec() {
    replay::replay("agent_spec", agent::agent);
}
