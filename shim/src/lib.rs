//! husk's runtime library, shared by the `husk` CLI and the containerd shim. It
//! knows pods, not command lines: a [`sandbox::Sandbox`] (one VM, its agent, shares,
//! network, state folder), a [`pod::Pod`] (the containers and processes in it),
//! [`stdio`] endpoints, and one [`error::Error`] with kinds.
//!
//! - [`error`]: the library's one error type, with kinds (docker exit codes, ttrpc
//!   codes).
//! - [`layout`]: where state lives on disk (the only module that knows the folders).
//! - [`pod`]: the containers and processes of a sandbox over its agent; the event pump.
//! - [`stdio`]: stdio endpoints (our terminal or pipes, files, FIFOs) joined to the
//!   agent's streams.
//! - [`spawner`]: husk-vmm and virtiofsd forked by one process-long thread, so that
//!   they die with the process (PR_SET_PDEATHSIG) and only then.
//! - [`config`]: the runtime configuration (/etc/husk/config.toml).
//! - [`guest`]: where the guest image and husk-vmm are found.
//! - [`image`]: OCI image layouts and archives, unpacked and converted to erofs (cached).
//! - [`network`]: CNI networks joined to a VM through a tap (netns, plugins, tc redirect,
//!   the name files).
//! - [`preflight`]: whether this host can boot the guest, checked before a run.
//! - [`procid`]: recorded processes (pid + start time), signalled through pidfds.
//! - [`registry`]: images by name: pulls from OCI registries, the local blob store.
//! - [`sandbox`]: one microVM with its agent: boot, readiness, shutdown, clean-up.
//! - [`sanitize`]: guest output on the user's terminal: control sequences stripped,
//!   bounded drain.
//! - [`scratch`]: a container's writable layer on disk (a sparse ext4 image).
//! - [`volumes`]: `-v`, `--mount`, `--tmpfs` as docker takes them.
//! - [`share`]: a VM's shared folder: one sandboxed virtiofsd serving only its volumes.
//! - [`shimv2`]: `containerd-shim-husk-v2`'s Shim and Task service (containerd's
//!   runtime v2, task API v2) over the above.
//! - [`run`]: `husk run`: image + microVM + container, stdio and exit status (a user of
//!   the above).
//! - [`containers`]: detached runs: `husk ps`, `exec`, `kill`, `rm`, `logs`.
//! - [`tty`]: the user's terminal.

pub mod config;
pub mod containers;
pub mod error;
pub mod guest;
pub mod image;
pub mod jail;
pub mod layout;
pub mod network;
pub mod pod;
pub mod preflight;
pub mod procid;
pub mod registry;
pub mod run;
pub mod sandbox;
pub mod sanitize;
pub mod scratch;
pub mod share;
pub mod shimv2;
pub mod spawner;
pub mod stdio;
pub mod template;
pub mod tty;
pub mod volumes;
