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

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::Metrics;
use super::conn::{CONN_BUF_SIZE, Conn, ConnState};
use crate::devices::virtio::Interrupt;
use crate::devices::virtio::worker::{EventHandler, add_fd};

/// The host's context id.
pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// Largest payload accepted in one TX packet (Linux sends at most 64 KiB).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Replies waiting for RX buffers before we stop reading the TX queue.
pub const MAX_PENDING_REPLIES: usize = 1024;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// Most connections at once (host and guest initiated together).
pub const MAX_CONNS: usize = 1024;
/// Host ports for host-initiated connections are taken from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_EV: u64 = 2;
const TOKEN_LISTENER: u64 = 3;
const FIRST_DYNAMIC_TOKEN: u64 = 16;

/// (host port, guest port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

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

#[derive(Debug)]
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The worker's state.
pub struct Muxer {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rxq: Queue,
    pub(super) txq: Queue,
    pub(super) evts: Vec<EventFd>,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) cid: u64,
    pub(super) uds: PathBuf,
    pub(super) listener: UnixListener,
    pub(super) metrics: Arc<Metrics>,
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
    ) -> Muxer {
        Muxer {
            mem,
            rxq,
            txq,
            evts,
            interrupt,
            cid,
            uds,
            listener,
            metrics,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            pending: HashMap::new(),
            replies: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_token: FIRST_DYNAMIC_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
        }
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
        let _ = epoll.ctl(
            ControlOperation::Delete,
            stream.as_raw_fd(),
            EpollEvent::default(),
        );
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
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNS {
            self.reply(key, OP_RST, 0);
            return;
        }
        let path = format!("{}_{}", self.uds.display(), key.local_port);
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(path, error = %e, "vsock: guest connection refused");
                self.reply(key, OP_RST, 0);
                return;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            self.reply(key, OP_RST, 0);
            return;
        }
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
                    self.set_header(pkt, key, OP_SHUTDOWN, SHUTDOWN_SEND, CONN_BUF_SIZE, fwd, 0);
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

    // ------------------------------------------------------------------ host sockets

    fn accept(&mut self, epoll: &Epoll) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() + self.conns.len() >= MAX_CONNS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue; // dropped: the client sees EOF
                    }
                    let token = self.new_token();
                    if self.watch(epoll, &stream, token).is_err() {
                        continue;
                    }
                    self.tokens.insert(token, Token::Pending);
                    self.pending.insert(
                        token,
                        Pending {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return, // WouldBlock, or a transient error
            }
        }
    }

    /// Reads a host client's `CONNECT <port>\n`, then asks the guest to connect.
    fn pending_readable(&mut self, epoll: &Epoll, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let close = loop {
            match p.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    p.line.extend_from_slice(&buf[..n]);
                    if p.line.contains(&b'\n') {
                        break false;
                    }
                    if p.line.len() > MAX_CONNECT_LINE {
                        break true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break true,
            }
        };
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        self.tokens.remove(&token);
        let port = (!close).then(|| parse_connect(&p.line)).flatten();
        let Some((port, rest)) = port else {
            Self::unwatch(epoll, &p.stream);
            let mut s = p.stream;
            let _ = s.write_all(b"ERR expected CONNECT <port>\n");
            return;
        };
        let Some(local_port) = self.alloc_local_port(port) else {
            Self::unwatch(epoll, &p.stream);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let mut conn = Conn::new(p.stream, token, ConnState::Connecting);
        conn.early_data = rest;
        self.conns.insert(key, conn);
        self.tokens.insert(token, Token::Conn(key));
        self.metrics.conns_opened.inc();
        self.reply(key, OP_REQUEST, 0);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..MAX_CONNS * 2 {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port: p,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(p);
            }
        }
        None
    }

    fn conn_event(&mut self, epoll: &Epoll, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.readable = true;
            if conn.state == ConnState::Connecting && events.contains(EventSet::HANG_UP) {
                // The client gave up before the guest answered.
                self.reset_conn(epoll, key);
                return;
            }
            self.queue_rx(key);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::OUT) && conn.tx_pending() {
            match conn.flush() {
                Ok(()) => {
                    let credit_due = conn.credit_update_due();
                    let shut = !conn.tx_pending() && conn.peer_shutdown != 0;
                    if credit_due {
                        self.reply(key, OP_CREDIT_UPDATE, 0);
                    }
                    if shut {
                        self.finish_shutdown(epoll, key);
                    }
                }
                Err(_) => self.reset_conn(epoll, key),
            }
        }
        if events.contains(EventSet::ERROR) {
            self.reset_conn(epoll, key);
        }
    }
}

