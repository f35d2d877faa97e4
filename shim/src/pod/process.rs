//! A pod's processes: create a container (its init), start it, exec into it, signal,
//! wait, delete, resize its terminal, close its stdin.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use husk_agent_protocol::agent::{
    ContainerRequest, CreateContainerRequest, DeleteContainerRequest, ExecProcessRequest,
    ProcessRequest, ResizePtyRequest, Rootfs, SignalProcessRequest,
};
use tracing::{debug, info};

use super::{Pod, ProcessKey, ctx, ctx_unbounded};
use crate::error::{Error, ErrorKind};
use crate::stdio::ProcessStdio;
use crate::stdio::pump;

/// How long creating, starting or exec'ing may take (the guest may be slow: a cold
/// image, the emulated lab).
const START_SECS: i64 = 120;
/// Other calls.
const CALL_SECS: i64 = 60;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its exit status (128 + n for a signal n).
    pub status: i32,
    /// When, as the guest saw it.
    pub at: SystemTime,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
}

/// A time from the agent (ns since the epoch; 0 or less: now).
pub(crate) fn time_of(unix_ns: i64) -> SystemTime {
    match u64::try_from(unix_ns) {
        Ok(ns) if ns > 0 => UNIX_EPOCH + Duration::from_nanos(ns),
        _ => SystemTime::now(),
    }
}

/// Whether an agent error says the command is missing from the image.
fn command_missing(e: &Error) -> bool {
    let msg = e.to_string();
    msg.contains("not found") && msg.contains("executable")
}

impl Pod {
    /// Creates container `id` from the runtime spec `spec` (JSON, as the OCI runtime
    /// spec defines it) on `rootfs`, its process run as `user` ("" for the spec's),
    /// with `stdio` joined to its streams. Returns its init's pid in the guest. The
    /// container runs once [`Pod::start`]ed.
    pub async fn create_container(
        &self,
        id: &str,
        spec: &serde_json::Value,
        rootfs: Rootfs,
        user: &str,
        stdio: &ProcessStdio,
    ) -> Result<u32, Error> {
        let streams = pump::open(&self.endpoint, id, "", stdio).await?;
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.spec_json = spec.to_string().into_bytes();
        req.rootfs = Some(rootfs).into();
        req.stdio = Some(streams.agent_stdio()).into();
        req.user = user.to_string();
        let r = self
            .agent
            .create_container(ctx(START_SECS), &req)
            .await
            .map_err(Error::agent)
            .map_err(|e| {
                if command_missing(&e) {
                    e.with_kind(ErrorKind::CommandNotFound)
                } else {
                    e
                }
            })?;
        let key = ProcessKey::new(id, "");
        self.live().add(key.clone());
        let pumps = pump::start(streams, stdio)?;
        self.io().insert(key, pumps);
        info!(cid = %id, pid = r.pid, "container created");
        Ok(r.pid)
    }

