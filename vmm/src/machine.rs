//! A whole microVM: memory, KVM VM, legacy devices, vCPUs; built from a [`VmConfig`]
//! and run until the guest powers off, resets or crashes.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VcpuFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::api::server::{ApiSocket, Handles};
use crate::boot::acpi::MmioDeviceInfo;
use crate::boot::layout::{
    ACPI_SLEEP_CONTROL_PORT, COM1_PORT, GED_IRQ, I8042_DATA_PORT, SERIAL_IRQ, VIRTIO_IRQ_FIRST,
    VIRTIO_IRQ_LAST, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use crate::boot::{acpi, kernel, regs};
use crate::config::VmConfig;
use crate::devices::ExitReason;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::bus::{Bus, BusError};
use crate::devices::i8042::I8042;
use crate::devices::serial::{SerialDevice, SerialError, SerialOut};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::net::{Net, NetError, TapSource, random_mac};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::transport::mmio::{MmioError, MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::vmgenid::{VmGenId, VmGenIdError};
use crate::memory::{MemoryError, create_guest_memory};
use crate::vstate::vcpu::{Buses, VcpuError, VcpuSet};
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
    Pio(#[from] BusError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error("ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    #[error("VM generation ID")]
    VmGenId(#[from] VmGenIdError),
    #[error("vCPU setup")]
    Regs(#[from] regs::RegsError),
    #[error("vCPU threads")]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("virtio-mmio transport")]
    Mmio(#[from] MmioError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    ApiSocket(#[from] crate::api::server::ServerError),
    #[error("too many virtio devices: IRQs {VIRTIO_IRQ_FIRST}-{VIRTIO_IRQ_LAST} are all taken")]
    TooManyDevices,
    #[error("cannot start the API server")]
    Api(#[source] std::io::Error),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("cannot restore the snapshot in {dir}")]
    Restore {
        dir: std::path::PathBuf,
        #[source]
        source: crate::snapshot::SnapshotError,
    },
}

/// How [`Machine::run_with`] runs.
#[derive(Debug, Default)]
pub struct RunOptions<'a> {
    /// Serve the control API on this socket.
    pub api: Option<&'a ApiSocket>,
    /// Stop cleanly on SIGTERM, SIGINT and SIGHUP (the binary does; in-process tests
    /// do not).
    pub handle_signals: bool,
    /// Install the seccomp filter before the first KVM_RUN (the binary does, unless
    /// `--no-seccomp`).
    pub seccomp: bool,
}

fn device_metrics(transports: &[Arc<Mutex<MmioTransport>>]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (i, t) in transports.iter().enumerate() {
        let t = t.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(format!("{}{i}", t.device_name()), t.metrics());
    }
    serde_json::Value::Object(map)
}

impl MachineError {
    /// Whether the error is the configuration's fault (rather than the host's).
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            MachineError::Config(_)
                | MachineError::Serial(_)
                | MachineError::Block(_)
                | MachineError::Net(_)
                | MachineError::Vsock(_)
                | MachineError::Fs(_)
                | MachineError::ApiSocket(_)
                | MachineError::TooManyDevices
                // A snapshot that is damaged, foreign or does not fit the configuration.
                | MachineError::Restore { .. }
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
    vm: Arc<Vm>,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    virtio: Vec<(MmioDeviceInfo, Arc<Mutex<MmioTransport>>)>,
    vcpus: Vec<VcpuFd>,
    /// The VM generation ID (VMs built from a configuration; bare test VMs have none).
    /// Held, not read: it owns the GED's irqfd for as long as the VM lives.
    vmgenid: Option<VmGenId>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Memory (a shared memfd when `shared_memory`), VM, the legacy devices (COM1,
    /// i8042, ACPI sleep/reset registers) and `vcpus` vCPUs, with nothing loaded. Tests
    /// load tiny guests into this directly.
    pub fn bare(
        memory_mib: u64,
        shared_memory: bool,
        vcpus: u8,
        serial_out: SerialOut,
    ) -> Result<Machine, MachineError> {
        let mem = create_guest_memory(memory_mib, shared_memory)?;
        Machine::with_memory(mem, vcpus, serial_out)
    }

    /// As [`bare`](Machine::bare), on guest memory made by the caller.
    fn with_memory(
        mem: GuestMemoryMmap,
        vcpus: u8,
        serial_out: SerialOut,
    ) -> Result<Machine, MachineError> {
        let vm = Arc::new(Vm::new(&mem)?);
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            vm.irqfd(SERIAL_IRQ)?,
            serial_out,
        )));
        let mut pio = Bus::new();
        pio.insert(COM1_PORT.into(), 8, serial.clone())?;
        pio.insert(I8042_DATA_PORT.into(), 5, Arc::new(Mutex::new(I8042)))?;
        pio.insert(
            ACPI_SLEEP_CONTROL_PORT.into(),
            3,
            Arc::new(Mutex::new(AcpiPm)),
        )?;
        let vcpus = (0..vcpus)
            .map(|i| vm.create_vcpu(i, vcpus))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Machine {
            mem,
            vm,
            pio,
            mmio: Bus::new(),
            serial,
            virtio: Vec::new(),
            vcpus,
            vmgenid: None,
        })
    }

    /// Puts a virtio device on the MMIO bus: the next free window and IRQ, an irqfd, and
    /// one ioeventfd per queue on its QueueNotify register.
    pub fn add_virtio(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), MachineError> {
        let n = self.virtio.len() as u64;
        let irq = VIRTIO_IRQ_FIRST + n as u32;
        if irq > VIRTIO_IRQ_LAST {
            return Err(MachineError::TooManyDevices);
        }
        let base = VIRTIO_MMIO_START + n * VIRTIO_MMIO_SIZE;
        let queue_evts = (0..device.queue_max_sizes().len())
            .map(|q| self.vm.ioeventfd(base + REG_QUEUE_NOTIFY, q as u32))
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt = Arc::new(Interrupt::new(self.vm.irqfd(irq)?));
        let t = Arc::new(Mutex::new(MmioTransport::new(
            device,
            self.mem.clone(),
            interrupt,
            queue_evts,
        )?));
        self.mmio.insert(base, VIRTIO_MMIO_SIZE, t.clone())?;
        let info = MmioDeviceInfo {
            base,
            size: VIRTIO_MMIO_SIZE,
            irq,
        };
        self.virtio.push((info, t));
        Ok(())
    }

    /// Builds the VM `config` describes, with the kernel loaded and vCPUs set to enter it.
    pub fn from_config(config: &VmConfig) -> Result<Machine, MachineError> {
        config.validate(Vm::host_max_vcpus()?)?;
        // validate() bounds vcpus to MAX_VCPUS, which fits in a u8.
        let vcpus = u8::try_from(config.vcpus).unwrap_or(u8::MAX);
        let out = SerialOut::open(&config.serial.0)?;
        let mut m = Machine::bare(config.memory_mib, config.shared_memory(), vcpus, out)?;
        m.add_devices(config)?;
        let infos: Vec<MmioDeviceInfo> = m.virtio.iter().map(|(i, _)| *i).collect();
        let mut cmdline = config.cmdline.clone();
        if config.virtio_mmio_cmdline {
            for d in &infos {
                cmdline += &format!(
                    " virtio_mmio.device={}K@{:#x}:{}",
                    d.size / 1024,
                    d.base,
                    d.irq
                );
            }
        }
        let loaded = kernel::load(
            &m.mem,
            &config.kernel,
            config.initramfs.as_deref(),
            &cmdline,
        )?;
        acpi::write(&m.mem, vcpus, &infos)?;
        m.vmgenid = Some(VmGenId::new(&m.mem, m.vm.irqfd(GED_IRQ)?)?);
        for vcpu in &m.vcpus {
            regs::setup_vcpu(vcpu, &m.mem, loaded.entry.0)?;
        }
        Ok(m)
    }

    /// Restores the VM saved in the snapshot folder `dir`, with the devices `config`
    /// describes: its host-side paths (disks, sockets, taps, console) are this VM's
    /// own; its shape (vCPUs, memory, devices in order) must be the snapshot's. No
    /// kernel is loaded: memory, vCPUs, irqchip and devices continue where they were.
    /// `mode` says how memory comes back: mapped by default, copied into shared memory
    /// (the only way there) when the VM has virtio-fs shares, whose backend maps it.
    pub fn restore(
        config: &VmConfig,
        dir: &std::path::Path,
        mode: Option<crate::snapshot::memory::MemoryMode>,
    ) -> Result<Machine, MachineError> {
        use crate::snapshot::memory::MemoryMode;
        use crate::snapshot::{self, SnapshotError};
        let err = |source: SnapshotError| MachineError::Restore {
            dir: dir.to_path_buf(),
            source,
        };
        config.validate(Vm::host_max_vcpus()?)?;
        let state = snapshot::read_state(dir).map_err(err)?;
        let vcpus = u8::try_from(config.vcpus).unwrap_or(u8::MAX);
        let memory_bytes = config.memory_mib.saturating_mul(1 << 20);
        if vcpus != state.shape.vcpus || memory_bytes != state.shape.memory_bytes {
            return Err(err(SnapshotError::Mismatch(format!(
                "the configuration has {vcpus} vCPUs and {} MiB; the snapshot {} vCPUs and {} MiB",
                config.memory_mib,
                state.shape.vcpus,
                state.shape.memory_bytes >> 20
            ))));
        }
        let shared = config.shared_memory();
        let mode = match mode {
            None if shared => MemoryMode::Copy,
            None => MemoryMode::Map,
            Some(MemoryMode::Map) if shared => {
                return Err(err(SnapshotError::Mismatch(
                    "--restore-memory map: this VM's memory must be shared (virtio-fs shares, or memory_shared), which a mapped restore is not; restore it with copy".into(),
                )));
            }
            Some(m) => m,
        };
        let mem =
            snapshot::memory::restore(&dir.join(snapshot::MEMORY_FILE), memory_bytes, mode, shared)
                .map_err(|e| err(e.into()))?;
        let out = SerialOut::open(&config.serial.0)?;
        let mut m = Machine::with_memory(mem, vcpus, out)?;
        snapshot::check_host(&state, dir, &m.vm.cpuid_fingerprint()).map_err(err)?;
        m.add_devices(config)?;
        let shape = m.shape();
        if shape.devices != state.shape.devices {
            return Err(err(SnapshotError::Mismatch(format!(
                "the configuration's devices are [{}]; the snapshot's [{}]",
                shape.devices.join(", "),
                state.shape.devices.join(", ")
            ))));
        }
        m.vm.restore_state(&state.vm).map_err(|e| err(e.into()))?;
        for (vcpu, s) in m.vcpus.iter().zip(&state.vcpus) {
            s.restore(vcpu).map_err(|e| err(e.into()))?;
        }
        for ((_, t), s) in m.virtio.iter().zip(&state.devices) {
            t.lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore(s)
                .map_err(|e| err(e.into()))?;
        }
        // A clone: a new generation ID, and the GED's interrupt (after the irqchip and
        // LAPICs are restored, so that it stays pending) tells the guest to reseed.
        let vmgenid = VmGenId::attach(m.vm.irqfd(GED_IRQ)?);
        vmgenid.renew(&m.mem)?;
        m.vmgenid = Some(vmgenid);
        tracing::info!(dir = %dir.display(), ?mode, shared, "VM restored from a snapshot");
        Ok(m)
    }

    /// vCPUs, memory and devices in bus order: what a snapshot of this VM fits.
    pub fn shape(&self) -> crate::snapshot::Shape {
        crate::snapshot::Shape {
            vcpus: u8::try_from(self.vcpus.len()).unwrap_or(u8::MAX),
            memory_bytes: self.mem.iter().map(|r| r.len()).sum(),
            devices: self
                .virtio
                .iter()
                .map(|(_, t)| {
                    t.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .device_name()
                        .to_string()
                })
                .collect(),
        }
    }

    /// Everything `config` lists on the MMIO bus, in a fixed order (disks, rng,
    /// balloon, nets, vsock, file systems).
    fn add_devices(&mut self, config: &VmConfig) -> Result<(), MachineError> {
        let m = self;
        for (i, b) in config.block.iter().enumerate() {
            m.add_virtio(Box::new(Block::open(&b.path, b.read_only, i)?))?;
        }
        if config.rng {
            m.add_virtio(Box::new(Rng::new()))?;
        }
        if let Some(b) = &config.balloon {
            m.add_virtio(Box::new(Balloon::new(b.free_page_reporting)))?;
        }
        for (i, n) in config.net.iter().enumerate() {
            let source = match (&n.tap, n.fd) {
                (Some(name), _) => TapSource::Name(name.clone()),
                (None, Some(fd)) => TapSource::Fd(fd),
                // validate() made sure there is one.
                (None, None) => continue,
            };
            let mac = n.mac_bytes().unwrap_or_else(random_mac);
            // validate() bounds the MTU to 68..=65535.
            let mtu = n.mtu.and_then(|m| u16::try_from(m).ok());
            m.add_virtio(Box::new(Net::new(i, &source, mac, mtu)?))?;
        }
        if let Some(v) = &config.vsock {
            m.add_virtio(Box::new(Vsock::new(v.cid, &v.uds)?))?;
        }
        for (i, f) in config.fs.iter().enumerate() {
            m.add_virtio(Box::new(Fs::connect(&f.tag, &f.socket, i)?))?;
        }
        Ok(())
    }

    /// Guest memory (tests write tiny guests into it).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The vCPUs, before [`run`](Machine::run) (tests set their registers).
    pub fn vcpus(&self) -> &[VcpuFd] {
        &self.vcpus
    }

    /// Counters of every virtio device, by name and index.
    pub fn device_metrics(&self) -> serde_json::Value {
        let transports: Vec<_> = self.virtio.iter().map(|(_, t)| t.clone()).collect();
        device_metrics(&transports)
    }

    /// Runs the guest until it stops; returns why.
    pub fn run(self) -> Result<ExitReason, MachineError> {
        self.run_with(RunOptions::default(), |_, _| {})
    }

    /// Runs the guest until it stops, then calls `at_exit` with the reason and the
    /// machine (still whole: memory mapped, device counters intact); returns why.
    pub fn run_with(
        self,
        opts: RunOptions<'_>,
        at_exit: impl FnOnce(&ExitReason, &Machine),
    ) -> Result<ExitReason, MachineError> {
        let (tx, rx) = mpsc::channel();
        if opts.handle_signals {
            // Before any thread starts, so that all inherit the blocked mask and only
            // the signal thread receives them.
            crate::signals::stop_on_signals(tx.clone()).map_err(MachineError::Signals)?;
        }
        // Asked of /dev/kvm before the seccomp filter allows no such request.
        let msrs = Vm::msrs_to_save()?;
        if opts.seccomp {
            crate::seccomp::install()?;
        }
        let mut m = self;
        let shape = m.shape();
        let buses = Buses {
            pio: Arc::new(std::mem::take(&mut m.pio)),
            mmio: Arc::new(std::mem::take(&mut m.mmio)),
        };
        let set = Arc::new(VcpuSet::start(
            std::mem::take(&mut m.vcpus),
            buses,
            tx.clone(),
        )?);
        if let Some(api) = opts.api {
            // Weak: the API thread outlives the VM, and devices must still be dropped
            // (closing their sockets) when it stops.
            let transports: Vec<_> = m.virtio.iter().map(|(_, t)| Arc::downgrade(t)).collect();
            let snapshotter = crate::snapshot::take::Snapshotter {
                vm: m.vm.clone(),
                vcpus: set.clone(),
                transports: transports.clone(),
                mem: m.mem.clone(),
                shape,
                msrs,
            };
            let handles = Handles {
                vcpus: set.clone(),
                snapshotter,
                exits: tx.clone(),
                metrics: Box::new(move || {
                    let live: Vec<_> = transports.iter().filter_map(|w| w.upgrade()).collect();
                    device_metrics(&live)
                }),
            };
            api.serve(handles).map_err(MachineError::Api)?;
        }
        drop(tx);
        let reason = rx
            .recv()
            .unwrap_or_else(|_| ExitReason::HostError("every vCPU thread ended".into()));
        set.stop();
        m.serial.lock().unwrap_or_else(|e| e.into_inner()).flush();
        at_exit(&reason, &m);
        // Stop the device workers before the memory they use goes away.
        m.virtio.clear();
        Ok(reason)
    }
}
