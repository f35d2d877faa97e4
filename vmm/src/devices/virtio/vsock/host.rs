//! Host-side sockets of the hybrid vsock device: connecting to `<uds>_<port>` without
//! ever blocking the worker, and how many connections this process's file limit allows.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// File descriptors kept free for everything that is not a vsock connection (guest
/// memory, KVM, eventfds, the API, block images, taps, logs).
pub const RESERVED_FDS: u64 = 128;

/// Connects a non-blocking unix stream socket to `path`. A listener whose backlog is
/// full answers EAGAIN at once (unix(7)) instead of blocking the vsock worker, as a
/// blocking `connect` would.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un that lives across the call, and `len` does
    // not exceed its size (the path length was checked above).
    let ret = unsafe {
        libc::connect(
            fd,
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// The most vsock connections this process can hold: `wanted`, less where the soft
/// RLIMIT_NOFILE leaves fewer descriptors than that beside [`RESERVED_FDS`]. Each
/// connection costs one descriptor.
pub fn connection_limit(wanted: usize) -> usize {
    // SAFETY: rlimit is plain old data; all zeroes is a valid value.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes only into `lim`, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return wanted;
    }
    let free = lim.rlim_cur.saturating_sub(RESERVED_FDS);
    wanted
        .min(usize::try_from(free).unwrap_or(usize::MAX))
        .max(1)
}

/// Raises the soft file limit to the hard one (no privilege needed), so that the
/// connection limit is not an accident of the caller's shell; failures keep the soft
/// limit.
pub fn raise_file_limit() {
    // SAFETY: rlimit is plain old data; all zeroes is a valid value.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes only into `lim`, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads `lim`.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// Whether an accept() error means "out of descriptors or memory for now": the
/// listener stays readable, so the worker must back off instead of retrying at once.
pub fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn full_backlog_answers_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        let _l = UnixListener::bind(&path).unwrap();
        // Never accepted: the backlog fills, then connect must fail fast, not block.
        let mut held = Vec::new();
        let started = std::time::Instant::now();
        let err = loop {
            match connect_nonblocking(&path) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 100_000, "the backlog never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(!held.is_empty());
    }

    #[test]
    fn bad_paths_and_absent_listeners_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = connect_nonblocking(&dir.path().join("none")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let long = dir.path().join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn limit_follows_the_file_limit() {
        assert!(connection_limit(1) == 1);
        assert!(connection_limit(usize::MAX) < usize::MAX);
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_resource_shortage(&emfile));
        assert!(!is_resource_shortage(&io::Error::from(
            io::ErrorKind::WouldBlock
        )));
    }
}
