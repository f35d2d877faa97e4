//! The vhost-user frontend side of virtio-fs: one connection to the backend (virtiofsd)
//! and the message sequences of the vhost-user protocol
//! (<https://qemu-project.gitlab.io/qemu/interop/vhost-user.html>) that hand it the
//! guest's memory and vrings.
//!
//! - At creation ([`Connection::new`]): SET_OWNER, GET_FEATURES and, when the backend
//!   offers VHOST_USER_F_PROTOCOL_FEATURES, GET/SET_PROTOCOL_FEATURES (REPLY_ACK and MQ
//!   only). With REPLY_ACK every later request asks for an acknowledgement, so that a
//!   refusal shows up at the request that caused it.
//! - At activation ([`Connection::activate`]): SET_FEATURES, SET_MEM_TABLE, then per
//!   queue SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL,
//!   SET_VRING_KICK, SET_VRING_ENABLE.
//! - At reset ([`Connection::reset`]): SET_VRING_ENABLE(false) and GET_VRING_BASE per
//!   queue, which stops the rings; the connection stays for the next activation.
//!
//! Each of these runs under a deadline of [`IO_TIMEOUT`] (shorter only for tests and
//! fuzzing, [`Connection::with_timeout`]): a watchdog thread shuts the
//! socket down when it passes, so a backend that stops answering costs a vCPU thread
//! that long at most, never a hang. (Socket timeouts would not do: the vhost crate
//! retries EAGAIN in a loop, so SO_RCVTIMEO turns a stuck backend into a busy loop.)

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// How long one whole sequence (negotiation, activation, reset) may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The protocol features we use when the backend offers them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ
}

/// Why talking to the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("cannot connect to the vhost-user backend at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch the vhost-user socket")]
    Watchdog(#[source] std::io::Error),
    #[error("the backend did not finish {what} within {after:?}; connection closed")]
    TimedOut {
        what: &'static str,
        after: Duration,
        #[source]
        source: Box<VhostUserError>,
    },
    #[error("vhost-user request {request} failed")]
    Request {
        request: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("the backend serves {got} queues, the device needs {need}")]
    QueueCount { need: usize, got: u64 },
    #[error("guest memory region at {addr:#x} is not file-backed; the backend cannot map it")]
    NotShared { addr: u64 },
    #[error("guest memory has {0} regions, more than a vhost-user message carries")]
    TooManyRegions(usize),
    #[error("queue {queue}: its {ring} at {addr:#x} is outside guest memory")]
    RingAddress {
        queue: usize,
        ring: &'static str,
        addr: u64,
    },
    #[error("queue {queue} is not ready")]
    QueueNotReady { queue: usize },
    #[error("{need} eventfds needed, {got} given")]
    Eventfds { need: usize, got: usize },
}

fn req<T>(request: &'static str, r: vhost::Result<T>) -> Result<T, VhostUserError> {
    r.map_err(|source| VhostUserError::Request { request, source })
}

/// Most memory regions in one SET_MEM_TABLE (the protocol's fd limit).
const MAX_REGIONS: usize = 8;

/// A connection to a vhost-user backend.
pub struct Connection {
    frontend: Frontend,
    /// The same socket, for the watchdog to shut down.
    watch: UnixStream,
    /// The virtio and vhost-user feature bits the backend offered.
    backend_features: u64,
    protocol_features: VhostUserProtocolFeatures,
    num_queues: usize,
    /// The deadline of each sequence ([`IO_TIMEOUT`] but in tests and fuzzing).
    timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("backend_features", &self.backend_features)
            .field("protocol_features", &self.protocol_features)
            .field("num_queues", &self.num_queues)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to the backend listening on `path` and negotiates the protocol.
    pub fn connect(path: &Path, num_queues: usize) -> Result<Connection, VhostUserError> {
        let stream = UnixStream::connect(path).map_err(|source| VhostUserError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Connection::new(stream, num_queues)
    }

    /// Takes over a connected stream and negotiates: SET_OWNER, GET_FEATURES,
    /// GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (with MQ).
    pub fn new(stream: UnixStream, num_queues: usize) -> Result<Connection, VhostUserError> {
        Connection::with_timeout(stream, num_queues, IO_TIMEOUT)
    }

    /// [`Connection::new`] with another deadline than [`IO_TIMEOUT`] for each sequence:
    /// for tests and the fuzz target (fuzz/src/fs.rs), whose silent fake backends would
    /// otherwise cost seconds per input.
    #[doc(hidden)]
    pub fn with_timeout(
        stream: UnixStream,
        num_queues: usize,
        timeout: Duration,
    ) -> Result<Connection, VhostUserError> {
        let watch = stream.try_clone().map_err(VhostUserError::Watchdog)?;
        let frontend = Frontend::from_stream(stream, num_queues as u64);
        let (frontend, backend_features, protocol_features) =
            with_deadline(&watch, "negotiation", timeout, || {
                negotiate(frontend, num_queues)
            })?;
        tracing::debug!(
            backend_features,
            protocol_features = protocol_features.bits(),
            "vhost-user backend connected"
        );
        Ok(Connection {
            frontend,
            watch,
            backend_features,
            protocol_features,
            num_queues,
            timeout,
        })
    }
    /// The feature bits the backend offered (virtio and vhost-user ones).
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// The protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Hands the backend the guest's memory and queues: `kicks` are the queues'
    /// notification eventfds (KVM ioeventfds, so the backend is kicked without us),
    /// `calls` the eventfds it signals when it used buffers.
    pub fn activate(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
        acked_features: u64,
    ) -> Result<(), VhostUserError> {
        let watch = self.watch.try_clone().map_err(VhostUserError::Watchdog)?;
        with_deadline(&watch, "activation", self.timeout, || {
            self.send_rings(mem, queues, kicks, calls, acked_features)
        })
    }

    fn send_rings(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
        acked_features: u64,
    ) -> Result<(), VhostUserError> {
        let n = self.num_queues;
        for got in [queues.len(), kicks.len(), calls.len()] {
            if got != n {
                return Err(VhostUserError::Eventfds { need: n, got });
            }
        }
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let features =
            (acked_features & self.backend_features) | (self.backend_features & protocol);
        req("SET_FEATURES", self.frontend.set_features(features))?;
        let regions = memory_regions(mem)?;
        req("SET_MEM_TABLE", self.frontend.set_mem_table(&regions))?;
        for (i, q) in queues.iter().enumerate() {
            if !q.ready() {
                return Err(VhostUserError::QueueNotReady { queue: i });
            }
            req("SET_VRING_NUM", self.frontend.set_vring_num(i, q.size()))?;
            let config = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host_address(mem, i, "descriptor table", q.desc_table())?,
                used_ring_addr: host_address(mem, i, "used ring", q.used_ring())?,
                avail_ring_addr: host_address(mem, i, "available ring", q.avail_ring())?,
                log_addr: None,
            };
            req("SET_VRING_ADDR", self.frontend.set_vring_addr(i, &config))?;
            req(
                "SET_VRING_BASE",
                self.frontend.set_vring_base(i, q.next_avail()),
            )?;
            req("SET_VRING_CALL", self.frontend.set_vring_call(i, &calls[i]))?;
            req("SET_VRING_KICK", self.frontend.set_vring_kick(i, &kicks[i]))?;
            if features & protocol != 0 {
                // With protocol features, rings start disabled (vhost-user, "Ring states").
                req("SET_VRING_ENABLE", self.frontend.set_vring_enable(i, true))?;
            }
        }
        Ok(())
    }

