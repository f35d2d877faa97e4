//! The host's side of the agent: one connection for the API, one per stdio stream, one
//! per port forward.
//!
//! Two transports: a plain unix socket (an agent on this host, `--listen unix:PATH`),
//! or husk-vmm's hybrid vsock (a unix socket on which `CONNECT <port>\n` is answered
//! `OK <n>\n`, then the stream is the guest's port).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::agent_ttrpc::AgentClient;
use crate::forward::FORWARD_PORT;
pub use crate::stdio::StdioKind;
use crate::stdio::{LineError, STDIO_PORT, header, unix_path};
use crate::{AGENT_PORT, validate};

/// Where the agent is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// An agent serving `unix:PATH`; its stdio listener is `PATH.stdio`, its forward
    /// listener `PATH.forward`.
    Unix(PathBuf),
    /// A VM's hybrid vsock socket.
    HybridVsock(PathBuf),
}

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {path}: {err}")]
    Connect { path: PathBuf, err: std::io::Error },
    #[error("{path}: vsock port {port}: {msg}")]
    Handshake {
        path: PathBuf,
        port: u32,
        msg: String,
    },
    #[error("stdio stream {what}: the agent refused it: {msg}")]
    Refused { what: String, msg: String },
    #[error("forward to guest port {port}: {msg}")]
    ForwardRefused { port: u16, msg: String },
    #[error("{0}")]
    Invalid(#[from] validate::ValidateError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one line of an answer (at most 256 bytes) within `timeout`.
async fn read_line(s: &mut UnixStream, timeout: Duration) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    let line = tokio::time::timeout(
        timeout,
        crate::stdio::read_line(s, crate::forward::MAX_ANSWER),
    )
    .await
    .map_err(|_| Error::new(ErrorKind::TimedOut, "no answer in time"))?;
    match line {
        Ok(l) => Ok(String::from_utf8_lossy(&l).into_owned()),
        Err(LineError::Closed(_)) => Err(Error::new(ErrorKind::UnexpectedEof, "closed")),
        Err(LineError::Io(e)) => Err(e),
        Err(e) => Err(Error::other(e.to_string())),
    }
}

/// Connects to a guest port through husk-vmm's hybrid vsock socket.
pub async fn connect_vsock(uds: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let mut s = UnixStream::connect(uds)
        .await
        .map_err(|err| ClientError::Connect {
            path: uds.to_path_buf(),
            err,
        })?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let line = read_line(&mut s, Duration::from_secs(10))
        .await
        .map_err(|e| ClientError::Handshake {
            path: uds.to_path_buf(),
            port,
            msg: e.to_string(),
        })?;
    if !line.starts_with("OK ") {
        return Err(ClientError::Handshake {
            path: uds.to_path_buf(),
            port,
            msg: format!("expected OK, got {line:?}"),
        });
    }
    Ok(s)
}

impl Endpoint {
    async fn connect(&self, port: u32) -> Result<UnixStream, ClientError> {
        match self {
            Endpoint::Unix(p) => {
                let path = match port {
                    AGENT_PORT => p.clone(),
                    FORWARD_PORT => crate::forward::unix_path(p),
                    _ => unix_path(p),
                };
                UnixStream::connect(&path)
                    .await
                    .map_err(|err| ClientError::Connect { path, err })
            }
            Endpoint::HybridVsock(uds) => connect_vsock(uds, port).await,
        }
    }

    /// A ttrpc client for the agent API.
    pub async fn agent(&self) -> Result<AgentClient, ClientError> {
        let s = self.connect(AGENT_PORT).await?;
        let socket = ttrpc::r#async::transport::Socket::new(s);
        Ok(AgentClient::new(ttrpc::r#async::Client::new(socket)))
    }

    /// Opens a stdio stream for (container, exec — "" for the init process, kind).
    pub async fn stdio(
        &self,
        container: &str,
        exec: &str,
        kind: StdioKind,
    ) -> Result<UnixStream, ClientError> {
        validate::id("container_id", container)?;
        if !exec.is_empty() {
            validate::id("exec_id", exec)?;
        }
        let mut s = self.connect(STDIO_PORT).await?;
        s.write_all(header(container, exec, kind).as_bytes())
            .await?;
        let what = format!(
            "{container}/{}/{}",
            if exec.is_empty() { "-" } else { exec },
            kind.name()
        );
        let line = read_line(&mut s, Duration::from_secs(10))
            .await
            .map_err(|e| ClientError::Refused {
                what: what.clone(),
                msg: e.to_string(),
            })?;
        if line != "OK" {
            return Err(ClientError::Refused {
                what,
                msg: printable(&line),
            });
        }
        Ok(s)
    }

    /// Opens a forward to TCP port `port` of the guest (its `127.0.0.1`, in the pod's
    /// network namespace): once the agent answers OK the stream is the connection.
    /// Refused (the agent's error line, or no answer within 10 s): [`ClientError::ForwardRefused`].
    pub async fn forward(&self, port: u16) -> Result<UnixStream, ClientError> {
        if port == 0 {
            return Err(ClientError::ForwardRefused {
                port,
                msg: "port 0 is not a TCP port".into(),
            });
        }
        let mut s = self.connect(FORWARD_PORT).await?;
        s.write_all(crate::forward::header(port).as_bytes()).await?;
        let line = read_line(&mut s, Duration::from_secs(10))
            .await
            .map_err(|e| ClientError::ForwardRefused {
                port,
                msg: e.to_string(),
            })?;
        if line != "OK" {
            let msg = printable(line.strip_prefix("error ").unwrap_or(&line));
            return Err(ClientError::ForwardRefused { port, msg });
        }
        Ok(s)
    }
}

/// The guest's text made safe for the host's logs and terminals: control characters
/// (escape sequences, carriage returns) become U+FFFD.
fn printable(guest_text: &str) -> String {
    guest_text
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(
            super::printable("no\x1b[31m such\rport"),
            "no\u{fffd}[31m such\u{fffd}port"
        );
        assert_eq!(super::printable("plain text"), "plain text");
    }
}
