//! Joining a process's stdio endpoints to the agent's vsock streams: the streams are
//! opened before the process is created (the agent connects them as it starts it), the
//! copies run as tasks, and once the process has exited its output is drained for a
//! bounded time ([`crate::sanitize::DRAIN`] per stream): a background process that
//! keeps the output open cannot hold the caller. Waiting for an exit never waits on
//! these copies.

use std::sync::Arc;

use husk_agent_protocol::agent::Stdio as AgentStdio;
use husk_agent_protocol::client::{Endpoint, StdioKind};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use super::{Input, Output, ProcessStdio};
use crate::error::{Error, ErrorKind};

/// The agent's streams of one process, open, not yet copied.
#[derive(Debug, Default)]
pub struct Streams {
    stdin: Option<UnixStream>,
    stdout: Option<UnixStream>,
    stderr: Option<UnixStream>,
    /// The process's `binary://` logger, started and ready.
    logger: Option<super::logger::Logger>,
}

/// Opens the streams `stdio` needs for (container, exec: "" for the init process), in
/// the order stdout, stderr, stdin.
pub async fn open(
    ep: &Endpoint,
    container: &str,
    exec: &str,
    stdio: &ProcessStdio,
) -> Result<Streams, Error> {
    let mut s = Streams::default();
    // containerd gives stdout and stderr the same logger: one runs for both.
    let binary = [&stdio.stdout, &stdio.stderr]
        .into_iter()
        .flatten()
        .find_map(|o| match o {
            Output::Binary { path, args } => Some((path, args)),
            _ => None,
        });
    if let Some((path, args)) = binary {
        let ns = stdio.namespace.as_deref().unwrap_or("");
        s.logger = Some(super::logger::start(path, args, container, ns).await?);
    }
    if stdio.stdout.is_some() {
        s.stdout = Some(ep.stdio(container, exec, StdioKind::Stdout).await?);
    }
    if stdio.stderr.is_some() && !stdio.terminal {
        s.stderr = Some(ep.stdio(container, exec, StdioKind::Stderr).await?);
    }
    if stdio.stdin.is_some() {
        s.stdin = Some(ep.stdio(container, exec, StdioKind::Stdin).await?);
    }
    Ok(s)
}

impl Streams {
    /// Which streams the agent is to expect (CreateContainer's and ExecProcess's
    /// `stdio`).
    pub fn agent_stdio(&self) -> AgentStdio {
        let mut io = AgentStdio::new();
        io.stdin = self.stdin.is_some();
        io.stdout = self.stdout.is_some();
        io.stderr = self.stderr.is_some();
        io
    }
}

/// The copies of one process's stdio, running.
#[derive(Debug, Default)]
pub struct Pumps {
    out: Option<JoinHandle<()>>,
    err: Option<JoinHandle<()>>,
    stdin: Option<StdinPump>,
}

/// The stdin copy and the way to end it (dropped: ended, so that no copy, and no
/// thread waiting for a FIFO's writer, outlives its process).
#[derive(Debug)]
struct StdinPump {
    close: Arc<tokio::sync::Notify>,
}

impl Drop for StdinPump {
    fn drop(&mut self) {
        self.close.notify_one();
    }
}

/// Starts copying `streams` to and from the endpoints of `stdio`.
pub fn start(streams: Streams, stdio: &ProcessStdio) -> Result<Pumps, Error> {
    let mut p = Pumps::default();
    let (mut log_out, mut log_err) = match streams.logger {
        Some(l) => (Some(l.stdout), Some(l.stderr)),
        None => (None, None),
    };
    if let (Some(s), Some(o)) = (streams.stdout, &stdio.stdout) {
        p.out = Some(spawn_output(s, o, &mut log_out)?);
    }
    if let (Some(s), Some(o)) = (streams.stderr, &stdio.stderr) {
        p.err = Some(spawn_output(s, o, &mut log_err)?);
    }
    if let (Some(s), Some(i)) = (streams.stdin, &stdio.stdin) {
        p.stdin = Some(spawn_input(s, i)?);
    }
    Ok(p)
}

/// Starts copying `s` to `o`; a `binary://` output takes the logger's pipe `log`.
fn spawn_output(
    s: UnixStream,
    o: &Output,
    log: &mut Option<tokio::net::unix::pipe::Sender>,
) -> Result<JoinHandle<()>, Error> {
    Ok(match o {
        Output::Stdout { sanitize } => {
            tokio::spawn(crate::sanitize::copy(s, tokio::io::stdout(), *sanitize))
        }
        Output::Stderr { sanitize } => {
            tokio::spawn(crate::sanitize::copy(s, tokio::io::stderr(), *sanitize))
        }
        Output::File(path) => {
            let f = std::fs::File::create(path).map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
                )
            })?;
            tokio::spawn(crate::sanitize::copy(
                s,
                tokio::fs::File::from_std(f),
                false,
            ))
        }
        Output::Fifo(path) => {
            let w = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidArgument,
                        std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
                    )
                })?;
            tokio::spawn(crate::sanitize::copy(s, w, false))
        }
        Output::Binary { path, .. } => {
            let w = log.take().ok_or_else(|| {
                Error::msg(
                    ErrorKind::Internal,
                    format!("binary logger {}: not started", path.display()),
                )
            })?;
            tokio::spawn(crate::sanitize::copy(s, w, false))
        }
    })
}

