//! husk's runtime library, shared by the `husk` CLI and (later) the containerd shim.
//!
//! So far: the runtime configuration ([`config`]). VM lifecycle, the agent client and
//! image handling are not written yet; see the README's status.

pub mod config;
