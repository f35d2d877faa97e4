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

use containerd_shim::TtrpcResult;
use containerd_shim::asynchronous::ExitSignal;
use tracing::warn;

use super::events::{Events, TaskEvent};
use super::state::{ExitInfo, Table};
use super::{ShimError, rootfs};
use crate::error::{Error, ErrorKind};
use crate::pod::{Pod, ProcessKey};
use crate::sandbox::Sandbox;

use crate::stdio::ProcessStdio;

mod lifecycle;
mod rpc;
mod vm;

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