/// Parses `CONNECT <port>\n`; returns the port and the bytes after the newline.
fn parse_connect(line: &[u8]) -> Option<(u32, Vec<u8>)> {
    let nl = line.iter().position(|b| *b == b'\n')?;
    let text = std::str::from_utf8(&line[..nl]).ok()?;
    let port = text
        .trim_end_matches('\r')
        .strip_prefix("CONNECT ")?
        .trim()
        .parse()
        .ok()?;
    Some((port, line[nl + 1..].to_vec()))
}

/// The fields of a packet header we act on.
#[derive(Debug, Clone, Copy)]
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Header {
    fn of<B: vm_memory::bitmap::BitmapSlice>(p: &VsockPacket<'_, B>) -> Header {
        Header {
            src_cid: p.src_cid(),
            dst_cid: p.dst_cid(),
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            type_: p.type_(),
            op: p.op(),
            flags: p.flags(),
            buf_alloc: p.buf_alloc(),
            fwd_cnt: p.fwd_cnt(),
        }
    }
}

impl EventHandler for Muxer {
    fn init(&mut self, epoll: &Epoll) -> io::Result<()> {
        add_fd(epoll, &self.evts[0], EventSet::IN, TOKEN_RX)?;
        add_fd(epoll, &self.evts[1], EventSet::IN, TOKEN_TX)?;
        add_fd(epoll, &self.evts[2], EventSet::IN, TOKEN_EV)?;
        add_fd(epoll, &self.listener, EventSet::IN, TOKEN_LISTENER)
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
                // We never send events (only used for live migration); just drain.
                let _ = self.evts[2].read();
            }
            TOKEN_LISTENER => self.accept(epoll),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{TestQueue, W};

    const GUEST_CID: u64 = 3;
    const HDR_ADDR: u64 = 0x10_000;
    const DATA_ADDR: u64 = 0x20_000;
    const RX_HDR: u64 = 0x30_000;
    const RX_DATA: u64 = 0x31_000;

    #[allow(clippy::too_many_arguments)]
    fn hdr(src_port: u32, dst_port: u32, len: u32, op: u16, flags: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(PKT_HEADER_SIZE);
        h.extend_from_slice(&GUEST_CID.to_le_bytes());
        h.extend_from_slice(&HOST_CID.to_le_bytes());
        h.extend_from_slice(&src_port.to_le_bytes());
        h.extend_from_slice(&dst_port.to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&TYPE_STREAM.to_le_bytes());
        h.extend_from_slice(&op.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&65536u32.to_le_bytes()); // buf_alloc
        h.extend_from_slice(&0u32.to_le_bytes()); // fwd_cnt
        h
    }

    struct Rig {
        tq: TestQueue,
        m: Muxer,
        epoll: Epoll,
        dir: tempfile::TempDir,
        next_tx: u16,
        next_rx: u16,
    }

    impl Rig {
        fn new() -> Rig {
            let tq = TestQueue::with_queues(3);
            let dir = tempfile::tempdir().unwrap();
            let uds = dir.path().join("v.sock");
            let listener = UnixListener::bind(&uds).unwrap();
            listener.set_nonblocking(true).unwrap();
            let evts = (0..3)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect();
            let m = Muxer::new(
                tq.mem.clone(),
                tq.queue_n(0),
                tq.queue_n(1),
                evts,
                tq.interrupt.clone(),
                GUEST_CID,
                uds,
                listener,
                Arc::default(),
            );
            Rig {
                tq,
                m,
                epoll: Epoll::new().unwrap(),
                dir,
                next_tx: 0,
                next_rx: 0,
            }
        }

