//! Kubernetes port-forward into a pod's VM.
//!
//! containerd's CRI plugin (1.6, 1.7) implements PortForward on the host: it enters the
//! pod's network namespace (the CNI netns) and dials `tcp4 localhost:PORT` there. With
//! husk nothing listens in that namespace: the pod's processes run in the VM. So, for a
//! pod's namespace:
//!
//! - a TCP listener on `127.0.0.1:0` *inside* the namespace (bound on a thread that
//!   entered it: a socket stays in the namespace it was made in);
//! - an iptables rule there, `-t nat -A OUTPUT -p tcp -d 127.0.0.1/32 -m comment
//!   --comment husk-portforward -j REDIRECT --to-ports <listener>`, so that every
//!   locally made TCP connection to 127.0.0.1 reaches the listener;
//! - an accept loop: each connection's original port (`SO_ORIGINAL_DST`) is opened in
//!   the guest through the agent's forward stream (husk_agent_protocol::forward) and
//!   the bytes are copied both ways.
//!
//! [`PortForward::stop`] (at the pod network's teardown) ends the loop and its
//! connections and deletes the rule (a failure is logged). A host without iptables'
//! nat (or REDIRECT) cannot have it: the caller logs a warning and the pod runs without
//! port-forward.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use husk_agent_protocol::client::ClientError;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use super::netns::{Netns, NetnsError};
use super::tap::{self, TapError};

/// The comment on the rule (how it is found again).
pub const COMMENT: &str = "husk-portforward";
/// At most this many forwarded connections at once (the agent's own limit is 256).
pub const MAX_CONNECTIONS: usize = 256;
/// Opening the guest's side may take this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`Opener`]s return.
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<UnixStream, ClientError>> + Send>>;

/// Opens the agent's forward stream to a guest TCP port (a pod's:
/// [`agent_opener`]).
pub type Opener = Arc<dyn Fn(u16) -> OpenFuture + Send + Sync>;

/// The opener of the agent at `endpoint` (husk_agent_protocol's `Endpoint::forward`).
pub fn agent_opener(endpoint: husk_agent_protocol::client::Endpoint) -> Opener {
    Arc::new(move |port| {
        let ep = endpoint.clone();
        Box::pin(async move { ep.forward(port).await })
    })
}

/// Why the forward could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("port-forward listener in {netns}: {source}")]
    Listen {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("port-forward rule (iptables nat REDIRECT) in {netns}: {source}")]
    Rule {
        netns: String,
        #[source]
        source: TapError,
    },
}

/// A pod namespace's port-forward: the listener's accept loop and the rule.
#[derive(Debug)]
pub struct PortForward {
    ns: Netns,
    port: u16,
    task: Option<JoinHandle<()>>,
}

/// The rule's arguments after `-A`/`-D`/`-C` (the nat table, chain OUTPUT).
fn rule_args(port: u16) -> Vec<String> {
    [
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1/32",
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `iptables -w 5 -t nat OP ARGS` inside the namespace: waits at most 5 s for the
/// xtables lock (shared by every namespace; kube-proxy may hold it), never forever.
fn iptables(ns: &Netns, op: &str, args: &[String]) -> Result<std::process::Output, TapError> {
    let mut a = vec!["-w", "5", "-t", "nat", op];
    a.extend(args.iter().map(String::as_str));
    tap::run(ns, "iptables", &a)
}

/// The namespace's rules with our comment, as `-S` prints them (`-A OUTPUT ...`).
pub fn rules(ns: &Netns) -> Result<Vec<String>, TapError> {
    let out = iptables(ns, "-S", &["OUTPUT".to_string()])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A ") && l.split_whitespace().any(|w| w == COMMENT))
        .map(str::to_string)
        .collect())
}

/// Deletes every rule with our comment (a killed shim's, before a new one is added).
fn delete_stale(ns: &Netns) {
    let Ok(stale) = rules(ns) else { return };
    for line in stale {
        // `-S` prints the rule as `-A` takes it; the words have no spaces (ours).
        let args: Vec<String> = line
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect();
        match iptables(ns, "-D", &args) {
            Ok(_) => {
                tracing::info!(netns = %ns.path().display(), rule = %line, "removed a stale port-forward rule")
            }
            Err(e) => {
                tracing::warn!(netns = %ns.path().display(), rule = %line, error = %e, "could not remove a stale port-forward rule")
            }
        }
    }
}

/// The destination a REDIRECTed connection had (`SO_ORIGINAL_DST`).
pub fn original_dst(t: &TcpStream) -> std::io::Result<SocketAddr> {
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `sin`, which lives for the
    // call and is `len` bytes long; the fd is the open socket `t` borrows.
    let r = unsafe {
        libc::getsockopt(
            t.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut sin as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if i32::from(sin.sin_family) != libc::AF_INET {
        return Err(std::io::Error::other(format!(
            "SO_ORIGINAL_DST: address family {}",
            sin.sin_family
        )));
    }
    // Both in network byte order.
    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
}

/// One forwarded connection: its original port, the guest's stream, the copy.
async fn forward_one(mut t: TcpStream, peer: SocketAddr, open: Opener, netns: Arc<str>) {
    let dst = match original_dst(&t) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%netns, %peer, error = %e, "port-forward: no original destination; closing the connection");
            return;
        }
    };
    let port = dst.port();
    let mut s = match tokio::time::timeout(OPEN_TIMEOUT, open(port)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%netns, %peer, port, error = %e, "port-forward: the guest's port could not be opened; closing the connection");
            return;
        }
        Err(_) => {
            tracing::warn!(%netns, %peer, port, timeout = ?OPEN_TIMEOUT, "port-forward: the guest's port did not open in time; closing the connection");
            return;
        }
    };
    let _ = t.set_nodelay(true);
    tracing::debug!(%netns, %peer, port, "port-forward open");
    match tokio::io::copy_bidirectional(&mut t, &mut s).await {
        Ok((to_guest, to_host)) => {
            tracing::debug!(%netns, %peer, port, to_guest, to_host, "port-forward closed")
        }
        Err(e) => {
            tracing::debug!(%netns, %peer, port, error = %e, "port-forward ended with an error")
        }
    }
}

