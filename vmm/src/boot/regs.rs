//! Initial vCPU state for the 64-bit boot protocol: long mode with an identity-mapped
//! first GiB, a flat GDT, the boot stack, `rsi` pointing at `boot_params`
//! (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"), plus FPU, boot MSRs and the
//! local APIC's LINT0/LINT1 wiring (ExtINT and NMI, as a BIOS leaves them).

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START,
};

/// Why a vCPU could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the {what} into guest memory")]
    GuestWrite {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("KVM refused the vCPU's {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM set {set} of the {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

// Control register and EFER bits (Intel SDM vol. 3, 2.5 and 2.2.1).
const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// MSRs (Intel SDM vol. 4).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

// Local APIC registers (offsets in the 4 KiB register page) and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// A GDT entry from flags, base and limit (Intel SDM vol. 3, 3.4.5).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (((base as u64) & 0xff00_0000) << (56 - 24))
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | (((limit as u64) & 0x000f_0000) << (48 - 16))
        | (((base as u64) & 0x00ff_ffff) << 16)
        | ((limit as u64) & 0x0000_ffff)
}

/// The segment register KVM wants for a GDT entry.
fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let get_base = |e: u64| {
        (((e) & 0xff00_0000_0000_0000) >> 32)
            | (((e) & 0x0000_00ff_0000_0000) >> 16)
            | (((e) & 0x0000_0000_ffff_0000) >> 16)
    };
    let get_limit = |e: u64| (((e) & 0x000f_0000_0000_0000) >> 32) | ((e) & 0x0000_0000_0000_ffff);
    let bit = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    kvm_segment {
        base: get_base(entry),
        limit: get_limit(entry) as u32,
        selector: u16::from(table_index) * 8,
        type_: bit(40, 0xf),
        present: bit(47, 1),
        dpl: bit(45, 3),
        db: bit(54, 1),
        s: bit(44, 1),
        l: bit(53, 1),
        g: bit(55, 1),
        avl: bit(52, 1),
        padding: 0,
        unusable: if bit(47, 1) == 0 { 1 } else { 0 },
    }
}

/// The flat GDT: null, 64-bit code, data, TSS.
const GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Writes the GDT, an empty IDT and identity page tables for the first GiB, and sets
/// long mode in `sregs`.
fn setup_long_mode(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    let write = |what, v: u64, addr: u64| {
        mem.write_obj(v, GuestAddress(addr))
            .map_err(|source| RegsError::GuestWrite { what, source })
    };
    for (i, e) in GDT.iter().enumerate() {
        write("GDT", *e, GDT_START + (i as u64) * 8)?;
    }
    write("IDT", 0, IDT_START)?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(GDT[1], 1);
    let data = segment_from_gdt(GDT[2], 2);
    let tss = segment_from_gdt(GDT[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] = 2 MiB page i (present, writable, large).
    write("page tables", PDPTE_START | 0x03, PML4_START)?;
    write("page tables", PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        write("page tables", (i << 21) | 0x83, PDE_START + i * 8)?;
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    // Set, not OR'd: the reset value has CD and NW (caches off). KVM clears them by
    // default (KVM_X86_QUIRK_CD_NW_CLEARED), but the kernel is owed normal caching.
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// Sets up a vCPU to enter the kernel at `entry` in long mode, with `rsi` pointing at the
/// boot_params page. Every vCPU gets FPU, MSRs and LAPIC; the APs' registers are set
/// too, and KVM resets them on INIT/SIPI.
pub fn setup_vcpu(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: u64) -> Result<(), RegsError> {
    setup_msrs(vcpu)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("FPU state"))?;

    let mut sregs = vcpu.get_sregs().map_err(kvm_err("special registers"))?;
    setup_long_mode(mem, &mut sregs)?;
    vcpu.set_sregs(&sregs)
        .map_err(kvm_err("special registers"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("registers"))?;
    setup_lapic(vcpu)
}

fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        // MTRRs enabled, write-back by default.
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 0x6),
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("boot MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// LINT0 = ExtINT (the 8259 PIC's output), LINT1 = NMI.
fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("local APIC"))?;
    let set_mode = |regs: &mut [i8], offset: usize, mode: u32| {
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = regs[offset + i] as u8;
        }
        let v = u32::from_le_bytes(bytes);
        // Delivery mode is bits 8..=10.
        let v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            regs[offset + i] = *b as i8;
        }
    };
    set_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm_err("local APIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_64bit_segments() {
        let cs = segment_from_gdt(GDT[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.type_),
            (8, 1, 0, 1, 0xb)
        );
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xfffff, 1));
        let ds = segment_from_gdt(GDT[2], 2);
        assert_eq!((ds.selector, ds.db, ds.type_, ds.s), (0x10, 1, 3, 1));
        let tss = segment_from_gdt(GDT[3], 3);
        assert_eq!((tss.selector, tss.s, tss.type_), (0x18, 0, 0xb));
        assert_eq!(segment_from_gdt(GDT[0], 0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = crate::memory::create_guest_memory(4, false).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_long_mode(&mem, &mut sregs).unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(),
            PDPTE_START | 3
        );
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.cr0 & ((1 << 30) | (1 << 29)), 0, "caches must be on");
    }
}
