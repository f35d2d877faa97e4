//! The frontend against a fake vhost-user backend on a socketpair: a thread that parses
//! the messages (header: request, flags, size; payload; fds by SCM_RIGHTS), records them
//! and answers the requests that need answers.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::*;
use crate::devices::virtio::INT_VRING;
use crate::memory::create_guest_memory;

// vhost-user request codes.
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;

const NEED_REPLY: u32 = 0x8;
const REPLY: u32 = 0x4;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const EVENT_IDX: u64 = 1 << 29;
const REPLY_ACK: u64 = 1 << 3;
const MQ: u64 = 1 << 0;

/// What the fake backend saw of one message.
#[derive(Debug)]
struct Seen {
    request: u32,
    payload: Vec<u8>,
    fd: Option<File>,
}

#[derive(Clone, Copy)]
struct FakeOptions {
    features: u64,
    protocol: u64,
    /// Close the socket after this many messages.
    close_after: Option<usize>,
    /// Read messages but never answer.
    mute: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            features: VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES | EVENT_IDX,
            protocol: REPLY_ACK | MQ,
            close_after: None,
            mute: false,
        }
    }
}

fn reply(sock: &mut UnixStream, request: u32, body: &[u8]) {
    let mut m = Vec::new();
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&(1 | REPLY).to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    let _ = sock.write_all(&m);
}

/// Runs the fake backend on `sock`; every message goes to `tx`.
fn fake_backend(mut sock: UnixStream, opts: FakeOptions, tx: mpsc::Sender<Seen>) {
    std::thread::spawn(move || {
        let mut n = 0;
        loop {
            if opts.close_after == Some(n) {
                return;
            }
            let mut hdr = [0u8; 12];
            let Ok((got, fd)) = sock.recv_with_fd(&mut hdr) else {
                return;
            };
            if got == 0 {
                return;
            }
            if got < 12 && sock.read_exact(&mut hdr[got..]).is_err() {
                return;
            }
            let word = |i: usize| u32::from_le_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap());
            let (request, flags, size) = (word(0), word(1), word(2));
            let mut payload = vec![0u8; size as usize];
            if sock.read_exact(&mut payload).is_err() {
                return;
            }
            n += 1;
            if !opts.mute {
                match request {
                    GET_FEATURES => reply(&mut sock, request, &opts.features.to_le_bytes()),
                    GET_PROTOCOL_FEATURES => {
                        reply(&mut sock, request, &opts.protocol.to_le_bytes())
                    }
                    GET_QUEUE_NUM => reply(&mut sock, request, &2u64.to_le_bytes()),
                    GET_VRING_BASE => {
                        let mut b = payload[..4].to_vec();
                        b.extend_from_slice(&7u32.to_le_bytes());
                        reply(&mut sock, request, &b)
                    }
                    _ if flags & NEED_REPLY != 0 => reply(&mut sock, request, &0u64.to_le_bytes()),
                    _ => {}
                }
            }
            let _ = tx.send(Seen {
                request,
                payload,
                fd,
            });
        }
    });
}

/// Runs `f` on a thread; fails the test if it takes longer than `secs`.
fn bounded<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("the frontend hung")
}

fn ready_queues(mem: &GuestMemoryMmap) -> Vec<Queue> {
    (0..NUM_QUEUES as u64)
        .map(|i| {
            let mut q = Queue::new(16).unwrap();
            let base = 0x10_000 * (i + 1);
            q.set_desc_table_address(Some(base as u32), Some(0));
            q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
            q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
            q.set_ready(true);
            assert!(q.is_valid(mem));
            q
        })
        .collect()
}

fn eventfds(n: usize) -> Vec<EventFd> {
    (0..n)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect()
}

fn drain(rx: &mpsc::Receiver<Seen>) -> Vec<Seen> {
    let mut v = Vec::new();
    while let Ok(s) = rx.recv_timeout(Duration::from_millis(200)) {
        v.push(s);
    }
    v
}

