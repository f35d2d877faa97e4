//! The virtio-net worker (virtio 1.2 §5.1.6): moves frames between the guest's queues and
//! the tap, on the device's epoll loop.
//!
//! - TX (§5.1.6.2): each chain (12-byte `virtio_net_hdr_v1` + frame, device-readable) is
//!   gathered into a bounded buffer and written to the tap as is (the tap takes the vnet
//!   header, IFF_VNET_HDR). A chain with writable descriptors, no room for a header, or
//!   more than [`MAX_TX_BYTES`] is dropped and counted. A tap that refuses a write
//!   (EAGAIN, EIO when the interface is down) costs that frame: a tap applies no
//!   backpressure in practice (the kernel queues or drops inside the stack), so keeping
//!   the chain would only mean polling for EPOLLOUT that never matters; the guest's TCP
//!   retransmits. Every chain is returned used.
//! - RX (§5.1.6.3, §5.1.6.4): the tap is read (non-blocking, level-triggered) only while
//!   the worker holds no frame. A frame goes into one chain, or with MRG_RXBUF across
//!   several (`num_buffers` in its header). When the guest has posted too little, the
//!   frame is held (at most one), the tap leaves the epoll set so that the kernel's tap
//!   queue fills and drops, and notifications are re-enabled; the guest's next RX kick
//!   resumes. A frame that can never fit (larger than one chain without MRG_RXBUF, or than
//!   a full ring with it) is dropped and counted.
//!
//! Guest buffers are parsed into [`RxBuffer`]s before use: writable descriptors inside
//! guest memory only; anything else is returned with length 0 and counted.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::NetMetrics;
use super::tap::{Tap, VNET_HDR_LEN};
use crate::devices::virtio::Interrupt;
use crate::devices::virtio::worker::{EventHandler, add_fd};

/// Largest frame (without vnet header) either way: 64 KiB of GSO payload plus Ethernet
/// and VLAN headers (Firecracker's bound, 65562).
pub const MAX_FRAME: usize = 65_562;
/// Largest TX chain accepted: vnet header and frame.
pub const MAX_TX_BYTES: usize = VNET_HDR_LEN + MAX_FRAME;
/// The RX bounce buffer: one frame from the tap.
const RX_BUF_LEN: usize = VNET_HDR_LEN + MAX_FRAME;
/// Frames moved per tap event before other events get their turn (level-triggered, so
/// the rest is reported again).
const RX_BUDGET: usize = 64;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

pub const TOKEN_RXQ: u64 = 0;
pub const TOKEN_TXQ: u64 = 1;
pub const TOKEN_TAP: u64 = 2;

/// A guest RX chain, checked: its head and writable segments inside guest memory.
#[derive(Debug)]
struct RxBuffer {
    head: u16,
    segs: Vec<(GuestAddress, u32)>,
    capacity: usize,
    descs: usize,
}

/// Why an RX chain cannot be used.
#[derive(Debug, Clone, Copy)]
enum BadChain {
    ReadOnly,
    OutsideMemory,
    TooSmall,
}

impl RxBuffer {
    fn parse(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<RxBuffer, BadChain> {
        let head = chain.head_index();
        let mut segs = Vec::new();
        let mut capacity = 0usize;
        let mut descs = 0usize;
        // The iterator ends a looping chain after queue-size descriptors.
        for d in chain {
            descs += 1;
            if !d.is_write_only() {
                return Err(BadChain::ReadOnly);
            }
            if d.len() == 0 {
                continue;
            }
            if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
                return Err(BadChain::OutsideMemory);
            }
            capacity = capacity.saturating_add(d.len() as usize);
            segs.push((d.addr(), d.len()));
        }
        if capacity < VNET_HDR_LEN {
            return Err(BadChain::TooSmall);
        }
        Ok(RxBuffer {
            head,
            segs,
            capacity,
            descs,
        })
    }

    /// Writes `data` from the start of the buffer; returns the bytes written.
    fn write(&self, mem: &GuestMemoryMmap, data: &[u8]) -> usize {
        let mut off = 0;
        for (addr, len) in &self.segs {
            if off == data.len() {
                break;
            }
            let n = (*len as usize).min(data.len() - off);
            if mem.write_slice(&data[off..off + n], *addr).is_err() {
                break;
            }
            off += n;
        }
        off
    }
}