        /// A TX packet, header and data split over two descriptors.
        fn send_split(&mut self, header: &[u8], data: &[u8]) {
            self.tq.write(HDR_ADDR, header);
            self.tq.write(DATA_ADDR, data);
            let mut d = vec![(HDR_ADDR, header.len() as u32, 0)];
            if !data.is_empty() {
                d.push((DATA_ADDR, data.len() as u32, 0));
            }
            self.tq.add_chain_n(1, self.next_tx, &d);
            self.next_tx += d.len() as u16;
            self.m.process_tx(&self.epoll);
        }

        /// A TX packet with header and data in one descriptor (Linux >= 6.2).
        fn send_single(&mut self, header: &[u8], data: &[u8]) {
            let mut buf = header.to_vec();
            buf.extend_from_slice(data);
            self.tq.write(HDR_ADDR, &buf);
            self.tq
                .add_chain_n(1, self.next_tx, &[(HDR_ADDR, buf.len() as u32, 0)]);
            self.next_tx += 1;
            self.m.process_tx(&self.epoll);
        }

        /// Offers one RX buffer and returns the packet the device put there, if any:
        /// (op, src_port, dst_port, data).
        fn receive(&mut self) -> Option<(u16, u32, u32, Vec<u8>)> {
            let n = self.next_rx;
            self.tq
                .add_chain_n(0, n * 2, &[(RX_HDR, 44, W), (RX_DATA, 4096, W)]);
            self.next_rx += 1;
            self.m.process_rx(&self.epoll);
            let len = self.tq.used_n(0, n)? as usize;
            let h = self.tq.read(RX_HDR, 44);
            let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
            let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
            let data = self.tq.read(RX_DATA, len.saturating_sub(44));
            Some((u16_at(30), u32_at(16), u32_at(20), data))
        }
    }

