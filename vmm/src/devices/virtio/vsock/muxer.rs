//! The vsock device's worker: moves packets between the guest's queues and host unix
//! sockets (the "hybrid" vsock of Firecracker).
//!
//! - guest → host: a REQUEST to host port P connects to the unix socket `<uds>_P`;
//! - host → guest: a client connects to `<uds>` and writes `CONNECT <port>\n`; once the
//!   guest answers our REQUEST, the client reads `OK <host port>\n` and the stream is
//!   spliced.
//!
//! Everything from the guest is checked: malformed packets are dropped, packets for
//! unknown connections get RST, a guest sending past its credit gets RST. Replies wait
//! in a bounded queue; when it is full we stop taking TX packets until the guest gives
//! RX buffers, so a flood cannot grow the VMM's memory.
//!
//! Nothing here blocks or spins: connecting to a host listener whose backlog is full
//! fails at once (RST to the guest); an accept() that runs out of descriptors pauses
//! the listener for [`ACCEPT_BACKOFF`]; and a timer ends connections a peer left
//! behind: one the host closed that the guest does not reset within [`CLOSE_TIMEOUT`]
//! (Firecracker's 2 s), a host client that sends no `CONNECT` line, or a guest that
//! does not answer our REQUEST, within [`HANDSHAKE_TIMEOUT`].
//!
//! After a snapshot's pause or a restore, the guest gets a transport reset event and
//! resets every connection it has. Host clients wait in the listener's backlog until it
//! has (it gives the event buffer back), for at most [`RESET_TAKE_TIMEOUT`]: Linux
//! handles the event and the RX queue in separate works, so a REQUEST sent earlier could
//! be accepted by a guest program and then torn down by the reset.
//!
//! Memory bound (worst case, a guest that fills every connection while no host peer
//! reads): `max_conns` × [`CONN_BUF_SIZE`] of buffered guest data (1024 × 256 KiB =
//! 256 MiB at the default limit), plus [`MAX_PENDING_REPLIES`] 16-byte replies, plus
//! one [`MAX_PKT_DATA`] read buffer. Idle connections give their buffer back.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::Metrics;
use super::conn::{CONN_BUF_SIZE, Conn, ConnState};
use super::host::connect_nonblocking;
pub use super::packet::*;
use crate::devices::virtio::Interrupt;
use crate::devices::virtio::worker::{EventHandler, add_fd};

/// Replies waiting for RX buffers before we stop reading the TX queue.
pub const MAX_PENDING_REPLIES: usize = 1024;
/// Most connections at once (host and guest initiated together), before the file
/// limit lowers it (see [`super::host::connection_limit`]).
pub const MAX_CONNS: usize = 1024;
/// Host ports for host-initiated connections are taken from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// How long a connection the host closed may wait for the guest's RST (or for its
/// last data to be taken) before we reset it ourselves.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host client may take to send `CONNECT <port>\n`, and the guest to
/// answer our REQUEST.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long host clients wait for the guest to take a transport reset before they are
/// let through anyway (a guest that never gives the event buffer back).
pub const RESET_TAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the listener rests after accept() ran out of descriptors or memory.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The timer's period while a deadline is pending.
const TICK: Duration = Duration::from_millis(200);

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_EV: u64 = 2;
const TOKEN_LISTENER: u64 = 3;
const TOKEN_TIMER: u64 = 4;
const FIRST_DYNAMIC_TOKEN: u64 = 16;

/// A packet header we owe the guest.
#[derive(Debug, Clone, Copy)]
struct Reply {
    key: ConnKey,
    op: u16,
    flags: u32,
}

#[derive(Debug)]
enum Token {
    Conn(ConnKey),
    /// A host client that has not finished its `CONNECT` line.
    Pending,
}

/// Transport resets sent that the guest has not all taken yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResetWait {
    /// The event queue's available index once the guest has taken them: Linux adds
    /// each event's buffer back (and kicks) after resetting its connections, so each
    /// reset moves the index by one from where it was when the first was sent.
    target: u16,
    /// When the last was sent.
    sent: Instant,
}

/// Whether available index `avail` has reached `target` (ring indexes wrap at 2^16).
fn reached(avail: u16, target: u16) -> bool {
    avail.wrapping_sub(target) as i16 >= 0
}

