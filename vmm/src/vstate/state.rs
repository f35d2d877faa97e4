//! What KVM holds for a VM and its vCPUs, saved and put back (VM snapshots, issue #13).
//!
//! [`VcpuState::save`] and [`VcpuState::restore`] take one vCPU's registers, FPU/XSAVE
//! area, local APIC, MSRs, pending events and TSC frequency; [`VmState`] (through
//! `Vm::save_state` and `Vm::restore_state`) the PICs, the IOAPIC, the PIT and kvmclock.
//! Guest memory and devices are not here.
//!
//! Calling rules:
//! - save and restore a vCPU only while no vCPU of the VM runs (KVM_GET/SET_VCPU_EVENTS
//!   and the LAPIC are not safe against a running sibling);
//! - a vCPU that ran: [`complete_pending_io`] first, on the thread that owns the fd;
//! - restore into a fresh VM whose vCPUs were created (CPUID set) and not yet run, and
//!   restore the VM state (`Vm::restore_state`) before the vCPUs' (the LAPICs take their
//!   interrupts from the restored IOAPIC/PIC).
//!
//! Not handled: XSAVE state beyond the legacy 4 KiB `kvm_xsave` (AMX tile data, which
//! needs KVM_CAP_XSAVE2 and a guest permission husk never asks for: a vCPU with such
//! state is refused, not truncated), nested virtualisation state, Hyper-V MSRs, the PMU.

use kvm_bindings::{
    KVM_MAX_MSR_ENTRIES, Msrs, kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

/// Why a vCPU's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM did not return MSR {index:#x} (it read {read} of {asked} in one KVM_GET_MSRS)")]
    MsrNotRead {
        index: u32,
        read: usize,
        asked: usize,
    },
    #[error("KVM did not set MSR {index:#x} (it set {set} of {given} in one KVM_SET_MSRS)")]
    MsrNotSet {
        index: u32,
        set: usize,
        given: usize,
    },
    #[error("cannot build a list of {0} MSRs for KVM")]
    MsrList(usize),
    #[error(
        "the state's TSC runs at {saved} kHz, this host's vCPU at {host}, and KVM refused to \
         scale it"
    )]
    TscScaling {
        saved: u32,
        host: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(
        "the vCPU's XSAVE state holds components {components:#x} that do not fit the 4 KiB \
         kvm_xsave (AMX tile state is not handled)"
    )]
    XsaveTooLarge { components: u64 },
    #[error("the vCPU left KVM_RUN with {0} instead of stopping at once (immediate_exit)")]
    UnexpectedExit(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm { what, source }
}

/// Everything KVM holds for one vCPU (x86_64). CPUID is not here: it is set when the
/// vCPU is created (`Vm::create_vcpu`), from the host and the vCPU's index.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The legacy 4 KiB XSAVE area (see the module header for what it cannot hold).
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// In the order [`msrs_to_save`] gave (IA32_TSC_DEADLINE last).
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
    /// The vCPU's TSC frequency; `None` where KVM would not tell (KVM_GET_TSC_KHZ
    /// refused: no stable TSC on the host), and a restore then keeps the new host's.
    pub tsc_khz: Option<u32>,
}

// By hand: kvm_xsave ends in a zero-length flexible array and does not derive Clone.
impl Clone for VcpuState {
    fn clone(&self) -> VcpuState {
        VcpuState {
            regs: self.regs,
            sregs: self.sregs,
            xsave: kvm_xsave {
                region: self.xsave.region,
                ..Default::default()
            },
            xcrs: self.xcrs,
            debugregs: self.debugregs,
            lapic: self.lapic,
            msrs: self.msrs.clone(),
            events: self.events,
            mp_state: self.mp_state,
            tsc_khz: self.tsc_khz,
        }
    }
}

/// The VM-wide state KVM holds for us: the in-kernel irqchip (two PICs, the IOAPIC), the
/// PIT and kvmclock. Saved and restored through `Vm::save_state` / `Vm::restore_state`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

