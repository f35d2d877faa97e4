//! Fuzz body for virtio-fs's host side, shared by the cargo-fuzz target and the corpus
//! replay test (vmm/tests/fuzz_corpus.rs).
//!
//! husk-vmm is a vhost-user frontend: it negotiates with virtiofsd over a socket and
//! hands it guest memory and the vrings. Both of its peers are hostile here:
//! - the backend (virtiofsd, which a guest may have compromised) is a fake on the other
//!   end of a socketpair that reads each request and answers it as the input says:
//!   properly, with a fuzzed value, a mangled header (request code, flags, size), raw
//!   bytes (short replies), an fd attached, a reply too many, silence, or a close;
//! - the driver calls the device the way the transport lets a guest: config-space reads
//!   at any offset and length, features, activation with any queue set-up (count,
//!   ready bits, sizes, ring addresses in or outside guest memory, any acked features),
//!   reset, activation again, and (through the backend) call eventfd signals.
//!
//! The frontend's deadline is [`TIMEOUT`] here, not the VMM's 5 s
//! ([`Connection::with_timeout`]): a silent backend costs an input that long, once (the
//! watchdog shuts the socket down, and the device stays failed from then on).
//!
//! Input, read front to back (missing bytes read as zero):
//! - flags: bits 0-1 guest memory (0, 1: one shared memfd region; 2: private memory,
//!   which the backend cannot map; 3: nine file-backed regions, more than one message
//!   carries); bit 2: the tag comes from the input (a length byte and bytes), else
//!   "fuzzfs";
//! - the backend's proper answers: GET_FEATURES (u64), GET_PROTOCOL_FEATURES (u64),
//!   GET_QUEUE_NUM (u8);
//! - the backend's script: a u16 length and that many bytes, one action per request it
//!   receives (past the script's end: proper replies), [`Action`];
//! - the rest: the driver's operations, [`Op`], up to [`MAX_OPS`].
//!
//! Checked besides no panic, hang or ASan report: the config space reads as the tag
//! and one request queue, zeros elsewhere; `features()` never changes and offers only
//! VERSION_1 and the ring features passed through; every call returns within 5 s;
//! activation fails `QueueCount` (without failing the device) when the queues are not
//! two ready ones, `BackendFailed` once the device failed, and when it reports a
//! backend error the device is failed, stays failed and counts exactly one error; a
//! backend that answered every request properly gets an activation of valid queues in
//! shared memory done (unless it timed out); while the device is active a backend call
//! reaches the guest's interrupt; pause saves the queues (at index 0) exactly when the
//! device is active and the guest never used its rings (both rings' idx 0, read from
//! guest memory), saves nothing when it is not active, and is refused otherwise (in
//! use, or failed); the metrics count what happened.

// Test harness code (compiled into tests and fuzz targets): a set-up that fails is a
// failed test, so expect() is the point.
#![allow(clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use husk_vmm::devices::virtio::fs::vhost_user::{Connection, VhostUserError};
use husk_vmm::devices::virtio::fs::{Fs, NUM_REQUEST_QUEUES, TAG_LEN};
use husk_vmm::devices::virtio::state::DeviceStateError;
use husk_vmm::devices::virtio::{
    ActivateContext, ActivateError, INT_VRING, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice,
};
use husk_vmm::memory::create_guest_memory;

/// The frontend's deadline per vhost-user sequence in the fuzz target: short, since
/// the inputs that reach it (silence, a reply cut short) cost this long each, and a
/// deadline that passes under load only turns an input into one where it passed (no
/// check depends on a sequence finishing in time). 200 ms gave 68 executions a second.
pub const TIMEOUT: Duration = Duration::from_millis(30);
/// Longest any device call may take (the VMM's own deadline): longer is a hang.
const BOUND: Duration = Duration::from_secs(5);
/// Most driver operations run per input.
pub const MAX_OPS: usize = 64;
/// The device's queues: the high-priority one and the request queues.
const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES;
/// Queue size the device offers.
const QUEUE_MAX: u16 = 1024;
/// Guest RAM of the shared variant, in MiB.
const RAM_MIB: u64 = 2;
/// Ring features the device passes through from the backend.
const PASSTHROUGH: u64 = (1 << 28) | (1 << 29);

