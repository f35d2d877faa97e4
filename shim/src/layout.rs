//! Where the runtime keeps its state on disk: the one module that knows the folder
//! layout. Everything else asks it for paths.
//!
//! ```text
//! <run_dir>/                     a tmpfs (/run/husk): gone at reboot
//!   <name>/                      a container of the CLI ([`ContainerDir`])
//!     owner                      "PID START" of the husk process running it
//!     info.json                  name, image, command, creation time, detached
//!     stdout.log, stderr.log     a detached run's output
//!     exit                       a detached run's exit status, once it ended
//!     vm/                        its sandbox ([`SandboxDir`])
//!       vm.json                  husk-vmm's configuration
//!       vsock.sock               hybrid vsock (agent API, stdio streams)
//!       vsock.sock_1025          the agent's readiness connection (while booting)
//!       console.log, vmm.log     the guest's console, husk-vmm's stderr
//!       pid                      "PID START" of husk-vmm, then of its owner
//!       virtiofsd.sock, virtiofsd.log, share/   the volumes share (crate::share)
//!       share.rw/                a pod's share exports, host mounts (the shim only)
//!       jail                     husk-vmm's jail: its uid and cgroup (crate::jail)
//!       root/                    the jail's root (mounted on only in husk-vmm's
//!                                mount namespace; an empty folder on the host)
//!   .networks/<name>.json|.ns    a container's CNI record and network namespace
//!   .jail/<uid>.lock             the uid of a live jailed husk-vmm (crate::jail::ids)
//! <state_dir>/scratch/<name>.img a container's writable layer (on disk)
//! ```
//!
//! The containerd shim keeps a pod's sandbox in a [`SandboxDir`] of its own,
//! `<run_dir>/.containerd/<hash>/` ([`pod_dir`]), with the same files.

use std::path::{Path, PathBuf};

/// The folder under the run folder that holds the containerd shim's pods (a dot name:
/// the CLI's clean-up, crate::sandbox::reap_stale, passes it by).
pub const PODS_DIR: &str = ".containerd";

/// The sandbox folder of containerd pod `id` in namespace `namespace`: named by a hash
/// of both, as the unix socket paths in it must stay under 108 bytes (CRI's ids are 64
/// characters).
pub fn pod_dir(run_dir: &Path, namespace: &str, id: &str) -> SandboxDir {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{namespace}/{id}").as_bytes());
    let name: String = h.iter().take(10).map(|b| format!("{b:02x}")).collect();
    SandboxDir::new(run_dir.join(PODS_DIR).join(name))
}

/// The folder under the run folder that holds network namespaces and CNI records.
pub const NETWORKS_DIR: &str = ".networks";
/// The folder under the state folder that holds scratch disks.
pub const SCRATCH_DIR: &str = "scratch";

/// The folder under the run folder that holds the jails' uid locks.
pub const JAIL_LOCKS_DIR: &str = ".jail";

/// `<run_dir>/.jail`.
pub fn jail_locks_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(JAIL_LOCKS_DIR)
}

/// `<run_dir>/.networks`.
pub fn networks_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(NETWORKS_DIR)
}

/// The CNI record of container `name`: `<run_dir>/.networks/<name>.json`.
pub fn network_record(run_dir: &Path, name: &str) -> PathBuf {
    networks_dir(run_dir).join(format!("{name}.json"))
}

/// The network namespace of container `name`: `<run_dir>/.networks/<name>.ns`.
pub fn network_netns(run_dir: &Path, name: &str) -> PathBuf {
    networks_dir(run_dir).join(format!("{name}.ns"))
}

/// `<state_dir>/scratch`.
pub fn scratch_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(SCRATCH_DIR)
}

/// The scratch image of container `name`: `<state_dir>/scratch/<name>.img`.
pub fn scratch_image(state_dir: &Path, name: &str) -> PathBuf {
    scratch_dir(state_dir).join(format!("{name}.img"))
}