// MSR numbers (Intel SDM vol. 4, AMD APM vol. 2, Linux's msr-index.h and kvm_para.h).
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
const MSR_IA32_CR_PAT: u32 = 0x277;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// Inclusive ranges of the MSRs worth saving when KVM lists them
/// (KVM_GET_MSR_INDEX_LIST): the guest or KVM changes them at run time. Left out, as
/// Firecracker leaves them out: performance counters (the PMU is not saved), VMX
/// capability MSRs (read-only, from CPUID), Hyper-V MSRs, IA32_MCG_CTL (KVM reads it only
/// after KVM_X86_SETUP_MCE, which husk does not call), IA32_ARCH_CAPABILITIES (read-only,
/// the host's), and the x2APIC MSRs (0x800..=0xbff: the LAPIC state carries them).
const SAVED_MSR_RANGES: &[(u32, u32)] = &[
    (0x0, 0x1),                 // IA32_P5_MC_ADDR, IA32_P5_MC_TYPE
    (0x10, 0x10),               // IA32_TSC
    (0x11, 0x12),               // MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME (the old kvmclock pair)
    (0x17, 0x17),               // IA32_PLATFORM_ID
    (0x1b, 0x1b),               // IA32_APIC_BASE
    (0x2a, 0x2a),               // EBL_CR_POWERON
    (0x2c, 0x2c),               // EBC_FREQUENCY_ID
    (0x34, 0x34),               // SMI_COUNT
    (0x3a, 0x3b),               // IA32_FEATURE_CONTROL, IA32_TSC_ADJUST
    (0x48, 0x48),               // IA32_SPEC_CTRL
    (0x8b, 0x8b),               // IA32_UCODE_REV
    (0x9e, 0x9e),               // IA32_SMBASE
    (0xce, 0xce),               // PLATFORM_INFO
    (0xe7, 0xe8),               // IA32_MPERF, IA32_APERF
    (0x122, 0x122),             // IA32_TSX_CTRL
    (0x140, 0x140),             // MISC_FEATURES_ENABLES
    (0x174, 0x176),             // IA32_SYSENTER_CS/ESP/EIP
    (0x179, 0x17a),             // IA32_MCG_CAP, IA32_MCG_STATUS
    (0x1a0, 0x1a0),             // IA32_MISC_ENABLE
    (0x1d9, 0x1d9),             // IA32_DEBUGCTL
    (0x1fc, 0x1fc),             // POWER_CTL
    (0x200, 0x2ff),             // MTRRs and IA32_PAT
    (0x400, 0x47f),             // machine-check banks (IA32_MCi_CTL/STATUS/ADDR/MISC)
    (0x6e0, 0x6e0),             // IA32_TSC_DEADLINE
    (0xda0, 0xda0),             // IA32_XSS
    (0x4b56_4d00, 0x4b56_4d06), // KVM's PV MSRs: kvmclock, async PF, steal time, PV EOI
    (0xc000_0080, 0xc000_0084), // EFER, STAR, LSTAR, CSTAR, SFMASK
    (0xc000_0100, 0xc000_0103), // FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX
    (0xc001_0015, 0xc001_0015), // AMD HWCR
    (0xc001_011f, 0xc001_011f), // AMD VIRT_SPEC_CTRL
];

/// MSRs saved whether KVM lists them or not (not every kernel does), which the guest or
/// husk's boot setup sets: IA32_PAT, the default memory type and the variable and fixed
/// MTRRs (QEMU saves these on its own too).
const EXTRA_MSRS: &[u32] = &[
    MSR_IA32_CR_PAT,
    MSR_MTRR_DEF_TYPE,
    // IA32_MTRR_PHYSBASE0..7 / PHYSMASK0..7
    0x200,
    0x201,
    0x202,
    0x203,
    0x204,
    0x205,
    0x206,
    0x207,
    0x208,
    0x209,
    0x20a,
    0x20b,
    0x20c,
    0x20d,
    0x20e,
    0x20f,
    // IA32_MTRR_FIX64K_00000, FIX16K_80000/A0000, FIX4K_C0000..F8000
    0x250,
    0x258,
    0x259,
    0x268,
    0x269,
    0x26a,
    0x26b,
    0x26c,
    0x26d,
    0x26e,
    0x26f,
];