    #[test]
    fn guest_connects_and_sends_in_both_layouts() {
        let mut r = Rig::new();
        let host = UnixListener::bind(r.dir.path().join("v.sock_6000")).unwrap();
        r.send_split(&hdr(1234, 6000, 0, OP_REQUEST, 0), &[]);
        assert_eq!(r.receive().unwrap().0, OP_RESPONSE);
        let (mut s, _) = host.accept().unwrap();
        r.send_split(&hdr(1234, 6000, 5, OP_RW, 0), b"hello");
        r.send_single(&hdr(1234, 6000, 5, OP_RW, 0), b"world");
        let mut got = [0u8; 10];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"helloworld");
        // Host to guest.
        s.write_all(b"back").unwrap();
        r.m.conn_event(
            &r.epoll,
            ConnKey {
                local_port: 6000,
                peer_port: 1234,
            },
            EventSet::IN,
        );
        let (op, src, dst, data) = r.receive().unwrap();
        assert_eq!(
            (op, src, dst, data.as_slice()),
            (OP_RW, 6000, 1234, &b"back"[..])
        );
        assert_eq!(r.m.metrics.tx_bytes.get(), 10);
    }

    #[test]
    fn refused_and_unknown_connections_get_rst() {
        let mut r = Rig::new();
        r.send_split(&hdr(1, 7777, 0, OP_REQUEST, 0), &[]);
        assert_eq!(r.receive().unwrap().0, OP_RST);
        r.send_split(&hdr(1, 7777, 3, OP_RW, 0), b"abc");
        assert_eq!(r.receive().unwrap().0, OP_RST);
        // An RST for nothing is not answered.
        r.send_split(&hdr(1, 7777, 0, OP_RST, 0), &[]);
        assert!(r.receive().is_none());
    }

    #[test]
    fn malformed_packets_are_dropped() {
        let mut r = Rig::new();
        // Short header; wrong source cid; header len larger than the data; outside memory.
        r.send_split(&[0u8; 10], &[]);
        let mut wrong_cid = hdr(1, 6000, 0, OP_REQUEST, 0);
        wrong_cid[0] = 9;
        r.send_split(&wrong_cid, &[]);
        r.send_split(&hdr(1, 6000, 1 << 20, OP_RW, 0), b"x");
        r.tq.add_chain_n(1, r.next_tx, &[(0xffff_0000_0000, 44, 0)]);
        r.next_tx += 1;
        r.m.process_tx(&r.epoll);
        // A write-only TX descriptor.
        r.tq.add_chain_n(1, r.next_tx, &[(HDR_ADDR, 44, W)]);
        r.m.process_tx(&r.epoll);
        assert!(r.m.metrics.bad_packets.get() >= 4);
        assert_eq!(r.tq.used_n(1, 4), Some(0));
        assert!(r.m.conns.is_empty());
    }

    #[test]
    fn host_connect_handshake() {
        let mut r = Rig::new();
        let mut c = UnixStream::connect(r.dir.path().join("v.sock")).unwrap();
        c.write_all(b"CONNECT 5000\nearly").unwrap();
        r.m.accept(&r.epoll);
        let token = *r.m.pending.keys().next().unwrap();
        r.m.pending_readable(&r.epoll, token);
        let (op, src, dst, _) = r.receive().unwrap();
        assert_eq!((op, dst), (OP_REQUEST, 5000));
        assert_eq!(src, FIRST_LOCAL_PORT);
        r.send_split(&hdr(5000, src, 0, OP_RESPONSE, 0), &[]);
        let mut ok = [0u8; 14];
        c.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"OK 1073741824\n");
        // Bytes sent before the OK reach the guest first.
        let (op, _, _, data) = r.receive().unwrap();
        assert_eq!((op, data.as_slice()), (OP_RW, &b"early"[..]));
        // A bad line is refused.
        let mut bad = UnixStream::connect(r.dir.path().join("v.sock")).unwrap();
        bad.write_all(b"HELLO\n").unwrap();
        r.m.accept(&r.epoll);
        let token = *r.m.pending.keys().next().unwrap();
        r.m.pending_readable(&r.epoll, token);
        let mut answer = String::new();
        bad.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("ERR"));
    }

    #[test]
    fn tx_stops_while_replies_wait() {
        let mut r = Rig::new();
        let key = ConnKey {
            local_port: 1,
            peer_port: 1,
        };
        for _ in 0..MAX_PENDING_REPLIES {
            r.m.reply(key, OP_RST, 0);
        }
        r.send_split(&hdr(1, 7777, 0, OP_REQUEST, 0), &[]);
        // The packet stays in the TX queue, unprocessed.
        assert_eq!(r.tq.used_n(1, 0), None);
        assert_eq!(r.m.replies.len(), MAX_PENDING_REPLIES);
    }

    /// Thousands of random packets (valid cid, random ops, ports, flags, lengths and
    /// layouts), with RX buffers offered now and then: no panic, bounded state.
    #[test]
    fn random_packets_never_panic() {
        let mut rng = crate::devices::virtio::test_utils::XorShift(0x9e37_79b9_7f4a_7c15);
        let mut next = || rng.next_u64();
        // A fresh device every 6 packets: the test queues hold 16 descriptors.
        for _ in 0..600 {
            let mut r = Rig::new();
            let _host = UnixListener::bind(r.dir.path().join("v.sock_7")).unwrap();
            for _ in 0..6 {
                let op = (next() % 9) as u16;
                let src = (next() % 4) as u32;
                let dst = if next() % 2 == 0 {
                    7
                } else {
                    (next() % 4) as u32
                };
                let len = match next() % 4 {
                    0 => 0,
                    1 => (next() % 64) as u32,
                    2 => (next() % 5000) as u32,
                    _ => next() as u32,
                };
                let mut h = hdr(src, dst, len, op, (next() % 8) as u32);
                if next() % 8 == 0 {
                    h[28] = (next() % 4) as u8; // type
                }
                let data = vec![0x5au8; (next() % 256) as usize];
                if next() % 2 == 0 {
                    r.send_split(&h, &data);
                } else {
                    r.send_single(&h, &data);
                }
                if next() % 2 == 0 && r.next_rx < 6 {
                    let _ = r.receive();
                }
                assert!(r.m.replies.len() <= MAX_PENDING_REPLIES);
                assert!(r.m.conns.len() <= MAX_CONNS);
            }
        }
    }

    #[test]
    fn connect_lines_parse() {
        assert_eq!(parse_connect(b"CONNECT 1024\n"), Some((1024, vec![])));
        assert_eq!(
            parse_connect(b"CONNECT 52\r\nhello"),
            Some((52, b"hello".to_vec()))
        );
        assert_eq!(parse_connect(b"CONNECT x\n"), None);
        assert_eq!(parse_connect(b"connect 1\n"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999\n"), None);
        assert_eq!(parse_connect(b"CONNECT 5"), None);
    }
}