/// The container name a scratch image file name belongs to (`<name>.img`).
pub fn scratch_owner(file_name: &str) -> Option<&str> {
    file_name.strip_suffix(".img")
}

/// A sandbox's folder: what husk-vmm, the agent connection and virtiofsd keep there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir {
    path: PathBuf,
}

impl SandboxDir {
    /// The sandbox folder at `path`.
    pub fn new(path: impl Into<PathBuf>) -> SandboxDir {
        SandboxDir { path: path.into() }
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// husk-vmm's configuration.
    pub fn vm_config(&self) -> PathBuf {
        self.path.join("vm.json")
    }

    /// The hybrid vsock socket (agent API and stdio streams).
    pub fn vsock(&self) -> PathBuf {
        self.path.join("vsock.sock")
    }

    /// Where the agent's readiness connection arrives (husk-vmm's `<uds>_<port>`).
    pub fn ready_socket(&self) -> PathBuf {
        self.path
            .join(format!("vsock.sock_{}", husk_agent_protocol::READY_PORT))
    }

    /// The guest's serial console.
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// husk-vmm's own stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }

    /// husk-vmm's record, then its owner's (crate::procid).
    pub fn pid(&self) -> PathBuf {
        self.path.join("pid")
    }

    /// virtiofsd's vhost-user socket.
    pub fn virtiofsd_socket(&self) -> PathBuf {
        self.path.join("virtiofsd.sock")
    }

    /// virtiofsd's log.
    pub fn virtiofsd_log(&self) -> PathBuf {
        self.path.join("virtiofsd.log")
    }

    /// The folder virtiofsd serves (a tmpfs with the volumes, in its namespace only;
    /// for a pod, a read-only view of [`SandboxDir::share_mounts`]).
    pub fn share(&self) -> PathBuf {
        self.path.join("share")
    }

    /// A pod's share exports as host mounts (crate::share::Server::start_pod).
    pub fn share_mounts(&self) -> PathBuf {
        self.path.join("share.rw")
    }

    /// The record of husk-vmm's jail: its uid and cgroup (crate::jail).
    pub fn jail_record(&self) -> PathBuf {
        self.path.join("jail")
    }

    /// Where husk-vmm's jail root is mounted, in its own mount namespace only.
    pub fn jail_root(&self) -> PathBuf {
        self.path.join("root")
    }
}

impl std::ops::Deref for SandboxDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for SandboxDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl From<PathBuf> for SandboxDir {
    fn from(path: PathBuf) -> SandboxDir {
        SandboxDir::new(path)
    }
}

/// A CLI container's folder (`<run_dir>/<name>/`) and its scratch disk
/// (`<state_dir>/scratch/<name>.img`, kept until the container is removed).
#[derive(Debug, Clone)]
pub struct ContainerDir {
    /// The container's name.
    pub name: String,
    /// `<run_dir>/<name>`.
    pub path: PathBuf,
    /// Its scratch disk.
    pub scratch: PathBuf,
}

impl ContainerDir {
    /// Container `name` under `run_dir`, its scratch disk under `state_dir`.
    pub fn new(run_dir: &Path, state_dir: &Path, name: &str) -> ContainerDir {
        ContainerDir {
            name: name.to_string(),
            path: run_dir.join(name),
            scratch: scratch_image(state_dir, name),
        }
    }

    /// Container `name` of the configuration's folders.
    pub fn of(config: &crate::config::Config, name: &str) -> ContainerDir {
        ContainerDir::new(&config.run_dir, &config.state_dir, name)
    }

    /// Its sandbox's folder (`vm/`).
    pub fn vm(&self) -> SandboxDir {
        SandboxDir::new(self.path.join("vm"))
    }

    /// The owner record.
    pub fn owner(&self) -> PathBuf {
        self.path.join("owner")
    }

    /// What `husk ps` shows.
    pub fn info(&self) -> PathBuf {
        self.path.join("info.json")
    }

    /// A detached run's stdout.
    pub fn stdout_log(&self) -> PathBuf {
        self.path.join("stdout.log")
    }

