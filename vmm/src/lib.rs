//! husk-vmm: the virtual machine monitor of husk (one KVM microVM per process).
//!
//! What exists so far: [`host`], the probe of what this host offers (KVM API, which
//! backend, vhost, tun). Booting a guest is not written yet; see the README's status.

pub mod host;
