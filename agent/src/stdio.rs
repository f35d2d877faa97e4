//! stdio streams: the host opens one stream per (container, exec, stdin|stdout|stderr)
//! to the agent's stdio listener (vsock port 1026, or `<listen path>.stdio` in host
//! mode) and sends one header line:
//!
//! ```text
//! husk-stdio 0 <container_id> <exec_id or -> <stdin|stdout|stderr>\n
//! ```
//!
//! The agent answers `OK\n` (or `ERR <reason>\n` and closes) and parks the stream until
//! the process it names is created, which takes it. No per-chunk RPCs: after the header
//! the stream carries the raw bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use husk_agent_protocol::stdio::{HEADER_VERSION, LineError, read_line};
use husk_agent_protocol::validate;

/// Longest header line accepted.
const MAX_HEADER: usize = 512;
/// A client has this long to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams not taken by a process within this time are dropped.
const PENDING_TTL: Duration = Duration::from_secs(60);
/// At most this many streams wait for their process.
const MAX_PENDING: usize = 256;

pub use husk_agent_protocol::stdio::StdioKind as Kind;

/// A byte stream from the host (vsock or unix).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
pub type BoxStream = Box<dyn Stream>;

type Key = (String, String, Kind);

/// Streams that arrived before their process.
#[derive(Clone, Default)]
pub struct Pending {
    inner: Arc<Mutex<HashMap<Key, (BoxStream, Instant)>>>,
    /// Told whenever a stream is parked.
    parked: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, (BoxStream, Instant)>> {
        crate::lock(&self.inner)
    }

