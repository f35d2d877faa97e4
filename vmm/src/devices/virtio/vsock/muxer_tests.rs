//! Unit tests of the vsock muxer on virtio-queue's mock queues: both packet layouts,
//! refusals, the host handshake, hostile and random packets, the timers.

use std::io::Read;

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
        Rig::with_limit(MAX_CONNS)
    }

    fn with_limit(max_conns: usize) -> Rig {
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
            max_conns,
        );
        let epoll = Epoll::new().unwrap();
        let mut m = m;
        m.init(&epoll).unwrap();
        Rig {
            tq,
            m,
            epoll,
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
fn full_backlog_gets_rst_without_blocking() {
    let mut r = Rig::new();
    let path = r.dir.path().join("v.sock_6100");
    let _host = UnixListener::bind(&path).unwrap();
    // Fill the listener's backlog (nobody accepts).
    let mut held = Vec::new();
    while let Ok(s) = super::super::host::connect_nonblocking(&path) {
        held.push(s);
        assert!(held.len() < 100_000);
    }
    let started = Instant::now();
    r.send_split(&hdr(77, 6100, 0, OP_REQUEST, 0), &[]);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(r.receive().unwrap().0, OP_RST);
    assert!(r.m.conns.is_empty());
    assert_eq!(r.m.metrics.conns_refused.get(), 1);
}

fn key(local_port: u32, peer_port: u32) -> ConnKey {
    ConnKey {
        local_port,
        peer_port,
    }
}

#[test]
fn a_connection_the_host_closed_is_reset_after_the_timeout() {
    let mut r = Rig::new();
    let host = UnixListener::bind(r.dir.path().join("v.sock_6000")).unwrap();
    r.send_split(&hdr(1234, 6000, 0, OP_REQUEST, 0), &[]);
    assert_eq!(r.receive().unwrap().0, OP_RESPONSE);
    let (s, _) = host.accept().unwrap();
    drop(s); // the host closes its end altogether
    r.m.conn_event(&r.epoll, key(6000, 1234), EventSet::IN | EventSet::HANG_UP);
    // The guest is told: nothing more either way.
    let (op, _, _, _) = r.receive().unwrap();
    assert_eq!(op, OP_SHUTDOWN);
    let flags = u32::from_le_bytes(r.tq.read(RX_HDR + 32, 4).try_into().unwrap());
    assert_eq!(flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert!(r.m.timer_armed);
    // Before the timeout it stays; after it, RST and gone.
    r.m.expire(&r.epoll, Instant::now());
    assert_eq!(r.m.conns.len(), 1);
    r.m.expire(
        &r.epoll,
        Instant::now() + CLOSE_TIMEOUT + Duration::from_millis(1),
    );
    assert!(r.m.conns.is_empty());
    assert_eq!(r.receive().unwrap().0, OP_RST);
    assert_eq!(r.m.metrics.conns_timed_out.get(), 1);
    // Nothing left to wait for: the timer is off.
    assert!(!r.m.timer_armed);
}

#[test]
fn a_half_closed_host_keeps_its_connection() {
    let mut r = Rig::new();
    let host = UnixListener::bind(r.dir.path().join("v.sock_6000")).unwrap();
    r.send_split(&hdr(1234, 6000, 0, OP_REQUEST, 0), &[]);
    assert_eq!(r.receive().unwrap().0, OP_RESPONSE);
    let (mut s, _) = host.accept().unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    r.m.conn_event(
        &r.epoll,
        key(6000, 1234),
        EventSet::IN | EventSet::READ_HANG_UP,
    );
    let (op, _, _, _) = r.receive().unwrap();
    assert_eq!(op, OP_SHUTDOWN);
    let flags = u32::from_le_bytes(r.tq.read(RX_HDR + 32, 4).try_into().unwrap());
    assert_eq!(flags, SHUTDOWN_SEND);
    r.m.expire(&r.epoll, Instant::now() + Duration::from_secs(3600));
    assert_eq!(r.m.conns.len(), 1, "a host still reading is not timed out");
    // The guest's data still reaches the host.
    r.send_split(&hdr(1234, 6000, 3, OP_RW, 0), b"end");
    let mut got = [0u8; 3];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"end");
}

#[test]
fn handshakes_that_never_finish_time_out() {
    let mut r = Rig::new();
    // A host client that never sends its CONNECT line.
    let mut silent = UnixStream::connect(r.dir.path().join("v.sock")).unwrap();
    r.m.accept(&r.epoll);
    assert_eq!(r.m.pending.len(), 1);
    // A guest that never answers our REQUEST.
    let mut c = UnixStream::connect(r.dir.path().join("v.sock")).unwrap();
    c.write_all(b"CONNECT 5000\n").unwrap();
    r.m.accept(&r.epoll);
    let tokens: Vec<u64> = r.m.pending.keys().copied().collect();
    for t in tokens {
        r.m.pending_readable(&r.epoll, t);
    }
    assert_eq!(r.m.conns.len(), 1);
    assert_eq!(r.receive().unwrap().0, OP_REQUEST);
    r.m.expire(
        &r.epoll,
        Instant::now() + HANDSHAKE_TIMEOUT + Duration::from_millis(1),
    );
    assert!(r.m.pending.is_empty() && r.m.conns.is_empty());
    assert_eq!(r.m.metrics.conns_timed_out.get(), 2);
    // Both clients see their connection end.
    let mut buf = Vec::new();
    silent.read_to_end(&mut buf).unwrap();
    c.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty());
}