fn spawn_input(s: UnixStream, i: &Input) -> Result<StdinPump, Error> {
    let close = Arc::new(tokio::sync::Notify::new());
    match i {
        Input::Stdin => {
            tokio::spawn(copy_in(tokio::io::stdin(), s, close.clone()));
        }
        Input::Fifo(path) => {
            use std::os::unix::fs::FileTypeExt;
            let bad = |e: std::io::Error| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
                )
            };
            let meta = std::fs::metadata(path).map_err(bad)?;
            if !meta.file_type().is_fifo() {
                return Err(bad(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a FIFO",
                )));
            }
            tokio::spawn(fifo_in(path.clone(), s, close.clone()));
        }
    }
    Ok(StdinPump { close })
}

/// A stdin FIFO, as containerd's own shims read it: opened for reading when a writer
/// comes (the open waits for one, off the async threads), copied until that writer's
/// EOF or `close`. A close before any writer came unblocks the open (a writer of our
/// own, opened and dropped) so that no thread is left waiting.
async fn fifo_in(path: std::path::PathBuf, si: UnixStream, close: Arc<tokio::sync::Notify>) {
    let p = path.clone();
    let opening = tokio::task::spawn_blocking(move || std::fs::File::open(p));
    tokio::pin!(opening);
    let mut si = si;
    tokio::select! {
        biased;
        opened = &mut opening => {
            let r = opened
                .map_err(std::io::Error::other)
                .and_then(|f| f)
                .and_then(tokio::net::unix::pipe::Receiver::from_file);
            match r {
                Ok(r) => return copy_in(r, si, close).await,
                Err(e) => tracing::warn!(fifo = %path.display(), error = %e, "stdin FIFO"),
            }
        }
        _ = close.notified() => {
            use std::os::unix::fs::OpenOptionsExt;
            // Unblock our own open with a writer of ours; until its thread is in
            // open(2) there is no reader and that fails (ENXIO): try again, bounded.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            let opened = loop {
                let w = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path);
                let r = tokio::time::timeout(std::time::Duration::from_millis(10), &mut opening).await;
                drop(w);
                match r {
                    Ok(opened) => break Some(opened),
                    Err(_) if tokio::time::Instant::now() > deadline => {
                        tracing::warn!(fifo = %path.display(), "stdin FIFO: its open could not be ended");
                        break None;
                    }
                    Err(_) => {}
                }
            };
            // The open may have been done by a writer that already wrote: keep that.
            if let Some(Ok(Ok(f))) = opened
                && let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_file(f)
            {
                drain_pending(&mut r, &mut si).await;
            }
        }
    }
    let _ = si.shutdown().await;
    let _ = tokio::io::copy(&mut si, &mut tokio::io::sink()).await;
}

/// Copies `from` to a process's stdin stream until EOF or `close`, half-closes the
/// stream (the agent closes the process's stdin) and keeps it until the agent closes
/// it.
async fn copy_in<R: AsyncRead + Unpin>(
    mut from: R,
    mut si: UnixStream,
    close: Arc<tokio::sync::Notify>,
) {
    use tokio::io::AsyncReadExt;
    // A read is the only thing a close cancels (nothing read is lost with it), never a
    // write of what was read.
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    loop {
        let n = tokio::select! {
            biased;
            r = from.read(&mut buf) => match r {
                Ok(n) if n > 0 => n,
                r => {
                    tracing::debug!(bytes = total, result = ?r.map(|_| ()), "stdin copied to its end");
                    break;
                }
            },
            _ = close.notified() => {
                // CloseIO comes right after the writer's last write (ctr calls it when
                // its own stdin ends): what is already in the pipe is still the process's.
                let n = drain_pending(&mut from, &mut si).await;
                tracing::debug!(bytes = total + n, "stdin closed");
                break;
            }
        };
        if si.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total += n;
    }
    let _ = si.shutdown().await;
    let _ = tokio::io::copy(&mut si, &mut tokio::io::sink()).await;
}

/// How long a closed stdin's pipe may stay silent before the rest is given up.
const PENDING_QUIET: std::time::Duration = std::time::Duration::from_millis(50);