    /// Stops the rings (the driver reset the device); returns each ring's next
    /// available index as the backend reported it.
    pub fn reset(&mut self) -> Result<Vec<u32>, VhostUserError> {
        let watch = self.watch.try_clone().map_err(VhostUserError::Watchdog)?;
        with_deadline(&watch, "reset", self.timeout, || self.stop_rings())
    }

    fn stop_rings(&mut self) -> Result<Vec<u32>, VhostUserError> {
        let with_enable =
            self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        let mut bases = Vec::with_capacity(self.num_queues);
        for i in 0..self.num_queues {
            if with_enable {
                req("SET_VRING_ENABLE", self.frontend.set_vring_enable(i, false))?;
            }
            bases.push(req("GET_VRING_BASE", self.frontend.get_vring_base(i))?);
        }
        Ok(bases)
    }

    /// The socket's fd (for logs).
    pub fn raw_fd(&self) -> i32 {
        self.frontend.as_raw_fd()
    }
}

/// SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (with MQ).
fn negotiate(
    mut frontend: Frontend,
    num_queues: usize,
) -> Result<(Frontend, u64, VhostUserProtocolFeatures), VhostUserError> {
    req("SET_OWNER", frontend.set_owner())?;
    let backend_features = req("GET_FEATURES", frontend.get_features())?;
    let mut protocol_features = VhostUserProtocolFeatures::empty();
    if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        let offered = req("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
        protocol_features = offered & wanted_protocol_features();
        req(
            "SET_PROTOCOL_FEATURES",
            frontend.set_protocol_features(protocol_features),
        )?;
        if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
            let got = req("GET_QUEUE_NUM", frontend.get_queue_num())?;
            if got < num_queues as u64 {
                return Err(VhostUserError::QueueCount {
                    need: num_queues,
                    got,
                });
            }
        }
    }
    Ok((frontend, backend_features, protocol_features))
}

/// Runs `f` (requests on the socket `watch` is a clone of); shuts the socket down if
/// it takes longer than `timeout`, which ends any request blocked on it.
fn with_deadline<T>(
    watch: &UnixStream,
    what: &'static str,
    timeout: Duration,
    f: impl FnOnce() -> Result<T, VhostUserError>,
) -> Result<T, VhostUserError> {
    let (done, wait) = mpsc::channel::<()>();
    let fired = std::thread::scope(|s| {
        let dog = std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn_scoped(s, move || {
                if wait.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                    let _ = watch.shutdown(std::net::Shutdown::Both);
                    return true;
                }
                false
            })
            .map_err(VhostUserError::Watchdog)?;
        let r = f();
        drop(done);
        Ok::<_, VhostUserError>((r, dog.join().unwrap_or(true)))
    })?;
    match fired {
        (Err(e), true) => Err(VhostUserError::TimedOut {
            what,
            after: timeout,
            source: Box::new(e),
        }),
        (r, _) => r,
    }
}

/// The guest's RAM regions as the backend maps them: each must be file-backed (the
/// shared memfd of memory.rs).
fn memory_regions(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>, VhostUserError> {
    let n = mem.num_regions();
    if n > MAX_REGIONS {
        return Err(VhostUserError::TooManyRegions(n));
    }
    mem.iter()
        .map(|r| {
            let addr = r.start_addr().raw_value();
            let fo = r.file_offset().ok_or(VhostUserError::NotShared { addr })?;
            Ok(VhostUserMemoryRegionInfo {
                guest_phys_addr: addr,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: fo.start(),
                mmap_handle: fo.file().as_raw_fd(),
            })
        })
        .collect()
}

fn host_address(
    mem: &GuestMemoryMmap,
    queue: usize,
    ring: &'static str,
    addr: u64,
) -> Result<u64, VhostUserError> {
    mem.get_host_address(GuestAddress(addr))
        .map(|p| p as u64)
        .map_err(|_| VhostUserError::RingAddress { queue, ring, addr })
}