#[test]
fn the_connection_limit_holds_for_both_directions() {
    let mut r = Rig::with_limit(2);
    let uds = r.dir.path().join("v.sock");
    let clients: Vec<UnixStream> = (0..4).map(|_| UnixStream::connect(&uds).unwrap()).collect();
    r.m.accept(&r.epoll);
    assert_eq!(r.m.pending.len(), 2);
    assert_eq!(r.m.metrics.conns_refused.get(), 2);
    // The guest's side counts against the same limit.
    let _host = UnixListener::bind(r.dir.path().join("v.sock_6000")).unwrap();
    r.send_split(&hdr(1, 6000, 0, OP_REQUEST, 0), &[]);
    assert_eq!(r.receive().unwrap().0, OP_RST);
    assert_eq!(r.m.metrics.conns_refused.get(), 3);
    drop(clients);
}

/// accept() failing with EMFILE must pause the listener, not spin on it. Run in a
/// child process (the file limit is per process): see `emfile_child`.
#[test]
fn emfile_on_accept_backs_off() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "devices::virtio::vsock::muxer::tests::emfile_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HUSK_EMFILE_CHILD", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("EMFILE-CHILD-OK"), "{text}");
}

#[test]
#[ignore = "run by emfile_on_accept_backs_off in a process of its own"]
fn emfile_child() {
    if std::env::var_os("HUSK_EMFILE_CHILD").is_none() {
        return;
    }
    let mut r = Rig::new();
    let client = UnixStream::connect(r.dir.path().join("v.sock")).unwrap();
    // Take every descriptor this process may open, then lower the limit under them.
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
        assert!(hog.len() < 1_000_000);
    }
    r.m.accept(&r.epoll);
    assert!(r.m.accept_paused_until.is_some());
    assert_eq!(r.m.metrics.accept_backoffs.get(), 1);
    assert!(r.m.pending.is_empty());
    // Descriptors come back: after the back-off the client is accepted.
    hog.clear();
    r.m.expire(&r.epoll, Instant::now() + ACCEPT_BACKOFF);
    assert!(r.m.accept_paused_until.is_none());
    assert_eq!(r.m.pending.len(), 1);
    drop(client);
    println!("EMFILE-CHILD-OK");
}

