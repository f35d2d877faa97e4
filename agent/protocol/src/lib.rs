//! The agent API shared by `husk-agent` (in the guest) and the host side (shim, CLI).
//!
//! The protocol version, the validation every request goes through ([`validate`]),
//! the ttrpc service generated from `proto/agent.proto` ([`agent`] messages,
//! [`agent_ttrpc`] client and server), and the host's connection to an agent
//! ([`client`]: the API, the stdio streams and port forwards ([`forward`]), over a unix
//! socket or hybrid vsock).

pub mod client;
pub mod forward;
pub mod spec;
pub mod stdio;
pub mod validate;

/// Messages generated from proto/agent.proto.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
#[allow(
    missing_debug_implementations,
    unused,
    nonstandard_style,
    unsafe_op_in_unsafe_fn
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The ttrpc client (`AgentClient`) and server (`Agent` trait, `create_agent`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
#[allow(
    missing_debug_implementations,
    unused,
    nonstandard_style,
    unsafe_op_in_unsafe_fn
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// The agent API version. The agent reports it when it announces readiness; the host
/// refuses an agent whose major version differs from its own. Minor versions add
/// fields an older agent would ignore: 0.2 added `Rootfs.upper_device`/`upper_fstype`,
/// 0.3 `CreateSandboxRequest.shares`.
/// 0.4 networking: `UpdateInterfaceRequest.mac`, structured `UpdateRoutesRequest.routes`,
/// `CreateSandboxRequest.etc_hosts`/`etc_resolv_conf`/`etc_hostname`.
/// 0.5 snapshot clones: `CreateSandboxRequest.entropy_seed`.
/// 0.6 clones with NICs: `UpdateInterfaceRequest.current_mac`.
pub const PROTOCOL_VERSION: (u32, u32) = (0, 6);

/// vsock port the agent serves its API on.
pub const AGENT_PORT: u32 = 1024;

/// Host vsock port the agent connects to once ready (no polling from the host).
pub const READY_PORT: u32 = 1025;
