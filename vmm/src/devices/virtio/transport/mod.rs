//! virtio transports. husk's VMs have no PCI: every device sits behind the MMIO
//! transport ([`mmio`]), described to the guest in the ACPI DSDT.

pub mod mmio;