// vhost-user request codes and flags the fake backend needs.
const GET_FEATURES: u32 = 1;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const GET_QUEUE_NUM: u32 = 17;
const VERSION: u32 = 1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
/// The largest message the frontend sends or accepts.
const MAX_MSG: usize = 0x1000;

/// The input, read front to back; past its end every read is zero.
#[derive(Debug)]
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let got = self.bytes(N);
        b[..got.len()].copy_from_slice(got);
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------------- guest memory

/// The guest memory variants (made once per process; the fake backend never maps
/// them, so they stay as made).
struct Memories {
    shared: GuestMemoryMmap,
    private: GuestMemoryMmap,
    many: GuestMemoryMmap,
}

fn memories() -> &'static Memories {
    static MEM: OnceLock<Memories> = OnceLock::new();
    MEM.get_or_init(|| {
        let file = tempfile::tempfile().expect("a temporary file for guest memory");
        file.set_len(9 * 0x1000).expect("sizing it");
        let regions: Vec<_> = (0..9u64)
            .map(|i| {
                let f = file.try_clone().expect("dup of the file");
                (
                    GuestAddress(i * 0x10_0000),
                    0x1000usize,
                    Some(FileOffset::new(f, i * 0x1000)),
                )
            })
            .collect();
        Memories {
            shared: create_guest_memory(RAM_MIB, true).expect("shared guest memory"),
            private: create_guest_memory(RAM_MIB, false).expect("private guest memory"),
            many: GuestMemoryMmap::from_ranges_with_files(regions).expect("nine regions"),
        }
    })
}

// ---------------------------------------------------------------------- the backend

/// What the fake backend does with one request (the script byte % 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// 0: the proper reply (when the request needs one), nothing else.
    Proper,
    /// 1: a proper header with the body's u64 from the script (a fuzzed feature set,
    /// queue count, ring base, or a non-zero ack: a refusal).
    Value,
    /// 2: request code, flags and size (u32 each) from the script, then a u64 body.
    Header,
    /// 3: a length byte and that many raw bytes from the script.
    Raw,
    /// 4: the proper reply with an eventfd attached (SCM_RIGHTS).
    WithFd,
    /// 5: the proper reply twice (the stream goes out of step).
    Twice,
    /// 6: silence: the backend reads on but never answers again.
    Silence,
    /// 7: the backend closes the socket.
    Close,
}

impl Action {
    fn from(b: u8) -> Action {
        [
            Action::Proper,
            Action::Value,
            Action::Header,
            Action::Raw,
            Action::WithFd,
            Action::Twice,
            Action::Silence,
            Action::Close,
        ][usize::from(b % 8)]
    }
}

/// The backend's proper answers.
#[derive(Debug, Clone, Copy)]
struct Profile {
    features: u64,
    protocol: u64,
    queue_num: u64,
}

/// What the fake backend shares with the driver side.
#[derive(Debug, Default)]
struct Shared {
    /// The call eventfds it was given (SET_VRING_CALL), by queue.
    calls: Mutex<Vec<Option<File>>>,
    /// Set when it answered any request otherwise than properly.
    misbehaved: AtomicBool,
}

fn message(request: u32, flags: u32, size: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + body.len());
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&size.to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// Sends all of `bytes` (with `fd` attached to the first part), never raising SIGPIPE
/// (MSG_NOSIGNAL; a fuzz binary's main is libFuzzer's, which leaves SIGPIPE fatal) when
/// the frontend closed its end.
fn send(sock: &UnixStream, mut bytes: &[u8], fd: Option<&EventFd>) -> std::io::Result<()> {
    let mut fds: Vec<i32> = fd.map(|f| f.as_raw_fd()).into_iter().collect();
    while !bytes.is_empty() {
        let n = sock
            .send_with_fds(&[bytes], &fds)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        bytes = &bytes[n..];
        fds.clear();
    }
    Ok(())
}

