//! The agent API shared by `husk-agent` (in the guest) and the host side (shim, CLI).
//!
//! So far: the protocol version and the validation every request goes through
//! ([`validate`]). The ttrpc service itself comes with the agent (see the README).

pub mod validate;

/// The agent API version. The agent reports it when it announces readiness; the host
/// refuses an agent whose major version differs from its own.
pub const PROTOCOL_VERSION: (u32, u32) = (0, 1);

/// vsock port the agent serves its API on.
pub const AGENT_PORT: u32 = 1024;

/// Host vsock port the agent connects to once ready (no polling from the host).
pub const READY_PORT: u32 = 1025;
