//! virtio-rng (virtio 1.2, 5.4): fills the guest's write-only buffers from the host's
//! /dev/urandom. One queue; each request is capped so that a guest cannot make the VMM
//! allocate or read without bound.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{EventHandler, Worker, add_fd};
use super::{
    ActivateContext, ActivateError, Counter, Interrupt, TYPE_RNG, VIRTIO_F_VERSION_1, VirtioDevice,
};

/// Most bytes handed out per request.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 256;

#[derive(Debug, Default)]
struct Metrics {
    requests: Counter,
    bytes: Counter,
    bad_chains: Counter,
}

/// The device.
#[derive(Debug)]
pub struct Rng {
    metrics: Arc<Metrics>,
    worker: Option<Worker>,
}

impl Rng {
    pub fn new() -> Rng {
        Rng {
            metrics: Arc::default(),
            worker: None,
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

struct Handler {
    mem: GuestMemoryMmap,
    queue: Queue,
    evt: EventFd,
    interrupt: Arc<Interrupt>,
    source: File,
    metrics: Arc<Metrics>,
}

impl Handler {
    fn process(&mut self) {
        let mut used_any = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let written = match chain.writer(&self.mem) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(MAX_REQUEST_BYTES);
                    let mut buf = vec![0u8; n];
                    match self
                        .source
                        .read_exact(&mut buf)
                        .and_then(|()| w.write_all(&buf))
                    {
                        Ok(()) => n,
                        Err(e) => {
                            tracing::warn!(error = %e, "rng request failed");
                            0
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bad rng descriptor chain");
                    self.metrics.bad_chains.inc();
                    0
                }
            };
            self.metrics.requests.inc();
            self.metrics.bytes.add(written as u64);
            if let Err(e) = self.queue.add_used(&self.mem, head, written as u32) {
                tracing::warn!(error = %e, "rng: cannot return a buffer");
            }
            used_any = true;
        }
        if used_any && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }
}

impl EventHandler for Handler {
    fn init(&mut self, epoll: &Epoll) -> std::io::Result<()> {
        add_fd(epoll, &self.evt, EventSet::IN, 0)
    }

    fn handle(&mut self, _: &Epoll, _token: u64, _: EventSet) {
        let _ = self.evt.read();
        self.process();
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

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let (Some(queue), Some(evt)) = (ctx.queues.pop(), ctx.queue_evts.pop()) else {
            return Err(ActivateError::QueueCount { need: 1, got: 0 });
        };
        let source = File::open("/dev/urandom").map_err(ActivateError::Worker)?;
        let h = Handler {
            mem: ctx.mem,
            queue,
            evt,
            interrupt: ctx.interrupt,
            source,
            metrics: self.metrics.clone(),
        };
        self.worker = Some(Worker::spawn("virtio-rng", h).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.metrics.requests.get(),
            "bytes": self.metrics.bytes.get(),
            "bad_chains": self.metrics.bad_chains.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{TestQueue, W};

    fn handler(tq: &TestQueue) -> Handler {
        Handler {
            mem: tq.mem.clone(),
            queue: tq.queue(),
            evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            interrupt: tq.interrupt.clone(),
            source: File::open("/dev/urandom").unwrap(),
            metrics: Arc::default(),
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
        assert_eq!(h.metrics.bad_chains.get(), 1);
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