/// After a transport reset, host clients wait in the backlog until the guest gives the
/// event buffer back (it has reset its connections), or at most RESET_TAKE_TIMEOUT.
#[test]
fn host_clients_wait_until_the_guest_has_taken_a_transport_reset() {
    const EV_BUF: u64 = 0x40_000;
    let mut r = Rig::new();
    r.m.evq = Some(r.tq.queue_n(2));
    // Without an event buffer there is no reset to wait for.
    assert!(!r.m.send_transport_reset());
    assert!(r.m.reset_wait.is_none());
    // Linux gives its event buffers at probe time.
    r.tq.add_chain_n(2, 0, &[(EV_BUF, 8, W)]);
    r.tq.add_chain_n(2, 1, &[(EV_BUF + 8, 8, W)]);
    assert!(r.m.send_transport_reset());
    assert_eq!(r.tq.used_n(2, 0), Some(4));
    assert_eq!(r.tq.read(EV_BUF, 4), 0u32.to_le_bytes());
    let uds = r.dir.path().join("v.sock");
    let mut c = UnixStream::connect(&uds).unwrap();
    c.write_all(b"CONNECT 5000\n").unwrap();
    r.m.accept(&r.epoll);
    assert!(
        r.m.pending.is_empty(),
        "accepted before the guest took the reset"
    );
    assert!(!r.m.listener_watched && r.m.timer_armed);
    // Ticks (the second buffer given at probe time does not count) keep it waiting.
    r.m.expire(&r.epoll, Instant::now());
    assert!(r.m.pending.is_empty());
    // The guest handled the event and gave the buffer back.
    r.tq.add_chain_n(2, 2, &[(EV_BUF, 8, W)]);
    r.m.resume_listener(&r.epoll, Instant::now());
    assert!(r.m.reset_wait.is_none() && r.m.listener_watched);
    let token =
        *r.m.pending
            .keys()
            .next()
            .expect("the held client is accepted");
    r.m.pending_readable(&r.epoll, token);
    assert_eq!(r.receive().unwrap().0, OP_REQUEST);

    // A guest that never gives the buffer back holds clients for RESET_TAKE_TIMEOUT.
    assert!(r.m.send_transport_reset());
    let _late = UnixStream::connect(&uds).unwrap();
    r.m.accept(&r.epoll);
    assert_eq!(r.m.pending.len(), 0);
    r.m.expire(&r.epoll, Instant::now() + RESET_TAKE_TIMEOUT);
    assert!(r.m.reset_wait.is_none() && r.m.listener_watched);
    assert_eq!(r.m.pending.len(), 1);
    drop(c);
}

/// Two resets before the guest took the first (a pause and resume soon after another):
/// clients wait for both buffers to come back, not one.
#[test]
fn a_second_reset_before_the_first_was_taken_waits_for_both() {
    const EV_BUF: u64 = 0x40_000;
    let mut r = Rig::new();
    r.m.evq = Some(r.tq.queue_n(2));
    for i in 0..3 {
        r.tq.add_chain_n(2, i, &[(EV_BUF + 8 * u64::from(i), 8, W)]);
    }
    assert!(r.m.send_transport_reset());
    assert!(r.m.send_transport_reset());
    let _c = UnixStream::connect(r.dir.path().join("v.sock")).unwrap();
    r.m.accept(&r.epoll);
    // The guest handled the first event and gave its buffer back: not yet.
    r.tq.add_chain_n(2, 3, &[(EV_BUF, 8, W)]);
    r.m.resume_listener(&r.epoll, Instant::now());
    assert!(r.m.pending.is_empty() && r.m.reset_wait.is_some());
    // And the second.
    r.tq.add_chain_n(2, 4, &[(EV_BUF + 8, 8, W)]);
    r.m.resume_listener(&r.epoll, Instant::now());
    assert!(r.m.reset_wait.is_none());
    assert_eq!(r.m.pending.len(), 1);
}

#[test]
fn ring_indexes_are_compared_across_the_wrap() {
    assert!(reached(5, 5) && reached(6, 5) && !reached(4, 5));
    assert!(reached(0, u16::MAX) && reached(1, u16::MAX));
    assert!(!reached(u16::MAX, 0) && !reached(u16::MAX - 1, 0));
}
