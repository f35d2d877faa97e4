//! Fuzz bodies for husk-vmm's virtio devices, shared by the cargo-fuzz targets
//! (fuzz/fuzz_targets/) and the corpus replay test on stable (vmm/tests/fuzz_corpus.rs).
//!
//! Each body builds guest RAM and the device's queues from the input, the way a hostile
//! driver could leave them at its notification, and runs the device's real queue
//! handling over them. The input is read front to back by [`Input`] (missing bytes read
//! as zero):
//!
//! - one byte of device flags (read-only disk, mergeable RX buffers, balloon queue...);
//! - per queue: size (1 << (b % 9)), queue flags (bit 0 EVENT_IDX, bit 1 the avail
//!   ring's NO_INTERRUPT), the avail ring's `idx`, the device's `next_avail` (a queue
//!   that has wrapped many times), `used_event`, then a count and that many raw 16-byte
//!   descriptors (addr, len, flags, next: anything, loops and indirect tables
//!   included), then a count and that many avail ring entries;
//! - a length and that many bytes copied to [`DATA`] (request headers, frames);
//! - what is left: device-specific (frames from the tap for net).
//!
//! Guest RAM is two regions with a hole between them, so that buffers can straddle the
//! hole or lie outside RAM. Queue `i` has its descriptor table, avail and used rings at
//! `i * QUEUE_AREA`; a queue the transport would refuse at DRIVER_OK (`is_valid`) is not
//! run, as in the VMM.

// Test harness code (compiled into tests and fuzz targets): a set-up that fails is a
// failed test, so expect() is the point.
#![allow(clippy::expect_used)]

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use husk_vmm::devices::virtio::Interrupt;
use husk_vmm::devices::virtio::balloon::{Balloon, Role};
use husk_vmm::devices::virtio::block::Block;
use husk_vmm::devices::virtio::net::metrics::NetMetrics;
use husk_vmm::devices::virtio::net::tap::{Tap, VNET_HDR_LEN};
use husk_vmm::devices::virtio::net::worker::{MAX_TX_BYTES, NetWorker};
use husk_vmm::devices::virtio::queue_worker::{QueueWorker, ServeChain};
use husk_vmm::devices::virtio::rng::Rng;
use husk_vmm::devices::virtio::vsock::muxer::Muxer;
use husk_vmm::devices::virtio::worker::EventHandler;

/// Guest RAM: (start, length) of each region; the hole between them is not RAM.
pub const RAM: [(u64, usize); 2] = [(0, 0x4_0000), (0x8_0000, 0x4_0000)];
/// Room for one queue: descriptor table, then avail ring at +0x1000, used at +0x2000.
pub const QUEUE_AREA: u64 = 0x3000;
/// Where the input's payload goes (after the queues, in the first region).
pub const DATA: u64 = 0x1_0000;
/// The largest queue size the devices offer.
const MAX_QUEUE: u16 = 256;
/// Size of the disk image behind the block device.
pub const DISK_BYTES: u64 = 64 * 1024;
/// The guest's vsock context id.
const GUEST_CID: u64 = 3;
/// The host port with a listener behind it (guest REQUESTs to it connect).
pub const VSOCK_OPEN_PORT: u32 = 1024;

/// The input, read front to back; past its end every read is zero.
#[derive(Debug)]
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input(data)
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let got = self.bytes(2);
        b[..got.len()].copy_from_slice(got);
        u16::from_le_bytes(b)
    }

    /// What is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }
}

/// Fresh guest RAM (anonymous memory, zeroed).
pub fn memory() -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> =
        RAM.iter().map(|(a, l)| (GuestAddress(*a), *l)).collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("guest memory for the fuzz target")
}

fn write(mem: &GuestMemoryMmap, addr: u64, data: &[u8]) {
    mem.write_slice(data, GuestAddress(addr))
        .expect("harness writes stay inside guest RAM");
}

fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(eventfd()))
}