/// Accepts until aborted; dropping the loop (abort) drops every connection's task.
async fn accept_loop(l: TcpListener, open: Opener, netns: Arc<str>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((t, peer)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%netns, %peer, max = MAX_CONNECTIONS, "port-forward: too many connections; closing this one");
                        continue;
                    };
                    let (open, netns) = (open.clone(), netns.clone());
                    conns.spawn(async move {
                        forward_one(t, peer, open, netns).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(%netns, error = %e, "port-forward: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

impl PortForward {
    /// Sets up the forward in the namespace at `netns` (listener, rule, accept loop);
    /// every connection goes to the guest through `open`. Needs a tokio runtime (the
    /// caller's). Nothing is left behind on failure.
    pub fn start(netns: &Path, open: Opener) -> Result<PortForward, PortForwardError> {
        let ns = Netns::at(netns);
        let name = || netns.display().to_string();
        let rt = tokio::runtime::Handle::try_current().map_err(|e| PortForwardError::Listen {
            netns: name(),
            source: std::io::Error::other(e),
        })?;
        let listener = ns
            .run(|| -> std::io::Result<std::net::TcpListener> {
                let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })?
            .and_then(|l| {
                let port = l.local_addr()?.port();
                Ok((TcpListener::from_std(l)?, port))
            });
        let (listener, port) = listener.map_err(|source| PortForwardError::Listen {
            netns: name(),
            source,
        })?;
        delete_stale(&ns);
        iptables(&ns, "-A", &rule_args(port)).map_err(|source| PortForwardError::Rule {
            netns: name(),
            source,
        })?;
        let task = rt.spawn(accept_loop(listener, open, Arc::from(name().as_str())));
        tracing::info!(netns = %netns.display(), listener_port = port, "port-forward: localhost TCP in the pod's namespace goes to the VM");
        Ok(PortForward {
            ns,
            port,
            task: Some(task),
        })
    }

    /// The listener's port in the namespace.
    pub fn listener_port(&self) -> u16 {
        self.port
    }

    /// Ends the accept loop and every forwarded connection, and deletes the rule (a
    /// failure is logged). Idempotent.
    pub fn stop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        task.abort();
        match iptables(&self.ns, "-D", &rule_args(self.port)) {
            Ok(_) => {
                tracing::debug!(netns = %self.ns.path().display(), listener_port = self.port, "port-forward stopped")
            }
            Err(e) => {
                tracing::warn!(netns = %self.ns.path().display(), listener_port = self.port, error = %e, "port-forward: could not delete the rule")
            }
        }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        assert_eq!(
            rule_args(41234).join(" "),
            "OUTPUT -p tcp -d 127.0.0.1/32 -m comment --comment husk-portforward -j REDIRECT --to-ports 41234"
        );
    }
}
