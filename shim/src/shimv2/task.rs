//! The Task service (containerd's task API v2) over one pod: the first Create boots
//! the pod's VM (its size from crate::shimv2::resources, the container's root and binds
//! through the share, crate::shimv2::rootfs), every process is a
//! (container, exec) of the library's [`Pod`], exits come from the pod's event pump.
//!
//! Wait, Kill and exit events never wait on stdio copies; Delete lets a process's
//! output drain (bounded, [`Pod::drain_io`]) before the process is forgotten, so
//! containerd has all of it when it closes its FIFOs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse,
    ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc;
use containerd_shim::{DeleteResponse, TtrpcResult};
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};

use super::events::{Events, TaskEvent, timestamp};
use super::state::{ExitInfo, OnExit, Proc, Status, StdioStrings, Table};
use super::{ShimError, resources, rootfs};
use crate::error::{Error, ErrorKind};
use crate::pod::{Pod, PodEvent, ProcessKey, Rootfs};
use crate::sandbox::{Sandbox, SandboxSpec};
use crate::stdio::ProcessStdio;

/// The type URL of cgroup v2 metrics, as containerd's typeurl registry names them.
const METRICS_V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// A container's host side.
#[derive(Debug)]
struct Container {
    bundle: PathBuf,
    /// The shim mounted Create.rootfs on `<bundle>/rootfs` (unmounted on Delete).
    mounted_rootfs: bool,
    /// Its exports in the pod's share (removed on Delete).
    plan: rootfs::Plan,
}

struct Inner {
    namespace: String,
    events: Events,
    exit: Arc<ExitSignal>,
    table: Mutex<Table>,
    containers: Mutex<HashMap<String, Container>>,
    pod: Mutex<Option<Pod>>,
    /// husk-vmm's pid: every task's pid.
    vmm_pid: Mutex<u32>,
    /// The pod's network namespace joined to the VM's tap, while the VM runs.
    pod_network: Mutex<Option<crate::network::pod::PodNetwork>>,
    /// The guest pid of the pod's first container's init (its namespaces are the pod's).
    sandbox_pid: Mutex<Option<u32>>,
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    /// The VM died (its agent went): calls that need it answer UNAVAILABLE.
    vm_gone: AtomicBool,
}

/// The Task service. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("namespace", &self.inner.namespace)
            .field("vmm_pid", &self.vmm_pid())
            .finish_non_exhaustive()
    }
}

type Res<T> = Result<T, ShimError>;

fn unavailable(msg: &str) -> ShimError {
    ShimError::Kind(ErrorKind::Unavailable, msg.to_string())
}

/// An exit status as containerd takes it (a negative one is no status: 255).
fn status_u32(s: i32) -> u32 {
    u32::try_from(s).unwrap_or(255)
}

