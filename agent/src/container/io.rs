//! Wiring a process's stdio to the host's streams: a pipe per stream (a process's
//! stdout is a pipe, as under runc; `/dev/stdout` works on a pipe, not on a socket),
//! copied by a task in the agent. With a terminal, the pty master (received from the
//! runtime over the console socket) is copied instead.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::helper::ChildStdio;
use crate::lock;
use crate::stdio::BoxStream;

/// The agent's side of a process's stdio.
#[derive(Debug, Default)]
pub struct ProcessIo {
    /// Copies to and from the host; stdin first when present.
    stdin_task: Mutex<Option<JoinHandle<()>>>,
    output_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The pty master, for resize and for close-stdin on a terminal.
    pub pty: Mutex<Option<Arc<OwnedFd>>>,
}

async fn copy_out<R: AsyncRead + Unpin>(mut from: R, to: BoxStream) {
    let (_, mut w) = tokio::io::split(to);
    match tokio::io::copy(&mut from, &mut w).await {
        Ok(_) => {}
        // EIO: the terminal's other side closed (every process holding it exited).
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        Err(e) => tracing::debug!(error = %e, "stdio copy to host ended"),
    }
    let _ = w.shutdown().await;
}

async fn copy_in<W: AsyncWrite + Unpin>(from: BoxStream, mut to: W) {
    let (mut r, _) = tokio::io::split(from);
    if let Err(e) = tokio::io::copy(&mut r, &mut to).await {
        tracing::debug!(error = %e, "stdio copy from host ended");
    }
    let _ = to.shutdown().await;
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

impl ProcessIo {
    /// Creates the pipes for the streams given and starts copying. Returns what the
    /// process gets as its stdio (None: /dev/null).
    pub fn pipes(
        stdin: Option<BoxStream>,
        stdout: Option<BoxStream>,
        stderr: Option<BoxStream>,
    ) -> std::io::Result<(ProcessIo, ChildStdio)> {
        let io = ProcessIo::default();
        let mut child = ChildStdio {
            stdin: None,
            stdout: None,
            stderr: None,
        };
        if let Some(s) = stdin {
            let (r, w) = pipe_pair()?;
            let w = pipe::Sender::from_owned_fd(w)?;
            *lock(&io.stdin_task) = Some(tokio::spawn(copy_in(s, w)));
            child.stdin = Some(r);
        }
        for (s, slot) in [(stdout, &mut child.stdout), (stderr, &mut child.stderr)] {
            if let Some(s) = s {
                let (r, w) = pipe_pair()?;
                let r = pipe::Receiver::from_owned_fd(r)?;
                lock(&io.output_tasks).push(tokio::spawn(copy_out(r, s)));
                *slot = Some(w);
            }
        }
        Ok((io, child))
    }

    /// Starts copying between a terminal's master and the streams.
    pub fn attach_pty(
        &self,
        master: OwnedFd,
        stdin: Option<BoxStream>,
        stdout: Option<BoxStream>,
    ) -> std::io::Result<()> {
        let master = Arc::new(master);
        let dup = |m: &OwnedFd| m.try_clone();
        if let Some(s) = stdout {
            let r = pipe::Receiver::from_owned_fd_unchecked(dup(&master)?)?;
            lock(&self.output_tasks).push(tokio::spawn(copy_out(r, s)));
        }
        if let Some(s) = stdin {
            let w = pipe::Sender::from_owned_fd_unchecked(dup(&master)?)?;
            *lock(&self.stdin_task) = Some(tokio::spawn(copy_in(s, w)));
        }
        *lock(&self.pty) = Some(master);
        Ok(())
    }

    /// Closes the process's stdin: EOF on a pipe, ^D on a terminal.
    pub fn close_stdin(&self) {
        if let Some(t) = lock(&self.stdin_task).take() {
            // Aborting drops the pipe's write end: the process reads EOF.
            t.abort();
        }
        if let Some(m) = lock(&self.pty).as_ref() {
            // SAFETY: writes one byte from a valid buffer to a valid open fd.
            unsafe { libc::write(m.as_raw_fd(), [4u8].as_ptr().cast(), 1) };
        }
    }

    /// Sets the terminal's size.
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        let pty = lock(&self.pty);
        let Some(m) = pty.as_ref() else {
            return Err(std::io::Error::other("the process has no terminal"));
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer given.
        if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// After the process exited: waits (bounded) for its output to drain, then stops
    /// copying stdin.
    pub async fn finish(&self) {
        let tasks: Vec<JoinHandle<()>> = lock(&self.output_tasks).drain(..).collect();
        for t in tasks {
            // Output ends when every writer is gone; a daemon that kept the pipe open
            // must not hold the exit back forever.
            let abort = t.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(2), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(t) = lock(&self.stdin_task).take() {
            t.abort();
        }
    }
}
