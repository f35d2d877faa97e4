//! The stdio stream protocol both sides speak (docs/agent.md): the port, the header
//! line and the stream kinds. The agent parks streams (husk-agent's `stdio` module); the host
//! opens them ([`crate::client`]).

use std::path::{Path, PathBuf};

/// vsock port of the agent's stdio listener.
pub const STDIO_PORT: u32 = 1026;

/// Version field of the header line.
pub const HEADER_VERSION: &str = "0";

/// Which of a process's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StdioKind {
    Stdin,
    Stdout,
    Stderr,
}

impl StdioKind {
    /// The protocol's name for the stream.
    pub fn name(self) -> &'static str {
        match self {
            StdioKind::Stdin => "stdin",
            StdioKind::Stdout => "stdout",
            StdioKind::Stderr => "stderr",
        }
    }

    pub fn parse(s: &str) -> Option<StdioKind> {
        match s {
            "stdin" => Some(StdioKind::Stdin),
            "stdout" => Some(StdioKind::Stdout),
            "stderr" => Some(StdioKind::Stderr),
            _ => None,
        }
    }
}

/// The header line (with its newline) for (container, exec — "" for the init
/// process, kind).
pub fn header(container: &str, exec: &str, kind: StdioKind) -> String {
    let exec = if exec.is_empty() { "-" } else { exec };
    format!(
        "husk-stdio {HEADER_VERSION} {container} {exec} {}\n",
        kind.name()
    )
}

/// Where an agent serving the API on the unix socket `api` takes stdio streams.
pub fn unix_path(api: &Path) -> PathBuf {
    let mut s = api.as_os_str().to_owned();
    s.push(".stdio");
    PathBuf::from(s)
}

/// Why [`read_line`] returned no line.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The stream ended first; what came before the end.
    #[error("closed before the end of the line")]
    Closed(Vec<u8>),
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one line (without its newline) of at most `max` bytes, byte by byte: nothing
/// after the newline is consumed, since what follows a header is the stream's data.
/// Used by both sides of the stdio and vsock handshakes.
pub async fn read_line<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    max: usize,
) -> Result<Vec<u8>, LineError> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(64);
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(LineError::Closed(buf));
        }
        if b[0] == b'\n' {
            return Ok(buf);
        }
        buf.push(b[0]);
        if buf.len() > max {
            return Err(LineError::TooLong(max));
        }
    }
}