#[derive(Debug)]
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// The worker's state.
pub struct Muxer {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rxq: Queue,
    pub(super) txq: Queue,
    /// The event queue: only a transport reset is ever sent, after a snapshot's pause
    /// or restore.
    pub(super) evq: Option<Queue>,
    pub(super) evts: Vec<EventFd>,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) cid: u64,
    pub(super) uds: PathBuf,
    pub(super) listener: UnixListener,
    pub(super) metrics: Arc<Metrics>,
    /// Most connections at once (host clients still in their handshake included).
    max_conns: usize,
    /// Deadlines (close and handshake timeouts, accept back-off) are checked on its
    /// ticks; armed only while one is pending.
    timer: Option<TimerFd>,
    timer_armed: bool,
    /// The listener is out of epoll until then, after accept() hit EMFILE & co.
    accept_paused_until: Option<Instant>,
    /// Whether the listener is in epoll (out while accepting is paused or held).
    listener_watched: bool,
    /// Host clients are held in the backlog until the guest has taken this reset.
    pub(super) reset_wait: Option<ResetWait>,
    conns: HashMap<ConnKey, Conn>,
    tokens: HashMap<u64, Token>,
    pending: HashMap<u64, Pending>,
    replies: VecDeque<Reply>,
    /// Connections with host data (or EOF) to pass to the guest.
    rx_ready: VecDeque<ConnKey>,
    next_token: u64,
    next_local_port: u32,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("cid", &self.cid)
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Muxer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: GuestMemoryMmap,
        rxq: Queue,
        txq: Queue,
        evts: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
        cid: u64,
        uds: PathBuf,
        listener: UnixListener,
        metrics: Arc<Metrics>,
        max_conns: usize,
    ) -> Muxer {
        Muxer {
            mem,
            rxq,
            txq,
            evq: None,
            evts,
            interrupt,
            cid,
            uds,
            listener,
            metrics,
            max_conns,
            timer: None,
            timer_armed: false,
            accept_paused_until: None,
            listener_watched: false,
            reset_wait: None,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            pending: HashMap::new(),
            replies: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_token: FIRST_DYNAMIC_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
        }
    }

    /// Forgets every connection, host client still in its handshake, and reply owed;
    /// their sockets close. For a pause before a snapshot: connections are not saved,
    /// and the guest learns they are gone from [`send_transport_reset`](Muxer::send_transport_reset).
    pub fn forget_connections(&mut self) {
        let n = self.conns.len() + self.pending.len();
        self.metrics.conns_closed.add(self.conns.len() as u64);
        self.conns.clear();
        self.tokens.clear();
        self.pending.clear();
        self.replies.clear();
        self.rx_ready.clear();
        self.accept_paused_until = None;
        self.timer = None;
        self.timer_armed = false;
        tracing::debug!(connections = n, "vsock: connections forgotten");
    }

    /// Sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: the guest resets every connection it
    /// has (its listening sockets stay). False when the driver gave no event buffer.
    pub fn send_transport_reset(&mut self) -> bool {
        const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
        let Some(evq) = self.evq.as_mut() else {
            return false;
        };
        let Some(chain) = evq.pop_descriptor_chain(&self.mem) else {
            tracing::warn!("vsock: no event buffer for the transport reset");
            return false;
        };
        let head = chain.head_index();
        let mut written = 0u32;
        if let Some(d) = chain.writable().next()
            && d.len() >= 4
            && self
                .mem
                .write_obj(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le(), d.addr())
                .is_ok()
        {
            written = 4;
        }
        if let Err(e) = evq.add_used(&self.mem, head, written) {
            tracing::warn!(error = %e, "vsock: cannot return the event buffer");
            return false;
        }
        if written == 4 {
            // Read before the guest is told: it can only add the buffer back after.
            // A reset still pending (a pause and resume soon after another) adds one
            // more buffer to wait for: one refill must not let clients through while
            // the second reset is still queued in the guest.
            match evq.avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire) {
                Ok(idx) => {
                    let target = match self.reset_wait {
                        Some(w) if !reached(idx.0, w.target) => w.target.wrapping_add(1),
                        _ => idx.0.wrapping_add(1),
                    };
                    self.reset_wait = Some(ResetWait {
                        target,
                        sent: Instant::now(),
                    })
                }
                Err(e) => tracing::warn!(error = %e, "vsock: cannot read the event queue"),
            }
        }
        self.interrupt.signal_used_queue();
        written == 4
    }

    /// Whether host clients may connect: no transport reset is waiting for the guest,
    /// it has taken them (the event queue's available index moved on by as many), or
    /// it did not within [`RESET_TAKE_TIMEOUT`] of the last one, before `now`.
    pub(super) fn reset_taken(&mut self, now: Instant) -> bool {
        let Some(w) = self.reset_wait else {
            return true;
        };
        let moved = self.evq.as_ref().is_none_or(|q| {
            q.avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire)
                .map_or(true, |i| reached(i.0, w.target))
        });
        let waited = now.saturating_duration_since(w.sent);
        if moved {
            tracing::debug!(
                ms = waited.as_millis() as u64,
                "vsock: the guest took the transport reset"
            );
        } else if waited >= RESET_TAKE_TIMEOUT {
            tracing::warn!(
                secs = RESET_TAKE_TIMEOUT.as_secs(),
                "vsock: the guest did not take the transport reset; host connections go ahead"
            );
        } else {
            return false;
        }
        self.reset_wait = None;
        true
    }

    /// The queues with their index in the device (for a snapshot).
    pub fn queues(&self) -> Vec<(usize, &Queue)> {
        let mut q = vec![(0, &self.rxq), (1, &self.txq)];
        if let Some(evq) = &self.evq {
            q.push((2, evq));
        }
        q
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_DYNAMIC_TOKEN);
        t
    }

    fn watch(&self, epoll: &Epoll, stream: &UnixStream, token: u64) -> io::Result<()> {
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        add_fd(epoll, stream, events, token)
    }

    fn unwatch(epoll: &Epoll, stream: &UnixStream) {
        Self::unwatch_fd(epoll, stream.as_raw_fd());
    }

    fn unwatch_fd(epoll: &Epoll, fd: std::os::fd::RawFd) {
        let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Puts a connection in line for sending host data to the guest (once).
    fn queue_rx(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key)
            && !c.queued
        {
            c.queued = true;
            self.rx_ready.push_back(key);
        }
    }

    fn reply(&mut self, key: ConnKey, op: u16, flags: u32) {
        self.replies.push_back(Reply { key, op, flags });
    }

    fn remove_conn(&mut self, epoll: &Epoll, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            Self::unwatch(epoll, &c.stream);
            self.tokens.remove(&c.token);
            self.metrics.conns_closed.inc();
            tracing::debug!(
                host_port = key.local_port,
                guest_port = key.peer_port,
                "vsock connection closed"
            );
        }
    }

    /// Resets a connection: RST to the guest, the host socket closed.
    fn reset_conn(&mut self, epoll: &Epoll, key: ConnKey) {
        self.remove_conn(epoll, key);
        self.reply(key, OP_RST, 0);
        self.metrics.rst_sent.inc();
    }

    // ------------------------------------------------------------------ TX: guest → host

    /// Takes packets from the TX queue while replies have room.
    pub fn process_tx(&mut self, epoll: &Epoll) {
        let mut used_any = false;
        while self.replies.len() < MAX_PENDING_REPLIES {
            let Some(mut chain) = self.txq.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let parsed =
                VsockPacket::from_tx_virtq_chain(&self.mem, &mut chain, MAX_PKT_DATA).map(|p| {
                    let mut data = Vec::new();
                    if p.op() == OP_RW
                        && let Some(s) = p.data_slice()
                    {
                        let n = (p.len() as usize).min(s.len());
                        data.resize(n, 0);
                        if s.read_slice(&mut data, 0).is_err() {
                            data.clear();
                        }
                    }
                    (Header::of(&p), data)
                });
            match parsed {
                Ok((h, data)) => {
                    self.metrics.tx_packets.inc();
                    self.handle_tx(epoll, h, &data);
                }
                Err(e) => {
                    self.metrics.bad_packets.inc();
                    tracing::debug!(error = %e, "vsock: dropped a malformed TX packet");
                }
            }
            if let Err(e) = self.txq.add_used(&self.mem, head, 0) {
                tracing::warn!(error = %e, "vsock: cannot return a TX buffer");
            }
            used_any = true;
        }
        if used_any && self.txq.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    fn handle_tx(&mut self, epoll: &Epoll, h: Header, data: &[u8]) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            self.metrics.bad_packets.inc();
            return;
        }
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        if h.type_ != TYPE_STREAM {
            self.metrics.bad_packets.inc();
            if h.op != OP_RST {
                self.reply(key, OP_RST, 0);
            }
            return;
        }
        if h.op == OP_REQUEST {
            self.guest_connect(epoll, key, &h);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if h.op != OP_RST {
                self.reply(key, OP_RST, 0);
            }
            return;
        };
        // Every packet carries the guest's credit; a guest that reads and writes at once
        // never sends CREDIT_UPDATE, so any packet may let us send again.
        let had_credit = conn.peer_credit() > 0;
        conn.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        if !had_credit && conn.peer_credit() > 0 {
            self.queue_rx(key);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match h.op {
            OP_RESPONSE if conn.state == ConnState::Connecting => {
                conn.state = ConnState::Established;
                conn.deadline = None;
                let ok = format!("OK {}\n", key.local_port);
                if conn.stream.write_all(ok.as_bytes()).is_err() {
                    self.reset_conn(epoll, key);
                    return;
                }
                self.queue_rx(key);
            }
            OP_RW if conn.state == ConnState::Established => match conn.push_guest_data(data) {
                Ok(()) => {
                    self.metrics.tx_bytes.add(data.len() as u64);
                    if conn.credit_update_due() {
                        self.reply(key, OP_CREDIT_UPDATE, 0);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = ?e, "vsock: resetting a connection");
                    self.reset_conn(epoll, key);
                }
            },
            OP_CREDIT_UPDATE => self.queue_rx(key),
            OP_CREDIT_REQUEST => self.reply(key, OP_CREDIT_UPDATE, 0),
            OP_SHUTDOWN => {
                conn.peer_shutdown |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.finish_shutdown(epoll, key);
            }
            OP_RST => self.remove_conn(epoll, key),
            _ => self.reset_conn(epoll, key),
        }
    }

    /// After a SHUTDOWN from the guest: once its data is flushed, half-close the host
    /// socket (SEND), or close it all and reset (both directions).
    fn finish_shutdown(&mut self, epoll: &Epoll, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.tx_pending() {
            return; // retried when the socket becomes writable
        }
        if conn.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            self.reset_conn(epoll, key);
        } else if conn.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    fn guest_connect(&mut self, epoll: &Epoll, key: ConnKey, h: &Header) {
        if self.conns.contains_key(&key) || self.conn_count() >= self.max_conns {
            self.metrics.conns_refused.inc();
            self.reply(key, OP_RST, 0);
            return;
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        // Non-blocking: a listener with a full backlog answers EAGAIN at once (RST).
        let stream = match connect_nonblocking(std::path::Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(port = key.local_port, error = %e, "vsock: guest connection refused");
                self.metrics.conns_refused.inc();
                self.reply(key, OP_RST, 0);
                return;
            }
        };
        let token = self.new_token();
        if self.watch(epoll, &stream, token).is_err() {
            self.reply(key, OP_RST, 0);
            return;
        }
        let mut conn = Conn::new(stream, token, ConnState::Established);
        conn.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        self.conns.insert(key, conn);
        self.tokens.insert(token, Token::Conn(key));
        self.metrics.conns_opened.inc();
        self.reply(key, OP_RESPONSE, 0);
        tracing::debug!(
            host_port = key.local_port,
            guest_port = key.peer_port,
            "guest connected"
        );
    }

    // ------------------------------------------------------------------ RX: host → guest

    /// Fills RX buffers with replies, then with host data while the guest has credit.
    pub fn process_rx(&mut self, epoll: &Epoll) {
        let mut used_any = false;
        // A handle of our own (cheap: shared regions), so that packets may borrow it
        // while `fill_rx` changes the muxer.
        let mem = self.mem.clone();
        while let Some(mut chain) = self.rxq.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let mut pkt = match VsockPacket::from_rx_virtq_chain(&mem, &mut chain, u32::MAX) {
                Ok(p) => p,
                Err(e) => {
                    self.metrics.bad_packets.inc();
                    tracing::debug!(error = %e, "vsock: unusable RX buffer");
                    let _ = self.rxq.add_used(&mem, head, 0);
                    used_any = true;
                    continue;
                }
            };
            let Some(len) = self.fill_rx(epoll, &mut pkt) else {
                // Nothing to send: give the buffer back for later.
                self.rxq.go_to_previous_position();
                break;
            };
            self.metrics.rx_packets.inc();
            if let Err(e) = self.rxq.add_used(&mem, head, PKT_HEADER_SIZE as u32 + len) {
                tracing::warn!(error = %e, "vsock: cannot return an RX buffer");
            }
            used_any = true;
        }
        if used_any && self.rxq.needs_notification(&mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Writes the next packet into `pkt`; returns its data length, or `None` when there
    /// is nothing to send.
    fn fill_rx(&mut self, epoll: &Epoll, pkt: &mut VsockPacket<'_, ()>) -> Option<u32> {
        if let Some(r) = self.replies.pop_front() {
            let (buf_alloc, fwd_cnt) = match self.conns.get_mut(&r.key) {
                Some(c) => {
                    c.fwd_cnt_reported = c.fwd_cnt;
                    (CONN_BUF_SIZE, c.fwd_cnt.0)
                }
                None => (0, 0),
            };
            self.set_header(pkt, r.key, r.op, r.flags, buf_alloc, fwd_cnt, 0);
            return Some(0);
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let cap = pkt.data_slice().map_or(0, |s| s.len());
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            if conn.state != ConnState::Established
                || !conn.readable
                || conn.host_eof
                || conn.peer_shutdown & SHUTDOWN_RCV != 0
            {
                continue;
            }
            let credit = conn.peer_credit() as usize;
            if credit == 0 {
                // The guest's CREDIT_UPDATE puts the connection back in line.
                continue;
            }
            let want = cap.min(credit).min(MAX_PKT_DATA as usize);
            if want == 0 {
                conn.queued = true;
                self.rx_ready.push_front(key);
                return None;
            }
            let mut buf = vec![0u8; want];
            match conn.read_host(&mut buf) {
                Ok(0) => {
                    conn.host_eof = true;
                    let fwd = conn.fwd_cnt.0;
                    conn.fwd_cnt_reported = conn.fwd_cnt;
                    // A host that closed its socket (not just its writing half) takes
                    // nothing more either.
                    let flags = if conn.host_closed {
                        conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                        SHUTDOWN_SEND | SHUTDOWN_RCV
                    } else {
                        SHUTDOWN_SEND
                    };
                    self.set_header(pkt, key, OP_SHUTDOWN, flags, CONN_BUF_SIZE, fwd, 0);
                    return Some(0);
                }
                Ok(n) => {
                    let Some(slice) = pkt.data_slice() else {
                        continue;
                    };
                    if slice.write_slice(&buf[..n], 0).is_err() {
                        self.reset_conn(epoll, key);
                        continue;
                    }
                    conn.rx_cnt += std::num::Wrapping(n as u32);
                    if conn.host_closed {
                        // Still delivering what the host wrote before it closed.
                        conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                    }
                    let fwd = conn.fwd_cnt.0;
                    conn.fwd_cnt_reported = conn.fwd_cnt;
                    self.metrics.rx_bytes.add(n as u64);
                    // More may follow: stay in line.
                    conn.queued = true;
                    self.rx_ready.push_back(key);
                    self.set_header(pkt, key, OP_RW, 0, CONN_BUF_SIZE, fwd, n as u32);
                    return Some(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                }
                Err(_) => self.reset_conn(epoll, key),
            }
            // A reset may have queued a reply.
            if let Some(r) = self.replies.pop_front() {
                self.set_header(pkt, r.key, r.op, r.flags, 0, 0, 0);
                return Some(0);
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn set_header(
        &self,
        pkt: &mut VsockPacket<'_, ()>,
        key: ConnKey,
        op: u16,
        flags: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
        len: u32,
    ) {
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.cid)
            .set_src_port(key.local_port)
            .set_dst_port(key.peer_port)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(flags)
            .set_buf_alloc(buf_alloc)
            .set_fwd_cnt(fwd_cnt)
            .set_len(len);
    }
}

impl EventHandler for Muxer {
    fn init(&mut self, epoll: &Epoll) -> io::Result<()> {
        add_fd(epoll, &self.evts[0], EventSet::IN, TOKEN_RX)?;
        add_fd(epoll, &self.evts[1], EventSet::IN, TOKEN_TX)?;
        add_fd(epoll, &self.evts[2], EventSet::IN, TOKEN_EV)?;
        add_fd(epoll, &self.listener, EventSet::IN, TOKEN_LISTENER)?;
        self.listener_watched = true;
        // Made now, not when first needed: by then descriptors may have run out.
        let timer = TimerFd::new()?;
        add_fd(epoll, &timer, EventSet::IN, TOKEN_TIMER)?;
        self.timer = Some(timer);
        Ok(())
    }

    fn handle(&mut self, epoll: &Epoll, token: u64, events: EventSet) {
        match token {
            TOKEN_RX => {
                let _ = self.evts[0].read();
            }
            TOKEN_TX => {
                let _ = self.evts[1].read();
            }
            TOKEN_EV => {
                // The guest gave an event buffer back: after a transport reset, that
                // means it has reset its connections, and held host clients may come.
                let _ = self.evts[2].read();
                self.resume_listener(epoll, Instant::now());
            }
            TOKEN_LISTENER => self.accept(epoll),
            TOKEN_TIMER => {
                if let Some(t) = self.timer.as_mut() {
                    let _ = t.wait();
                }
                self.expire(epoll, Instant::now());
            }
            t => match self.tokens.get(&t) {
                Some(Token::Pending) => self.pending_readable(epoll, t),
                Some(Token::Conn(key)) => {
                    let key = *key;
                    self.conn_event(epoll, key, events);
                }
                None => {}
            },
        }
        // Replies first (they may free TX), then TX, then whatever TX produced.
        self.process_rx(epoll);
        self.process_tx(epoll);
        self.process_rx(epoll);
    }
}

mod host_side;

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
