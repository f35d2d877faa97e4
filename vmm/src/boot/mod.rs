//! Booting an x86_64 Linux guest: memory layout, kernel and initramfs loading, ACPI
//! tables, CPUID and the initial vCPU state.

pub mod acpi;
pub mod cpuid;
pub mod kernel;
pub mod layout;
pub mod regs;