/// Whether `index` is among the MSRs we save when KVM lists it.
fn is_saved_msr(index: u32) -> bool {
    SAVED_MSR_RANGES
        .iter()
        .any(|&(first, last)| (first..=last).contains(&index))
}

/// The MSRs to save: KVM's list (KVM_GET_MSR_INDEX_LIST) filtered by
/// [`SAVED_MSR_RANGES`], plus [`EXTRA_MSRS`], each once, with IA32_TSC_DEADLINE last (a
/// restore must write it after IA32_TSC, or KVM arms the timer against the wrong TSC).
/// At most a few hundred entries: KVM's list is bounded by KVM_MAX_MSR_ENTRIES (256).
/// Computed once per host and handed to every [`VcpuState::save`].
pub fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>, StateError> {
    let listed = kvm
        .get_msr_index_list()
        .map_err(kvm_err("list its MSRs (KVM_GET_MSR_INDEX_LIST)"))?;
    let mut out: Vec<u32> = Vec::new();
    for &index in listed
        .as_slice()
        .iter()
        .filter(|&&i| is_saved_msr(i))
        .chain(EXTRA_MSRS)
    {
        if !out.contains(&index) {
            out.push(index);
        }
    }
    // Stable: everything else keeps KVM's order.
    out.sort_by_key(|&i| i == MSR_IA32_TSC_DEADLINE);
    tracing::debug!(
        listed = listed.as_slice().len(),
        saved = out.len(),
        "MSRs to save"
    );
    Ok(out)
}

/// Before saving a vCPU that ran: one KVM_RUN with `immediate_exit` set. KVM applies the
/// result of an in-flight port or MMIO read (which the VMM filled in after the exit) only
/// on the next KVM_RUN; this one completes it and returns at once without entering the
/// guest (EINTR). Without it the saved RIP is past the IN but RAX misses the value read.
/// Firecracker does the same. Call on the thread that owns the vCPU, with the vCPU not
/// running.
pub fn complete_pending_io(vcpu: &mut VcpuFd) -> Result<(), StateError> {
    vcpu.set_kvm_immediate_exit(1);
    let result = match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Err(source) => Err(StateError::Kvm {
            what: "complete the vCPU's pending I/O (KVM_RUN with immediate_exit)",
            source,
        }),
        // A string I/O instruction (REP INS/OUTS) may need another round trip to the VMM
        // before it completes: the caller must serve it and call again.
        Ok(exit) => Err(StateError::UnexpectedExit(describe_exit(&exit))),
    };
    vcpu.set_kvm_immediate_exit(0);
    result
}

fn describe_exit(exit: &VcpuExit) -> String {
    match exit {
        VcpuExit::IoIn(port, data) => format!("a port read of {} bytes at {port:#x}", data.len()),
        VcpuExit::IoOut(port, data) => {
            format!("a port write of {} bytes at {port:#x}", data.len())
        }
        VcpuExit::MmioRead(addr, data) => {
            format!("an MMIO read of {} bytes at {addr:#x}", data.len())
        }
        VcpuExit::MmioWrite(addr, data) => {
            format!("an MMIO write of {} bytes at {addr:#x}", data.len())
        }
        other => format!("{other:?}"),
    }
}

/// The XSAVE components (XSTATE_BV, at byte 512 of the area) a legacy 4 KiB `kvm_xsave`
/// may hold in full: x87 to AVX-512 and PKRU (bits 0..=9). AMX's XTILECFG (17) and
/// XTILEDATA (18) need KVM_GET_XSAVE2 and a larger buffer; anything else unknown is
/// refused too rather than silently cut.
const XSTATE_LEGACY_COMPONENTS: u64 = 0x3ff;

fn xstate_bv(xsave: &kvm_xsave) -> u64 {
    // Bytes 512..520 are region[128..130], little-endian.
    u64::from(xsave.region[128]) | (u64::from(xsave.region[129]) << 32)
}

