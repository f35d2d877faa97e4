//! The KVM VM: in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT, guest memory slots,
//! irqfds.

use kvm_bindings::{
    CpuId, KVM_CLOCK_HOST_TSC, KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_irqchip,
    kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::cpuid;
use crate::vstate::state::{self, StateError, VmState};

/// Where KVM puts the three pages of the TSS it needs on Intel (just below the BIOS).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Why KVM refused the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot list the MSRs to save")]
    State(#[source] StateError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A KVM VM with its memory registered.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    supported_cpuid: CpuId,
    tsc_deadline: bool,
}

impl Vm {
    /// Creates the VM, its irqchip and PIT, and registers `mem` with it.
    pub fn new(mem: &GuestMemoryMmap) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(kvm_err("set the TSS address"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the caller keeps
            // alive as long as the VM (both live until the VMM exits); KVM only accesses
            // guest pages inside it.
            unsafe { fd.set_user_memory_region(r) }.map_err(kvm_err("register guest memory"))?;
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("report its supported CPUID"))?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        Ok(Vm {
            fd,
            supported_cpuid,
            tsc_deadline,
        })
    }

    /// A fingerprint of the CPUID KVM offers here (snapshots restore only where it is
    /// the same).
    pub fn cpuid_fingerprint(&self) -> String {
        crate::snapshot::cpuid_fingerprint(self.supported_cpuid.as_slice())
    }

    /// KVM's vCPU limit on this host.
    pub fn host_max_vcpus() -> Result<usize, VmError> {
        Ok(Kvm::new().map_err(VmError::OpenKvm)?.get_max_vcpus())
    }

    /// An eventfd that raises `gsi` when written.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(kvm_err("register an irqfd"))?;
        Ok(evt)
    }

    /// An eventfd that KVM signals, without leaving the guest, when the guest writes
    /// `datamatch` (32 bits) to the MMIO address `addr`.
    pub fn ioeventfd(&self, addr: u64, datamatch: u32) -> Result<EventFd, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.fd
            .register_ioevent(&evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(kvm_err("register an ioeventfd"))?;
        Ok(evt)
    }

    /// Creates vCPU `index` of `count` with its CPUID set.
    pub fn create_vcpu(&self, index: u8, count: u8) -> Result<VcpuFd, VmError> {
        let vcpu = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("create a vCPU"))?;
        let mut c = self.supported_cpuid.clone();
        cpuid::filter(&mut c, index, count, self.tsc_deadline);
        vcpu.set_cpuid2(&c)
            .map_err(kvm_err("set the vCPU's CPUID"))?;
        Ok(vcpu)
    }

    /// The MSRs a vCPU snapshot saves on this host (see [`state::msrs_to_save`]): once per
    /// VMM, handed to every `VcpuState::save`.
    pub fn msrs_to_save() -> Result<Vec<u32>, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        state::msrs_to_save(&kvm).map_err(VmError::State)
    }

    /// Reads the irqchip (both PICs, the IOAPIC), the PIT and kvmclock. The vCPUs must not
    /// be running.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let chip = |chip_id, what| {
            let mut c = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd.get_irqchip(&mut c).map_err(kvm_err(what))?;
            Ok::<_, VmError>(c)
        };
        let pic_master = chip(KVM_IRQCHIP_PIC_MASTER, "get the master PIC's state")?;
        let pic_slave = chip(KVM_IRQCHIP_PIC_SLAVE, "get the slave PIC's state")?;
        let ioapic = chip(KVM_IRQCHIP_IOAPIC, "get the IOAPIC's state")?;
        let pit = self.fd.get_pit2().map_err(kvm_err("get the PIT's state"))?;
        let clock = self
            .fd
            .get_clock()
            .map_err(kvm_err("get the VM's clock (kvmclock)"))?;
        tracing::debug!(
            clock_ns = clock.clock,
            clock_flags = clock.flags,
            "VM state saved"
        );
        Ok(VmState {
            pic_master,
            pic_slave,
            ioapic,
            pit,
            clock,
        })
    }

    /// Writes `s` into this VM (its irqchip and PIT exist since `Vm::new`): before the
    /// vCPUs' states, and before any vCPU runs.
    pub fn restore_state(&self, s: &VmState) -> Result<(), VmError> {
        self.fd
            .set_pit2(&s.pit)
            .map_err(kvm_err("set the PIT's state"))?;
        let mut clock = s.clock;
        // KVM_GET_CLOCK reports TSC_STABLE and HOST_TSC about the host, and KVM_SET_CLOCK
        // refuses TSC_STABLE (and, before Linux 5.16, any flag). REALTIME stays: with it
        // KVM moves the clock on by the wall-clock time that passed since the save, so
        // the guest's time does not stand still across a snapshot.
        clock.flags &= !(KVM_CLOCK_TSC_STABLE | KVM_CLOCK_HOST_TSC);
        self.fd
            .set_clock(&clock)
            .map_err(kvm_err("set the VM's clock (kvmclock)"))?;
        self.fd
            .set_irqchip(&s.pic_master)
            .map_err(kvm_err("set the master PIC's state"))?;
        self.fd
            .set_irqchip(&s.pic_slave)
            .map_err(kvm_err("set the slave PIC's state"))?;
        self.fd
            .set_irqchip(&s.ioapic)
            .map_err(kvm_err("set the IOAPIC's state"))?;
        tracing::debug!(clock_ns = clock.clock, "VM state restored");
        Ok(())
    }
}
