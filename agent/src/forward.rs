//! Port forwards: the host opens a stream to the agent's forward listener (vsock port
//! 1027, or `<listen path>.forward` in host mode) and sends one header line naming a
//! TCP port:
//!
//! ```text
//! husk-forward 0 <port>\n
//! ```
//!
//! The agent connects to `127.0.0.1:<port>` in its own network namespace (the guest's,
//! which the pod's containers share), answers `OK\n` or `error <reason>\n` (one line,
//! bounded; then it closes), and copies bytes both ways until both directions ended (a
//! half-close is passed on: EOF from one side shuts the other's write side down).
//! Kubernetes' port-forward reaches a pod's port through this (the shim's side:
//! crate::network::portfwd in husk-shim).
//!
//! Bounded: the header (64 bytes, 10 s), the connect (10 s), and at most
//! [`MAX_FORWARDS`] forwards at once (beyond: an error line).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use husk_agent_protocol::forward::{HeaderError, MAX_HEADER, error_line, parse_header};
use husk_agent_protocol::stdio::{LineError, read_line};

use crate::stdio::Stream;

/// At most this many forwards are open at once.
pub const MAX_FORWARDS: usize = 256;
/// A client has this long to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A client over the limit has this long to send its header before it is answered.
const BUSY_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// The guest's port has this long to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The forwards' shared limit. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Forwards {
    slots: Arc<Semaphore>,
    max: usize,
}

impl Default for Forwards {
    fn default() -> Self {
        Forwards::new(MAX_FORWARDS)
    }
}

/// Why a forward was refused (the text of its error line).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("header: longer than {MAX_HEADER} bytes or not UTF-8")]
    TooLong,
    #[error("header: closed before the end of the line")]
    Closed,
    #[error("header: not received within {0:?}")]
    Timeout(Duration),
    #[error("header: {0}")]
    Io(std::io::Error),
    #[error("too many forwards open (at most {0})")]
    Busy(usize),
    #[error("connect to 127.0.0.1:{port}: {source}")]
    Connect {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to 127.0.0.1:{port}: no answer within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { port: u16 },
}

async fn read_header<S: AsyncRead + Unpin>(
    s: &mut S,
    timeout: Duration,
) -> Result<u16, ForwardError> {
    let line = match tokio::time::timeout(timeout, read_line(s, MAX_HEADER)).await {
        Err(_) => return Err(ForwardError::Timeout(timeout)),
        Ok(Ok(line)) => line,
        Ok(Err(LineError::Closed(_))) => return Err(ForwardError::Closed),
        Ok(Err(LineError::TooLong(_))) => return Err(ForwardError::TooLong),
        Ok(Err(LineError::Io(e))) => return Err(ForwardError::Io(e)),
    };
    let line = String::from_utf8(line).map_err(|_| ForwardError::TooLong)?;
    Ok(parse_header(&line)?)
}

async fn connect(port: u16) -> Result<TcpStream, ForwardError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => Err(ForwardError::ConnectTimeout { port }),
        Ok(Err(source)) => Err(ForwardError::Connect { port, source }),
        Ok(Ok(t)) => {
            let _ = t.set_nodelay(true);
            Ok(t)
        }
    }
}

async fn refuse<S: Stream>(s: &mut S, e: &ForwardError) {
    // Every variant's message carries its cause already.
    tracing::warn!(error = %e, "forward refused");
    let _ = s.write_all(error_line(&e.to_string()).as_bytes()).await;
    let _ = s.shutdown().await;
}

