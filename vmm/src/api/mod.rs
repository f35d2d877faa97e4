//! The control API: a unix socket (`--api-sock PATH`) speaking one JSON object per line.
//!
//! Requests: `{"op": "pause"}`, `{"op": "resume"}`, `{"op": "shutdown"}`,
//! `{"op": "metrics"}`, `{"op": "status"}`. Responses: `{"ok": true, ...}` or
//! `{"ok": false, "error": "..."}`. `shutdown` stops the VM from the host side (the VMM
//! then exits with status 4); a clean guest shutdown is the agent's job. See
//! docs/vmm-config.md.

pub mod server;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Longest request line accepted.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// A request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Stop running the vCPUs (devices keep their state).
    Pause,
    /// Run them again.
    Resume,
    /// Stop the VM now; the VMM exits.
    Shutdown,
    /// Counters of every device.
    Metrics,
    /// Whether the VM runs or is paused.
    Status,
}

/// A request line: `{"op": ...}` and nothing else. (A struct, because serde does not
/// refuse unknown fields beside the tag of an internally tagged enum's unit variants.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub op: Request,
}

/// Parses one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, serde_json::Error> {
    serde_json::from_slice::<Envelope>(line).map(|e| e.op)
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the API socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("API I/O failed")]
    Io(#[from] std::io::Error),
    #[error("bad API response: {0}")]
    BadResponse(String),
    #[error("the VMM refused: {0}")]
    Refused(String),
}

/// Sends one request and returns the response object (`ok` was true).
pub fn call(socket: &Path, req: Request) -> Result<serde_json::Value, ApiError> {
    let mut s = UnixStream::connect(socket).map_err(|source| ApiError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    let mut line = serde_json::to_string(&Envelope { op: req })
        .map_err(|e| ApiError::BadResponse(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp)?;
    let v: serde_json::Value =
        serde_json::from_str(&resp).map_err(|e| ApiError::BadResponse(format!("{e}: {resp:?}")))?;
    if v.get("ok") == Some(&serde_json::Value::Bool(true)) {
        Ok(v)
    } else {
        let why = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no reason given");
        Err(ApiError::Refused(why.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            parse_request(br#"{"op": "pause"}"#).unwrap(),
            Request::Pause
        );
        assert!(parse_request(br#"{"op": "reboot"}"#).is_err());
        assert!(parse_request(br#"{"op": "pause", "x": 1}"#).is_err());
        assert!(parse_request(b"{}").is_err());
        let line = serde_json::to_string(&Envelope {
            op: Request::Metrics,
        })
        .unwrap();
        assert_eq!(line, r#"{"op":"metrics"}"#);
    }
}
