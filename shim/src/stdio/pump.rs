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
}

/// Opens the streams `stdio` needs for (container, exec: "" for the init process), in
/// the order stdout, stderr, stdin.
pub async fn open(
    ep: &Endpoint,
    container: &str,
    exec: &str,
    stdio: &ProcessStdio,
) -> Result<Streams, Error> {
    check_supported(stdio)?;
    let mut s = Streams::default();
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

/// Refuses what cannot be served yet, before anything is opened.
fn check_supported(stdio: &ProcessStdio) -> Result<(), Error> {
    for o in [&stdio.stdout, &stdio.stderr].into_iter().flatten() {
        if let Output::Binary { path, .. } = o {
            return Err(Error::msg(
                ErrorKind::Unimplemented,
                format!(
                    "binary:// logging ({}) is not supported yet",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
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

/// The stdin copy and the way to end it.
#[derive(Debug)]
struct StdinPump {
    close: Arc<tokio::sync::Notify>,
}

/// Starts copying `streams` to and from the endpoints of `stdio`.
pub fn start(streams: Streams, stdio: &ProcessStdio) -> Result<Pumps, Error> {
    let mut p = Pumps::default();
    if let (Some(s), Some(o)) = (streams.stdout, &stdio.stdout) {
        p.out = Some(spawn_output(s, o)?);
    }
    if let (Some(s), Some(o)) = (streams.stderr, &stdio.stderr) {
        p.err = Some(spawn_output(s, o)?);
    }
    if let (Some(s), Some(i)) = (streams.stdin, &stdio.stdin) {
        p.stdin = Some(spawn_input(s, i)?);
    }
    Ok(p)
}

fn spawn_output(s: UnixStream, o: &Output) -> Result<JoinHandle<()>, Error> {
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
        Output::Binary { .. } => {
            return Err(Error::msg(
                ErrorKind::Unimplemented,
                "binary:// logging is not supported yet",
            ));
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
            let r = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(path)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidArgument,
                        std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
                    )
                })?;
            tokio::spawn(copy_in(r, s, close.clone()));
        }
    }
    Ok(StdinPump { close })
}

/// Copies `from` to a process's stdin stream until EOF or `close`, half-closes the
/// stream (the agent closes the process's stdin) and keeps it until the agent closes
/// it.
async fn copy_in<R: AsyncRead + Unpin>(
    mut from: R,
    mut si: UnixStream,
    close: Arc<tokio::sync::Notify>,
) {
    tokio::select! {
        _ = tokio::io::copy(&mut from, &mut si) => {}
        _ = close.notified() => {}
    }
    let _ = si.shutdown().await;
    let _ = tokio::io::copy(&mut si, &mut tokio::io::sink()).await;
}

impl Pumps {
    /// Whether there is a stdin copy to end.
    pub fn has_stdin(&self) -> bool {
        self.stdin.is_some()
    }

    /// Ends the stdin copy (the process sees EOF once what was sent is read).
    pub fn close_stdin(&mut self) {
        if let Some(s) = self.stdin.take() {
            s.close.notify_one();
        }
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

    #[tokio::test]
    async fn stdin_fifo_until_closed() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("in");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (mut si_agent, si) = UnixStream::pair().unwrap();
        let stdio = ProcessStdio {
            stdin: Some(Input::Fifo(fifo.clone())),
            ..Default::default()
        };
        let streams = Streams {
            stdin: Some(si),
            ..Default::default()
        };
        let mut pumps = start(streams, &stdio).unwrap();
        assert!(pumps.has_stdin());
        let mut w = tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(&fifo)
            .unwrap();
        w.write_all(b"hello").await.unwrap();
        drop(w);
        let mut got = [0u8; 5];
        si_agent.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // A writer that went is no EOF; close_stdin is.
        pumps.close_stdin();
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            si_agent.read_to_end(&mut rest),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn binary_loggers_are_refused_for_now() {
        let stdio = ProcessStdio {
            stdout: Some(Output::Binary {
                path: "/bin/logger".into(),
                args: vec![],
            }),
            ..Default::default()
        };
        assert_eq!(
            check_supported(&stdio).unwrap_err().kind(),
            ErrorKind::Unimplemented
        );
    }
}
