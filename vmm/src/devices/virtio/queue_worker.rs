//! The worker of a device with one queue (block, rng): wait for the driver's
//! notification, serve every available descriptor chain, return each as used, and
//! interrupt the driver when it asked to be told. A device supplies only [`ServeChain`].

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{EventHandler, Worker, add_fd};
use super::{ActivateContext, ActivateError, Interrupt};

/// How a device serves one request.
pub trait ServeChain: Send {
    /// Serves `chain` and returns how many bytes it wrote into the driver's buffers.
    /// Every guest-controlled value must be checked here: a bad chain is answered (or
    /// returned with 0 bytes), never a panic.
    fn serve(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32;
}

/// A queue with what it needs to be served.
#[derive(Debug)]
pub struct QueueWorker<S> {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub evt: EventFd,
    pub interrupt: Arc<Interrupt>,
    pub server: S,
}

impl<S: ServeChain> QueueWorker<S> {
    /// Takes the single queue of `ctx`.
    pub fn new(mut ctx: ActivateContext, server: S) -> Result<QueueWorker<S>, ActivateError> {
        let got = ctx.queues.len();
        let (Some(queue), Some(evt)) = (ctx.queues.pop(), ctx.queue_evts.pop()) else {
            return Err(ActivateError::QueueCount { need: 1, got });
        };
        Ok(QueueWorker {
            mem: ctx.mem,
            queue,
            evt,
            interrupt: ctx.interrupt,
            server,
        })
    }

    /// Serves every available chain.
    pub fn process(&mut self) {
        let mut used_any = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let written = self.server.serve(&self.mem, chain);
            if let Err(e) = self.queue.add_used(&self.mem, head, written) {
                tracing::warn!(error = %e, "cannot return a used buffer");
            }
            used_any = true;
        }
        if used_any && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Runs on a worker thread of its own.
    pub fn spawn(self, name: &str) -> Result<Worker<Self>, ActivateError>
    where
        S: 'static,
    {
        Worker::spawn(name, self).map_err(ActivateError::Worker)
    }
}

impl<S: ServeChain> EventHandler for QueueWorker<S> {
    fn init(&mut self, epoll: &Epoll) -> std::io::Result<()> {
        add_fd(epoll, &self.evt, EventSet::IN, 0)
    }

    fn handle(&mut self, _: &Epoll, _token: u64, _: EventSet) {
        let _ = self.evt.read();
        self.process();
    }
}
