//! husk's runtime library, shared by the `husk` CLI and (later) the containerd shim.
//!
//! - [`config`]: the runtime configuration (/etc/husk/config.toml).
//! - [`sandbox`]: one microVM with its agent: boot, readiness, shutdown, clean-up.
//! - [`guest`]: where the guest image and husk-vmm are found.

pub mod config;
pub mod guest;
pub mod sandbox;
