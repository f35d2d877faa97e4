//! The control API: a unix socket (`--api-sock PATH`) speaking one JSON object per line.
//!
//! Requests: `{"op": "pause"}`, `{"op": "resume"}`, `{"op": "shutdown"}`,
//! `{"op": "metrics"}`, `{"op": "status"}`, `{"op": "snapshot", "dir": "/path"}` (pause
//! and save the VM into an existing empty folder; docs/snapshots.md). Responses: `{"ok": true, ...}` or
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
    /// Pause the VM and save it into `dir`; it stays paused (`resume` runs it on).
    Snapshot,
}

/// A request line: `{"op": ...}`, with `dir` for `snapshot`, and nothing else. (A
/// struct, because serde does not refuse unknown fields beside the tag of an
/// internally tagged enum's unit variants.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub op: Request,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<std::path::PathBuf>,
}

/// Parses one request line; `dir` is given exactly for `snapshot`.
pub fn parse_envelope(line: &[u8]) -> Result<Envelope, String> {
    let e = serde_json::from_slice::<Envelope>(line).map_err(|e| e.to_string())?;
    match (e.op, &e.dir) {
        (Request::Snapshot, None) => Err("snapshot needs \"dir\": an existing empty folder".into()),
        (Request::Snapshot, Some(_)) | (_, None) => Ok(e),
        (_, Some(_)) => Err("only snapshot takes \"dir\"".into()),
    }
}

/// Parses one request line without a folder.
pub fn parse_request(line: &[u8]) -> Result<Request, serde_json::Error> {
    serde_json::from_slice::<Envelope>(line).map(|e| e.op)
}

/// An error and its causes on one line: "a: b: c".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s += &format!(": {c}");
        src = c.source();
    }
    s
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
    call_envelope(socket, &Envelope { op: req, dir: None })
}

/// Asks the VM to pause and save itself into `dir` (an existing empty folder).
pub fn snapshot(socket: &Path, dir: &Path) -> Result<serde_json::Value, ApiError> {
    call_envelope(
        socket,
        &Envelope {
            op: Request::Snapshot,
            dir: Some(dir.to_path_buf()),
        },
    )
}

fn call_envelope(socket: &Path, env: &Envelope) -> Result<serde_json::Value, ApiError> {
    let mut s = UnixStream::connect(socket).map_err(|source| ApiError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    // A VMM that stops answering must not hang its caller: a snapshot writes all of
    // guest memory, the other requests answer at once.
    let limit = match env.op {
        Request::Snapshot => std::time::Duration::from_secs(300),
        _ => std::time::Duration::from_secs(30),
    };
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    let mut line = serde_json::to_string(env).map_err(|e| ApiError::BadResponse(e.to_string()))?;
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
            dir: None,
        })
        .unwrap();
        assert_eq!(line, r#"{"op":"metrics"}"#);
        let e = parse_envelope(br#"{"op": "snapshot", "dir": "/x"}"#).unwrap();
        assert_eq!(e.dir.as_deref(), Some(Path::new("/x")));
        assert!(parse_envelope(br#"{"op": "snapshot"}"#).is_err());
        assert!(parse_envelope(br#"{"op": "pause", "dir": "/x"}"#).is_err());
    }
}
