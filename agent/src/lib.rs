//! husk-agent: PID 1 of the guest; serves the agent API and creates the containers.
//!
//! So far: where the agent listens ([`listen`]). The `husk-agent` binary, container
//! creation and the RPCs are not written yet; see the README's status.

pub mod listen;