fn requests(seen: &[Seen]) -> Vec<u32> {
    seen.iter().map(|s| s.request).collect()
}

fn connected(opts: FakeOptions) -> (Connection, mpsc::Receiver<Seen>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    fake_backend(theirs, opts, tx);
    let c = bounded(10, move || Connection::new(ours, NUM_QUEUES)).unwrap();
    (c, rx)
}

#[test]
fn setup_sends_the_vhost_user_sequence_in_order() {
    let (mut c, rx) = connected(FakeOptions::default());
    assert_eq!(
        requests(&drain(&rx)),
        [
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            GET_QUEUE_NUM
        ]
    );
    assert!(c.protocol_features().bits() & REPLY_ACK != 0);

    let mem = create_guest_memory(16, true).unwrap();
    let queues = ready_queues(&mem);
    let (kicks, calls) = (eventfds(NUM_QUEUES), eventfds(NUM_QUEUES));
    let acked = VIRTIO_F_VERSION_1 | EVENT_IDX;
    let m = mem.clone();
    let c = bounded(10, move || {
        c.activate(&m, &queues, &kicks, &calls, acked).unwrap();
        c
    });
    let seen = drain(&rx);
    let mut want = vec![SET_FEATURES, SET_MEM_TABLE];
    for _ in 0..NUM_QUEUES {
        want.extend([
            SET_VRING_NUM,
            SET_VRING_ADDR,
            SET_VRING_BASE,
            SET_VRING_CALL,
            SET_VRING_KICK,
            SET_VRING_ENABLE,
        ]);
    }
    assert_eq!(requests(&seen), want);
    // SET_FEATURES: the driver's features plus the protocol-features bit.
    let f = u64::from_le_bytes(seen[0].payload[..8].try_into().unwrap());
    assert_eq!(f, acked | PROTOCOL_FEATURES);
    // SET_MEM_TABLE carries the memfd and one region of 16 MiB at guest address 0.
    assert!(seen[1].fd.is_some());
    let p = &seen[1].payload;
    assert_eq!(u32::from_le_bytes(p[..4].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), 0);
    assert_eq!(u64::from_le_bytes(p[16..24].try_into().unwrap()), 16 << 20);
    // Call and kick carry fds; SET_VRING_NUM the queue size.
    assert!(seen[5].fd.is_some() && seen[6].fd.is_some());
    assert_eq!(
        u32::from_le_bytes(seen[2].payload[4..8].try_into().unwrap()),
        16
    );

    let mut c = c;
    let bases = bounded(10, move || c.reset().unwrap());
    assert_eq!(bases, vec![7; NUM_QUEUES]);
    assert_eq!(
        requests(&drain(&rx)),
        [
            SET_VRING_ENABLE,
            GET_VRING_BASE,
            SET_VRING_ENABLE,
            GET_VRING_BASE
        ]
    );
}

#[test]
fn private_memory_is_refused() {
    let (mut c, _rx) = connected(FakeOptions::default());
    let mem = create_guest_memory(16, false).unwrap();
    let queues = ready_queues(&mem);
    let e = c
        .activate(
            &mem,
            &queues,
            &eventfds(NUM_QUEUES),
            &eventfds(NUM_QUEUES),
            VIRTIO_F_VERSION_1,
        )
        .unwrap_err();
    assert!(matches!(e, VhostUserError::NotShared { .. }), "{e}");
}