    /// A detached run's stderr.
    pub fn stderr_log(&self) -> PathBuf {
        self.path.join("stderr.log")
    }

    /// A finished detached run's exit status.
    pub fn exit(&self) -> PathBuf {
        self.path.join("exit")
    }

    /// Makes the folder (failing if it exists: the name is taken) with its owner
    /// record and `info`.
    pub fn create(&self, owner_record: &str, info: &serde_json::Value) -> std::io::Result<()> {
        std::fs::create_dir(&self.path)?;
        std::fs::write(self.owner(), format!("{owner_record}\n"))?;
        std::fs::write(self.info(), info.to_string())
    }

    /// Removes the folder and the scratch disk.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.scratch);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The owner record of the container folder `dir` (`<dir>/owner`).
pub fn owner_of(dir: &Path) -> PathBuf {
    dir.join("owner")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_where_the_docs_say() {
        let c = ContainerDir::new(Path::new("/run/husk"), Path::new("/var/lib/husk"), "web");
        assert_eq!(c.path, Path::new("/run/husk/web"));
        assert_eq!(c.scratch, Path::new("/var/lib/husk/scratch/web.img"));
        assert_eq!(c.owner(), Path::new("/run/husk/web/owner"));
        assert_eq!(c.info(), Path::new("/run/husk/web/info.json"));
        assert_eq!(c.stdout_log(), Path::new("/run/husk/web/stdout.log"));
        assert_eq!(c.stderr_log(), Path::new("/run/husk/web/stderr.log"));
        assert_eq!(c.exit(), Path::new("/run/husk/web/exit"));
        let vm = c.vm();
        assert_eq!(vm.path(), Path::new("/run/husk/web/vm"));
        assert_eq!(vm.vm_config(), Path::new("/run/husk/web/vm/vm.json"));
        assert_eq!(vm.vsock(), Path::new("/run/husk/web/vm/vsock.sock"));
        assert_eq!(
            vm.ready_socket(),
            Path::new("/run/husk/web/vm/vsock.sock_1025")
        );
        assert_eq!(vm.console_log(), Path::new("/run/husk/web/vm/console.log"));
        assert_eq!(vm.vmm_log(), Path::new("/run/husk/web/vm/vmm.log"));
        assert_eq!(vm.pid(), Path::new("/run/husk/web/vm/pid"));
        assert_eq!(
            vm.virtiofsd_socket(),
            Path::new("/run/husk/web/vm/virtiofsd.sock")
        );
        assert_eq!(vm.share(), Path::new("/run/husk/web/vm/share"));
        assert_eq!(vm.jail_record(), Path::new("/run/husk/web/vm/jail"));
        assert_eq!(vm.jail_root(), Path::new("/run/husk/web/vm/root"));
        assert_eq!(
            jail_locks_dir(Path::new("/run/husk")),
            Path::new("/run/husk/.jail")
        );
        assert_eq!(owner_of(&c.path), c.owner());
    }

    #[test]
    fn network_and_scratch_paths() {
        let run = Path::new("/run/husk");
        assert_eq!(
            network_record(run, "web"),
            Path::new("/run/husk/.networks/web.json")
        );
        assert_eq!(
            network_netns(run, "web"),
            Path::new("/run/husk/.networks/web.ns")
        );
        assert_eq!(scratch_owner("web.img"), Some("web"));
        assert_eq!(scratch_owner("other.txt"), None);
    }

    #[test]
    fn create_refuses_a_taken_name() {
        let d = tempfile::tempdir().unwrap();
        let c = ContainerDir::new(d.path(), d.path(), "x");
        c.create("1 2", &serde_json::json!({"name": "x"})).unwrap();
        assert_eq!(std::fs::read_to_string(c.owner()).unwrap(), "1 2\n");
        let e = c.create("1 2", &serde_json::json!({})).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        c.remove();
        assert!(!c.path.exists());
    }
}