/// Reads one request: (request, flags, payload, attached fd); `None` at EOF or error.
fn read_request(sock: &mut UnixStream) -> Option<(u32, u32, Vec<u8>, Option<File>)> {
    let mut hdr = [0u8; 12];
    let (got, fd) = sock.recv_with_fd(&mut hdr).ok()?;
    if got == 0 {
        return None;
    }
    if got < hdr.len() {
        sock.read_exact(&mut hdr[got..]).ok()?;
    }
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8));
    let size = usize::try_from(size).ok().filter(|s| *s <= MAX_MSG)?;
    let mut payload = vec![0u8; size];
    sock.read_exact(&mut payload).ok()?;
    Some((request, flags, payload, fd))
}

/// The fake backend: answers each request as `script` says, until EOF, a close or
/// silence (then it reads on until the frontend's watchdog or drop closes the socket).
fn backend(mut sock: UnixStream, profile: Profile, script: &[u8], shared: &Shared) {
    let mut script = Input(script);
    let spare = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let mut silent = false;
    while let Some((request, flags, payload, fd)) = read_request(&mut sock) {
        if request == SET_VRING_CALL
            && let Some(fd) = fd
        {
            let queue = usize::from(payload.first().copied().unwrap_or(0));
            let mut calls = shared.calls.lock().expect("the calls lock");
            if queue < NUM_QUEUES {
                calls.resize_with(NUM_QUEUES, || None);
                calls[queue] = Some(fd);
            }
        }
        if silent {
            continue;
        }
        let needs_reply = matches!(
            request,
            GET_FEATURES | GET_PROTOCOL_FEATURES | GET_QUEUE_NUM | GET_VRING_BASE
        ) || flags & NEED_REPLY != 0;
        let proper = match request {
            GET_FEATURES => profile.features,
            GET_PROTOCOL_FEATURES => profile.protocol,
            GET_QUEUE_NUM => profile.queue_num,
            // VhostUserVringState: the queue's index, then its next avail index (0).
            GET_VRING_BASE => u64::from(payload.first().copied().unwrap_or(0)),
            // An ack: 0 is success.
            _ => 0,
        };
        let reply = |value: u64| message(request, VERSION | REPLY, 8, &value.to_le_bytes());
        let action = Action::from(script.u8());
        if action != Action::Proper {
            shared.misbehaved.store(true, Ordering::SeqCst);
        }
        let sent = match action {
            Action::Proper if needs_reply => send(&sock, &reply(proper), None),
            Action::Proper => Ok(()),
            Action::Value => send(&sock, &reply(script.u64()), None),
            Action::Header => {
                let (code, flags, size) = (script.u32(), script.u32(), script.u32());
                let m = message(code, flags, size, &script.u64().to_le_bytes());
                send(&sock, &m, None)
            }
            Action::Raw => {
                let n = usize::from(script.u8());
                send(&sock, script.bytes(n), None)
            }
            Action::WithFd => send(&sock, &reply(proper), Some(&spare)),
            Action::Twice => {
                send(&sock, &reply(proper), None).and_then(|()| send(&sock, &reply(proper), None))
            }
            Action::Silence => {
                silent = true;
                Ok(())
            }
            Action::Close => return,
        };
        if sent.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------- the driver

/// What the driver does next (the op byte % 7).
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// 0: read_config: a u16 offset (from u64::MAX down when the op byte's bit 7 is
    /// set), a length byte (% 72).
    ReadConfig,
    /// 1: features().
    Features,
    /// 2: activate, unless activated since the last reset (the transport never does
    /// that): a layout byte (bits 0-1: how many queues, 2, 2, 1 or 3), acked features
    /// (u64; masked with what was offered unless the layout byte's bit 2 is set), then
    /// per queue a byte: bits 0-3 log2 of the size (sizes the queue refuses keep
    /// 1024), bit 4 not ready, bit 5 ring addresses from the input (three u64: any
    /// address) instead of a layout inside guest memory.
    Activate,
    /// 3: reset.
    Reset,
    /// 4: the backend signals the call eventfd of queue (byte % 2).
    Call,
    /// 5: metrics().
    Metrics,
    /// 6: pause(): refused once the guest used the rings or the device failed. With the
    /// op byte's bit 7 (0x84, 0x8b, ...): the guest first moves a ring's idx (a byte
    /// choosing avail or used of a queue, a u16 value), put back after.
    Pause,
}

impl Op {
    fn from(b: u8) -> Op {
        [
            Op::ReadConfig,
            Op::Features,
            Op::Activate,
            Op::Reset,
            Op::Call,
            Op::Metrics,
            Op::Pause,
        ][usize::from(b % 7)]
    }
}

/// Runs `f`, failing if it took longer than [`BOUND`] (a hang, as far as a vCPU thread
/// is concerned).
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let r = f();
    assert!(start.elapsed() < BOUND, "{what} took {:?}", start.elapsed());
    r
}

fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

/// The queues of one activation, as the input sets them up; whether all of them are
/// two ready ones with rings laid out inside guest memory.
fn queues(input: &mut Input<'_>, layout: u8) -> (Vec<Queue>, bool) {
    let n = [2, 2, 1, 3][usize::from(layout & 3)];
    let mut valid = n == NUM_QUEUES;
    let qs = (0..n as u64)
        .map(|i| {
            let b = input.u8();
            let mut q = Queue::new(QUEUE_MAX).expect("a queue");
            let _ = q.try_set_size(1u16 << (b & 0x0f));
            let base = 0x1_0000 * (i + 1);
            let (desc, avail, used) = if b & 0x20 != 0 {
                valid = false;
                (input.u64(), input.u64(), input.u64())
            } else {
                (base, base + 0x4000, base + 0x5000)
            };
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            let (lo, hi) = split(desc);
            q.set_desc_table_address(lo, hi);
            let (lo, hi) = split(avail);
            q.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(used);
            q.set_used_ring_address(lo, hi);
            q.set_ready(b & 0x10 == 0);
            valid &= q.ready();
            q
        })
        .collect();
    (qs, valid)
}

/// What the harness knows of the device's state.
#[derive(Debug, Default)]
struct Model {
    failed: bool,
    /// Activated (or tried to) since the last reset.
    tried: bool,
    /// The last activation succeeded and no reset came since.
    active: bool,
    activations: u64,
    resets: u64,
    /// The active queues' avail and used ring addresses (for pause's check).
    rings: Vec<(u64, u64)>,
}

/// pause() against the model: refused for a failed device, nothing saved for an idle
/// one, the queues at index 0 for an active one whose rings the guest never used (both
/// idx fields 0), refused as in use otherwise.
fn check_pause(fs: &mut Fs, mem: &GuestMemoryMmap, m: &Model, moved: Option<(u8, u16)>) {
    // The moved idx's address and its old value, put back once pause has answered (the
    // harness's guest memory outlives the input).
    let restore = moved.and_then(|(which, value)| {
        let rings: Vec<u64> = m.rings.iter().flat_map(|&(a, u)| [a, u]).collect();
        let ring = *rings.get(usize::from(which) % rings.len().max(1))?;
        let at = GuestAddress(ring.checked_add(2)?);
        let old = mem.read_obj::<u16>(at).ok()?;
        mem.write_obj(value, at).ok()?;
        Some((at, old))
    });
    let failed = fs.metrics()["failed"] == true;
    let r = fs.pause();
    let unused = m.rings.iter().all(|&(avail, used)| {
        let idx = |ring: u64| {
            ring.checked_add(2)
                .and_then(|a| mem.read_obj::<u16>(GuestAddress(a)).ok())
        };
        idx(avail) == Some(0) && idx(used) == Some(0)
    });
    if let Some((at, old)) = restore {
        mem.write_obj(old, at).expect("the idx written before");
    }
    if failed {
        assert!(matches!(r, Err(DeviceStateError::WorkerGone(_))), "{r:?}");
        return;
    }
    if !m.active {
        assert!(r.as_ref().is_ok_and(Vec::is_empty), "idle pause: {r:?}");
        return;
    }
    match r {
        Ok(saved) => {
            assert!(unused, "paused with rings in use");
            assert_eq!(saved.len(), NUM_QUEUES);
            for (i, (n, q)) in saved.iter().enumerate() {
                assert_eq!(*n, i);
                assert_eq!((q.next_avail, q.next_used), (0, 0), "queue {i}");
            }
        }
        Err(DeviceStateError::InUse { .. }) => assert!(!unused, "unused rings refused"),
        Err(e) => panic!("pause: {e:?}"),
    }
}

