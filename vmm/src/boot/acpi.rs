//! ACPI tables: RSDP → XSDT → {FADT → DSDT, MADT} (ACPI 6.5).
//!
//! The FADT is hardware-reduced (section 4.1) with a sleep control register, so the
//! guest's `poweroff` writes SLP_TYP=5 | SLP_EN there, and a reset register for `reboot`
//! (see devices/acpi_pm.rs). The DSDT declares `\_S5` and every virtio-mmio device as
//! `LNRO0005` with its MMIO window and interrupt: stock distribution kernels are built
//! without CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES and find the devices only this way. The MADT
//! lists one local APIC per vCPU and the IOAPIC. It also declares the VM generation ID
//! (`\_SB.VGEN`, devices/vmgenid.rs) and the Generic Event Device (`\_SB.GED`) whose
//! interrupt notifies it when a restored VM gets a new one.

use acpi_tables::Aml;
use acpi_tables::aml::{
    Device, EISAName, IO, Interrupt, Memory32Fixed, Method, Name, Notify, Package, Path,
    ResourceTemplate,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_END, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
    ACPI_START, COM1_PORT, GED_IRQ, IOAPIC_ADDR, LAPIC_ADDR, SERIAL_IRQ, VMGENID_ADDR,
};

/// Why the tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables need {need} bytes, {have} are reserved for them")]
    TooLarge { need: u64, have: u64 },
    #[error("cannot write the ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// A virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy)]
