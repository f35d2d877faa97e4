//! virtio-fs (virtio 1.2, 5.11) as a vhost-user frontend: the FUSE requests on the
//! queues are served by an external backend (virtiofsd) that maps guest memory (the
//! shared memfd of memory.rs) and works on the vrings itself.
//!
//! husk-vmm keeps the transport (MMIO registers, configuration space) and the vhost-user
//! connection ([`vhost_user`]); the data path never passes through it:
//! - kicks: the queues' notification eventfds are KVM ioeventfds, handed to the backend
//!   as its kick fds, so a QueueNotify write wakes virtiofsd directly;
//! - calls: the backend signals call eventfds of ours, and a small worker turns each
//!   signal into [`Interrupt::signal_used_queue`], which sets InterruptStatus bit 0
//!   and raises the irqfd.
//!
//! Why the forwarding worker rather than handing the backend the irqfd itself (and
//! reading InterruptStatus as "vring" always): the virtio-mmio driver reads
//! InterruptStatus on each interrupt and handles the vrings only when bit 0 is set
//! (4.2.3.4), and the bit must follow the real events for the configuration-change bit
//! and spurious-interrupt accounting to mean something. A permanent bit 0 would also
//! make every config-change interrupt look like a vring one. The cost is one eventfd
//! read and one write per notification, small beside a FUSE request.
//!
//! Failure: any vhost-user error marks the device failed (logged, counted); activation
//! then reports an error, so the transport sets DEVICE_NEEDS_RESET, and the rest of the
//! VM goes on. Requests time out (see [`vhost_user::IO_TIMEOUT`]), so a stuck backend
//! cannot hold a vCPU thread forever.

pub mod metrics;
pub mod vhost_user;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use self::metrics::FsMetrics;
use self::vhost_user::{Connection, VhostUserError};
use super::state::{DeviceStateError, QueueSnapshot};
use super::worker::{EventHandler, Worker, add_fd};
use super::{
    ActivateContext, ActivateError, Interrupt, TYPE_FS, VIRTIO_F_VERSION_1, VirtioDevice,
    read_config_bytes,
};

/// Longest tag (5.11.4: `tag[36]`, not NUL-terminated when all 36 bytes are used).
pub const TAG_LEN: usize = 36;
/// Request queues served (the backend may serve more; one is what virtiofsd needs).
pub const NUM_REQUEST_QUEUES: usize = 1;
/// The high-priority queue plus the request queues (5.11.2).
const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES;
/// Queue size offered to the driver.
const QUEUE_SIZE: u16 = 1024;

/// VIRTIO_F_RING_INDIRECT_DESC and VIRTIO_F_RING_EVENT_IDX: ring features the backend
/// implements and we pass through to the guest when it offers them.
const PASSTHROUGH_FEATURES: u64 = (1 << 28) | (1 << 29);

/// Why a virtio-fs device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("fs[{index}]: vhost-user backend at {socket}")]
    Backend {
        index: usize,
        socket: PathBuf,
        #[source]
        source: VhostUserError,
    },
    #[error("fs[{index}]: tag {tag:?} must be 1 to {TAG_LEN} bytes without NUL")]
    Tag { index: usize, tag: String },
    #[error("cannot create the call eventfds")]
    Eventfd(#[source] io::Error),
}

/// The device.
pub struct Fs {
    config: [u8; TAG_LEN + 4],
    conn: Connection,
    socket: PathBuf,
    avail_features: u64,
    /// Eventfds the backend signals, one per queue; ours for the device's life.
    calls: Vec<EventFd>,
    worker: Option<Worker<CallForwarder>>,
    /// Set at the first vhost-user error: the connection may be out of step.
    failed: bool,
    /// The backend holds the rings (between a successful activation and reset).
    running: bool,
    /// What the last activation handed the backend: guest memory and the queues, for
    /// [`VirtioDevice::pause`] to check that the guest never used them.
    active: Option<(GuestMemoryMmap, Vec<Queue>)>,
    metrics: Arc<FsMetrics>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("socket", &self.socket)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Connects to the backend at `socket` and negotiates; `index` names the device in
    /// errors (`fs[index]`).
    pub fn connect(tag: &str, socket: &Path, index: usize) -> Result<Fs, FsError> {
        let conn = Connection::connect(socket, NUM_QUEUES).map_err(|source| FsError::Backend {
            index,
            socket: socket.to_path_buf(),
            source,
        })?;
        Fs::with_connection(tag, conn, socket, index)
    }