fn metric(fs: &Fs, name: &str) -> u64 {
    fs.metrics()[name].as_u64().expect("a counter")
}

/// The metrics against the model.
fn check_metrics(fs: &Fs, m: &Model) {
    let v = fs.metrics();
    assert_eq!(v["failed"], m.failed, "{v}");
    assert_eq!(v["backend_errors"], u64::from(m.failed), "{v}");
    assert_eq!(v["activations"], m.activations, "{v}");
    assert_eq!(v["resets"], m.resets, "{v}");
}

/// virtio-fs's host side against a hostile backend and driver (see the module doc).
pub fn virtio_fs(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let mems = memories();
    let mem = match flags & 3 {
        2 => &mems.private,
        3 => &mems.many,
        _ => &mems.shared,
    };
    let shared_memory = flags & 3 < 2;
    let tag = if flags & 4 != 0 {
        let n = usize::from(input.u8() % 40);
        String::from_utf8_lossy(input.bytes(n)).into_owned()
    } else {
        "fuzzfs".to_string()
    };
    let profile = Profile {
        features: input.u64(),
        protocol: input.u64(),
        queue_num: u64::from(input.u8()),
    };
    let n = usize::from(input.u16());
    let script = input.bytes(n);

    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let backend_state = Shared::default();
    std::thread::scope(|s| {
        let peer = s.spawn(|| backend(theirs, profile, script, &backend_state));
        let conn = bounded("negotiation", || {
            Connection::with_timeout(ours, NUM_QUEUES, TIMEOUT)
        });
        if let Ok(conn) = conn {
            drive(conn, &tag, mem, shared_memory, &mut input, &backend_state);
        }
        // The device (and its socket) is gone: the backend reads EOF and ends.
        peer.join().expect("the fake backend");
    });
}