impl Service {
    /// The service of a shim serving containerd namespace `namespace`.
    pub fn new(namespace: &str, events: Events, exit: Arc<ExitSignal>) -> Service {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                events,
                exit,
                table: Mutex::default(),
                containers: Mutex::default(),
                pod: Mutex::default(),
                vmm_pid: Mutex::new(0),
                sandbox_pid: Mutex::new(None),
                pod_network: Mutex::new(None),
                sandbox: tokio::sync::Mutex::new(None),
                vm_gone: AtomicBool::new(false),
            }),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.inner.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn vmm_pid(&self) -> u32 {
        *self.inner.vmm_pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the pod network's redirect out (the namespace is its owner's).
    fn detach_network(&self) {
        let net = self
            .inner
            .pod_network
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(n) = net {
            n.detach();
        }
    }

    /// A process's stdio from containerd's strings.
    fn stdio(
        &self,
        stdin: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> Result<ProcessStdio, Error> {
        let mut s = ProcessStdio::from_containerd(stdin, stdout, stderr, terminal)?;
        s.namespace = Some(self.inner.namespace.clone());
        Ok(s)
    }

    /// The pod, while its VM runs.
    fn pod(&self) -> Res<Pod> {
        if self.inner.vm_gone.load(Ordering::SeqCst) {
            return Err(unavailable("the pod's VM stopped"));
        }
        self.inner
            .pod
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| ShimError::Kind(ErrorKind::NotFound, "no container yet".into()))
    }

    /// The pod for container `id` of `spec`, with the container's root and binds
    /// added to its share: the first container boots the pod's VM (sized by its
    /// annotations, crate::shimv2::resources), later ones join it.
    async fn join(&self, id: &str, spec: &serde_json::Value, plan: &rootfs::Plan) -> Res<Pod> {
        let mut slot = self.inner.sandbox.lock().await;
        if self.inner.vm_gone.load(Ordering::SeqCst) {
            // One VM per shim: once it stopped, containerd's Deletes and Shutdown end
            // the shim; a new container gets a new shim.
            return Err(unavailable("the pod's VM stopped"));
        }
        if slot.is_none() {
            *slot = Some(self.boot(id, spec).await?);
        }
        let Some(sb) = slot.as_ref() else {
            return Err(unavailable("the pod's VM stopped"));
        };
        let share = sb
            .share()
            .ok_or_else(|| unavailable("the pod has no share"))?;
        for e in plan.share_exports() {
            if let Err(e) = share.add(&e) {
                // The folder is this container's alone (its id is new in this pod).
                remove_exports(sb, plan);
                return Err(Error::from(crate::sandbox::SandboxError::from(e)).into());
            }
        }
        self.pod()
    }

    /// Boots the pod's VM for its first container, `id` of `spec`.
    async fn boot(&self, id: &str, spec: &serde_json::Value) -> Res<Sandbox> {
        let config = super::load_config()?;
        let size = resources::vm_size(
            spec,
            resources::VmSize {
                vcpus: config.vm.vcpus,
                memory_mib: config.vm.memory_mib,
            },
        )?;
        let guest =
            crate::guest::GuestImage::locate(&config.state_dir, config.vm.kernel.as_deref())
                .map_err(Error::from)?;
        let vmm = crate::guest::vmm_binary().map_err(Error::from)?;
        let dir = super::sandbox_dir(&config, &self.inner.namespace, id);
        let hostname = spec
            .get("hostname")
            .and_then(serde_json::Value::as_str)
            .filter(|h| !h.is_empty())
            .unwrap_or("husk");
        // husk-vmm's jail (crate::jail), unless the configuration turns it off.
        if config.vm.jail {
            crate::jail::cgroup::check().map_err(Error::from)?;
        }
        // The pod's network: the namespace its first container names, joined to a tap.
        let net = match super::podnet::netns_path(spec) {
            Some(p) => Some(crate::network::pod::attach(&p).map_err(Error::from)?),
            None => None,
        };
        let nics = net
            .iter()
            .map(|n| crate::sandbox::Nic {
                fd: n.tap_fd(),
                mac: n.guest.mac.clone(),
                mtu: n.guest.mtu,
            })
            .collect();
        let sb_spec = SandboxSpec {
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            pod_share: true,
            nics,
            jail: config.vm.jail.then(|| crate::jail::JailSpec {
                settings: config.jail.clone(),
                run_dir: config.run_dir.clone(),
            }),
            hostname: hostname.to_string(),
            ..SandboxSpec::new(id, dir, vmm, &guest)
        };
        info!(cid = %id, vcpus = size.vcpus, memory_mib = size.memory_mib, "booting the pod's VM");
        let sb = match Sandbox::boot(&sb_spec).await {
            Ok(sb) => sb,
            Err(e) => {
                if let Some(n) = net {
                    n.detach();
                }
                return Err(Error::from(e).into());
            }
        };
        if let Some(n) = &net
            && let Err(e) = sb.configure_network(&n.guest).await
        {
            let mut sb = sb;
            sb.kill();
            if let Some(n) = net {
                n.detach();
            }
            return Err(Error::from(e).into());
        }
        *self
            .inner
            .pod_network
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = net;
        let pod = Pod::of(&sb);
        *self.inner.vmm_pid.lock().unwrap_or_else(|p| p.into_inner()) = sb.vmm_pid().unwrap_or(0);
        let rx = pod.events();
        tokio::spawn(self.clone().on_pod_events(rx));
        *self.inner.pod.lock().unwrap_or_else(|p| p.into_inner()) = Some(pod);
        Ok(sb)
    }

    /// The pod's exits and OOM kills, turned into TaskExit and TaskOOM in order; when
    /// the channel closes the VM is gone and every process left is stopped (255).
    async fn on_pod_events(self, mut rx: mpsc::UnboundedReceiver<PodEvent>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                PodEvent::Exit {
                    process,
                    status,
                    at,
                    ..
                } => self.exited(&process, status_u32(status), at),
                PodEvent::Oom { container } => {
                    self.inner.events.send(TaskEvent::Oom { id: container });
                }
            }
        }
        self.inner.vm_gone.store(true, Ordering::SeqCst);
        let mut live = self.table().live();
        // Every exec's exit before its container's init's.
        live.sort_by_key(|k| k.is_init());
        for key in live {
            self.exited(
                &key,
                status_u32(crate::pod::events::VM_DIED_STATUS),
                SystemTime::now(),
            );
        }
        warn!("the pod's VM stopped");
    }

    /// Records an exit and queues its event (under the table's lock: ordered).
    fn exited(&self, key: &ProcessKey, status: u32, at: SystemTime) {
        let mut t = self.table();
        let exit = ExitInfo { status, at };
        if t.on_exit(key, exit) == OnExit::Publish {
            let pid = t.get(key).map(|p| p.pid).unwrap_or(0);
            self.inner.events.send(exit_event(key, pid, exit));
        }
    }

    #[instrument(skip_all, fields(cid = %req.id))]
    async fn do_create(&self, req: &CreateTaskRequest) -> Res<u32> {
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Kind(
                ErrorKind::Unimplemented,
                "checkpoint/restore is not supported".into(),
            ));
        }
        // A second Create of a live id is refused before anything of the first is touched.
        if self.table().get(&ProcessKey::new(&req.id, "")).is_ok()
            || self.containers().contains_key(&req.id)
        {
            return Err(super::state::StateError::Exists(req.id.clone()).into());
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = super::read_spec(&bundle)?;
        super::podnet::refuse_host_namespaces(&spec)?;
        let stdio = self.stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        let root = rootfs::host_root(&bundle, &spec)?;
        let mounted = rootfs::mount_all(&req.rootfs, &root).await?;
        let undo = |e: ShimError| {
            if mounted {
                rootfs::unmount(&root);
            }
            e
        };
        let plan = rootfs::plan(&spec, &root, &super::sanitize(&req.id));
        let pod = self.join(&req.id, &spec, &plan).await.map_err(undo)?;
        let mut guest_root = Rootfs::new();
        guest_root.path = plan.guest_root.clone();
        let mut guest_spec = plan.spec.clone();
        let sandbox_pid = *self
            .inner
            .sandbox_pid
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(sandbox_pid) = sandbox_pid {
            super::namespaces::to_guest(&mut guest_spec, self.vmm_pid(), sandbox_pid);
        }
        let created = pod
            .create_container(&req.id, &guest_spec, guest_root, "", &stdio)
            .await;
        let guest_pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                let mut slot = self.inner.sandbox.lock().await;
                if self.containers().is_empty() {
                    // The VM was booted for this container alone: it goes with it.
                    if let Some(sb) = slot.take() {
                        sb.shutdown().await;
                    }
                    self.detach_network();
                    self.inner.vm_gone.store(true, Ordering::SeqCst);
                } else if let Some(sb) = slot.as_ref() {
                    remove_exports(sb, &plan);
                }
                return Err(undo(e.into()));
            }
        };
        // The pod's first container is its sandbox: later ones join its namespaces.
        self.inner
            .sandbox_pid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(guest_pid);
        let pid = self.vmm_pid();
        let strings = StdioStrings {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.containers().insert(
            req.id.clone(),
            Container {
                bundle: bundle.clone(),
                mounted_rootfs: mounted,
                plan,
            },
        );
        let mut t = self.table();
        t.add(
            ProcessKey::new(&req.id, ""),
            Proc::new(strings.clone(), None, pid),
        )?;
        self.inner.events.send(TaskEvent::Create {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            stdio: strings,
            pid,
        });
        Ok(pid)
    }

    #[instrument(skip_all, fields(cid = %req.id, exec = %req.exec_id))]
    async fn do_start(&self, req: &StartRequest) -> Res<u32> {
        let key = ProcessKey::new(&req.id, &req.exec_id);
        let pod = self.pod()?;
        let (stdio, process) = {
            let mut t = self.table();
            t.begin_start(&key)?;
            let p = t.get(&key)?;
            (p.stdio.clone(), p.process.clone())
        };
        let started = match &process {
            None => pod.start(&req.id).await.map(|_| ()),
            Some(process) => {
                match self.stdio(&stdio.stdin, &stdio.stdout, &stdio.stderr, stdio.terminal) {
                    Ok(s) => pod
                        .exec(&req.id, &req.exec_id, process, "", &s)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                }
            }
        };
        let pid = self.vmm_pid();
        let mut t = self.table();
        let held = t.finish_start(&key, started.as_ref().ok().map(|_| pid));
        started?;
        self.inner.events.send(if key.is_init() {
            TaskEvent::Start {
                id: req.id.clone(),
                pid,
            }
        } else {
            TaskEvent::ExecStarted {
                id: req.id.clone(),
                exec: req.exec_id.clone(),
                pid,
            }
        });
        if let Some(exit) = held {
            self.inner.events.send(exit_event(&key, pid, exit));
        }
        Ok(pid)
    }

    #[instrument(skip_all, fields(cid = %req.id, exec = %req.exec_id))]
    async fn do_delete(&self, req: &DeleteRequest) -> Res<DeleteResponse> {
        let key = ProcessKey::new(&req.id, &req.exec_id);
        let (status, pid) = {
            let t = self.table();
            let p = t.get(&key)?;
            (p.status, p.pid)
        };
        if matches!(status, Status::Running | Status::Paused) {
            return Err(ShimError::Kind(
                ErrorKind::FailedPrecondition,
                format!("task {} is still running", req.id),
            ));
        }
        let pod = self.pod().ok();
        if let Some(pod) = &pod {
            pod.drain_io(&req.id, &req.exec_id).await;
        }
        if key.is_init() {
            if let Some(pod) = &pod
                && let Err(e) = pod.delete(&req.id, status == Status::Created).await
            {
                warn!(error = %e, "delete container in the guest");
            }
            let c = self.containers().remove(&req.id);
            if let Some(c) = c {
                if let Some(sb) = self.inner.sandbox.lock().await.as_ref() {
                    remove_exports(sb, &c.plan);
                }
                if c.mounted_rootfs {
                    rootfs::unmount(&c.bundle.join("rootfs"));
                }
            }
        }
        let p = {
            let mut t = self.table();
            let p = t.remove(&key)?;
            self.inner.events.send(TaskEvent::Delete {
                id: req.id.clone(),
                exec: req.exec_id.clone(),
                pid,
                status: p.exit.map(|e| e.status).unwrap_or(0),
                at: p.exit.map(|e| e.at),
            });
            p
        };
        let mut r = DeleteResponse::new();
        r.pid = pid;
        if let Some(e) = p.exit {
            r.exit_status = e.status;
            r.exited_at = Some(timestamp(e.at)).into();
        }
        Ok(r)
    }

    fn do_state(&self, req: &StateRequest) -> Res<StateResponse> {
        let key = ProcessKey::new(&req.id, &req.exec_id);
        let t = self.table();
        let p = t.get(&key)?;
        let mut r = StateResponse::new();
        r.id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.bundle = self
            .containers()
            .get(&req.id)
            .map(|c| c.bundle.display().to_string())
            .unwrap_or_default();
        r.pid = p.pid;
        r.status = match p.status {
            Status::Created => containerd_shim::protos::api::Status::CREATED,
            Status::Running => containerd_shim::protos::api::Status::RUNNING,
            Status::Paused => containerd_shim::protos::api::Status::PAUSED,
            Status::Stopped => containerd_shim::protos::api::Status::STOPPED,
        }
        .into();
        r.stdin = p.stdio.stdin.clone();
        r.stdout = p.stdio.stdout.clone();
        r.stderr = p.stdio.stderr.clone();
        r.terminal = p.stdio.terminal;
        if let Some(e) = p.exit {
            r.exit_status = e.status;
            r.exited_at = Some(timestamp(e.at)).into();
        }
        Ok(r)
    }

    async fn do_kill(&self, req: &KillRequest) -> Res<()> {
        let key = ProcessKey::new(&req.id, &req.exec_id);
        let status = self.table().get(&key)?.status;
        if status == Status::Stopped {
            return Err(ShimError::Kind(
                ErrorKind::NotFound,
                "process already finished".into(),
            ));
        }
        self.pod()?
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(())
    }

    async fn do_exec(&self, req: &ExecProcessRequest) -> Res<()> {
        let process: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| ShimError::Kind(ErrorKind::InvalidArgument, format!("exec spec: {e}")))?;
        // Parsed now so that a bad stdio string fails Exec, not Start.
        self.stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        self.pod()?;
        let strings = StdioStrings {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut t = self.table();
        let init = t.get(&ProcessKey::new(&req.id, ""))?;
        if init.status == Status::Stopped {
            return Err(ShimError::Kind(
                ErrorKind::FailedPrecondition,
                format!("container {} is not running", req.id),
            ));
        }
        t.add(
            ProcessKey::new(&req.id, &req.exec_id),
            Proc::new(strings, Some(process), self.vmm_pid()),
        )?;
        self.inner.events.send(TaskEvent::ExecAdded {
            id: req.id.clone(),
            exec: req.exec_id.clone(),
        });
        Ok(())
    }

    async fn do_stats(&self, id: &str) -> Res<StatsResponse> {
        self.table().get(&ProcessKey::new(id, ""))?;
        let s = self.pod()?.stats(id).await?;
        let mut m = v2::Metrics::new();
        let mut cpu = v2::CPUStat::new();
        cpu.usage_usec = s.cpu_usage_ns / 1000;
        cpu.user_usec = s.cpu_user_ns / 1000;
        cpu.system_usec = s.cpu_system_ns / 1000;
        m.cpu = Some(cpu).into();
        let mut mem = v2::MemoryStat::new();
        mem.usage = s.memory_usage_bytes;
        mem.usage_limit = s.memory_limit_bytes;
        mem.max_usage = s.memory_max_usage_bytes;
        m.memory = Some(mem).into();
        let mut pids = v2::PidsStat::new();
        pids.current = s.pids_current;
        pids.limit = s.pids_limit;
        m.pids = Some(pids).into();
        let mut io = v2::IOEntry::new();
        io.rbytes = s.io_read_bytes;
        io.wbytes = s.io_write_bytes;
        let mut iostat = v2::IOStat::new();
        iostat.usage.push(io);
        m.io = Some(iostat).into();
        let mut ev = v2::MemoryEvents::new();
        ev.oom_kill = s.oom_kills;
        m.memory_events = Some(ev).into();
        let mut any = Any::new();
        any.type_url = METRICS_V2_TYPE.into();
        any.value = m
            .write_to_bytes()
            .map_err(|e| ShimError::Kind(ErrorKind::Internal, format!("metrics: {e}")))?;
        let mut r = StatsResponse::new();
        r.stats = Some(any).into();
        Ok(r)
    }

    async fn do_shutdown(&self) -> Res<()> {
        if !self.table().is_empty() {
            info!("shutdown ignored: tasks remain");
            return Ok(());
        }
        // Every container was deleted: nothing in the guest needs a graceful end, and
        // containerd gives Shutdown only a few seconds.
        if let Some(mut sb) = self.inner.sandbox.lock().await.take() {
            sb.kill();
            info!("the pod's VM stopped");
        }
        self.detach_network();
        // The last TaskExit and TaskDelete reach containerd before the shim exits.
        self.inner
            .events
            .flushed(std::time::Duration::from_secs(2))
            .await;
        self.inner.exit.signal();
        Ok(())
    }
}

