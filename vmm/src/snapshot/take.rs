//! Taking a snapshot of a running VM: pause the vCPUs (each saves its own state on its
//! thread), pause every device (workers joined, queue progress final), save the
//! irqchip, PIT and clock, write guest memory, then the state file. The VM stays
//! paused; [`Snapshotter::resume`] lets it run on (the vsock device then tells the
//! guest that its connections are gone).

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use super::{MEMORY_FILE, STATE_FILE, Shape, SnapshotError, State, memory, write_state};
use crate::devices::virtio::transport::mmio::MmioTransport;
use crate::vstate::vcpu::VcpuSet;
use crate::vstate::vm::Vm;

/// What a snapshot took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Guest memory size (the memory file's length).
    pub memory_bytes: u64,
    /// Bytes of it that are not zero (written as data; the rest are holes).
    pub memory_data_bytes: u64,
    /// Pausing the vCPUs and devices.
    pub pause_ms: u64,
    /// Saving state and memory.
    pub save_ms: u64,
}

/// Everything a snapshot reads, held by the API thread.
pub struct Snapshotter {
    pub vm: Arc<Vm>,
    pub vcpus: Arc<VcpuSet>,
    /// Weak: devices must still drop (closing their sockets) when the VM stops.
    pub transports: Vec<Weak<Mutex<MmioTransport>>>,
    pub mem: GuestMemoryMmap,
    pub shape: Shape,
    /// The MSRs each vCPU saves (read from /dev/kvm before the seccomp filter).
    pub msrs: Vec<u32>,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

fn lock(t: &Mutex<MmioTransport>) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

impl Snapshotter {
    fn transports(&self) -> Result<Vec<Arc<Mutex<MmioTransport>>>, SnapshotError> {
        self.transports
            .iter()
            .map(|w| w.upgrade().ok_or(SnapshotError::Gone))
            .collect()
    }

    /// Pauses the VM and saves it into the existing folder `dir`, which must not hold a
    /// snapshot yet. On failure nothing is left in `dir` and the VM runs again if it
    /// ran before.
    pub fn take(&self, dir: &Path) -> Result<Summary, SnapshotError> {
        let state_path = dir.join(STATE_FILE);
        let memory_path = dir.join(MEMORY_FILE);
        if state_path.symlink_metadata().is_ok() || memory_path.symlink_metadata().is_ok() {
            return Err(SnapshotError::NotEmpty(dir.to_path_buf()));
        }
        let was_running = !self.vcpus.is_paused();
        let started = Instant::now();
        let result = self.pause_and_save(dir, started);
        if result.is_err() {
            let _ = std::fs::remove_file(&memory_path);
            let _ = std::fs::remove_file(&state_path);
            if was_running && let Err(e) = self.resume() {
                tracing::error!(error = %e, "cannot resume the VM after a failed snapshot");
            }
        }
        result
    }

    fn pause_and_save(&self, dir: &Path, started: Instant) -> Result<Summary, SnapshotError> {
        let transports = self.transports()?;
        self.vcpus.pause()?;
        for t in &transports {
            lock(t).pause()?;
        }
        let pause_ms = started.elapsed().as_millis() as u64;
        let saving = Instant::now();
        let vcpus = self.vcpus.save_states(self.msrs.clone())?;
        let vm = self.vm.save_state()?;
        let devices = transports
            .iter()
            .map(|t| lock(t).save().ok_or(SnapshotError::Gone))
            .collect::<Result<Vec<_>, _>>()?;
        let (memory_bytes, memory_data_bytes) = memory::save(&self.mem, &dir.join(MEMORY_FILE))?;
        if memory_bytes != self.shape.memory_bytes {
            return Err(SnapshotError::Mismatch(format!(
                "guest memory is {memory_bytes} bytes, the VM's shape says {}",
                self.shape.memory_bytes
            )));
        }
        let taken_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let state = State {
            vmm_version: super::vmm_version(),
            host_cpuid: self.vm.cpuid_fingerprint(),
            shape: self.shape.clone(),
            vm,
            vcpus,
            devices,
            taken_at_ms,
        };
        write_state(dir, &state)?;
        let save_ms = saving.elapsed().as_millis() as u64;
        tracing::info!(
            dir = %dir.display(),
            memory_bytes,
            memory_data_bytes,
            pause_ms,
            save_ms,
            "snapshot taken"
        );
        Ok(Summary {
            memory_bytes,
            memory_data_bytes,
            pause_ms,
            save_ms,
        })
    }

    /// Lets the devices serve again, then the vCPUs run.
    pub fn resume(&self) -> Result<(), String> {
        for t in self.transports().map_err(|e| e.to_string())? {
            lock(&t).resume().map_err(|e| e.to_string())?;
        }
        self.vcpus.resume();
        Ok(())
    }
}