    /// A device over an established connection (tests use a socketpair).
    pub fn with_connection(
        tag: &str,
        conn: Connection,
        socket: &Path,
        index: usize,
    ) -> Result<Fs, FsError> {
        let bytes = tag.as_bytes();
        if bytes.is_empty() || bytes.len() > TAG_LEN || bytes.contains(&0) {
            return Err(FsError::Tag {
                index,
                tag: tag.to_string(),
            });
        }
        // 5.11.4: tag[36], then le32 num_request_queues.
        let mut config = [0u8; TAG_LEN + 4];
        config[..bytes.len()].copy_from_slice(bytes);
        config[TAG_LEN..].copy_from_slice(&(NUM_REQUEST_QUEUES as u32).to_le_bytes());
        let calls = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FsError::Eventfd)?;
        let avail_features = VIRTIO_F_VERSION_1 | (conn.backend_features() & PASSTHROUGH_FEATURES);
        Ok(Fs {
            config,
            conn,
            socket: socket.to_path_buf(),
            avail_features,
            calls,
            worker: None,
            failed: false,
            running: false,
            active: None,
            metrics: Arc::default(),
        })
    }

    /// The tag, as the guest reads it (the configuration space's first bytes).
    fn tag(&self) -> String {
        let end = self.config[..TAG_LEN]
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(TAG_LEN);
        String::from_utf8_lossy(&self.config[..end]).into_owned()
    }

    fn backend_failed(&mut self, e: &VhostUserError) {
        self.metrics.backend_errors.inc();
        self.failed = true;
        tracing::error!(
            socket = %self.socket.display(),
            error = %e,
            cause = ?std::error::Error::source(e).map(ToString::to_string),
            "virtio-fs backend failed; the device stays failed"
        );
    }
}

/// Forwards the backend's call eventfds to the guest's interrupt.
struct CallForwarder {
    calls: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    metrics: Arc<FsMetrics>,
}

impl EventHandler for CallForwarder {
    fn init(&mut self, epoll: &Epoll) -> io::Result<()> {
        for (i, c) in self.calls.iter().enumerate() {
            add_fd(epoll, c, EventSet::IN, i as u64)?;
        }
        Ok(())
    }

