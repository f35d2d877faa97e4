//! A whole microVM: memory, KVM VM, legacy devices, vCPUs; built from a [`VmConfig`]
//! and run until the guest powers off, resets or crashes.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use crate::boot::layout::{ACPI_SLEEP_CONTROL_PORT, COM1_PORT, I8042_DATA_PORT, SERIAL_IRQ};
use crate::boot::{acpi, kernel, regs};
use crate::config::VmConfig;
use crate::devices::ExitReason;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::i8042::I8042;
use crate::devices::pio::{PioBus, PioError};
use crate::devices::serial::{SerialDevice, SerialError, SerialOut};
use crate::memory::{MemoryError, create_guest_memory};
use crate::vstate::vcpu::{VcpuError, VcpuSet};
use crate::vstate::vm::{Vm, VmError};

/// Why a VM could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("serial console")]
    Serial(#[from] SerialError),
    #[error("device bus")]
    Pio(#[from] PioError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error("ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    #[error("vCPU setup")]
    Regs(#[from] regs::RegsError),
    #[error("vCPU threads")]
    Vcpu(#[from] VcpuError),
}

impl MachineError {
    /// Whether the error is the configuration's fault (rather than the host's).
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            MachineError::Config(_)
                | MachineError::Serial(_)
                | MachineError::Kernel(
                    kernel::KernelError::NotAKernel { .. }
                        | kernel::KernelError::Open { .. }
                        | kernel::KernelError::InitrdTooLarge { .. }
                        | kernel::KernelError::Cmdline(_)
                )
        )
    }
}

/// A built VM, ready to run.
pub struct Machine {
    mem: GuestMemoryMmap,
    vm: Vm,
    pio: Arc<PioBus>,
    serial: Arc<Mutex<SerialDevice>>,
    vcpus: Vec<VcpuFd>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Memory, VM, the legacy devices (COM1, i8042, ACPI sleep/reset registers) and
    /// `vcpus` vCPUs, with nothing loaded. Tests load tiny guests into this directly.
    pub fn bare(
        memory_mib: u64,
        vcpus: u8,
        serial_out: SerialOut,
    ) -> Result<Machine, MachineError> {
        let mem = create_guest_memory(memory_mib)?;
        let vm = Vm::new(&mem)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            vm.irqfd(SERIAL_IRQ)?,
            serial_out,
        )));
        let mut pio = PioBus::new();
        pio.insert(COM1_PORT, 8, serial.clone())?;
        pio.insert(I8042_DATA_PORT, 5, Arc::new(Mutex::new(I8042)))?;
        pio.insert(ACPI_SLEEP_CONTROL_PORT, 3, Arc::new(Mutex::new(AcpiPm)))?;
        let vcpus = (0..vcpus)
            .map(|i| vm.create_vcpu(i, vcpus))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Machine {
            mem,
            vm,
            pio: Arc::new(pio),
            serial,
            vcpus,
        })
    }

    /// Builds the VM `config` describes, with the kernel loaded and vCPUs set to enter it.
    pub fn from_config(config: &VmConfig) -> Result<Machine, MachineError> {
        let out = SerialOut::open(&config.serial.0)?;
        let m = Machine::bare(config.memory_mib, config.vcpus, out)?;
        if usize::from(config.vcpus) > m.vm.max_vcpus() {
            config.validate(m.vm.max_vcpus())?;
        }
        let loaded = kernel::load(
            &m.mem,
            &config.kernel,
            config.initramfs.as_deref(),
            &config.cmdline,
        )?;
        acpi::write(&m.mem, config.vcpus, &[])?;
        for vcpu in &m.vcpus {
            regs::setup_vcpu(vcpu, &m.mem, loaded.entry.0)?;
        }
        Ok(m)
    }

    /// Guest memory (tests write tiny guests into it).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The vCPUs, before [`run`](Machine::run) (tests set their registers).
    pub fn vcpus(&self) -> &[VcpuFd] {
        &self.vcpus
    }

    /// Runs the guest until it stops; returns why.
    pub fn run(self) -> Result<ExitReason, MachineError> {
        let (tx, rx) = mpsc::channel();
        let set = VcpuSet::start(self.vcpus, self.pio.clone(), tx)?;
        let reason = rx
            .recv()
            .unwrap_or_else(|_| ExitReason::HostError("every vCPU thread ended".into()));
        set.stop();
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
        Ok(reason)
    }
}
