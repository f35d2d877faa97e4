//! Receiving a terminal's master: for `terminal: true` the runtime creates the pty
//! inside the container and sends its master over a unix socket (the OCI console
//! socket protocol: one fd in SCM_RIGHTS).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::net::UnixListener;

/// A console socket, removed when dropped.
#[derive(Debug)]
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> std::io::Result<ConsoleSocket> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        Ok(ConsoleSocket {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// Waits (bounded) for the runtime to connect and send the master.
    pub async fn receive(&self, timeout: Duration) -> std::io::Result<OwnedFd> {
        let (stream, _) = tokio::time::timeout(timeout, self.listener.accept())
            .await
            .map_err(|_| std::io::Error::other("no terminal from the runtime in time"))??;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(timeout))?;
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 4096];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = c
                    && let Some(&fd) = fds.first()
                {
                    for extra in &fds[1..] {
                        // SAFETY: fds received via SCM_RIGHTS are new and ours to close.
                        drop(unsafe { OwnedFd::from_raw_fd(*extra) });
                    }
                    // SAFETY: a received fd is a new descriptor owned by this process.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            Err(std::io::Error::other(
                "console socket: message without a file descriptor",
            ))
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
