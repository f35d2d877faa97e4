//! virtio-rng (virtio 1.2, 5.4): fills the guest's write-only buffers from the host's
//! /dev/urandom. One queue; each request is capped so that a guest cannot make the VMM
//! allocate or read without bound.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

use super::queue_worker::{QueueWorker, ServeChain};
use super::state::{DeviceStateError, QueueSnapshot};
use super::worker::WorkerSlot;
use super::{ActivateContext, ActivateError, Counter, TYPE_RNG, VIRTIO_F_VERSION_1, VirtioDevice};

/// Most bytes handed out per request.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 256;

/// The device's counters, as the metrics API shows them.
#[derive(Debug, Default, serde::Serialize)]
struct Metrics {
    requests: Counter,
    bytes: Counter,
    bad_chains: Counter,
}

/// The device.
#[derive(Debug)]
pub struct Rng {
    metrics: Arc<Metrics>,
    worker: WorkerSlot<QueueWorker<Server>>,
}

impl Rng {
    pub fn new() -> Rng {
        Rng {
            metrics: Arc::default(),
            worker: WorkerSlot::new("virtio-rng"),
        }
    }

    /// What serves the device's queue (its worker's and the fuzz targets').
    #[doc(hidden)]
    pub fn server(&self) -> std::io::Result<Server> {
        Ok(Server {
            source: File::open("/dev/urandom")?,
            metrics: self.metrics.clone(),
        })
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

/// Serves a request from the host's /dev/urandom.
#[doc(hidden)]
#[derive(Debug)]
pub struct Server {
    source: File,
    metrics: Arc<Metrics>,
}

impl ServeChain for Server {
    fn serve(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        self.metrics.requests.inc();
        let mut w = match chain.writer(mem) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "bad rng descriptor chain");
                self.metrics.bad_chains.inc();
                return 0;
            }
        };
        let n = w.available_bytes().min(MAX_REQUEST_BYTES);
        let mut buf = vec![0u8; n];
        if let Err(e) = self
            .source
            .read_exact(&mut buf)
            .and_then(|()| w.write_all(&buf))
        {
            tracing::warn!(error = %e, "rng request failed");
            return 0;
        }
        self.metrics.bytes.add(n as u64);
        n as u32
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn name(&self) -> &'static str {
        "rng"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let server = self.server().map_err(ActivateError::Worker)?;
        let w = QueueWorker::new(ctx, server)?;
        self.worker.start(w).map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn pause(&mut self) -> Result<Vec<(usize, QueueSnapshot)>, DeviceStateError> {
        let w = self.worker.pause(self.name())?;
        Ok(vec![(0, QueueSnapshot::of(&w.queue))])
    }

    fn resume(&mut self) -> Result<(), ActivateError> {
        self.worker.resume().map_err(ActivateError::Worker)
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::to_value(&*self.metrics).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{TestQueue, W};

    fn handler(tq: &TestQueue) -> QueueWorker<Server> {
        QueueWorker {
            mem: tq.mem.clone(),
            queue: tq.queue(),
            evt: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            interrupt: tq.interrupt.clone(),
            server: Server {
                source: File::open("/dev/urandom").unwrap(),
                metrics: Arc::default(),
            },
        }
    }

    #[test]
    fn fills_write_only_buffers() {
        let tq = TestQueue::new();
        tq.add_chain(0, &[(0x10_000, 64, W)]);
        let mut h = handler(&tq);
        h.process();
        assert_eq!(tq.used(0), Some(64));
        assert_ne!(tq.read(0x10_000, 64), vec![0u8; 64]);
        assert_ne!(tq.interrupt.status(), 0);
    }

    #[test]
    fn hostile_chains_give_errors_not_panics() {
        let tq = TestQueue::new();
        // Out of guest memory; read-only only; zero length; huge length (capped).
        tq.add_chain(0, &[(0xffff_f000_0000, 64, W)]);
        tq.add_chain(1, &[(0x10_000, 64, 0)]);
        tq.add_chain(2, &[(0x10_000, 0, W)]);
        tq.add_chain(3, &[(0x20_000, 0x8_0000, W)]);
        let mut h = handler(&tq);
        h.process();
        assert_eq!(tq.used(0), Some(0));
        assert_eq!(tq.used(1), Some(0));
        assert_eq!(tq.used(2), Some(0));
        assert_eq!(tq.used(3), Some(MAX_REQUEST_BYTES as u32));
        assert_eq!(h.server.metrics.bad_chains.get(), 1);
    }

    #[test]
    fn looping_chain_ends() {
        let tq = TestQueue::new();
        tq.add_looping_chain(0, 0x10_000);
        let mut h = handler(&tq);
        h.process();
        // Either refused or served with a bounded amount; never a hang.
        assert!(tq.used(0).unwrap() as usize <= MAX_REQUEST_BYTES);
    }
}