    /// Starts container `id`'s process. Returns its pid in the guest.
    pub async fn start(&self, id: &str) -> Result<u32, Error> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        let pid = self
            .agent
            .start_container(ctx(START_SECS), &r)
            .await
            .map_err(Error::agent)?
            .pid;
        info!(cid = %id, pid, "container started");
        Ok(pid)
    }

    /// Runs `process` (an OCI process, JSON) in container `id` as `exec_id`, as `user`
    /// ("" for the process's), with `stdio`. Returns its pid in the guest.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
        user: &str,
        stdio: &ProcessStdio,
    ) -> Result<u32, Error> {
        let streams = pump::open(&self.endpoint, id, exec_id, stdio).await?;
        let mut req = ExecProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.process_json = process.to_string().into_bytes();
        req.stdio = Some(streams.agent_stdio()).into();
        req.user = user.to_string();
        // Live before it runs: its exit event may come before ExecProcess's answer.
        let key = ProcessKey::new(id, exec_id);
        self.live().add(key.clone());
        let r = self
            .agent
            .exec_process(ctx(CALL_SECS), &req)
            .await
            .map_err(Error::agent)
            .map_err(|e| {
                self.live().remove(&key);
                // The agent's own NOT_FOUND is about the container; an exec that fails
                // with "not found" otherwise lacks its command.
                if e.kind() != ErrorKind::NotFound && e.to_string().contains("not found") {
                    e.with_kind(ErrorKind::CommandNotFound)
                } else {
                    e
                }
            })?;
        let pumps = pump::start(streams, stdio)?;
        self.io().insert(key, pumps);
        info!(cid = %id, exec = %exec_id, pid = r.pid, "process started");
        Ok(r.pid)
    }

    /// Sends `signal` to a process (exec "" for the init); `all`: to every process of
    /// the container.
    pub async fn kill(&self, id: &str, exec: &str, signal: u32, all: bool) -> Result<(), Error> {
        let mut s = SignalProcessRequest::new();
        s.container_id = id.into();
        s.exec_id = exec.into();
        s.signal = signal;
        s.all = all;
        debug!(cid = %id, exec = %exec, signal, all, "signal");
        self.agent
            .signal_process(ctx(CALL_SECS), &s)
            .await
            .map_err(Error::agent)?;
        Ok(())
    }

    /// Waits for a process to exit (as long as it runs). Never waits on its stdio:
    /// [`Pod::drain_io`] does that, bounded.
    pub async fn wait(&self, id: &str, exec: &str) -> Result<Exit, Error> {
        let mut w = ProcessRequest::new();
        w.container_id = id.into();
        w.exec_id = exec.into();
        let r = self
            .agent
            .wait_process(ctx_unbounded(), &w)
            .await
            .map_err(Error::agent)?;
        Ok(Exit {
            status: r.exit_status,
            at: time_of(r.exited_at_unix_ns),
            oom_killed: r.oom_killed,
        })
    }

    /// Once a process has exited: lets its output copies finish, for a bounded time
    /// ([`crate::sanitize::DRAIN`] per stream), then stops them.
    pub async fn drain_io(&self, id: &str, exec: &str) {
        let pumps = self.io().remove(&ProcessKey::new(id, exec));
        if let Some(p) = pumps {
            p.drain().await;
        }
    }

    /// Ends a process's stdin: the stdin copy is half-closed (what was sent is still
    /// read), or, without one, the agent closes it.
    pub async fn close_stdin(&self, id: &str, exec: &str) -> Result<(), Error> {
        let key = ProcessKey::new(id, exec);
        let closed_here = match self.io().get_mut(&key) {
            Some(p) if p.has_stdin() => {
                p.close_stdin();
                true
            }
            _ => false,
        };
        if !closed_here {
            let mut r = ProcessRequest::new();
            r.container_id = id.into();
            r.exec_id = exec.into();
            self.agent
                .close_stdin(ctx(CALL_SECS), &r)
                .await
                .map_err(Error::agent)?;
        }
        Ok(())
    }

    /// Sets a process's terminal size.
    pub async fn resize_pty(
        &self,
        id: &str,
        exec: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), Error> {
        let mut r = ResizePtyRequest::new();
        r.container_id = id.into();
        r.exec_id = exec.into();
        r.rows = rows;
        r.cols = cols;
        self.agent
            .resize_pty(ctx(CALL_SECS), &r)
            .await
            .map_err(Error::agent)?;
        Ok(())
    }

    /// Deletes container `id` (`force`: also while it runs, killed first), and stops
    /// whatever stdio copies of its processes remain.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
        let mut r = DeleteContainerRequest::new();
        r.container_id = id.into();
        r.force = force;
        self.agent
            .delete_container(ctx(CALL_SECS), &r)
            .await
            .map_err(Error::agent)?;
        self.io().retain(|k, _| k.container != id);
        self.live().remove_container(id);
        info!(cid = %id, "container deleted");
        Ok(())
    }
}
