//! husk-vmm: the virtual machine monitor of husk (one KVM microVM per process).
//!
//! - [`config`]: the VM configuration (JSON);
//! - [`api`]: the control API socket (pause, resume, shutdown, metrics);
//! - [`memory`]: memfd-backed guest RAM around the MMIO gap;
//! - [`boot`]: kernel loading, ACPI, CPUID, initial vCPU state (x86_64);
//! - [`vstate`]: the KVM VM and vCPU threads;
//! - [`devices`]: serial, i8042, ACPI sleep/reset registers;
//! - [`machine`]: all of it put together;
//! - [`host`]: what this host offers (`husk-vmm check`);
//! - [`report`]: the exit report (exit reason, memory overhead);
//! - [`exit_status`]: husk-vmm's exit codes, shared with the runtime;
//! - [`seccomp`]: the system call filter the VMM runs under;
//! - [`snapshot`]: VM snapshots (pause and save, restore; docs/snapshots.md).

pub mod api;
pub mod boot;
pub mod config;
pub mod devices;
pub mod exit_status;
pub mod host;
pub mod machine;
pub mod memory;
pub mod report;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod vstate;
