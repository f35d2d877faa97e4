//! The agent's main loop: the reaper, the ttrpc server, the stdio and forward
//! listeners, the readiness announcement, and an orderly stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use husk_agent_protocol::agent_ttrpc::create_agent;
use husk_agent_protocol::forward::{self as forward_wire, FORWARD_PORT};
use husk_agent_protocol::stdio::{self as stdio_wire, STDIO_PORT};
use tokio::signal::unix::{SignalKind, signal};

use crate::container::Runtime;
use crate::forward::Forwards;
use crate::listen::ListenAddr;
use crate::reaper::Reaper;
use crate::rpc::{Service, Shutdown};
use crate::stdio::{self, Pending};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: ListenAddr,
    pub state_dir: PathBuf,
    /// PID 1 of a guest: announces readiness, may set the clock, powers off at the end.
    pub pid1: bool,
}

/// Why the agent could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("state folder {path}: {err}")]
    State { path: PathBuf, err: std::io::Error },
    #[error("listen on {addr}: {err}")]
    Listen { addr: String, err: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The stdio listener's address for a given API address.
pub fn stdio_addr(listen: &ListenAddr) -> ListenAddr {
    match listen {
        ListenAddr::Vsock(_) => ListenAddr::Vsock(STDIO_PORT),
        ListenAddr::Unix(p) => ListenAddr::Unix(stdio_wire::unix_path(p)),
    }
}

/// The forward listener's address for a given API address.
pub fn forward_addr(listen: &ListenAddr) -> ListenAddr {
    match listen {
        ListenAddr::Vsock(_) => ListenAddr::Vsock(FORWARD_PORT),
        ListenAddr::Unix(p) => ListenAddr::Unix(forward_wire::unix_path(p)),
    }
}

fn prepare_unix_path(p: &Path) -> Result<(), ServeError> {
    if std::os::unix::net::UnixStream::connect(p).is_ok() {
        return Err(ServeError::Listen {
            addr: p.display().to_string(),
            err: "another agent is serving there".into(),
        });
    }
    let _ = std::fs::remove_file(p);
    Ok(())
}

/// One accepted (or failed) connection: hand it over, or back off a little.
async fn on_accept<S: stdio::Stream + 'static>(
    what: &'static str,
    r: std::io::Result<S>,
    handle: &(impl Fn(stdio::BoxStream) + Send + Sync),
) {
    match r {
        Ok(s) => handle(Box::new(s)),
        Err(e) => {
            tracing::warn!(listener = what, error = %e, "accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Binds `addr` and hands every connection to `handle` (which spawns its work).
fn serve_streams(
    what: &'static str,
    addr: &ListenAddr,
    handle: impl Fn(stdio::BoxStream) + Send + Sync + 'static,
) -> Result<(), ServeError> {
    let listen_err = |e: std::io::Error| ServeError::Listen {
        addr: addr.to_string(),
        err: e.to_string(),
    };
    match addr {
        ListenAddr::Unix(p) => {
            prepare_unix_path(p)?;
            let l = tokio::net::UnixListener::bind(p).map_err(listen_err)?;
            tokio::spawn(async move {
                loop {
                    on_accept(what, l.accept().await.map(|(s, _)| s), &handle).await;
                }
            });
        }
        ListenAddr::Vsock(port) => {
            let any = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
            let l = tokio_vsock::VsockListener::bind(any).map_err(listen_err)?;
            tokio::spawn(async move {
                loop {
                    on_accept(what, l.accept().await.map(|(s, _)| s), &handle).await;
                }
            });
        }
    }
    Ok(())
}

/// The stdio listener: every stream is parked for its process (crate::stdio).
fn serve_stdio(addr: &ListenAddr, pending: Pending) -> Result<(), ServeError> {
    serve_streams("stdio", addr, move |s| {
        tokio::spawn(stdio::accept(s, pending.clone()));
    })
}

/// The forward listener: every stream is a port forward (crate::forward).
fn serve_forward(addr: &ListenAddr, forwards: Forwards) -> Result<(), ServeError> {
    serve_streams("forward", addr, move |s| {
        tokio::spawn(forwards.clone().accept(s));
    })
}

/// Serves until DestroySandbox (or, off PID 1, SIGTERM/SIGINT); then every container
/// is deleted and the sockets removed.
pub async fn serve(opts: Options) -> Result<(), ServeError> {
    let reaper = Reaper::default();
    reaper.spawn()?;
    let rt = Arc::new(
        Runtime::new(&opts.state_dir, reaper).map_err(|err| ServeError::State {
            path: opts.state_dir.clone(),
            err,
        })?,
    );
    let shutdown = Shutdown::default();
    let svc = Service {
        rt: rt.clone(),
        shutdown: shutdown.clone(),
        pid1: opts.pid1,
    };

    let api = match &opts.listen {
        ListenAddr::Vsock(port) => format!("vsock://-1:{port}"),
        ListenAddr::Unix(p) => {
            prepare_unix_path(p)?;
            format!("unix://{}", p.display())
        }
    };
    let listen_err = |e: ttrpc::Error| ServeError::Listen {
        addr: opts.listen.to_string(),
        err: e.to_string(),
    };
    let mut server = ttrpc::r#async::Server::new()
        .bind(&api)
        .map_err(listen_err)?
        .register_service(create_agent(Arc::new(svc)));
    server.start().await.map_err(listen_err)?;
    let stdio_at = stdio_addr(&opts.listen);
    serve_stdio(&stdio_at, rt.pending.clone())?;
    let forward_at = forward_addr(&opts.listen);
    serve_forward(&forward_at, Forwards::default())?;
    tracing::info!(api = %opts.listen, stdio = %stdio_at, forward = %forward_at, "husk-agent serving");

    if opts.pid1
        && let Err(e) = crate::ready::announce().await
    {
        tracing::warn!(error = %e, "could not announce readiness on the host's vsock port");
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = shutdown.0.notified() => tracing::info!("shutting down (DestroySandbox)"),
        _ = term.recv(), if !opts.pid1 => tracing::info!("shutting down (SIGTERM)"),
        _ = int.recv(), if !opts.pid1 => tracing::info!("shutting down (SIGINT)"),
    }
    rt.delete_all().await;
    let _ = server.shutdown().await;
    for a in [&opts.listen, &stdio_at, &forward_at] {
        if let ListenAddr::Unix(p) = a {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}