/// Queue `index` as the input describes it, ready; `None` when the transport would
/// refuse it (which it cannot be here: the rings always fit in RAM and are aligned).
pub fn queue(mem: &GuestMemoryMmap, input: &mut Input<'_>, index: u64) -> Option<Queue> {
    let size = 1u16 << (input.u8() % 9);
    let qflags = input.u8();
    let avail_idx = input.u16();
    let next_avail = input.u16();
    let used_event = input.u16();
    let base = index * QUEUE_AREA;
    let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
    let n_desc = usize::from(input.u8()).min(usize::from(size));
    for k in 0..n_desc {
        let mut d = [0u8; 16];
        let got = input.bytes(16);
        d[..got.len()].copy_from_slice(got);
        write(mem, desc + 16 * k as u64, &d);
    }
    let avail_flags = u16::from(qflags & 2 != 0);
    write(mem, avail, &avail_flags.to_le_bytes());
    write(mem, avail + 2, &avail_idx.to_le_bytes());
    let n_ring = usize::from(input.u8()).min(usize::from(size));
    for k in 0..n_ring {
        write(mem, avail + 4 + 2 * k as u64, &input.u16().to_le_bytes());
    }
    write(
        mem,
        avail + 4 + 2 * u64::from(size),
        &used_event.to_le_bytes(),
    );
    // The used ring as the device left it: everything it took returned.
    write(mem, used + 2, &next_avail.to_le_bytes());

    let mut q = Queue::new(MAX_QUEUE).ok()?;
    q.try_set_size(size).ok()?;
    q.try_set_desc_table_address(GuestAddress(desc)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
    q.try_set_used_ring_address(GuestAddress(used)).ok()?;
    q.set_event_idx(qflags & 1 != 0);
    // A queue that has been in use: the device returned everything it took.
    q.set_next_avail(next_avail);
    q.set_next_used(next_avail);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// Copies the payload part of the input to [`DATA`].
pub fn payload(mem: &GuestMemoryMmap, input: &mut Input<'_>) {
    let n = usize::from(input.u16());
    write(mem, DATA, input.bytes(n));
}

/// The used ring's `idx` of queue `index`.
fn used_idx(mem: &GuestMemoryMmap, index: u64) -> u16 {
    mem.read_obj(GuestAddress(index * QUEUE_AREA + 0x2000 + 2))
        .expect("the used ring is in RAM")
}

/// How many chains the driver made available that the device can return: heads inside
/// the table (a head past it has no used element to go into; virtio-queue refuses it).
/// 0 for an avail index more than a ring ahead (nothing can be taken then).
fn offered(q: &Queue, mem: &GuestMemoryMmap) -> u16 {
    let idx = q
        .avail_idx(mem, std::sync::atomic::Ordering::Relaxed)
        .map_or(0, |i| i.0);
    let n = idx.wrapping_sub(q.next_avail());
    if n > q.size() {
        return 0;
    }
    let heads = (0..n).filter(|k| {
        let slot = q.next_avail().wrapping_add(*k) % q.size();
        let head: u16 = mem
            .read_obj(GuestAddress(q.avail_ring() + 4 + 2 * u64::from(slot)))
            .expect("the avail ring is in RAM");
        head < q.size()
    });
    heads.count() as u16
}

/// The descriptor table and avail ring of `q`, as bytes.
fn driver_area(q: &Queue, mem: &GuestMemoryMmap) -> Vec<u8> {
    let size = usize::from(q.size());
    let mut b = vec![0u8; 16 * size + 6 + 2 * size];
    let (table, ring) = b.split_at_mut(16 * size);
    mem.read_slice(table, GuestAddress(q.desc_table()))
        .expect("the table is in RAM");
    mem.read_slice(ring, GuestAddress(q.avail_ring()))
        .expect("the ring is in RAM");
    b
}

/// Runs a one-queue device's server over queue 0: every chain offered comes back used,
/// unless the device's own writes (into buffers the driver placed over its rings, or
/// balloon pages released there) changed what was offered.
fn serve_one_queue<S: ServeChain>(mem: GuestMemoryMmap, queue: Queue, server: S) -> S {
    let start = queue.next_used();
    let n = offered(&queue, &mem);
    let before = driver_area(&queue, &mem);
    let mut w = QueueWorker {
        mem,
        queue,
        evt: eventfd(),
        interrupt: interrupt(),
        server,
    };
    w.process();
    if driver_area(&w.queue, &w.mem) == before {
        assert_eq!(
            w.queue.next_used(),
            start.wrapping_add(n),
            "every chain offered is returned used"
        );
    }
    w.server
}

// ---------------------------------------------------------------------- virtio-blk

/// The disk image (made once per process): [`DISK_BYTES`] long.
fn disk_path() -> &'static std::path::Path {
    static DISK: OnceLock<tempfile::TempPath> = OnceLock::new();
    DISK.get_or_init(|| {
        let f = tempfile::NamedTempFile::new().expect("a temporary disk image");
        let content: Vec<u8> = (0..DISK_BYTES).map(|i| (i % 251) as u8).collect();
        std::fs::write(f.path(), content).expect("writing the disk image");
        f.into_temp_path()
    })
}

/// virtio-blk: request parsing and serving (read, write, flush, get-id) on a 64 KiB
/// image; device flag bit 0 makes it read-only. The image never grows.
pub fn virtio_block(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let mem = memory();
    let Some(queue) = queue(&mem, &mut input, 0) else {
        return;
    };
    payload(&mem, &mut input);
    let path = disk_path();
    let block = Block::open(path, flags & 1 != 0, 0).expect("opening the disk image");
    serve_one_queue(mem, queue, block.server());
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, DISK_BYTES, "a request wrote past the end of the disk");
}

// ---------------------------------------------------------------------- virtio-rng

/// virtio-rng: writable buffers filled from /dev/urandom, capped per request.
pub fn virtio_rng(data: &[u8]) {
    let mut input = Input::new(data);
    let _flags = input.u8();
    let mem = memory();
    let Some(queue) = queue(&mem, &mut input, 0) else {
        return;
    };
    payload(&mem, &mut input);
    let server = Rng::new().server().expect("opening /dev/urandom");
    serve_one_queue(mem, queue, server);
}

// ---------------------------------------------------------------------- virtio-balloon

