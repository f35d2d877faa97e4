//! Containers in the guest: the registry, and create/start/exec/signal/wait/delete,
//! pause/resume, stats and updates. Creation itself is youki's libcontainer, run in a
//! helper process ([`helper`]); see docs/agent.md for why.

pub mod cgroup;
pub mod console;
pub mod etc_files;
pub mod helper;
pub mod io;
pub mod netns;
pub mod policy;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod user;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libcontainer::container::Container as YoukiContainer;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;

use husk_agent_protocol::agent::event::Kind as EventKind;
use husk_agent_protocol::validate;

use crate::events::Events;
use crate::lock;
use crate::reaper::{self, Reaper};
use crate::stdio::{self, Pending};
use io::ProcessIo;

/// Largest spec or process document accepted.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// How long a forced delete waits for the container's processes to die.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a create/exec waits for a stdio stream whose header was just answered.
const STREAM_GRACE: Duration = Duration::from_secs(1);
/// Finished execs kept for a WaitProcess that has not come yet (a bound, not a
/// promise: past it they are freed; a waited exec is freed at once).
const MAX_FINISHED_EXECS: usize = 1024;

/// Why an operation failed; each maps to one ttrpc status code.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    Internal(String),
}

impl From<validate::ValidateError> for RuntimeError {
    fn from(e: validate::ValidateError) -> Self {
        RuntimeError::Invalid(e.to_string())
    }
}
impl From<spec::SpecError> for RuntimeError {
    fn from(e: spec::SpecError) -> Self {
        RuntimeError::Invalid(e.to_string())
    }
}
impl From<rootfs::RootfsError> for RuntimeError {
    fn from(e: rootfs::RootfsError) -> Self {
        match e {
            rootfs::RootfsError::Io { .. } | rootfs::RootfsError::Mount { .. } => {
                RuntimeError::Internal(e.to_string())
            }
            _ => RuntimeError::Invalid(e.to_string()),
        }
    }
}

/// How a process ended, as reported to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalExit {
    pub status: i32,
    pub oom_killed: bool,
    pub at_unix_ns: i64,
}

/// A process the agent started: a container's init or an exec.
#[derive(Debug)]
pub struct Process {
    pub pid: i32,
    pub io: ProcessIo,
    exit: watch::Receiver<Option<FinalExit>>,
}