pub struct MmioDeviceInfo {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

const OEM_ID: [u8; 6] = *b"HUSK  ";
const OEM_TABLE_ID: [u8; 8] = *b"HUSKVM  ";
const CREATOR_ID: [u8; 4] = *b"HUSK";

/// The sleep type the DSDT's `\_S5` gives; the guest writes it to SLP_TYP.
pub const S5_SLEEP_TYPE: u8 = 5;

/// A system description table: 36-byte header, then the body. The checksum is fixed by
/// [`Sdt::finish`].
struct Sdt {
    bytes: Vec<u8>,
}

impl Sdt {
    fn new(signature: &[u8; 4], revision: u8) -> Sdt {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(signature);
        bytes.extend_from_slice(&[0; 4]); // length, set in finish()
        bytes.push(revision);
        bytes.push(0); // checksum
        bytes.extend_from_slice(&OEM_ID);
        bytes.extend_from_slice(&OEM_TABLE_ID);
        bytes.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        bytes.extend_from_slice(&CREATOR_ID);
        bytes.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        Sdt { bytes }
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn put_u32(&mut self, offset: usize, v: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, offset: usize, v: u64) {
        self.bytes[offset..offset + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.put_u32(4, len);
        self.bytes[9] = checksum(&self.bytes);
        self.bytes
    }
}

/// The byte that makes `data` sum to zero.
fn checksum(data: &[u8]) -> u8 {
    0u8.wrapping_sub(data.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A generic address structure for a one-byte I/O port register.
fn gas_io_byte(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O space
    g[1] = 8; // register bit width
    g[3] = 1; // byte access
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    // FADT revision 6.5, 276 bytes; fields at their offsets from the spec's table 5.9.
    let mut t = Sdt::new(b"FACP", 6);
    t.bytes.resize(276, 0);
    // IAPC_BOOT_ARCH: no VGA (bit 2), no CMOS RTC (bit 5): saves the guest probing for them.
    t.bytes[109..111].copy_from_slice(&((1u16 << 2) | (1u16 << 5)).to_le_bytes());
    // Flags: RESET_REG_SUP (10), HW_REDUCED_ACPI (20).
    t.put_u32(112, (1 << 10) | (1 << 20));
    t.bytes[116..128].copy_from_slice(&gas_io_byte(ACPI_RESET_PORT));
    t.bytes[128] = ACPI_RESET_VALUE;
    t.bytes[131] = 5; // FADT minor version
    t.put_u64(140, dsdt_addr); // X_DSDT
    t.bytes[244..256].copy_from_slice(&gas_io_byte(ACPI_SLEEP_CONTROL_PORT));
    t.bytes[256..268].copy_from_slice(&gas_io_byte(ACPI_SLEEP_STATUS_PORT));
    t.bytes[268..276].copy_from_slice(b"HUSKHUSK"); // hypervisor vendor identity
    t.finish()
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(b"APIC", 5);
    t.u32(LAPIC_ADDR as u32).u32(1); // PCAT_COMPAT: there are 8259 PICs (KVM's)
    for id in 0..vcpus {
        // Processor local APIC: uid, APIC id, enabled.
        t.u8(0).u8(8).u8(id).u8(id).u32(1);
    }
    // IOAPIC id 0 (after... it only needs to be unique among IOAPICs), GSI base 0.
    t.u8(1).u8(12).u8(0).u8(0).u32(IOAPIC_ADDR as u32).u32(0);
    // Local APIC NMI: all processors (0xff), LINT1.
    t.u8(4).u8(6).u8(0xff).u16(0).u8(1);
    t.finish()
}

fn dsdt(devices: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut t = Sdt::new(b"DSDT", 6);
    let mut aml = Vec::new();
    // \_S5: SLP_TYPa, SLP_TYPb.
    let s5 = S5_SLEEP_TYPE;
    Name::new(Path::new("_S5_"), &Package::new(vec![&s5, &s5])).to_aml_bytes(&mut aml);
    // COM1. A hardware-reduced platform has no legacy PIC for Linux, so ISA IRQ 4 is not
    // mapped to GSI 4 unless a device claims it: without this, the 8250 driver waits
    // forever for transmit interrupts and only the kernel's polled console output shows.
    let com1_hid = EISAName::new("PNP0501");
    let com1_uid = 0u32;
    let com1_io = IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = Interrupt::new(true, true, false, false, SERIAL_IRQ);
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_fields = [
        Name::new(Path::new("_HID"), &com1_hid),
        Name::new(Path::new("_UID"), &com1_uid),
        Name::new(Path::new("_CRS"), &com1_crs),
    ];
    Device::new(
        Path::new("\\_SB_.COM1"),
        com1_fields.iter().map(|n| n as &dyn Aml).collect(),
    )
    .to_aml_bytes(&mut aml);
    vmgenid(&mut aml);
    for (i, d) in devices.iter().enumerate() {
        let name = format!("\\_SB_.V{i:03X}");
        let hid: &'static str = "LNRO0005";
        let uid = i as u32;
        let mem = Memory32Fixed::new(true, d.base as u32, d.size as u32);
        let irq = Interrupt::new(true, true, false, false, d.irq);
        let crs = ResourceTemplate::new(vec![&mem, &irq]);
        let hid_name = Name::new(Path::new("_HID"), &hid);
        let uid_name = Name::new(Path::new("_UID"), &uid);
        let crs_name = Name::new(Path::new("_CRS"), &crs);
        Device::new(Path::new(&name), vec![&hid_name, &uid_name, &crs_name]).to_aml_bytes(&mut aml);
    }
    t.bytes.extend_from_slice(&aml);
    t.finish()
}

/// The VM generation ID as QEMU and Firecracker describe it (Linux's driver matches
/// the `_CID`; `ADDR` is the identifier's address, low and high halves), and a Generic
/// Event Device whose one interrupt ([`GED_IRQ`], edge) runs `_EVT`: notify VGEN (0x80).
fn vmgenid(aml: &mut Vec<u8>) {
    let hid = Name::new(Path::new("_HID"), &"HUSKVGID");
    let cid = Name::new(Path::new("_CID"), &"VM_GEN_COUNTER");
    let ddn = Name::new(Path::new("_DDN"), &"VM_GEN_COUNTER");
    let low = VMGENID_ADDR as u32;
    let high = (VMGENID_ADDR >> 32) as u32;
    let addr = Name::new(Path::new("ADDR"), &Package::new(vec![&low, &high]));
    Device::new(Path::new("\\_SB_.VGEN"), vec![&hid, &cid, &ddn, &addr]).to_aml_bytes(aml);

    let ged_hid = Name::new(Path::new("_HID"), &"ACPI0013");
    let ged_uid = 0u32;
    let ged_uid = Name::new(Path::new("_UID"), &ged_uid);
    let irq = Interrupt::new(true, true, false, false, GED_IRQ);
    let crs = ResourceTemplate::new(vec![&irq]);
    let ged_crs = Name::new(Path::new("_CRS"), &crs);
    let vgen = Path::new("\\_SB_.VGEN");
    let code = 0x80u8;
    let notify = Notify::new(&vgen, &code);
    let evt = Method::new(Path::new("_EVT"), 1, true, vec![&notify]);
    Device::new(
        Path::new("\\_SB_.GED_"),
        vec![&ged_hid, &ged_uid, &ged_crs, &evt],
    )
    .to_aml_bytes(aml);
}

fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(&OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// Builds the tables for `vcpus` and `devices`, as (guest address, bytes) pairs.
pub fn build(vcpus: u8, devices: &[MmioDeviceInfo]) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let dsdt_addr = align(rsdp_addr + 36);
    let dsdt = dsdt(devices);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(vcpus);
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut x = Sdt::new(b"XSDT", 1);
    x.u64(fadt_addr).u64(madt_addr);
    let xsdt = x.finish();
    let end = xsdt_addr + xsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge {
            need: end - ACPI_START,
            have: ACPI_END - ACPI_START,
        });
    }
    Ok(vec![
        (rsdp_addr, rsdp(xsdt_addr)),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (xsdt_addr, xsdt),
    ])
}

/// Builds the tables and writes them into guest memory.
pub fn write(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    devices: &[MmioDeviceInfo],
) -> Result<(), AcpiError> {
    for (addr, bytes) in build(vcpus, devices)? {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_are_well_formed() {
        let devs = [
            MmioDeviceInfo {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            MmioDeviceInfo {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ];
        let tables = build(2, &devs).unwrap();
        let (rsdp_addr, rsdp) = &tables[0];
        assert_eq!(*rsdp_addr, ACPI_START);
        assert!(sums_to_zero(&rsdp[..20]) && sums_to_zero(rsdp));
        for (_, t) in &tables[1..] {
            let len = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, t.len());
            assert!(sums_to_zero(t), "{:?}", &t[..4]);
        }
        let sigs: Vec<_> = tables[1..].iter().map(|(_, t)| &t[..4]).collect();
        assert_eq!(sigs, [b"DSDT", b"FACP", b"APIC", b"XSDT"]);
        // The DSDT names each device and the S5 package.
        let dsdt = &tables[1].1;
        let count = dsdt.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, 2);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        // The VM generation ID, its address, and the GED that notifies it.
        assert!(dsdt.windows(14).any(|w| w == b"VM_GEN_COUNTER"));
        assert!(dsdt.windows(8).any(|w| w == b"ACPI0013"));
        assert!(dsdt.windows(4).any(|w| w == b"_EVT"));
        let addr = (VMGENID_ADDR as u32).to_le_bytes();
        assert!(dsdt.windows(4).any(|w| w == addr));
        // Two local APIC entries in the MADT.
        let madt = &tables[3].1;
        let lapics = madt[44..].windows(2).filter(|w| w == &[0, 8]).count();
        assert!(lapics >= 2);
        // XSDT points at the FADT and MADT.
        let xsdt = &tables[4].1;
        assert_eq!(
            u64::from_le_bytes(xsdt[36..44].try_into().unwrap()),
            tables[2].0
        );
    }

    #[test]
    fn too_many_devices_do_not_fit() {
        let devs: Vec<_> = (0..2000)
            .map(|i| MmioDeviceInfo {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                irq: 5,
            })
            .collect();
        assert!(matches!(build(1, &devs), Err(AcpiError::TooLarge { .. })));
    }
}
