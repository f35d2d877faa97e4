//! virtio devices (virtio 1.2) over the MMIO transport.
//!
//! A device implements [`VirtioDevice`]; [`transport::mmio::MmioTransport`] puts it on the MMIO bus
//! and runs the register state machine. When the driver sets DRIVER_OK the transport
//! hands the device its queues, their notification eventfds (KVM ioeventfds on the
//! QueueNotify register) and an [`Interrupt`] (a KVM irqfd); the device then serves the
//! queues on a worker thread of its own ([`worker`]).
//!
//! Every value in guest memory is hostile: descriptor chains are walked with
//! virtio-queue's bounded iterators, and each device bounds the lengths it accepts.

pub mod balloon;
pub mod block;
pub mod fs;
pub mod net;
pub mod queue_worker;
pub mod rng;
pub mod state;
#[cfg(test)]
pub mod test_utils;
pub mod transport;
pub mod vsock;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: the modern interface; the only one we offer.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device ids (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// InterruptStatus bits (4.2.2).
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// The device's interrupt: status bits the driver reads, and the irqfd that raises the
/// line.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Interrupt {
        Interrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Tells the driver that used buffers are there.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!(error = %e, "cannot raise a virtio interrupt");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Adds the status bits a snapshot saved (to a fresh, or already raised, status),
    /// raising the line again when any is set (the driver reads the status and finds
    /// the work; a spurious interrupt is harmless, a lost one is not).
    pub fn restore(&self, bits: u32) {
        let bits = bits & (INT_VRING | INT_CONFIG);
        if bits != 0 {
            self.raise(bits);
        }
    }
}

/// What a device gets when the driver is ready.
#[derive(Debug)]
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    /// One per queue: readable when the driver notified that queue.
    pub queue_evts: Vec<EventFd>,
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the device needs {need} queues, the driver set up {got}")]
    QueueCount { need: usize, got: usize },
    #[error("cannot start the device's worker")]
    Worker(#[source] std::io::Error),
    /// A vhost-user backend refused or failed a request.
    #[error("the device's backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A restored device's saved state does not fit this device.
    #[error("{0}")]
    Restore(String),
    /// The device failed earlier and cannot start again.
    #[error("the device failed earlier and stays failed")]
    BackendFailed,
}

/// A virtio device, independent of the transport.
pub trait VirtioDevice: Send {
    /// The virtio device id.
    fn device_type(&self) -> u32;
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// The largest size of each queue.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// The features offered (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Reads the device configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving the queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving (the driver reset the device); the device may be activated again.
    fn reset(&mut self);
    /// Counters for the metrics API.
    fn metrics(&self) -> serde_json::Value;

    /// Stops serving the queues (the worker is joined) and keeps what the worker
    /// reached, for a snapshot. Returns each served queue's progress, by queue index:
    /// the device's own copy of the queue, whose `next_avail`/`next_used` are final
    /// once the worker is stopped. A device that cannot be saved says why.
    fn pause(&mut self) -> Result<Vec<(usize, state::QueueSnapshot)>, state::DeviceStateError> {
        Err(state::DeviceStateError::NotSupported(
            self.name(),
            "it has no pause/save support",
        ))
    }

    /// Serves again after [`pause`](VirtioDevice::pause).
    fn resume(&mut self) -> Result<(), ActivateError> {
        Ok(())
    }

    /// The device's own state for a snapshot, beyond its transport and queues (most
    /// devices have none). It includes what the driver reads from the configuration
    /// space: when a restored device's differs, the transport raises a configuration
    /// change.
    fn save(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Starts serving restored queues in a VM restored from a snapshot, with the state
    /// [`save`](VirtioDevice::save) returned (guest-made: check it). By default, an
    /// activation.
    fn restore(
        &mut self,
        _state: &serde_json::Value,
        ctx: ActivateContext,
    ) -> Result<(), ActivateError> {
        self.activate(ctx)
    }
}

/// Copies `config` (a device's configuration space) into `data` from `offset`, zero past
/// the end; offsets are the guest's and may be anything.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// A counter for metrics; serialises as its value.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl serde::Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
