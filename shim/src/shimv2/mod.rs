//! `containerd-shim-husk-v2`: containerd's runtime v2 shim (task API v2, the
//! `containerd-shim` crate 0.11) over the runtime library: one shim and one microVM per
//! pod, every task's pid husk-vmm's.
//!
//! - `start` ([`HuskShim::start_shim`]): a container annotated
//!   `io.kubernetes.cri.container-type=container` joins the shim of its
//!   `io.kubernetes.cri.sandbox-id` (prints that shim's address, writes `./address`,
//!   spawns nothing); anything else gets a new shim.
//! - `delete` ([`HuskShim::delete_shim`], after a shim died): idempotent clean-up of the
//!   task's VM folder (a surviving husk-vmm killed) and its rootfs mount; answers exit
//!   137 as runc's shim does.
//! - `husk check`'s containerd lines ([`check`]).
//! - serving: the Task service ([`task`]), events ([`events`]), the task table
//!   ([`state`]), the root and binds through the share ([`rootfs`]), the VM's size
//!   ([`resources`]).

pub mod check;
pub mod events;
pub mod namespaces;
pub mod podnet;
pub mod resources;
pub mod rootfs;
pub mod state;
pub mod task;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{ExitSignal, Shim, spawn};
use containerd_shim::protos::ttrpc;
use containerd_shim::{Config as ShimConfig, DeleteResponse, Flags, StartOpts};
use serde_json::Value;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, DEFAULT_PATH};
use crate::error::ErrorKind;
use crate::layout::SandboxDir;

/// The runtime's name (`runtime_type = "io.containerd.husk.v2"`).
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";
/// The CRI annotation naming a container's kind (`sandbox` or `container`).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI annotation naming a container's sandbox.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// runc's shim answers `delete` with this status (128 + SIGKILL).
pub const DELETED_STATUS: u32 = 137;

/// Why the shim failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error(transparent)]
    Husk(#[from] crate::error::Error),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Resources(#[from] resources::ResourcesError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {err}")]
    Spec {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("{1}")]
    Kind(ErrorKind, String),
}