#[test]
fn backend_closing_mid_way_is_an_error() {
    // During negotiation.
    for close_after in 0..5 {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (tx, _rx) = mpsc::channel();
        let opts = FakeOptions {
            close_after: Some(close_after),
            ..FakeOptions::default()
        };
        fake_backend(theirs, opts, tx);
        let r = bounded(10, move || Connection::new(ours, NUM_QUEUES).map(|_| ()));
        assert!(r.is_err(), "closed after {close_after} messages");
    }
    // During activation, inside the device: the device is failed and stays failed.
    for close_after in [6, 9, 14] {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (tx, _rx) = mpsc::channel();
        let opts = FakeOptions {
            close_after: Some(close_after),
            ..FakeOptions::default()
        };
        fake_backend(theirs, opts, tx);
        let mem = create_guest_memory(16, true).unwrap();
        let (fs, ctx) = bounded(10, move || {
            let conn = Connection::new(ours, NUM_QUEUES).unwrap();
            let fs = Fs::with_connection("t", conn, Path::new("/x"), 0).unwrap();
            let ctx = context(&mem);
            (fs, ctx)
        });
        let (fs, r1) = bounded(10, move || {
            let mut fs = fs;
            let r = fs.activate(ctx);
            (fs, r)
        });
        assert!(
            matches!(r1, Err(ActivateError::Backend(_))),
            "closed after {close_after}: {r1:?}"
        );
        let mem = create_guest_memory(16, true).unwrap();
        let mut fs = fs;
        assert!(matches!(
            fs.activate(context(&mem)),
            Err(ActivateError::BackendFailed)
        ));
        fs.reset();
        let m = fs.metrics();
        assert_eq!(m["backend_errors"], 1);
        assert_eq!(m["failed"], true);
        assert_eq!(m["activations"], 0);
    }
}

/// Our end of a socket whose fake backend reads every request and answers none.
fn mute_backend() -> UnixStream {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (tx, _rx) = mpsc::channel();
    let opts = FakeOptions {
        mute: true,
        ..FakeOptions::default()
    };
    fake_backend(theirs, opts, tx);
    ours
}

#[test]
fn a_backend_that_never_answers_times_out() {
    let ours = mute_backend();
    let start = std::time::Instant::now();
    let r = bounded(20, move || Connection::new(ours, NUM_QUEUES).map(|_| ()));
    assert!(matches!(r, Err(VhostUserError::TimedOut { .. })), "{r:?}");
    assert!(start.elapsed() >= vhost_user::IO_TIMEOUT);
}

#[test]
fn a_shorter_deadline_is_kept_and_named() {
    let ours = mute_backend();
    let start = std::time::Instant::now();
    let after = Duration::from_millis(50);
    let r = bounded(20, move || {
        Connection::with_timeout(ours, NUM_QUEUES, after).map(|_| ())
    });
    let e = r.unwrap_err();
    assert!(matches!(e, VhostUserError::TimedOut { .. }), "{e}");
    assert!(e.to_string().contains("within 50ms"), "{e}");
    let took = start.elapsed();
    assert!(took >= after && took < vhost_user::IO_TIMEOUT, "{took:?}");
}

fn context(mem: &GuestMemoryMmap) -> ActivateContext {
    ActivateContext {
        mem: mem.clone(),
        queues: ready_queues(mem),
        queue_evts: eventfds(NUM_QUEUES),
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
        acked_features: VIRTIO_F_VERSION_1,
    }
}