/// Takes a container's exports out of the pod's share.
fn remove_exports(sb: &Sandbox, plan: &rootfs::Plan) {
    if let Some(share) = sb.share() {
        for (name, _, _) in plan.exports.iter().rev() {
            share.remove(name);
        }
        share.remove(&plan.folder);
    }
}

fn exit_event(key: &ProcessKey, pid: u32, exit: ExitInfo) -> TaskEvent {
    TaskEvent::Exit {
        id: key.container.clone(),
        exec: key.exec.clone(),
        pid,
        status: exit.status,
        at: exit.at,
    }
}

fn res<T>(r: Res<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        warn!(error = %e, "request failed");
        e.into()
    })
}

#[async_trait]
impl Task for Service {
    async fn state(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: StateRequest,
    ) -> TtrpcResult<StateResponse> {
        res(self.do_state(&req))
    }

    async fn create(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let pid = res(self.do_create(&req).await)?;
        let mut r = CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn start(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: StartRequest,
    ) -> TtrpcResult<StartResponse> {
        let pid = res(self.do_start(&req).await)?;
        let mut r = StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn delete(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: DeleteRequest,
    ) -> TtrpcResult<DeleteResponse> {
        res(self.do_delete(&req).await)
    }

    async fn pids(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: PidsRequest,
    ) -> TtrpcResult<PidsResponse> {
        let r: Res<PidsResponse> = async {
            self.table().get(&ProcessKey::new(&req.id, ""))?;
            let pids = self.pod()?.pids(&req.id).await?;
            let mut r = PidsResponse::new();
            r.processes = pids
                .into_iter()
                .map(|pid| {
                    let mut p = ProcessInfo::new();
                    p.pid = pid;
                    p
                })
                .collect();
            Ok(r)
        }
        .await;
        res(r)
    }

    async fn pause(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: PauseRequest,
    ) -> TtrpcResult<Empty> {
        let r: Res<()> = async {
            self.table().get(&ProcessKey::new(&req.id, ""))?;
            self.pod()?.pause(&req.id).await?;
            let mut t = self.table();
            if let Ok(p) = t.get_mut(&ProcessKey::new(&req.id, ""))
                && p.status == Status::Running
            {
                p.status = Status::Paused;
            }
            self.inner
                .events
                .send(TaskEvent::Paused { id: req.id.clone() });
            Ok(())
        }
        .await;
        res(r).map(|()| Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ResumeRequest,
    ) -> TtrpcResult<Empty> {
        let r: Res<()> = async {
            self.table().get(&ProcessKey::new(&req.id, ""))?;
            self.pod()?.resume(&req.id).await?;
            let mut t = self.table();
            if let Ok(p) = t.get_mut(&ProcessKey::new(&req.id, ""))
                && p.status == Status::Paused
            {
                p.status = Status::Running;
            }
            self.inner
                .events
                .send(TaskEvent::Resumed { id: req.id.clone() });
            Ok(())
        }
        .await;
        res(r).map(|()| Empty::new())
    }

    async fn kill(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: KillRequest,
    ) -> TtrpcResult<Empty> {
        res(self.do_kill(&req).await).map(|()| Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ExecProcessRequest,
    ) -> TtrpcResult<Empty> {
        res(self.do_exec(&req).await).map(|()| Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        let r: Res<()> = async {
            self.table().get(&ProcessKey::new(&req.id, &req.exec_id))?;
            self.pod()?
                .resize_pty(&req.id, &req.exec_id, req.height, req.width)
                .await?;
            Ok(())
        }
        .await;
        res(r).map(|()| Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: CloseIORequest,
    ) -> TtrpcResult<Empty> {
        let r: Res<()> = async {
            self.table().get(&ProcessKey::new(&req.id, &req.exec_id))?;
            if req.stdin {
                self.pod()?.close_stdin(&req.id, &req.exec_id).await?;
            }
            Ok(())
        }
        .await;
        res(r).map(|()| Empty::new())
    }

    async fn update(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: UpdateTaskRequest,
    ) -> TtrpcResult<Empty> {
        let r: Res<()> = async {
            self.table().get(&ProcessKey::new(&req.id, ""))?;
            let resources: serde_json::Value = serde_json::from_slice(&req.resources.value)
                .map_err(|e| {
                    ShimError::Kind(ErrorKind::InvalidArgument, format!("resources: {e}"))
                })?;
            self.pod()?.update(&req.id, &resources).await?;
            Ok(())
        }
        .await;
        res(r).map(|()| Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: WaitRequest,
    ) -> TtrpcResult<WaitResponse> {
        let key = ProcessKey::new(&req.id, &req.exec_id);
        let mut rx = res(self.table().exit_watch(&key).map_err(ShimError::from))?;
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(e) => *e,
            Err(_) => None,
        };
        let Some(exit) = exit else {
            return res(Err(ShimError::Kind(
                ErrorKind::NotFound,
                format!("task {} was deleted while waited for", req.id),
            )));
        };
        let mut r = WaitResponse::new();
        r.exit_status = exit.status;
        r.exited_at = Some(timestamp(exit.at)).into();
        Ok(r)
    }

    async fn stats(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: StatsRequest,
    ) -> TtrpcResult<StatsResponse> {
        res(self.do_stats(&req.id).await)
    }

    async fn connect(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let mut r = ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = self.vmm_pid();
        r.version = env!("CARGO_PKG_VERSION").into();
        Ok(r)
    }

    async fn shutdown(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _req: ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        res(self.do_shutdown().await).map(|()| Empty::new())
    }
}