/// virtio-balloon: the queue of role `flags % 3` (inflate, deflate, free page
/// reporting); reported ranges are checked and released (madvise) in the fuzz RAM.
pub fn virtio_balloon(data: &[u8]) {
    let mut input = Input::new(data);
    let role = [Role::Inflate, Role::Deflate, Role::Reporting][usize::from(input.u8() % 3)];
    let mem = memory();
    let Some(queue) = queue(&mem, &mut input, 0) else {
        return;
    };
    payload(&mem, &mut input);
    serve_one_queue(mem, queue, Balloon::new(true).server(role));
}

// ---------------------------------------------------------------------- virtio-net

/// virtio-net: queue 0 is RX, queue 1 TX; device flag bit 0 negotiates MRG_RXBUF. The
/// TX chains are sent to a datagram socket standing in for the tap; then the frames
/// the rest of the input holds (u16 length, bytes; each up to a vnet header and a
/// maximal frame) come from the "tap" into the RX buffers.
pub fn virtio_net(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let mem = memory();
    let (Some(rxq), Some(txq)) = (queue(&mem, &mut input, 0), queue(&mem, &mut input, 1)) else {
        return;
    };
    payload(&mem, &mut input);
    let (ours, peer) = UnixDatagram::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("non-blocking");
    peer.set_nonblocking(true).expect("non-blocking");
    let tx_offered = offered(&txq, &mem);
    let tx_start = txq.next_used();
    let metrics = Arc::<NetMetrics>::default();
    let mut w = NetWorker::new(
        mem.clone(),
        rxq,
        txq,
        eventfd(),
        eventfd(),
        Tap::from_fd_for_test(OwnedFd::from(ours)),
        interrupt(),
        metrics.clone(),
        flags & 1 != 0,
    );
    let epoll = Epoll::new().expect("epoll");
    w.init(&epoll).expect("the worker's epoll set");

    w.process_tx();
    assert_eq!(
        used_idx(&mem, 1),
        tx_start.wrapping_add(tx_offered),
        "every TX chain is returned used ({})",
        serde_json::to_string(&*metrics).unwrap_or_default()
    );
    let mut buf = vec![0u8; 2 * MAX_TX_BYTES];
    while let Ok(n) = peer.recv(&mut buf) {
        assert!(
            n > VNET_HDR_LEN && n <= MAX_TX_BYTES,
            "a TX frame of {n} bytes reached the tap"
        );
    }

    let mut frames = Input::new(input.rest());
    loop {
        let n = usize::from(frames.u16());
        let frame = frames.bytes(n);
        if frame.is_empty() || peer.send(frame).is_err() {
            break;
        }
    }
    w.process_rx(&epoll);
}

// ---------------------------------------------------------------------- virtio-vsock

/// The vsock device's host side: a listener for host-initiated connections (never
/// connected to here) and one on `<uds>_<VSOCK_OPEN_PORT>`, so that guest REQUESTs to
/// that port connect and their data reach a socket. Made once per process.
struct VsockHost {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    listener: UnixListener,
    open_port: UnixListener,
}

fn vsock_host() -> &'static VsockHost {
    static HOST: OnceLock<VsockHost> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(&uds).expect("the vsock listener");
        listener.set_nonblocking(true).expect("non-blocking");
        let mut port = uds.clone().into_os_string();
        port.push(format!("_{VSOCK_OPEN_PORT}"));
        let open_port = UnixListener::bind(&port).expect("the port listener");
        open_port.set_nonblocking(true).expect("non-blocking");
        VsockHost {
            _dir: dir,
            uds,
            listener,
            open_port,
        }
    })
}

/// virtio-vsock: queue 0 is RX, queue 1 TX. The guest's TX packets (both layouts,
/// every op, any ports and credit) go through the muxer, then the replies it owes
/// fill the RX buffers. The guest's CID is 3.
pub fn vsock(data: &[u8]) {
    let mut input = Input::new(data);
    let max_conns = usize::from(input.u8() % 8) + 1;
    let mem = memory();
    let (Some(rxq), Some(txq)) = (queue(&mem, &mut input, 0), queue(&mem, &mut input, 1)) else {
        return;
    };
    payload(&mem, &mut input);
    let host = vsock_host();
    let tx_offered = offered(&txq, &mem);
    let tx_start = txq.next_used();
    let mut m = Muxer::new(
        mem.clone(),
        rxq,
        txq,
        (0..3).map(|_| eventfd()).collect(),
        interrupt(),
        GUEST_CID,
        host.uds.clone(),
        host.listener.try_clone().expect("dup of the listener"),
        Arc::default(),
        max_conns,
    );
    let epoll = Epoll::new().expect("epoll");
    m.init(&epoll).expect("the muxer's epoll set");
    m.process_tx(&epoll);
    assert_eq!(
        used_idx(&mem, 1),
        tx_start.wrapping_add(tx_offered),
        "every TX packet is returned used"
    );
    m.process_rx(&epoll);
    drop(m);
    // Connections the guest made: gone with the muxer; empty the backlog.
    while host.open_port.accept().is_ok() {}
}