    fn insert(&self, key: Key, s: BoxStream) {
        let mut m = self.lock();
        let now = Instant::now();
        m.retain(|_, (_, t)| now.duration_since(*t) < PENDING_TTL);
        while m.len() >= MAX_PENDING {
            let oldest = m
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    m.remove(&k);
                }
                None => break,
            }
        }
        // A second stream for the same key replaces the first (which is closed).
        m.insert(key, (s, now));
        drop(m);
        self.parked.notify_waiters();
    }

    /// Takes the stream for (container, exec, kind); `exec` is "" for the init process.
    pub fn take(&self, container: &str, exec: &str, kind: Kind) -> Option<BoxStream> {
        self.lock()
            .remove(&(container.to_string(), exec.to_string(), kind))
            .map(|(s, _)| s)
    }

    /// Takes the stream for (container, exec, kind), waiting up to `grace` for it: the
    /// host sends its request as soon as it reads the "OK" of the stream's header, and
    /// the stream is parked only just after that answer.
    pub async fn take_within(
        &self,
        container: &str,
        exec: &str,
        kind: Kind,
        grace: Duration,
    ) -> Option<BoxStream> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let parked = self.parked.notified();
            tokio::pin!(parked);
            // Registered before the check, so a stream parked in between is not missed.
            parked.as_mut().enable();
            if let Some(s) = self.take(container, exec, kind) {
                return Some(s);
            }
            if tokio::time::timeout_at(deadline, parked).await.is_err() {
                return None;
            }
        }
    }

    /// Drops every stream parked for a container (when it is deleted).
    pub fn forget_container(&self, container: &str) {
        self.lock().retain(|(c, _, _), _| c != container);
    }
}

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "header: expected `husk-stdio {HEADER_VERSION} CONTAINER EXEC|- stdin|stdout|stderr`, got {0:?}"
    )]
    Format(String),
    #[error("header: unsupported version {0:?} (this agent speaks {HEADER_VERSION})")]
    Version(String),
    #[error("header: {0}")]
    Invalid(#[from] validate::ValidateError),
    #[error("header: longer than {MAX_HEADER} bytes or not UTF-8")]
    TooLong,
    #[error("header: not received within {HEADER_TIMEOUT:?}")]
    Timeout,
    #[error("header: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses one header line (without its newline).
pub fn parse_header(line: &str) -> Result<Key, HeaderError> {
    let parts: Vec<&str> = line.split(' ').collect();
    let [magic, version, container, exec, kind] = parts[..] else {
        return Err(HeaderError::Format(line.to_string()));
    };
    if magic != "husk-stdio" {
        return Err(HeaderError::Format(line.to_string()));
    }
    if version != HEADER_VERSION {
        return Err(HeaderError::Version(version.to_string()));
    }
    validate::id("container_id", container)?;
    let exec = if exec == "-" {
        String::new()
    } else {
        validate::id("exec_id", exec)?;
        exec.to_string()
    };
    let kind = Kind::parse(kind).ok_or_else(|| HeaderError::Format(line.to_string()))?;
    Ok((container.to_string(), exec, kind))
}

async fn read_header<S: AsyncRead + Unpin>(s: &mut S) -> Result<String, HeaderError> {
    match read_line(s, MAX_HEADER).await {
        Ok(line) => String::from_utf8(line).map_err(|_| HeaderError::TooLong),
        Err(LineError::Closed(part)) => Err(HeaderError::Format(
            String::from_utf8_lossy(&part).into_owned(),
        )),
        Err(LineError::TooLong(_)) => Err(HeaderError::TooLong),
        Err(LineError::Io(e)) => Err(HeaderError::Io(e)),
    }
}

/// Handles one new stream: header, answer, park.
pub async fn accept<S: Stream + 'static>(mut s: S, pending: Pending) {
    let header = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut s)).await {
        Ok(r) => r,
        Err(_) => Err(HeaderError::Timeout),
    };
    let key = header.and_then(|line| parse_header(&line));
    match key {
        Ok(key) => {
            if s.write_all(b"OK\n").await.is_ok() {
                tracing::debug!(container = %key.0, exec = %key.1, kind = ?key.2, "stdio stream parked");
                pending.insert(key, Box::new(s));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "stdio stream refused");
            let _ = s.write_all(format!("ERR {e}\n").as_bytes()).await;
            let _ = s.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("husk-stdio 0 c1 - stdout").unwrap(),
            ("c1".into(), String::new(), Kind::Stdout)
        );
        assert_eq!(
            parse_header("husk-stdio 0 c1 e.2 stdin").unwrap(),
            ("c1".into(), "e.2".into(), Kind::Stdin)
        );
        for bad in [
            "",
            "husk-stdio 0 c1 - stdwhat",
            "husk-stdio 1 c1 - stdout",
            "husk-stdio 0 ../x - stdout",
            "husk-stdio 0 c1 a/b stdout",
            "other 0 c1 - stdout",
            "husk-stdio 0 c1 - stdout extra",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn streams_park_and_are_taken_once() {
        let pending = Pending::default();
        let (mut host, agent) = tokio::io::duplex(1024);
        let p = pending.clone();
        let t = tokio::spawn(async move { accept(agent, p).await });
        host.write_all(b"husk-stdio 0 c 7 stderr\nDATA")
            .await
            .unwrap();
        let mut ok = [0u8; 3];
        host.read_exact(&mut ok).await.unwrap();
        assert_eq!(&ok, b"OK\n");
        t.await.unwrap();
        let mut s = pending.take("c", "7", Kind::Stderr).expect("parked");
        let mut data = [0u8; 4];
        s.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"DATA", "bytes after the header are kept");
        assert!(pending.take("c", "7", Kind::Stderr).is_none());
    }

    #[tokio::test]
    async fn a_bad_header_is_answered_and_closed() {
        let pending = Pending::default();
        let (mut host, agent) = tokio::io::duplex(1024);
        let p = pending.clone();
        let t = tokio::spawn(async move { accept(agent, p).await });
        host.write_all(b"husk-stdio 0 ../../etc - stdout\n")
            .await
            .unwrap();
        let mut reply = String::new();
        host.read_to_string(&mut reply).await.unwrap();
        t.await.unwrap();
        assert!(reply.starts_with("ERR "), "{reply}");
        assert!(reply.contains("container_id"), "{reply}");
    }

    #[tokio::test]
    async fn a_stream_parked_just_after_the_request_is_found() {
        let pending = Pending::default();
        let p = pending.clone();
        let parker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (_, agent) = tokio::io::duplex(64);
            p.insert(("c1".into(), String::new(), Kind::Stdout), Box::new(agent));
        });
        let grace = Duration::from_secs(5);
        let s = pending.take_within("c1", "", Kind::Stdout, grace).await;
        assert!(s.is_some());
        parker.await.unwrap();
        // One that never comes: None once the grace is over.
        let t0 = Instant::now();
        let none = pending
            .take_within("c1", "", Kind::Stderr, Duration::from_millis(100))
            .await;
        assert!(none.is_none());
        assert!(t0.elapsed() >= Duration::from_millis(100));
    }
}