#[test]
fn device_forwards_backend_calls_to_the_guest_interrupt() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    fake_backend(theirs, FakeOptions::default(), tx);
    let conn = bounded(10, move || Connection::new(ours, NUM_QUEUES)).unwrap();
    let mut fs = Fs::with_connection("myfs", conn, Path::new("/x"), 0).unwrap();
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.features(), VIRTIO_F_VERSION_1 | EVENT_IDX);
    let mut cfg = [0u8; 40];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], b"myfs");
    assert_eq!(cfg[4..36], [0; 32]);
    assert_eq!(cfg[36..], 1u32.to_le_bytes());

    let mem = create_guest_memory(16, true).unwrap();
    let ctx = context(&mem);
    let interrupt = ctx.interrupt.clone();
    let fs = bounded(10, move || {
        fs.activate(ctx).unwrap();
        fs
    });
    let seen = drain(&rx);
    let call = seen
        .into_iter()
        .filter(|s| s.request == SET_VRING_CALL)
        .nth(1)
        .and_then(|s| s.fd)
        .unwrap();
    // The backend signals the request queue's call eventfd.
    (&call).write_all(&1u64.to_le_bytes()).unwrap();
    for _ in 0..200 {
        if interrupt.status() & INT_VRING != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(interrupt.status() & INT_VRING, INT_VRING);
    assert_eq!(fs.metrics()["interrupts"], 1);
    assert_eq!(fs.metrics()["activations"], 1);

    // Reset stops the rings and the forwarder; activation sends the sequence again.
    let mut fs = fs;
    fs.reset();
    assert_eq!(
        requests(&drain(&rx)),
        [
            SET_VRING_ENABLE,
            GET_VRING_BASE,
            SET_VRING_ENABLE,
            GET_VRING_BASE
        ]
    );
    let ctx = context(&mem);
    let fs = bounded(10, move || {
        fs.activate(ctx).unwrap();
        fs
    });
    let again = requests(&drain(&rx));
    assert_eq!(again.first(), Some(&SET_FEATURES));
    assert_eq!(again.len(), 2 + 6 * NUM_QUEUES);
    assert_eq!(fs.metrics()["activations"], 2);
    assert_eq!(fs.metrics()["resets"], 1);
}

#[test]
fn tags_are_checked() {
    for tag in ["", "a\0b", &"x".repeat(37)] {
        let (c, _rx) = connected(FakeOptions::default());
        assert!(matches!(
            Fs::with_connection(tag, c, Path::new("/x"), 3),
            Err(FsError::Tag { index: 3, .. })
        ));
    }
    let (c, _rx) = connected(FakeOptions::default());
    let fs = Fs::with_connection(&"x".repeat(36), c, Path::new("/x"), 0).unwrap();
    let mut cfg = [0u8; 36];
    fs.read_config(0, &mut cfg);
    assert_eq!(cfg, [b'x'; 36]);
}

#[test]
fn a_backend_without_protocol_features_still_works() {
    let opts = FakeOptions {
        features: VIRTIO_F_VERSION_1,
        protocol: 0,
        ..FakeOptions::default()
    };
    let (mut c, rx) = connected(opts);
    assert_eq!(requests(&drain(&rx)), [SET_OWNER, GET_FEATURES]);
    let mem = create_guest_memory(16, true).unwrap();
    let queues = ready_queues(&mem);
    let m = mem.clone();
    bounded(10, move || {
        c.activate(
            &m,
            &queues,
            &eventfds(NUM_QUEUES),
            &eventfds(NUM_QUEUES),
            VIRTIO_F_VERSION_1,
        )
        .unwrap()
    });
    let seen = requests(&drain(&rx));
    assert!(!seen.contains(&SET_VRING_ENABLE), "{seen:?}");
    assert_eq!(seen.len(), 2 + 5 * NUM_QUEUES);
}

#[test]
fn connecting_to_a_missing_socket_names_the_path() {
    let e = Fs::connect("t", Path::new("/nonexistent/virtiofsd.sock"), 2).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("fs[2]") && s.contains("/nonexistent/virtiofsd.sock"),
        "{s}"
    );
}

#[test]
fn a_queue_left_out_is_refused_without_failing_the_device() {
    let (c, rx) = connected(FakeOptions::default());
    drain(&rx);
    let mut fs = Fs::with_connection("t", c, Path::new("/x"), 0).unwrap();
    let mem = create_guest_memory(16, true).unwrap();
    let mut ctx = context(&mem);
    ctx.queues[1].set_ready(false);
    assert!(matches!(
        fs.activate(ctx),
        Err(ActivateError::QueueCount { need: 2, got: 1 })
    ));
    assert!(drain(&rx).is_empty());
    let fs = bounded(10, move || {
        fs.activate(context(&mem)).unwrap();
        fs
    });
    assert_eq!(fs.metrics()["failed"], false);
}

