//! The loopback interface of a network namespace, brought up as runc does for every
//! new network namespace (and as docker's `--network none` still has): programs that
//! talk to 127.0.0.1 (test suites, databases, language servers) work with or without a
//! network. Set with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls (netdevice(7)).
//!
//! [`loopback_up_in`] enters the namespace of another process (setns(2)), which changes
//! the calling thread's namespace: it is called in the single-threaded runtime helper,
//! which exits right after.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The loopback interface's name.
const LOOPBACK: &str = "lo";

/// Why the loopback interface could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace of pid {pid}: {what}")]
    Namespace {
        pid: i32,
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("bring up {LOOPBACK}: {what}")]
    Interface {
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
}

/// Sets IFF_UP on `lo` in this thread's network namespace (nothing if already up).
pub fn loopback_up() -> Result<(), NetnsError> {
    let fail = |what| {
        move |e: nix::Error| NetnsError::Interface {
            what,
            err: e.into(),
        }
    };
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(fail("socket"))?;
    // SAFETY: ifreq is plain old data (a name and a union of integers and addresses);
    // all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(LOOPBACK.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name from `req` and writes the
    // flags into it; `req` is a valid ifreq that outlives the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) };
    nix::Error::result(r).map_err(fail("SIOCGIFFLAGS"))?;
    // SAFETY: SIOCGIFFLAGS has just filled the union's flags member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up = libc::IFF_UP as libc::c_short;
    if flags & up != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`, a valid ifreq that
    // outlives the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) };
    nix::Error::result(r).map_err(fail("SIOCSIFFLAGS"))?;
    Ok(())
}

/// When process `pid` has a network namespace of its own (not this process's), enters
/// it and brings its `lo` up. Returns whether it did. Changes the calling thread's
/// network namespace: call it only from a thread (or process) that ends afterwards.
pub fn loopback_up_in(pid: i32) -> Result<bool, NetnsError> {
    let ns_err = |what| move |err| NetnsError::Namespace { pid, what, err };
    let path = format!("/proc/{pid}/ns/net");
    let theirs = std::fs::File::open(&path).map_err(ns_err("open"))?;
    let mine = std::fs::metadata("/proc/self/ns/net").map_err(ns_err("stat our own"))?;
    let st = theirs.metadata().map_err(ns_err("stat"))?;
    if (st.dev(), st.ino()) == (mine.dev(), mine.ino()) {
        return Ok(false);
    }
    setns(theirs.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| ns_err("setns")(e.into()))?;
    loopback_up()?;
    Ok(true)
}
