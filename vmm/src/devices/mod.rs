//! Emulated devices. Legacy port-I/O devices (serial, i8042, the ACPI sleep/reset
//! registers) sit on a [`pio::Bus`]; virtio-mmio devices come later.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;
pub mod vmgenid;

/// Why the VM stops, as a device or a vCPU reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest reset itself (i8042 or the ACPI reset register); husk-vmm does not
    /// reboot: the VM ends, as with Firecracker.
    Reset,
    /// The guest crashed: triple fault, KVM internal error, failed entry.
    Crash(String),
    /// The host failed (an ioctl, a thread).
    HostError(String),
    /// The host stopped the VM: the API's shutdown, or SIGTERM/SIGINT/SIGHUP.
    Stopped(String),
}