/// Makes the device over `conn` and runs the driver's operations on it.
fn drive(
    conn: Connection,
    tag: &str,
    mem: &GuestMemoryMmap,
    shared_memory: bool,
    input: &mut Input<'_>,
    backend: &Shared,
) {
    let offered = conn.backend_features();
    let tag_ok = !tag.is_empty() && tag.len() <= TAG_LEN && !tag.contains('\0');
    let made = Fs::with_connection(tag, conn, Path::new("/fuzz/virtiofsd.sock"), 0);
    assert_eq!(made.is_ok(), tag_ok, "tag {tag:?}");
    let Ok(mut fs) = made else {
        return;
    };
    // 5.11.4: tag[36], then le32 num_request_queues.
    let mut config = [0u8; TAG_LEN + 4];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[TAG_LEN..].copy_from_slice(&(NUM_REQUEST_QUEUES as u32).to_le_bytes());
    let features = fs.features();
    assert_eq!(features, VIRTIO_F_VERSION_1 | (offered & PASSTHROUGH));
    let interrupt = Arc::new(Interrupt::new(eventfd()));
    let mut m = Model::default();

    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        match Op::from(op) {
            Op::ReadConfig => {
                let mut offset = u64::from(input.u16());
                if op & 0x80 != 0 {
                    offset = u64::MAX - offset;
                }
                let mut got = vec![0xAA; usize::from(input.u8() % 72)];
                fs.read_config(offset, &mut got);
                for (i, b) in got.iter().enumerate() {
                    let want = offset
                        .checked_add(i as u64)
                        .and_then(|a| usize::try_from(a).ok())
                        .and_then(|a| config.get(a))
                        .copied()
                        .unwrap_or(0);
                    assert_eq!(*b, want, "config byte {offset} + {i}");
                }
            }
            Op::Features => assert_eq!(fs.features(), features, "features changed"),
            Op::Activate => {
                let layout = input.u8();
                let mut acked = input.u64();
                if layout & 4 == 0 {
                    acked &= features;
                }
                let (qs, valid) = queues(input, layout);
                let all_ready = qs.len() == NUM_QUEUES && qs.iter().all(|q| q.ready());
                if m.tried {
                    continue;
                }
                m.tried = true;
                let rings: Vec<(u64, u64)> =
                    qs.iter().map(|q| (q.avail_ring(), q.used_ring())).collect();
                let ctx = ActivateContext {
                    mem: mem.clone(),
                    queue_evts: qs.iter().map(|_| eventfd()).collect(),
                    queues: qs,
                    interrupt: interrupt.clone(),
                    acked_features: acked,
                };
                let r = bounded("activation", || fs.activate(ctx));
                match &r {
                    _ if m.failed => {
                        assert!(matches!(r, Err(ActivateError::BackendFailed)), "{r:?}")
                    }
                    _ if !all_ready => {
                        assert!(matches!(r, Err(ActivateError::QueueCount { .. })), "{r:?}")
                    }
                    Ok(()) => {
                        m.active = true;
                        m.activations += 1;
                        m.rings = rings;
                    }
                    Err(ActivateError::Backend(e)) => {
                        m.failed = true;
                        let timed_out = matches!(
                            e.downcast_ref::<VhostUserError>(),
                            Some(VhostUserError::TimedOut { .. })
                        );
                        let proper = !backend.misbehaved.load(Ordering::SeqCst);
                        let excused = !valid || !shared_memory || timed_out || !proper;
                        assert!(excused, "a proper backend refused valid queues: {e}");
                    }
                    Err(e) => panic!("activation: {e:?}"),
                }
                check_metrics(&fs, &m);
            }
            Op::Reset => {
                bounded("reset", || fs.reset());
                m.resets += 1;
                m.tried = false;
                // A reset that failed at the backend fails the device; only a reset
                // of rings the backend holds talks to it.
                let failed = fs.metrics()["failed"] == true;
                assert!(!failed || m.failed || m.active, "an idle reset failed");
                m.failed = failed;
                m.active = false;
                check_metrics(&fs, &m);
            }
            Op::Call => {
                let queue = usize::from(input.u8()) % NUM_QUEUES;
                let before = metric(&fs, "interrupts");
                let signalled = backend
                    .calls
                    .lock()
                    .expect("the calls lock")
                    .get(queue)
                    .and_then(Option::as_ref)
                    .is_some_and(|mut f| f.write_all(&1u64.to_le_bytes()).is_ok());
                if signalled && m.active {
                    // The forwarder is asynchronous, and counts the call before it
                    // raises the interrupt: wait for both (a second at most).
                    let start = Instant::now();
                    while metric(&fs, "interrupts") == before || interrupt.status() & INT_VRING == 0
                    {
                        assert!(
                            start.elapsed() < Duration::from_secs(1),
                            "a backend call on an active device raised no interrupt"
                        );
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    interrupt.ack(INT_VRING);
                }
            }
            Op::Metrics => check_metrics(&fs, &m),
            Op::Pause => {
                // Bit 7: the guest moves a ring's idx first (which ring: a byte, avail
                // and used of each queue in turn; the value: a u16), back after.
                let moved = (op & 0x80 != 0).then(|| (input.u8(), input.u16()));
                check_pause(&mut fs, mem, &m, moved);
            }
        }
    }
    check_metrics(&fs, &m);
    bounded("a last reset", || fs.reset());
    drop(fs);
}