impl Forwards {
    /// A limit of `max` forwards at once.
    pub fn new(max: usize) -> Forwards {
        Forwards {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Handles one new stream from the host: header, connect, answer, copy. Returns
    /// when the forward is over (spawn it).
    pub async fn accept<S: Stream>(self, mut s: S) {
        let Ok(_permit) = self.slots.clone().try_acquire_owned() else {
            // Read the header first (briefly) so that the host gets the answer rather
            // than a reset for the bytes it sent.
            let _ = read_header(&mut s, BUSY_HEADER_TIMEOUT).await;
            refuse(&mut s, &ForwardError::Busy(self.max)).await;
            return;
        };
        let port = match read_header(&mut s, HEADER_TIMEOUT).await {
            Ok(p) => p,
            Err(e) => return refuse(&mut s, &e).await,
        };
        let mut tcp = match connect(port).await {
            Ok(t) => t,
            Err(e) => return refuse(&mut s, &e).await,
        };
        if let Err(e) = s.write_all(b"OK\n").await {
            tracing::debug!(port, error = %e, "forward: the host went before the answer");
            return;
        }
        tracing::debug!(port, "forward open");
        match tokio::io::copy_bidirectional(&mut s, &mut tcp).await {
            Ok((to_guest, to_host)) => {
                tracing::debug!(port, to_guest, to_host, "forward closed");
            }
            Err(e) => {
                tracing::debug!(port, error = %e, "forward ended with an error");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn answer(h: &mut tokio::io::DuplexStream) -> String {
        let line = read_line(h, 512).await.unwrap();
        String::from_utf8(line).unwrap()
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_half_close_passes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut t, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            t.read_to_end(&mut got).await.unwrap();
            t.write_all(&got).await.unwrap();
            t.write_all(b"!").await.unwrap();
        });
        let (mut host, agent) = tokio::io::duplex(1024);
        let f = tokio::spawn(Forwards::default().accept(agent));
        host.write_all(format!("husk-forward 0 {port}\nping").as_bytes())
            .await
            .unwrap();
        assert_eq!(answer(&mut host).await, "OK");
        host.shutdown().await.unwrap();
        let mut back = Vec::new();
        host.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"ping!");
        server.await.unwrap();
        f.await.unwrap();
    }

    #[tokio::test]
    async fn refusals_are_one_error_line() {
        // A port nobody listens on (bound, then closed).
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        for (header, want) in [
            ("husk-forward 0 0\n".to_string(), "not a TCP port"),
            ("husk-forward 0 70000\n".to_string(), "not a TCP port"),
            ("husk-forward 0 abc\n".to_string(), "not a TCP port"),
            ("husk-forward 9 80\n".to_string(), "version"),
            (format!("{}\n", "x".repeat(100)), "longer than"),
            (format!("husk-forward 0 {closed}\n"), "refused"),
        ] {
            let (mut host, agent) = tokio::io::duplex(1024);
            let f = tokio::spawn(Forwards::default().accept(agent));
            host.write_all(header.as_bytes()).await.unwrap();
            let a = answer(&mut host).await;
            assert!(a.starts_with("error "), "{header:?}: {a}");
            assert!(a.contains(want), "{header:?}: {a}");
            let mut rest = Vec::new();
            host.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "closed after the error line");
            f.await.unwrap();
        }
    }

    #[tokio::test]
    async fn beyond_the_limit_an_error_line() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // Each connection held until its client's EOF.
        tokio::spawn(async move {
            loop {
                let (mut t, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = t.read_to_end(&mut sink).await;
                });
            }
        });
        let fw = Forwards::new(1);
        let (mut h1, a1) = tokio::io::duplex(1024);
        let f1 = tokio::spawn(fw.clone().accept(a1));
        h1.write_all(format!("husk-forward 0 {port}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(answer(&mut h1).await, "OK");
        let (mut h2, a2) = tokio::io::duplex(1024);
        let f2 = tokio::spawn(fw.clone().accept(a2));
        h2.write_all(format!("husk-forward 0 {port}\n").as_bytes())
            .await
            .unwrap();
        let a = answer(&mut h2).await;
        assert!(a.starts_with("error too many forwards"), "{a}");
        f2.await.unwrap();
        drop(h1);
        f1.await.unwrap();
        // The slot is free again.
        let (mut h3, a3) = tokio::io::duplex(1024);
        let f3 = tokio::spawn(fw.accept(a3));
        h3.write_all(format!("husk-forward 0 {port}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(answer(&mut h3).await, "OK");
        drop(h3);
        f3.await.unwrap();
    }
}
