//! The API server: one thread accepting connections on the API socket and answering
//! each request line. Requests are bounded ([`MAX_REQUEST_BYTES`]); a bad line gets an
//! error response, never a crash. The socket file is removed when the server is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Sender;

use serde_json::json;

use super::{Envelope, MAX_REQUEST_BYTES, Request, parse_envelope};
use crate::devices::ExitReason;
use crate::vstate::vcpu::VcpuSet;

/// Why the API socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the API socket {0} is in use by another process")]
    InUse(PathBuf),
    #[error("cannot create the API socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API socket path {0} is too long for a unix socket")]
    PathTooLong(PathBuf),
}

/// What requests act on, once the VM runs.
pub struct Handles {
    pub vcpus: Arc<VcpuSet>,
    /// Takes snapshots; pause and resume go through it too, so that devices pause and
    /// resume with the vCPUs after a snapshot.
    pub snapshotter: crate::snapshot::take::Snapshotter,
    pub exits: Sender<ExitReason>,
    pub metrics: Box<dyn Fn() -> serde_json::Value + Send>,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles").finish_non_exhaustive()
    }
}

/// A bound API socket; removed on drop.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiSocket {
    /// Binds `path`. A stale socket file (nobody listening) is replaced; a live one is an
    /// error.
    pub fn bind(path: &Path) -> Result<ApiSocket, ServerError> {
        if path.as_os_str().len() > crate::config::MAX_SOCKET_PATH {
            return Err(ServerError::PathTooLong(path.to_path_buf()));
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ApiSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves requests on a thread of its own until the process exits.
    pub fn serve(&self, h: Handles) -> std::io::Result<()> {
        let listener = self.listener.try_clone()?;
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(s) => serve_conn(s, &h),
                        Err(e) => tracing::debug!(error = %e, "api accept failed"),
                    }
                }
            })?;
        Ok(())
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_conn(s: UnixStream, h: &Handles) {
    let Ok(mut out) = s.try_clone() else {
        return;
    };
    // A line longer than the limit is cut there, answered with an error, and the
    // connection closed.
    let mut reader = BufReader::new(s.take(MAX_REQUEST_BYTES as u64 * 16));
    loop {
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = line.len() > MAX_REQUEST_BYTES;
        let resp = if too_long {
            json!({"ok": false, "error": format!("request longer than {MAX_REQUEST_BYTES} bytes")})
        } else {
            match parse_envelope(&line) {
                Ok(env) => handle(env, h),
                Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            }
        };
        let mut text = resp.to_string();
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() || too_long {
            return;
        }
    }
}

fn handle(env: Envelope, h: &Handles) -> serde_json::Value {
    let req = env.op;
    tracing::info!(?req, dir = ?env.dir, "api request");
    match req {
        Request::Pause => match h.vcpus.pause() {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
        Request::Resume => match h.snapshotter.resume() {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e}),
        },
        Request::Snapshot => {
            let Some(dir) = env.dir else {
                return json!({"ok": false, "error": "snapshot needs \"dir\""});
            };
            match h.snapshotter.take(&dir) {
                Ok(summary) => json!({"ok": true, "snapshot": summary}),
                Err(e) => json!({"ok": false, "error": super::error_chain(&e)}),
            }
        }
        Request::Shutdown => {
            let _ = h.exits.send(ExitReason::Stopped(
                "shutdown requested through the API".into(),
            ));
            json!({"ok": true})
        }
        Request::Metrics => json!({"ok": true, "metrics": (h.metrics)()}),
        Request::Status => {
            let state = if h.vcpus.is_paused() {
                "paused"
            } else {
                "running"
            };
            json!({"ok": true, "state": state})
        }
    }
}