impl ShimError {
    /// The kind of failure, for its ttrpc code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ShimError::Husk(e) => e.kind(),
            ShimError::State(state::StateError::NotFound(_)) => ErrorKind::NotFound,
            ShimError::State(state::StateError::Exists(_)) => ErrorKind::AlreadyExists,
            ShimError::State(state::StateError::NotCreated { .. }) => ErrorKind::FailedPrecondition,
            ShimError::Resources(_) | ShimError::Config(_) | ShimError::Spec { .. } => {
                ErrorKind::InvalidArgument
            }
            ShimError::Rootfs(_) => ErrorKind::Internal,
            ShimError::Kind(k, _) => *k,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        let code = <ttrpc::Code as containerd_shim::protos::protobuf::Enum>::from_i32(
            e.kind().grpc_code(),
        )
        .unwrap_or(ttrpc::Code::INTERNAL);
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

/// The runtime spec in `bundle` (config.json), as JSON.
pub fn read_spec(bundle: &Path) -> Result<Value, ShimError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|err| ShimError::Spec {
        path: path.clone(),
        err,
    })?;
    serde_json::from_slice(&text).map_err(|e| ShimError::Spec {
        path,
        err: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// The sandbox a container joins: its `io.kubernetes.cri.sandbox-id` when it is a
/// CRI `container` (not the sandbox itself), else None (it gets its own).
pub fn joins_sandbox(spec: &Value) -> Option<String> {
    let ann = spec.get("annotations")?;
    let kind = ann.get(CONTAINER_TYPE)?.as_str()?;
    let sandbox = ann.get(SANDBOX_ID)?.as_str()?;
    (kind == "container" && !sandbox.is_empty()).then(|| sandbox.to_string())
}

/// The configuration (/etc/husk/config.toml, or `$HUSK_CONFIG`).
pub fn load_config() -> Result<Config, ShimError> {
    let path = std::env::var_os("HUSK_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    Ok(Config::load(&path)?)
}

/// The folder of the VM of the pod `sandbox` in containerd namespace `namespace`
/// (crate::layout::pod_dir).
pub fn sandbox_dir(config: &Config, namespace: &str, sandbox: &str) -> SandboxDir {
    crate::layout::pod_dir(&config.run_dir, namespace, sandbox)
}

/// A name safe as one path component.
pub fn sanitize(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s == "." || s == ".." {
        format!("_{s}")
    } else {
        s
    }
}

/// The shim's settings for containerd-shim: no reaper (the library waits for its own
/// children, husk-vmm and virtiofsd; a reaper calling waitpid(-1) would take their
/// exit statuses) and no subreaper (nothing of ours is orphaned on purpose).
pub fn shim_config() -> ShimConfig {
    ShimConfig {
        no_reaper: true,
        no_sub_reaper: true,
        ..ShimConfig::default()
    }
}

/// The shim: `start`, `delete` and the serving process's lifetime.
pub struct HuskShim {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for HuskShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HuskShim")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Shim for HuskShim {
    type T = task::Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        HuskShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let cwd = std::env::current_dir()
            .map_err(|e| containerd_shim::Error::Other(format!("current dir: {e}")))?;
        let spec = read_spec(&cwd).map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let address = match joins_sandbox(&spec) {
            Some(sandbox) => {
                // The sandbox's shim was spawned with the sandbox's id as its grouping.
                containerd_shim::socket_address(&opts.address, &opts.namespace, &sandbox)
            }
            None => {
                let grouping = opts.id.clone();
                spawn(opts, &grouping, Vec::new()).await?
            }
        };
        std::fs::write(cwd.join("address"), &address)
            .map_err(|e| containerd_shim::Error::Other(format!("write address: {e}")))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir()
            .map_err(|e| containerd_shim::Error::Other(format!("current dir: {e}")))?;
        cleanup(&self.namespace, &self.id, &bundle);
        let mut r = DeleteResponse::new();
        r.exit_status = DELETED_STATUS;
        r.exited_at = Some(events::timestamp(std::time::SystemTime::now())).into();
        Ok(r)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let (ev, rx) = events::Events::channel();
        tokio::spawn(events::Events::publish_all(
            publisher,
            self.namespace.clone(),
            rx,
        ));
        task::Service::new(&self.namespace, ev, self.exit.clone())
    }
}

/// What a dead shim left for task `id`: its VM (when the task had its own) and the
/// rootfs mount in its bundle. Idempotent.
pub fn cleanup(namespace: &str, id: &str, bundle: &Path) {
    match load_config() {
        Ok(config) => {
            let dir = sandbox_dir(&config, namespace, id);
            if crate::sandbox::reap_dir(&dir) {
                info!(cid = %id, dir = %dir.display(), "removed a dead shim's VM");
            }
        }
        Err(e) => warn!(error = %e, "configuration; the VM folder is left"),
    }
    rootfs::unmount(&bundle.join("rootfs"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn joining() {
        let c = json!({"annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: "pod1"}});
        assert_eq!(joins_sandbox(&c).as_deref(), Some("pod1"));
        let s = json!({"annotations": {CONTAINER_TYPE: "sandbox", SANDBOX_ID: "pod1"}});
        assert_eq!(joins_sandbox(&s), None);
        assert_eq!(joins_sandbox(&json!({})), None);
        let e = json!({"annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: ""}});
        assert_eq!(joins_sandbox(&e), None);
    }

    #[test]
    fn folders() {
        let c = Config::default();
        let d = sandbox_dir(&c, "k8s.io", &"f".repeat(64));
        assert!(d.path().starts_with("/run/husk/.containerd/"));
        assert_eq!(d.path().file_name().unwrap().len(), 20);
        assert!(d.vsock().as_os_str().len() + "_1025".len() < 108);
        assert_ne!(d.path(), sandbox_dir(&c, "default", &"f".repeat(64)).path());
        assert_eq!(sanitize(".."), "_..");
        assert_eq!(sanitize("a/b"), "a_b");
    }

    #[test]
    fn errors_map_to_codes() {
        let e: ttrpc::Error = ShimError::State(state::StateError::NotFound("c".into())).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
                assert_eq!(s.message(), "task c not found");
            }
            other => panic!("{other:?}"),
        }
    }
}