/// Copies what `from` has ready (each read at most [`PENDING_QUIET`] apart, bounded in
/// all to 1 MiB), for a stdin being closed. Returns the bytes copied.
async fn drain_pending<R: AsyncRead + Unpin>(from: &mut R, si: &mut UnixStream) -> usize {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    while total < 1 << 20 {
        match tokio::time::timeout(PENDING_QUIET, from.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                if si.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                total += n;
            }
            _ => break,
        }
    }
    total
}

impl Pumps {
    /// Whether there is a stdin copy to end.
    pub fn has_stdin(&self) -> bool {
        self.stdin.is_some()
    }

    /// Ends the stdin copy (the process sees EOF once what was sent is read).
    pub fn close_stdin(&mut self) {
        // Dropping the pump ends the copy.
        self.stdin.take();
    }

    /// Waits for the output copies to end, at most [`crate::sanitize::DRAIN`] each,
    /// then stops them.
    pub async fn drain(self) {
        if let Some(o) = self.out {
            crate::sanitize::drain(o).await;
        }
        if let Some(e) = self.err {
            crate::sanitize::drain(e).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn fifo_and_file_outputs() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let file = d.path().join("err.log");
        let stdio = ProcessStdio {
            stdout: Some(Output::Fifo(fifo.clone())),
            stderr: Some(Output::File(file.clone())),
            ..Default::default()
        };
        let (so_agent, so) = UnixStream::pair().unwrap();
        let (se_agent, se) = UnixStream::pair().unwrap();
        let streams = Streams {
            stdout: Some(so),
            stderr: Some(se),
            stdin: None,
            logger: None,
        };
        assert!(streams.agent_stdio().stdout && streams.agent_stdio().stderr);
        // The reader opens after the writer: no ENXIO, nothing lost.
        let pumps = start(streams, &stdio).unwrap();
        let mut reader = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(&fifo)
            .unwrap();
        let (mut so_agent, mut se_agent) = (so_agent, se_agent);
        so_agent.write_all(b"out\x1b[2J").await.unwrap();
        se_agent.write_all(b"err").await.unwrap();
        drop((so_agent, se_agent));
        let mut got = [0u8; 7];
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"out\x1b[2J", "FIFOs get the output as it is");
        pumps.drain().await;
        assert_eq!(std::fs::read(&file).unwrap(), b"err");
    }

    /// A stdin FIFO in a new folder, its pump started: (folder, FIFO, the agent's end
    /// of the stream, the pumps).
    fn stdin_fifo() -> (tempfile::TempDir, std::path::PathBuf, UnixStream, Pumps) {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("in");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (si_agent, si) = UnixStream::pair().unwrap();
        let stdio = ProcessStdio {
            stdin: Some(Input::Fifo(fifo.clone())),
            ..Default::default()
        };
        let streams = Streams {
            stdin: Some(si),
            ..Default::default()
        };
        let pumps = start(streams, &stdio).unwrap();
        (d, fifo, si_agent, pumps)
    }

    /// Everything the agent's end gets until EOF (at most 5 s).
    async fn read_all(s: &mut UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    }

    #[tokio::test]
    async fn stdin_fifo_until_its_writer_closes() {
        let (_d, fifo, mut si_agent, pumps) = stdin_fifo();
        assert!(pumps.has_stdin());
        // A writer as containerd's FIFO library opens one: waiting for the reader.
        let f = fifo.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(f).unwrap();
            w.write_all(b"hello").unwrap();
            // The writer goes (ctr's stdin reached EOF): the process's stdin ends.
        })
        .await
        .unwrap();
        let got = read_all(&mut si_agent).await;
        assert_eq!(got, b"hello");
    }

    /// ctr's order: the last write, then CloseIO at once; the data is not lost.
    #[tokio::test]
    async fn stdin_closed_right_after_the_last_write() {
        let (_d, fifo, mut si_agent, mut pumps) = stdin_fifo();
        let f = fifo.clone();
        // The writer stays open (no EOF): only the close ends the input.
        let w = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(f).unwrap();
            w.write_all(b"last words").unwrap();
            w
        })
        .await
        .unwrap();
        pumps.close_stdin();
        let got = read_all(&mut si_agent).await;
        assert_eq!(got, b"last words");
        drop(w);
    }

    #[tokio::test]
    async fn stdin_fifo_closed_before_any_writer() {
        let (d, _fifo, mut si_agent, mut pumps) = stdin_fifo();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        pumps.close_stdin();
        let rest = read_all(&mut si_agent).await;
        assert!(rest.is_empty());
        // Not a FIFO: refused at once.
        let file = d.path().join("file");
        std::fs::write(&file, "").unwrap();
        let (_a, b) = UnixStream::pair().unwrap();
        let e = start(
            Streams {
                stdin: Some(b),
                ..Default::default()
            },
            &ProcessStdio {
                stdin: Some(Input::Fifo(file)),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}
