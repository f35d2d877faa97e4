//! Where things live in guest physical memory (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT                      0x0009_fc00  EBDA (start of the legacy hole)
//! 0x0000_0520  IDT (empty)              0x000e_0000  ACPI: RSDP, then XSDT/FADT/MADT/DSDT
//!                                       0x000f_f000  VM generation ID (16 bytes)
//! 0x0000_7000  boot_params (zero page)  0x0010_0000  kernel (1 MiB)
//! 0x0000_8ff0  boot stack top           ...          initramfs (end of low RAM)
//! 0x0000_9000  PML4, PDPT, PD           0xd000_0000  MMIO gap: virtio-mmio devices
//! 0x0002_0000  command line             0xfec0_0000  IOAPIC; 0xfee0_0000 LAPIC
//!                                       0x1_0000_0000  RAM above 4 GiB, if any
//! ```
//! The layout follows the x86 boot protocol (Documentation/arch/x86/boot.rst) and the
//! one Firecracker and Cloud Hypervisor use, so kernels that boot there boot here.

/// Global descriptor table.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty: the kernel installs its own).
pub const IDT_START: u64 = 0x520;
/// The x86 boot protocol's `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, then one PDPT, then one PD (1 GiB in 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Start of the legacy hole (EBDA, VGA, BIOS): not RAM in the e820 map.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables; the RSDP first, in the 0xe0000–0xfffff range Linux scans.
pub const ACPI_START: u64 = 0xe_0000;
/// End of the ACPI tables' area (exclusive): the VM generation ID follows.
pub const ACPI_END: u64 = VMGENID_ADDR;
/// The ACPI VM generation ID (devices/vmgenid.rs): 16 bytes, 8-byte aligned as the
/// specification asks, in the legacy area the e820 map does not give the guest as RAM.
pub const VMGENID_ADDR: u64 = 0xf_f000;
/// Where the kernel and everything above it may go.
pub const HIMEM_START: u64 = 0x10_0000;

/// The MMIO gap below 4 GiB: no RAM here (768 MiB).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio device windows, one page each, from the start of the gap.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC and the local APIC, at their architectural addresses.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// IRQ of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// IRQs handed to virtio-mmio devices (the IOAPIC has 24 pins; the last is the GED's).
pub const VIRTIO_IRQ_FIRST: u32 = 5;
pub const VIRTIO_IRQ_LAST: u32 = 22;
/// IRQ of the ACPI Generic Event Device, which tells the guest its VM generation ID
/// changed.
pub const GED_IRQ: u32 = 23;

/// I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_CMD_PORT: u16 = 0x64;
/// ACPI hardware-reduced sleep control, sleep status and reset registers (one byte each).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
/// The value written to the reset register to reset.
pub const ACPI_RESET_VALUE: u8 = 0x1;