fn device(tag: &str) -> (Fs, mpsc::Receiver<Seen>) {
    let (c, rx) = connected(FakeOptions::default());
    drain(&rx);
    (Fs::with_connection(tag, c, Path::new("/x"), 0).unwrap(), rx)
}

#[test]
fn an_unused_share_is_saved_at_index_zero_and_restored_onto_a_new_backend() {
    let (mut fs, rx) = device("share");
    // Never activated (the guest did not probe it): nothing to save.
    assert!(fs.pause().unwrap().is_empty());
    let mem = create_guest_memory(16, true).unwrap();
    let m = mem.clone();
    let mut fs = bounded(10, move || {
        fs.activate(context(&m)).unwrap();
        fs
    });
    drain(&rx);
    let saved = fs.pause().unwrap();
    assert_eq!(saved.len(), NUM_QUEUES);
    let want = ready_queues(&mem);
    for ((i, s), q) in saved.iter().zip(&want) {
        assert_eq!((s.next_avail, s.next_used), (0, 0), "queue {i}");
        assert_eq!(s.desc_table, q.desc_table());
        assert_eq!(s.avail_ring, q.avail_ring());
    }
    // Pausing asks the backend nothing: it keeps the rings for a resume.
    assert!(drain(&rx).is_empty());
    assert_eq!(fs.save(), serde_json::json!({"tag": "share"}));

    // A clone: a fresh device on its own backend gets the queues from index 0.
    let (mut clone, crx) = device("share");
    let state = fs.save();
    let m = mem.clone();
    let clone = bounded(10, move || {
        clone.restore(&state, context(&m)).unwrap();
        clone
    });
    let seen = drain(&crx);
    let bases: Vec<u32> = seen
        .iter()
        .filter(|s| s.request == SET_VRING_BASE)
        .map(|s| u32::from_le_bytes(s.payload[4..8].try_into().unwrap()))
        .collect();
    assert_eq!(bases, [0; NUM_QUEUES]);
    assert!(requests(&seen).contains(&SET_MEM_TABLE));
    assert_eq!(clone.metrics()["activations"], 1);
}

#[test]
fn a_share_the_guest_used_is_not_saved() {
    let (fs, rx) = device("share");
    let mem = create_guest_memory(16, true).unwrap();
    let m = mem.clone();
    let mut fs = bounded(10, move || {
        let mut fs = fs;
        fs.activate(context(&m)).unwrap();
        fs
    });
    drain(&rx);
    // The driver made a request available on the request queue (a mount's FUSE_INIT).
    let q = &ready_queues(&mem)[1];
    mem.write_obj(1u16, GuestAddress(q.avail_ring() + 2))
        .unwrap();
    let e = fs.pause().unwrap_err().to_string();
    assert!(e.contains("used the share") && e.contains("queue 1"), "{e}");
    // A used index the backend moved counts too.
    mem.write_obj(0u16, GuestAddress(q.avail_ring() + 2))
        .unwrap();
    mem.write_obj(1u16, GuestAddress(q.used_ring() + 2))
        .unwrap();
    assert!(fs.pause().is_err());
}

#[test]
fn a_restore_with_another_tag_or_used_queues_is_refused() {
    let mem = create_guest_memory(16, true).unwrap();
    let (mut fs, rx) = device("share");
    let e = fs
        .restore(&serde_json::json!({"tag": "other"}), context(&mem))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"other\"") && e.contains("\"share\""), "{e}");
    assert!(fs.restore(&serde_json::Value::Null, context(&mem)).is_err());
    let mut ctx = context(&mem);
    ctx.queues[0].set_next_avail(3);
    let e = fs
        .restore(&serde_json::json!({"tag": "share"}), ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("index 0"), "{e}");
    // Refused before the backend heard of anything.
    assert!(drain(&rx).is_empty());
    assert_eq!(fs.metrics()["failed"], false);
}