    fn handle(&mut self, _epoll: &Epoll, token: u64, _events: EventSet) {
        let Some(c) = usize::try_from(token).ok().and_then(|i| self.calls.get(i)) else {
            return;
        };
        // Non-blocking: a spurious wakeup reads EAGAIN and raises nothing.
        if c.read().is_ok() {
            self.metrics.interrupts.inc();
            self.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn name(&self) -> &'static str {
        "fs"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; NUM_QUEUES]
    }
    fn features(&self) -> u64 {
        self.avail_features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    /// A snapshot of an unused share only: the vhost-user backend (virtiofsd) owns the
    /// queues and its FUSE session (open files, inodes), which it cannot hand over. A
    /// guest that never sent a request (nothing mounted: the first request is a mount's
    /// FUSE_INIT) has no such state; its queues are saved at index 0, and a restored
    /// VM hands them to a fresh backend of its own (docs/snapshots.md). The vCPUs are
    /// paused, so the rings cannot move meanwhile; the backend keeps them. The idx
    /// fields are the guest's to write: this check is for templates, where no tenant
    /// code has run, not a defence against a guest that wants a used share saved (its
    /// restored requests would then fail against the new backend).
    fn pause(&mut self) -> Result<Vec<(usize, QueueSnapshot)>, DeviceStateError> {
        if self.failed {
            return Err(DeviceStateError::WorkerGone("fs"));
        }
        let Some((mem, queues)) = self.active.as_ref().filter(|_| self.running) else {
            return Ok(Vec::new());
        };
        let mut saved = Vec::with_capacity(queues.len());
        for (i, q) in queues.iter().enumerate() {
            // The rings' idx fields (2.7.6, 2.7.8): what the driver made available and
            // what the backend used. Both 0: the guest never sent a request.
            let idx = |ring: u64| {
                ring.checked_add(2)
                    .and_then(|a| mem.read_obj::<u16>(GuestAddress(a)).ok())
            };
            match (idx(q.avail_ring()), idx(q.used_ring())) {
                (Some(0), Some(0)) => {}
                (avail, used) => {
                    return Err(DeviceStateError::InUse {
                        device: "fs",
                        why: format!(
                            "the guest has used the share (queue {i}: available index {avail:?}, used index {used:?}); only a VM that never mounted it can be saved"
                        ),
                    });
                }
            }
            let mut s = QueueSnapshot::of(q);
            s.next_avail = 0;
            s.next_used = 0;
            saved.push((i, s));
        }
        Ok(saved)
    }

    /// The tag: the guest knows its share by the tag it read when it probed.
    fn save(&self) -> serde_json::Value {
        serde_json::json!({ "tag": self.tag() })
    }

    /// Hands a restored VM's saved queues (index 0, see [`pause`](Self::pause)) to this
    /// VM's own backend, as an activation does. The tag must be the saved one.
    fn restore(
        &mut self,
        state: &serde_json::Value,
        ctx: ActivateContext,
    ) -> Result<(), ActivateError> {
        let saved = state.get("tag").and_then(serde_json::Value::as_str);
        if saved != Some(self.tag().as_str()) {
            return Err(ActivateError::Restore(format!(
                "the snapshot's share has tag {saved:?}, this VM's {:?}; the guest mounts by the tag it read at boot",
                self.tag()
            )));
        }
        if ctx
            .queues
            .iter()
            .any(|q| q.next_avail() != 0 || q.next_used() != 0)
        {
            return Err(ActivateError::Restore(
                "the snapshot's queues are not at index 0: the share was in use".into(),
            ));
        }
        self.activate(ctx)
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.failed {
            return Err(ActivateError::BackendFailed);
        }
        // Both queues must be set up (5.11.2); a driver that left one out is refused
        // before the backend hears of it, so the device is not marked failed.
        let ready = ctx.queues.iter().filter(|q| q.ready()).count();
        if ctx.queues.len() != NUM_QUEUES || ready != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                need: NUM_QUEUES,
                got: ready,
            });
        }
        let calls = self
            .calls
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ActivateError::Worker)?;
        // The forwarder runs before the backend gets the rings, so no call is missed.
        let forwarder = CallForwarder {
            calls,
            interrupt: ctx.interrupt.clone(),
            metrics: self.metrics.clone(),
        };
        self.worker = Some(Worker::spawn("virtio-fs", forwarder).map_err(ActivateError::Worker)?);
        if let Err(e) = self.conn.activate(
            &ctx.mem,
            &ctx.queues,
            &ctx.queue_evts,
            &self.calls,
            ctx.acked_features,
        ) {
            self.backend_failed(&e);
            self.worker = None;
            return Err(ActivateError::Backend(Box::new(e)));
        }
        self.running = true;
        self.active = Some((ctx.mem, ctx.queues));
        self.metrics.activations.inc();
        tracing::info!(socket = %self.socket.display(), features = ctx.acked_features, "virtio-fs active");
        Ok(())
    }

    fn reset(&mut self) {
        self.metrics.resets.inc();
        if self.running && !self.failed {
            match self.conn.reset() {
                Ok(bases) => tracing::debug!(?bases, "virtio-fs rings stopped"),
                Err(e) => self.backend_failed(&e),
            }
        }
        self.running = false;
        self.active = None;
        self.worker = None;
        // Drop notifications the backend sent for the old rings.
        for c in &self.calls {
            let _ = c.read();
        }
    }

    fn metrics(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.metrics.snapshot()).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("failed".into(), self.failed.into());
        }
        v
    }
}

#[cfg(test)]
mod tests;