impl Process {
    pub fn exited(&self) -> Option<FinalExit> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> Option<FinalExit> {
        let mut w = self.exit.clone();
        loop {
            if let Some(e) = *w.borrow_and_update() {
                return Some(e);
            }
            if w.changed().await.is_err() {
                return *w.borrow();
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
}

/// One container.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    bundle: PathBuf,
    rootfs: PathBuf,
    mounts: Mutex<rootfs::Mounted>,
    status: Mutex<Status>,
    procs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    fn init(&self) -> Option<Arc<Process>> {
        lock(&self.procs).get("").cloned()
    }

    pub fn process(&self, exec: &str) -> Result<Arc<Process>, RuntimeError> {
        lock(&self.procs).get(exec).cloned().ok_or_else(|| {
            RuntimeError::NotFound(format!("container {}: no process {exec:?}", self.id))
        })
    }

    /// Frees an exec once its exit has been collected (WaitProcess answered), as kata's
    /// agent does: a container running execs in a loop must not grow the agent. The
    /// init process ("") stays until the container is deleted.
    pub fn forget_exec(&self, exec: &str) {
        if !exec.is_empty() {
            let mut procs = lock(&self.procs);
            if procs.get(exec).is_some_and(|p| p.exited().is_some()) {
                procs.remove(exec);
            }
        }
    }

    /// Bounds the execs that finished but were never waited for: past
    /// [`MAX_FINISHED_EXECS`], the finished ones go (running ones always stay).
    fn prune_finished_execs(procs: &mut HashMap<String, Arc<Process>>) {
        let finished = procs
            .iter()
            .filter(|(k, p)| !k.is_empty() && p.exited().is_some())
            .count();
        if finished >= MAX_FINISHED_EXECS {
            procs.retain(|k, p| k.is_empty() || p.exited().is_none());
            tracing::warn!(
                dropped = finished,
                "finished execs never waited for were freed"
            );
        }
    }

    fn running_pids(&self) -> Vec<i32> {
        lock(&self.procs)
            .values()
            .filter(|p| p.exited().is_none())
            .map(|p| p.pid)
            .collect()
    }
}

/// Stdio and user of a process to create.
#[derive(Debug, Clone, Default)]
pub struct StdioRequest {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Everything the agent knows about its containers.
#[derive(Debug)]
pub struct Runtime {
    pub state_dir: PathBuf,
    runtime_root: PathBuf,
    bundles: PathBuf,
    tty_dir: PathBuf,
    pub reaper: Reaper,
    pub pending: Pending,
    pub events: Events,
    /// The sandbox's hosts, resolv.conf and hostname (CreateSandbox).
    pub etc_files: etc_files::EtcFiles,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    create_lock: tokio::sync::Mutex<()>,
    tty_counter: AtomicU64,
}

impl Runtime {
    /// Sets up the state folder (created if missing).
    pub fn new(state_dir: &Path, reaper: Reaper) -> std::io::Result<Runtime> {
        let rt = Runtime {
            state_dir: state_dir.to_path_buf(),
            runtime_root: state_dir.join("runtime"),
            bundles: state_dir.join("bundles"),
            tty_dir: state_dir.join("tty"),
            reaper,
            pending: Pending::default(),
            events: Events::default(),
            etc_files: etc_files::EtcFiles::new(state_dir),
            containers: Mutex::default(),
            create_lock: tokio::sync::Mutex::new(()),
            tty_counter: AtomicU64::new(0),
        };
        for d in [&rt.runtime_root, &rt.bundles, &rt.tty_dir] {
            std::fs::create_dir_all(d)?;
        }
        Ok(rt)
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, RuntimeError> {
        validate::id("container_id", id)?;
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}: no such container")))
    }

    pub fn ids(&self) -> Vec<String> {
        lock(&self.containers).keys().cloned().collect()
    }

    async fn take_streams(
        &self,
        id: &str,
        exec: &str,
        req: &StdioRequest,
    ) -> Result<[Option<stdio::BoxStream>; 3], RuntimeError> {
        let mut out: [Option<stdio::BoxStream>; 3] = [None, None, None];
        for (i, (want, kind)) in [
            (req.stdin, stdio::Kind::Stdin),
            (req.stdout, stdio::Kind::Stdout),
            (req.stderr, stdio::Kind::Stderr),
        ]
        .into_iter()
        .enumerate()
        {
            if want {
                let s = self.pending.take_within(id, exec, kind, STREAM_GRACE).await;
                out[i] = Some(s.ok_or_else(|| {
                    RuntimeError::State(format!(
                        "container {id}: stdio.{} is set but no such stream was opened (open it on the stdio port first)",
                        kind.name()
                    ))
                })?);
            }
        }
        Ok(out)
    }

    /// Starts the runtime helper for a new process and wires its stdio.
    async fn spawn_process(
        &self,
        container: &str,
        exec: &str,
        op: helper::Op<'_>,
        terminal: bool,
        streams: [Option<stdio::BoxStream>; 3],
    ) -> Result<Arc<Process>, RuntimeError> {
        let [sin, sout, serr] = streams;
        let internal =
            |e: std::io::Error| RuntimeError::Internal(format!("stdio of {container}: {e}"));
        let helper_err = |e: helper::HelperError| match e {
            helper::HelperError::Runtime(m) => RuntimeError::Invalid(m),
            other => RuntimeError::Internal(other.to_string()),
        };
        if terminal {
            let n = self.tty_counter.fetch_add(1, Ordering::Relaxed);
            let sock = console::ConsoleSocket::bind(&self.tty_dir.join(format!("{n}.sock")))
                .map_err(internal)?;
            let none = helper::ChildStdio {
                stdin: None,
                stdout: None,
                stderr: None,
            };
            let pid = helper::run(
                &self.reaper,
                &self.runtime_root,
                container,
                op,
                Some(&sock.path),
                none,
            )
            .await
            .map_err(helper_err)?;
            let exit = self.reaper.watch(pid);
            let io = ProcessIo::default();
            let attached = match sock.receive(Duration::from_secs(10)).await {
                Ok(master) => io.attach_pty(master, sin, sout),
                Err(e) => Err(e),
            };
            drop(serr);
            if let Err(e) = attached {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(RuntimeError::Internal(format!(
                    "terminal of {container}: {e}"
                )));
            }
            Ok(self.monitor(container, exec, pid, exit, io))
        } else {
            let (io, child) = ProcessIo::pipes(sin, sout, serr).map_err(internal)?;
            let pid = helper::run(&self.reaper, &self.runtime_root, container, op, None, child)
                .await
                .map_err(helper_err)?;
            let exit = self.reaper.watch(pid);
            Ok(self.monitor(container, exec, pid, exit, io))
        }
    }

    /// Follows a process to its end: drains its output, then reports OOM and exit.
    fn monitor(
        &self,
        container: &str,
        exec: &str,
        pid: i32,
        exit: reaper::ExitWatch,
        io: ProcessIo,
    ) -> Arc<Process> {
        let (tx, rx) = watch::channel(None);
        let p = Arc::new(Process { pid, io, exit: rx });
        let (cid, eid, events, proc2) = (
            container.to_string(),
            exec.to_string(),
            self.events.clone(),
            p.clone(),
        );
        let oom_before = cgroup::oom_kills(container);
        tokio::spawn(async move {
            let e = reaper::wait(exit).await;
            proc2.io.finish().await;
            let (status, at) = e.map(|e| (e.status, e.at_unix_ns)).unwrap_or((255, 0));
            let oom_killed = cgroup::oom_kills(&cid) > oom_before;
            if oom_killed {
                tracing::info!(container = %cid, exec = %eid, pid, "OOM kill");
                events.push(EventKind::OOM, &cid, &eid, pid, status, at);
            }
            tracing::info!(container = %cid, exec = %eid, pid, status, "process exited");
            events.push(EventKind::EXIT, &cid, &eid, pid, status, at);
            let _ = tx.send(Some(FinalExit {
                status,
                oom_killed,
                at_unix_ns: at,
            }));
        });
        p
    }

    /// CreateContainer: mounts the rootfs, writes the bundle, creates the container
    /// (its process waits for StartContainer).
    pub async fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        source: &rootfs::Source,
        upper: Option<&rootfs::Upper>,
        stdio_req: &StdioRequest,
        user: &str,
    ) -> Result<i32, RuntimeError> {
        validate::id("container_id", id)?;
        validate::size("spec_json", spec_json.len(), MAX_SPEC_BYTES)?;
        let _guard = self.create_lock.lock().await;
        if lock(&self.containers).contains_key(id) {
            return Err(RuntimeError::Exists(format!(
                "container {id}: already exists"
            )));
        }
        let mut spec = spec::parse(spec_json)?;
        if let rootfs::Source::Dir(dir) = source {
            policy::Policy::new(&self.state_dir)
                .check_exposed("rootfs.path", dir)
                .map_err(spec::SpecError::from)?;
        }
        let bundle = self.bundles.join(id);
        std::fs::create_dir_all(&bundle)
            .map_err(|e| RuntimeError::Internal(format!("bundle {}: {e}", bundle.display())))?;
        let readonly = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        // A read-only root still gets an overlay (a tmpfs upper, not the disk): the
        // runtime creates its mount points there (a volume at a path the image lacks),
        // then remounts the root read-only, as runc does.
        let mount_points = rootfs::Upper::Tmpfs;
        let upper = if readonly && upper.is_some() {
            Some(&mount_points)
        } else {
            upper
        };
        let mut mounted = match rootfs::Mounted::mount_rootfs(&bundle, source, upper) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e.into());
            }
        };
        let result = self
            .create_in(id, &mut spec, &bundle, &mounted.root, stdio_req, user)
            .await;
        match result {
            Ok(process) => {
                let pid = process.pid;
                let c = Arc::new(Container {
                    id: id.to_string(),
                    bundle,
                    rootfs: mounted.root.clone(),
                    mounts: Mutex::new(mounted),
                    status: Mutex::new(Status::Created),
                    procs: Mutex::new(HashMap::from([(String::new(), process)])),
                });
                lock(&self.containers).insert(id.to_string(), c);
                tracing::info!(container = %id, pid, "container created");
                Ok(pid)
            }
            Err(e) => {
                self.youki_delete(id).await;
                mounted.unmount();
                let _ = std::fs::remove_dir_all(&bundle);
                Err(e)
            }
        }
    }

    async fn create_in(
        &self,
        id: &str,
        spec: &mut oci_spec::runtime::Spec,
        bundle: &Path,
        root: &Path,
        stdio_req: &StdioRequest,
        user: &str,
    ) -> Result<Arc<Process>, RuntimeError> {
        // Off the async threads: it reads the image's /etc/passwd and /etc/group.
        let (owned, cid, croot, cuser) = (
            spec.clone(),
            id.to_string(),
            root.to_path_buf(),
            user.to_string(),
        );
        let policy = policy::Policy::new(&self.state_dir);
        let name_files = self.etc_files.mounts();
        *spec = tokio::task::spawn_blocking(move || {
            let mut s = owned;
            spec::prepare(&mut s, &cid, &croot, &cuser, &policy)?;
            // After the policy: these sources are the agent's own.
            etc_files::inject(&mut s, &croot, &name_files)
                .map_err(|e| RuntimeError::Internal(crate::error_chain(&e)))?;
            Ok::<_, RuntimeError>(s)
        })
        .await
        .map_err(|e| RuntimeError::Internal(format!("preparing the spec: {e}")))??;
        if let Some(cwd) = spec.process().as_ref().map(|p| p.cwd().clone()) {
            rootfs::make_dir_in(root, &cwd)?;
        }
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let json =
            serde_json::to_vec_pretty(&*spec).map_err(|e| RuntimeError::Internal(e.to_string()))?;
        std::fs::write(bundle.join("config.json"), json)
            .map_err(|e| RuntimeError::Internal(format!("bundle config.json: {e}")))?;
        let streams = self.take_streams(id, "", stdio_req).await?;
        self.spawn_process(id, "", helper::Op::Create { bundle }, terminal, streams)
            .await
    }

    /// libcontainer's own clean-up (state folder, cgroup); quiet if there is nothing.
    async fn youki_delete(&self, id: &str) {
        let dir = self.runtime_root.join(id);
        if !dir.exists() {
            return;
        }
        let res = tokio::task::spawn_blocking(move || {
            let mut c = YoukiContainer::load(dir.clone()).map_err(|e| e.to_string())?;
            c.delete(true).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&dir);
            Ok::<(), String>(())
        })
        .await;
        if let Ok(Err(e)) | Err(e) = res.map_err(|e| e.to_string()) {
            tracing::warn!(container = %id, error = %e, "runtime clean-up failed");
        }
    }

    async fn with_youki<F>(&self, id: &str, what: &'static str, f: F) -> Result<(), RuntimeError>
    where
        F: FnOnce(&mut YoukiContainer) -> Result<(), libcontainer::error::LibcontainerError>
            + Send
            + 'static,
    {
        let dir = self.runtime_root.join(id);
        let id2 = id.to_string();
        tokio::task::spawn_blocking(move || {
            let mut c = YoukiContainer::load(dir)
                .map_err(|e| RuntimeError::Internal(format!("container {id2}: {e}")))?;
            f(&mut c).map_err(|e| RuntimeError::State(format!("{what} container {id2}: {e}")))
        })
        .await
        .map_err(|e| RuntimeError::Internal(e.to_string()))?
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<i32, RuntimeError> {
        let c = self.container(id)?;
        let init = c
            .init()
            .ok_or_else(|| RuntimeError::Internal(format!("container {id}: no init process")))?;
        if *lock(&c.status) != Status::Created {
            return Err(RuntimeError::State(format!(
                "container {id}: already started"
            )));
        }
        if init.exited().is_some() {
            return Err(RuntimeError::State(format!(
                "container {id}: its process has already exited"
            )));
        }
        self.with_youki(id, "start", |c| c.start()).await?;
        *lock(&c.status) = Status::Running;
        tracing::info!(container = %id, pid = init.pid, "container started");
        Ok(init.pid)
    }

    /// ExecProcess.
    pub async fn exec(
        &self,
        id: &str,
        exec: &str,
        process_json: &[u8],
        stdio_req: &StdioRequest,
        user: &str,
    ) -> Result<i32, RuntimeError> {
        validate::id("exec_id", exec)?;
        validate::size("process_json", process_json.len(), MAX_SPEC_BYTES)?;
        let c = self.container(id)?;
        if *lock(&c.status) != Status::Running || c.init().is_none_or(|p| p.exited().is_some()) {
            return Err(RuntimeError::State(format!("container {id}: not running")));
        }
        if lock(&c.procs).contains_key(exec) {
            return Err(RuntimeError::Exists(format!(
                "container {id}: exec {exec} already exists"
            )));
        }
        let mut process = spec::parse_process(process_json)?;
        spec::check_process(&process)?;
        if !user.is_empty() {
            // Off the async threads: it reads the image's /etc/passwd and /etc/group.
            let (rootfs, user) = (c.rootfs.clone(), user.to_string());
            process = tokio::task::spawn_blocking(move || {
                spec::apply_user(&mut process, &rootfs, &user).map(|()| process)
            })
            .await
            .map_err(|e| RuntimeError::Internal(format!("resolving the user: {e}")))??;
        }
        let terminal = process.terminal().unwrap_or(false);
        let path = c.bundle.join(format!("exec-{exec}.json"));
        let json =
            serde_json::to_vec(&process).map_err(|e| RuntimeError::Internal(e.to_string()))?;
        std::fs::write(&path, json)
            .map_err(|e| RuntimeError::Internal(format!("{}: {e}", path.display())))?;
        let streams = self.take_streams(id, exec, stdio_req).await?;
        let r = self
            .spawn_process(
                id,
                exec,
                helper::Op::Exec { process: &path },
                terminal,
                streams,
            )
            .await;
        let _ = std::fs::remove_file(&path);
        let p = r?;
        let pid = p.pid;
        {
            let mut procs = lock(&c.procs);
            Container::prune_finished_execs(&mut procs);
            procs.insert(exec.to_string(), p);
        }
        tracing::info!(container = %id, exec = %exec, pid, "exec started");
        Ok(pid)
    }

    /// SignalProcess.
    pub fn signal(&self, id: &str, exec: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
        let c = self.container(id)?;
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| {
                RuntimeError::Invalid(format!("signal: {signal} is not a signal number"))
            })?;
        let p = c.process(exec)?;
        if p.exited().is_some() {
            return Err(RuntimeError::State(format!(
                "container {id}: process {exec:?} has exited"
            )));
        }
        if all && exec.is_empty() {
            for pid in cgroup::pids(id).map_err(RuntimeError::Internal)? {
                let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap_or(0)), sig);
            }
            return Ok(());
        }
        kill(Pid::from_raw(p.pid), sig)
            .map_err(|e| RuntimeError::Internal(format!("signal {sig} to {}: {e}", p.pid)))
    }

    /// DeleteContainer: kills (with force), cleans the runtime state, unmounts.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let c = self.container(id)?;
        let running = c.running_pids();
        let created_only = *lock(&c.status) == Status::Created;
        if !running.is_empty() && !force && !created_only {
            return Err(RuntimeError::State(format!(
                "container {id}: still running (stop it first, or delete with force)"
            )));
        }
        if !running.is_empty() {
            let mut pids = running;
            pids.extend(
                cgroup::pids(id)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| i32::try_from(p).ok()),
            );
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if let Some(init) = c.init() {
                let _ = tokio::time::timeout(KILL_WAIT, init.wait()).await;
            }
        }
        self.youki_delete(id).await;
        lock(&c.mounts).unmount();
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.pending.forget_container(id);
        lock(&self.containers).remove(id);
        tracing::info!(container = %id, "container deleted");
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.container(id)?;
        self.with_youki(id, "pause", |c| c.pause()).await
    }

    pub async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.container(id)?;
        self.with_youki(id, "resume", |c| c.resume()).await
    }

    /// Deletes every container (DestroySandbox, agent shutdown).
    pub async fn delete_all(&self) {
        for id in self.ids() {
            if let Err(e) = self.delete(&id, true).await {
                tracing::warn!(container = %id, error = %e, "delete failed");
            }
        }
    }
}