/// Re-enables notifications once the ring looks empty, and says whether chains came
/// meanwhile. An avail index more than a ring ahead of ours (a broken or hostile driver)
/// counts as nothing: virtio-queue refuses to walk such a ring, so retrying would spin
/// for ever; the driver's next notification is looked at afresh.
fn more_available(q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, virtio_queue::Error> {
    if !q.enable_notification(mem)? {
        return Ok(false);
    }
    let ahead = q.avail_idx(mem, Ordering::Acquire)? - Wrapping(q.next_avail());
    if ahead.0 > q.size() {
        tracing::debug!(
            ahead = ahead.0,
            size = q.size(),
            "net: avail index more than a ring ahead"
        );
        return Ok(false);
    }
    Ok(true)
}

/// What became of the frame held.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    Delivered,
    Dropped,
    /// Not enough guest buffers yet: keep the frame.
    Wait,
}

/// The worker's state.
pub struct NetWorker {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rxq: Queue,
    pub(super) txq: Queue,
    pub(super) rx_evt: EventFd,
    pub(super) tx_evt: EventFd,
    pub(super) tap: Tap,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) metrics: Arc<NetMetrics>,
    /// VIRTIO_NET_F_MRG_RXBUF was negotiated.
    pub(super) mergeable: bool,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` not yet given to the guest.
    rx_held: Option<usize>,
    /// Guest RX chains popped and checked, not yet used.
    rx_buffers: VecDeque<RxBuffer>,
    rx_capacity: usize,
    rx_descs: usize,
    /// Whether the tap is in the epoll set.
    tap_armed: bool,
}

impl std::fmt::Debug for NetWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetWorker")
            .field("tap", &self.tap.name())
            .field("mergeable", &self.mergeable)
            .field("rx_held", &self.rx_held)
            .finish_non_exhaustive()
    }
}

impl NetWorker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: GuestMemoryMmap,
        rxq: Queue,
        txq: Queue,
        rx_evt: EventFd,
        tx_evt: EventFd,
        tap: Tap,
        interrupt: Arc<Interrupt>,
        metrics: Arc<NetMetrics>,
        mergeable: bool,
    ) -> NetWorker {
        NetWorker {
            mem,
            rxq,
            txq,
            rx_evt,
            tx_evt,
            tap,
            interrupt,
            metrics,
            mergeable,
            tx_buf: vec![0; MAX_TX_BYTES],
            rx_buf: vec![0; RX_BUF_LEN],
            rx_held: None,
            rx_buffers: VecDeque::new(),
            rx_capacity: 0,
            rx_descs: 0,
            tap_armed: false,
        }
    }

    fn set_tap_armed(&mut self, epoll: &Epoll, armed: bool) {
        if armed == self.tap_armed {
            return;
        }
        let op = if armed {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        let ev = EpollEvent::new(EventSet::IN, TOKEN_TAP);
        match epoll.ctl(op, std::os::fd::AsRawFd::as_raw_fd(&self.tap), ev) {
            Ok(()) => self.tap_armed = armed,
            Err(e) => {
                tracing::warn!(tap = self.tap.name(), armed, error = %e, "epoll_ctl on the tap failed")
            }
        }
    }

    // ------------------------------------------------------------------ TX: guest → tap

    /// Sends every frame the guest queued, returning each chain used.
    pub fn process_tx(&mut self) {
        let mem = self.mem.clone();
        let mut used_any = false;
        loop {
            while let Some(chain) = self.txq.pop_descriptor_chain(&mem) {
                let head = chain.head_index();
                self.send(&mem, chain);
                if let Err(e) = self.txq.add_used(&mem, head, 0) {
                    tracing::warn!(error = %e, "net: cannot return a TX buffer");
                }
                used_any = true;
            }
            // With EVENT_IDX this also asks to be told about the next chain; true when
            // one arrived meanwhile.
            match more_available(&mut self.txq, &mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "net: TX queue unreadable");
                    break;
                }
            }
        }
        if used_any && self.txq.needs_notification(&mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    fn send(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) {
        let mut len = 0usize;
        for d in chain {
            if d.is_write_only() {
                self.metrics.tx_bad_chains.inc();
                tracing::debug!("net: TX chain with a writable descriptor");
                return;
            }
            let n = d.len() as usize;
            let Some(end) = len.checked_add(n).filter(|e| *e <= MAX_TX_BYTES) else {
                self.metrics.tx_dropped.inc();
                tracing::debug!("net: TX frame larger than {MAX_TX_BYTES} bytes dropped");
                return;
            };
            if mem
                .read_slice(&mut self.tx_buf[len..end], d.addr())
                .is_err()
            {
                self.metrics.tx_bad_chains.inc();
                tracing::debug!("net: TX descriptor outside guest memory");
                return;
            }
            len = end;
        }
        if len <= VNET_HDR_LEN {
            self.metrics.tx_bad_chains.inc();
            return;
        }
        match self.tap.write_frame(&[IoSlice::new(&self.tx_buf[..len])]) {
            Ok(_) => {
                self.metrics.tx_packets.inc();
                self.metrics.tx_bytes.add((len - VNET_HDR_LEN) as u64);
            }
            Err(e) => {
                self.metrics.tx_dropped.inc();
                tracing::debug!(tap = self.tap.name(), error = %e, "net: tap refused a frame");
            }
        }
    }

    // ------------------------------------------------------------------ RX: tap → guest

    /// Gives the held frame and then frames from the tap to the guest, while it has
    /// buffers; stops reading the tap when it has none.
    pub fn process_rx(&mut self, epoll: &Epoll) {
        let mut used_any = false;
        let mut tap_failed = false;
        for _ in 0..RX_BUDGET {
            if self.rx_held.is_none() {
                match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(n) if n < VNET_HDR_LEN => {
                        self.metrics.rx_dropped.inc();
                        continue;
                    }
                    Ok(n) => self.rx_held = Some(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // Out of the epoll set until the guest's next RX kick, so that a
                        // tap in a bad state cannot spin the worker.
                        self.metrics.tap_errors.inc();
                        tracing::warn!(tap = self.tap.name(), error = %e, "net: tap read failed");
                        tap_failed = true;
                        break;
                    }
                }
            }
            match self.deliver(&mut used_any) {
                Delivery::Delivered | Delivery::Dropped => self.rx_held = None,
                Delivery::Wait => break,
            }
        }
        let arm = self.rx_held.is_none() && !tap_failed;
        self.set_tap_armed(epoll, arm);
        if used_any && self.rxq.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Pops and checks the next RX chain; bad ones are returned (length 0) on the way.
    /// False when the ring is empty (notifications are then enabled).
    fn fetch_rx_buffer(&mut self, used_any: &mut bool) -> bool {
        let mem = self.mem.clone();
        loop {
            let Some(chain) = self.rxq.pop_descriptor_chain(&mem) else {
                match more_available(&mut self.rxq, &mem) {
                    Ok(true) => continue,
                    Ok(false) => return false,
                    Err(e) => {
                        tracing::warn!(error = %e, "net: RX queue unreadable");
                        return false;
                    }
                }
            };
            let head = chain.head_index();
            match RxBuffer::parse(&mem, chain) {
                Ok(b) => {
                    self.rx_capacity += b.capacity;
                    self.rx_descs += b.descs;
                    self.rx_buffers.push_back(b);
                    return true;
                }
                Err(why) => {
                    self.metrics.rx_bad_chains.inc();
                    tracing::debug!(?why, "net: unusable RX chain");
                    if let Err(e) = self.rxq.add_used(&mem, head, 0) {
                        tracing::warn!(error = %e, "net: cannot return an RX buffer");
                    }
                    *used_any = true;
                }
            }
        }
    }

    fn take_rx_buffer(&mut self) -> Option<RxBuffer> {
        let b = self.rx_buffers.pop_front()?;
        self.rx_capacity -= b.capacity;
        self.rx_descs -= b.descs;
        Some(b)
    }

    /// Puts the held frame into guest buffers.
    fn deliver(&mut self, used_any: &mut bool) -> Delivery {
        let Some(len) = self.rx_held else {
            return Delivery::Delivered;
        };
        if !self.mergeable {
            if self.rx_buffers.is_empty() && !self.fetch_rx_buffer(used_any) {
                return Delivery::Wait;
            }
            if self.rx_buffers.front().is_some_and(|b| b.capacity < len) {
                // The buffer stays for a smaller frame.
                self.metrics.rx_dropped.inc();
                return Delivery::Dropped;
            }
            let Some(b) = self.take_rx_buffer() else {
                return Delivery::Wait;
            };
            self.rx_buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            let n = b.write(&self.mem, &self.rx_buf[..len]);
            self.used_rx(b.head, n, used_any);
            self.count_rx(len, n);
            return Delivery::Delivered;
        }
        while self.rx_capacity < len {
            if !self.fetch_rx_buffer(used_any) {
                // Nothing more can come while the ring is full of our parked buffers.
                if self.rx_descs >= usize::from(self.rxq.size()) {
                    self.metrics.rx_dropped.inc();
                    return Delivery::Dropped;
                }
                return Delivery::Wait;
            }
        }
        // How many buffers the frame spans.
        let mut count = 0usize;
        let mut cap = 0usize;
        for b in &self.rx_buffers {
            count += 1;
            cap += b.capacity;
            if cap >= len {
                break;
            }
        }
        let num_buffers = u16::try_from(count).unwrap_or(u16::MAX);
        self.rx_buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
        let mut off = 0usize;
        let mut total = 0usize;
        for _ in 0..count {
            let Some(b) = self.take_rx_buffer() else {
                break;
            };
            let end = (off + b.capacity).min(len);
            let n = b.write(&self.mem, &self.rx_buf[off..end]);
            self.used_rx(b.head, n, used_any);
            total += n;
            off = end;
        }
        self.count_rx(len, total);
        Delivery::Delivered
    }

    fn used_rx(&mut self, head: u16, n: usize, used_any: &mut bool) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if let Err(e) = self.rxq.add_used(&self.mem, head, n) {
            tracing::warn!(error = %e, "net: cannot return an RX buffer");
        }
        *used_any = true;
    }

    fn count_rx(&self, len: usize, written: usize) {
        if written == len {
            self.metrics.rx_packets.inc();
            self.metrics.rx_bytes.add((len - VNET_HDR_LEN) as u64);
        } else {
            // Guest memory went away under a checked buffer: nothing sane to do but count.
            self.metrics.rx_dropped.inc();
        }
    }

    /// Before a pause: the RX buffers popped and kept for a frame go back to the guest
    /// as used with no data (Linux counts them as length errors and refills), and a held
    /// frame is dropped, so that no chain is left half-way and both queues' progress is
    /// final.
    pub fn quiesce(&mut self) {
        let mut used_any = false;
        while let Some(b) = self.take_rx_buffer() {
            self.used_rx(b.head, 0, &mut used_any);
        }
        if self.rx_held.take().is_some() {
            self.metrics.rx_dropped.inc();
        }
        if used_any && self.rxq.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    /// The RX and TX queues (for a snapshot).
    pub fn queues(&self) -> [&Queue; 2] {
        [&self.rxq, &self.txq]
    }

    /// Whether a frame waits for guest buffers (tests).
    #[cfg(test)]
    pub fn holds_frame(&self) -> bool {
        self.rx_held.is_some()
    }

    #[cfg(test)]
    pub fn tap_armed(&self) -> bool {
        self.tap_armed
    }
}

impl EventHandler for NetWorker {
    fn init(&mut self, epoll: &Epoll) -> io::Result<()> {
        add_fd(epoll, &self.rx_evt, EventSet::IN, TOKEN_RXQ)?;
        add_fd(epoll, &self.tx_evt, EventSet::IN, TOKEN_TXQ)?;
        add_fd(epoll, &self.tap, EventSet::IN, TOKEN_TAP)?;
        self.tap_armed = true;
        Ok(())
    }

    fn handle(&mut self, epoll: &Epoll, token: u64, events: EventSet) {
        match token {
            TOKEN_RXQ => {
                let _ = self.rx_evt.read();
                self.process_rx(epoll);
            }
            TOKEN_TXQ => {
                let _ = self.tx_evt.read();
                self.process_tx();
            }
            TOKEN_TAP if !events.contains(EventSet::IN) => {
                // Error or hang-up with nothing to read: level-triggered, it would be
                // reported forever; wait for the guest's next RX kick instead.
                self.metrics.tap_errors.inc();
                tracing::warn!(tap = self.tap.name(), ?events, "net: tap error");
                self.set_tap_armed(epoll, false);
            }
            TOKEN_TAP => self.process_rx(epoll),
            _ => {}
        }
    }
}