/// Runs `call` over `entries` in chunks KVM accepts (KVM_MAX_MSR_ENTRIES each), giving it
/// the chunk as `Msrs`; `call` returns how many entries KVM processed, and the entries
/// back (KVM_GET_MSRS fills in `data`).
fn msr_chunks(
    entries: &[kvm_msr_entry],
    mut call: impl FnMut(&mut Msrs) -> Result<usize, StateError>,
    short: impl Fn(u32, usize, usize) -> StateError,
) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(KVM_MAX_MSR_ENTRIES) {
        let mut msrs = Msrs::from_entries(chunk).map_err(|_| StateError::MsrList(chunk.len()))?;
        let done = call(&mut msrs)?;
        if done != chunk.len() {
            // KVM stops at the first MSR it refuses: `done` is its position.
            let index = chunk.get(done).map_or(0, |e| e.index);
            return Err(short(index, done, chunk.len()));
        }
        out.extend_from_slice(msrs.as_slice());
    }
    Ok(out)
}

impl VcpuState {
    /// Reads the vCPU's state. `msr_indices` comes from [`msrs_to_save`]. The vCPU must not
    /// be running, nor any other vCPU of its VM; after it ran, call
    /// [`complete_pending_io`] first.
    pub fn save(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, StateError> {
        // Order, as Firecracker and QEMU: MP state first (KVM_GET_MP_STATE may deliver a
        // pending INIT/SIPI into the LAPIC and registers), vCPU events last (other GETs
        // may change what is pending).
        let mp_state = vcpu
            .get_mp_state()
            .map_err(kvm_err("get the vCPU's MP state"))?;
        let regs = vcpu
            .get_regs()
            .map_err(kvm_err("get the vCPU's registers"))?;
        let sregs = vcpu
            .get_sregs()
            .map_err(kvm_err("get the vCPU's special registers"))?;
        let xsave = vcpu
            .get_xsave()
            .map_err(kvm_err("get the vCPU's XSAVE area"))?;
        let components = xstate_bv(&xsave) & !XSTATE_LEGACY_COMPONENTS;
        if components != 0 {
            return Err(StateError::XsaveTooLarge { components });
        }
        let xcrs = vcpu
            .get_xcrs()
            .map_err(kvm_err("get the vCPU's extended control registers"))?;
        let debugregs = vcpu
            .get_debug_regs()
            .map_err(kvm_err("get the vCPU's debug registers"))?;
        let lapic = vcpu.get_lapic().map_err(kvm_err("get the vCPU's LAPIC"))?;
        let tsc_khz = match vcpu.get_tsc_khz() {
            Ok(khz) => Some(khz),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "KVM does not tell the vCPU's TSC frequency: the state will not carry it, \
                     and a restore on a host with another TSC frequency runs the guest's clock \
                     off"
                );
                None
            }
        };
        let wanted: Vec<kvm_msr_entry> = msr_indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let msrs = msr_chunks(
            &wanted,
            |m| vcpu.get_msrs(m).map_err(kvm_err("get the vCPU's MSRs")),
            |index, read, asked| StateError::MsrNotRead { index, read, asked },
        )?;
        let events = vcpu
            .get_vcpu_events()
            .map_err(kvm_err("get the vCPU's pending events"))?;
        tracing::debug!(
            rip = format_args!("{:#x}", regs.rip),
            msrs = msrs.len(),
            tsc_khz,
            mp_state = mp_state.mp_state,
            "vCPU state saved"
        );
        Ok(VcpuState {
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
            mp_state,
            tsc_khz,
        })
    }

    /// Writes the state into `vcpu`: a vCPU created by `Vm::create_vcpu` (CPUID set) that
    /// has not run, in a VM whose state was restored first. Stops at the first piece KVM
    /// refuses and names it; the vCPU is then half restored and must not run.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), StateError> {
        // Refused before anything is written (see XSTATE_LEGACY_COMPONENTS).
        let components = xstate_bv(&self.xsave) & !XSTATE_LEGACY_COMPONENTS;
        if components != 0 {
            return Err(StateError::XsaveTooLarge { components });
        }
        // The TSC frequency before anything reads or writes the TSC.
        if let Some(saved) = self.tsc_khz {
            restore_tsc_khz(vcpu, saved)?;
        } else {
            tracing::warn!(
                "the state carries no TSC frequency: the guest runs at this host's, which \
                 may differ from the one it was saved on"
            );
        }
        // Order, as Firecracker: MP state; registers before events (KVM_SET_REGS drops a
        // pending exception, KVM_SET_VCPU_EVENTS puts it back); special registers before
        // the LAPIC (they carry the APIC base); the LAPIC before the MSRs (the TSC
        // deadline MSR takes only with the LAPIC set up); events last.
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm_err("set the vCPU's MP state"))?;
        vcpu.set_regs(&self.regs)
            .map_err(kvm_err("set the vCPU's registers"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(kvm_err("set the vCPU's special registers"))?;
        // SAFETY: KVM_SET_XSAVE reads the vCPU's uABI XSAVE size from our pointer. That is
        // at most the 4096 bytes of `kvm_xsave` unless the process asked for dynamically
        // enabled guest XSAVE features (arch_prctl ARCH_REQ_XCOMP_GUEST_PERM, for AMX),
        // which husk never does; the kernel only reads the buffer.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm_err("set the vCPU's XSAVE area"))?;
        vcpu.set_xcrs(&self.xcrs)
            .map_err(kvm_err("set the vCPU's extended control registers"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm_err("set the vCPU's debug registers"))?;
        vcpu.set_lapic(&self.lapic)
            .map_err(kvm_err("set the vCPU's LAPIC"))?;
        // IA32_TSC_DEADLINE in a KVM_SET_MSRS of its own, after the others (IA32_TSC among
        // them), whatever order the state holds them in.
        let (deadline, others): (Vec<kvm_msr_entry>, Vec<kvm_msr_entry>) = self
            .msrs
            .iter()
            .partition(|e| e.index == MSR_IA32_TSC_DEADLINE);
        for part in [&others, &deadline] {
            msr_chunks(
                part,
                |m| vcpu.set_msrs(m).map_err(kvm_err("set the vCPU's MSRs")),
                |index, set, given| StateError::MsrNotSet { index, set, given },
            )?;
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm_err("set the vCPU's pending events"))?;
        tracing::debug!(
            rip = format_args!("{:#x}", self.regs.rip),
            msrs = self.msrs.len(),
            "vCPU state restored"
        );
        Ok(())
    }
}

/// The TSC frequencies two hosts calibrate differ by a few parts per million; within
/// 250 ppm (QEMU's and Firecracker's tolerance) no scaling is asked for.
const TSC_KHZ_TOLERANCE_PPM: u64 = 250;

fn restore_tsc_khz(vcpu: &VcpuFd, saved: u32) -> Result<(), StateError> {
    let host = vcpu.get_tsc_khz();
    if let Ok(host) = host {
        let diff = u64::from(host.abs_diff(saved));
        if diff * 1_000_000 <= u64::from(saved) * TSC_KHZ_TOLERANCE_PPM {
            return Ok(());
        }
    }
    match vcpu.set_tsc_khz(saved) {
        Ok(()) => {
            tracing::info!(saved_khz = saved, host_khz = ?host.ok(), "vCPU TSC scaled to the saved frequency");
            Ok(())
        }
        Err(source) => Err(StateError::TscScaling {
            saved,
            host: host.map_or_else(|_| "unknown".into(), |h| format!("{h} kHz")),
            source,
        }),
    }
}

/// The ioctl request numbers, as kvm-ioctls issues them (same macros, same sizes).
mod nr {
    use kvm_bindings::{
        kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs,
        kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    };
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    const KVMIO: u32 = 0xae;

    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
    ioctl_io_nr!(KVM_SET_TSC_KHZ, KVMIO, 0xa2);
    ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
    ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
    ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
    ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
}

/// The ioctl requests [`complete_pending_io`], [`VcpuState::save`] and
/// [`VcpuState::restore`] make on a vCPU fd: what the seccomp filter (crate::seccomp,
/// which allows only KVM_RUN among KVM's) must let through on a thread that saves or
/// restores vCPUs after it is installed. [`msrs_to_save`] opens /dev/kvm: call it before.
pub fn vcpu_ioctls() -> Vec<u64> {
    // c_ulong is u64 on x86_64, the only target of this module.
    [
        nr::KVM_RUN(),
        nr::KVM_GET_REGS(),
        nr::KVM_SET_REGS(),
        nr::KVM_GET_SREGS(),
        nr::KVM_SET_SREGS(),
        nr::KVM_GET_MSRS(),
        nr::KVM_SET_MSRS(),
        nr::KVM_GET_LAPIC(),
        nr::KVM_SET_LAPIC(),
        nr::KVM_GET_MP_STATE(),
        nr::KVM_SET_MP_STATE(),
        nr::KVM_GET_VCPU_EVENTS(),
        nr::KVM_SET_VCPU_EVENTS(),
        nr::KVM_GET_DEBUGREGS(),
        nr::KVM_SET_DEBUGREGS(),
        nr::KVM_GET_XSAVE(),
        nr::KVM_SET_XSAVE(),
        nr::KVM_GET_XCRS(),
        nr::KVM_SET_XCRS(),
        nr::KVM_SET_TSC_KHZ(),
        nr::KVM_GET_TSC_KHZ(),
    ]
    .to_vec()
}

/// The ioctl requests `Vm::save_state` and `Vm::restore_state` make on the VM fd (see
/// [`vcpu_ioctls`]).
/// The requests of [`vcpu_ioctls`] and [`vm_ioctls`] that only read state (and
/// `complete_pending_io`'s KVM_RUN): all a snapshot of a running VM makes. Restores
/// happen before the seccomp filter, so the filter allows only these.
pub fn save_ioctls() -> Vec<u64> {
    [
        nr::KVM_RUN(),
        nr::KVM_GET_REGS(),
        nr::KVM_GET_SREGS(),
        nr::KVM_GET_MSRS(),
        nr::KVM_GET_LAPIC(),
        nr::KVM_GET_MP_STATE(),
        nr::KVM_GET_VCPU_EVENTS(),
        nr::KVM_GET_DEBUGREGS(),
        nr::KVM_GET_XSAVE(),
        nr::KVM_GET_XCRS(),
        nr::KVM_GET_TSC_KHZ(),
        nr::KVM_GET_IRQCHIP(),
        nr::KVM_GET_CLOCK(),
        nr::KVM_GET_PIT2(),
    ]
    .to_vec()
}

pub fn vm_ioctls() -> Vec<u64> {
    [
        nr::KVM_GET_IRQCHIP(),
        nr::KVM_SET_IRQCHIP(),
        nr::KVM_GET_CLOCK(),
        nr::KVM_SET_CLOCK(),
        nr::KVM_GET_PIT2(),
        nr::KVM_SET_PIT2(),
    ]
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_kvms() {
        // From linux/kvm.h as the kernel computes them (x86_64).
        let vcpu = vcpu_ioctls();
        assert_eq!(vcpu[0], 0xae80, "KVM_RUN");
        assert!(vcpu.contains(&0x8090_ae81), "KVM_GET_REGS");
        assert!(vcpu.contains(&0x4008_ae89), "KVM_SET_MSRS");
        assert!(vcpu.contains(&0x9000_aea4), "KVM_GET_XSAVE");
        assert!(vcpu.contains(&0xaea3), "KVM_GET_TSC_KHZ");
        assert!(vm_ioctls().contains(&0xc208_ae62), "KVM_GET_IRQCHIP");
        assert!(
            vcpu.iter()
                .chain(&vm_ioctls())
                .all(|&n| n <= u64::from(u32::MAX))
        );
    }

    #[test]
    fn msr_filter_keeps_the_syscall_msrs_and_drops_the_pmu() {
        assert!(is_saved_msr(0xc000_0082));
        assert!(is_saved_msr(0x6e0));
        assert!(!is_saved_msr(0xc1)); // IA32_PMC0
        assert!(!is_saved_msr(0x38f)); // IA32_PERF_GLOBAL_CTRL
        assert!(!is_saved_msr(0x480)); // IA32_VMX_BASIC
        assert!(!is_saved_msr(0x4000_0000)); // HV_X64_MSR_GUEST_OS_ID
        assert!(!is_saved_msr(0x17b)); // IA32_MCG_CTL
    }

    #[test]
    fn xstate_bv_reads_bytes_512_to_520() {
        let mut x = kvm_xsave::default();
        x.region[128] = 0x7;
        x.region[129] = 0x1;
        assert_eq!(xstate_bv(&x), 0x1_0000_0007);
    }
}
