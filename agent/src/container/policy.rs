//! What a request may ask of the guest, beyond a well-formed spec: a container's root
//! and its bind mounts never expose the agent's own state (every container's bundle
//! and root, the runtime's state) or the guest's root, and a namespace a container
//! joins is another container's, never the agent's (the guest's own namespaces are
//! the way out of every container).

use std::path::{Path, PathBuf};

/// Why a request was refused. Messages name the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{field} {path:?}: {why}")]
    Path {
        field: String,
        path: String,
        why: &'static str,
    },
    #[error(
        "linux.namespaces[{index}].path {path:?}: a container may join only another container's namespace (/proc/PID/ns/TYPE of a container process)"
    )]
    Namespace { index: usize, path: String },
}

/// The guest paths a request must not reach.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The agent's state folder (bundles, runtime state, terminals).
    pub state_dir: PathBuf,
    /// The folder of containers' cgroups (`/sys/fs/cgroup/husk`, as `/husk/` in
    /// /proc/PID/cgroup).
    pub cgroup_prefix: String,
}

impl Policy {
    pub fn new(state_dir: &Path) -> Policy {
        Policy {
            state_dir: state_dir.to_path_buf(),
            cgroup_prefix: "/husk/".into(),
        }
    }

    /// A folder that becomes a container's root or the source of a bind mount: not the
    /// guest's root, not the agent's binary, not the agent's state folder, its parents
    /// or anything in it. Symlinks are resolved first (the path as the kernel would
    /// mount it); a path that does not exist is left to the mount to refuse.
    pub fn check_exposed(&self, field: &str, path: &Path) -> Result<(), PolicyError> {
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let state = std::fs::canonicalize(&self.state_dir).unwrap_or(self.state_dir.clone());
        let refuse = |why| {
            Err(PolicyError::Path {
                field: field.to_string(),
                path: path.display().to_string(),
                why,
            })
        };
        if real == Path::new("/") {
            return refuse("the guest's root is not a container's to see");
        }
        if real == Path::new("/init") || real == Path::new("/proc/1/exe") {
            return refuse("the agent's own binary");
        }
        if real.starts_with(&state) || state.starts_with(&real) {
            return refuse("holds the agent's state (every container's bundle and root)");
        }
        Ok(())
    }

    /// A namespace path a container asks to join: `Ok(true)` to keep it, `Ok(false)`
    /// to drop it (a network namespace that is not a container's: a host path such
    /// as a CNI netns, meaningless in the guest; the container uses the guest's
    /// network, which is the pod's, as Kata does), or an error.
    pub fn check_namespace(
        &self,
        index: usize,
        typ: &str,
        path: &Path,
    ) -> Result<bool, PolicyError> {
        if let Some(pid) = container_ns_pid(path)
            && pid != 1
            && self.in_container_cgroup(pid)
        {
            return Ok(true);
        }
        if typ == "network" {
            tracing::info!(path = %path.display(), "a network namespace path that is not a container's: dropped (the container uses the guest's network)");
            return Ok(false);
        }
        Err(PolicyError::Namespace {
            index,
            path: path.display().to_string(),
        })
    }

    fn in_container_cgroup(&self, pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| {
            c.lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .any(|p| p.starts_with(&self.cgroup_prefix))
        })
    }
}

/// The pid of `/proc/PID/ns/TYPE` (only that shape; `self`, `thread-self` and
/// anything else is not a container's namespace by name).
fn container_ns_pid(path: &Path) -> Option<u32> {
    let rest = path.strip_prefix("/proc").ok()?;
    let mut parts = rest.components();
    let pid: u32 = parts.next()?.as_os_str().to_str()?.parse().ok()?;
    (parts.next()?.as_os_str() == "ns" && parts.next().is_some() && parts.next().is_none())
        .then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_paths_are_not_exposed() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        std::fs::create_dir_all(state.join("bundles/c1")).unwrap();
        let p = Policy::new(&state);
        for bad in [
            PathBuf::from("/"),
            state.clone(),
            state.join("bundles/c1"),
            d.path().to_path_buf(),
        ] {
            assert!(
                p.check_exposed("mounts[0].source", &bad).is_err(),
                "{bad:?}"
            );
        }
        // Through a symlink too.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(state.join("bundles"), &link).unwrap();
        let e = p.check_exposed("mounts[2].source", &link).unwrap_err();
        assert!(e.to_string().starts_with("mounts[2].source"), "{e}");
        let ok = d.path().join("data");
        std::fs::create_dir(&ok).unwrap();
        assert_eq!(p.check_exposed("mounts[0].source", &ok), Ok(()));
        assert!(p.check_exposed("rootfs", Path::new("/init")).is_err());
    }

    #[test]
    fn only_container_namespaces_are_joined() {
        let p = Policy::new(Path::new("/nonexistent-state"));
        // The agent's (PID 1's), self's, and a pid outside the containers' cgroups.
        for bad in [
            "/proc/1/ns/pid",
            "/proc/self/ns/mnt",
            "/proc/thread-self/ns/ipc",
        ] {
            assert!(
                p.check_namespace(0, "pid", Path::new(bad)).is_err(),
                "{bad}"
            );
        }
        let me = format!("/proc/{}/ns/pid", std::process::id());
        assert!(p.check_namespace(3, "pid", Path::new(&me)).is_err());
        // A host network namespace (CNI's): dropped, not refused.
        assert_eq!(
            p.check_namespace(1, "network", Path::new("/var/run/netns/cni-1234")),
            Ok(false)
        );
        assert_eq!(container_ns_pid(Path::new("/proc/42/ns/net")), Some(42));
        assert_eq!(container_ns_pid(Path::new("/proc/42/ns/net/x")), None);
        assert_eq!(container_ns_pid(Path::new("/proc/42/root/ns/net")), None);
        // A process in a /husk/ cgroup is a container's.
        let mut p = Policy::new(Path::new("/nonexistent-state"));
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let cg = own.lines().next().unwrap().splitn(3, ':').nth(2).unwrap();
        p.cgroup_prefix = cg.to_string();
        assert_eq!(p.check_namespace(0, "pid", Path::new(&me)), Ok(true));
    }
}
