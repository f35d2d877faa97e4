//! A container's root and bind mounts, from the host into the guest through the pod's
//! share (crate::share: one sandboxed virtiofsd serving only the folders named here).
//!
//! The root is the bundle's `rootfs` folder: mounted by containerd's snapshotter, or
//! given as `Create.rootfs` mounts that the shim mounts there itself (as runc's shim
//! does, containerd's runtime v2 "Create"). The spec's bind mounts (CRI's hosts,
//! hostname, resolv.conf, volumes) are exported one by one and their sources rewritten
//! to the share's folder in the guest; a bind onto /dev/shm (CRI's sandbox shm, the
//! pod's IPC) becomes a bind of the guest's own /dev/shm, one tmpfs per VM and so per
//! pod (the host's shm is no use to a VM). The agent mounts the root from
//! `Rootfs.path` without an overlay: writes land in the snapshot.

use std::path::{Path, PathBuf};

use containerd_shim::protos::api::Mount;
use serde_json::Value;
use tracing::{debug, warn};

use crate::share::Export;

/// Why the root could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount {kind} {source} on {target}: {err}")]
    Mount {
        kind: String,
        source: String,
        target: PathBuf,
        #[source]
        err: Box<containerd_shim::Error>,
    },
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("the spec has no root path")]
    NoRoot,
}

/// The export name of a container's root, under its folder in the share.
const ROOT_EXPORT: &str = "rootfs";

/// What the guest gets for one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The container's folder in the share (every export's first component).
    pub folder: String,
    /// The host folders and files the share serves: (name, source, read-only).
    pub exports: Vec<(String, PathBuf, bool)>,
    /// The root's path in the guest (the agent's `Rootfs.path`).
    pub guest_root: String,
    /// The spec with bind sources in the guest.
    pub spec: Value,
}

impl Plan {
    /// The share's exports.
    pub fn share_exports(&self) -> Vec<Export> {
        self.exports
            .iter()
            .map(|(name, source, read_only)| Export {
                name: name.clone(),
                source: source.clone(),
                read_only: *read_only,
            })
            .collect()
    }
}

/// Where the share is in the guest.
fn guest_share() -> String {
    format!("{}/{}", crate::share::GUEST_DIR, crate::share::TAG)
}

/// The root folder on the host: the spec's `root.path`, relative to the bundle.
pub fn host_root(bundle: &Path, spec: &Value) -> Result<PathBuf, RootfsError> {
    let p = spec
        .pointer("/root/path")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or(RootfsError::NoRoot)?;
    Ok(bundle.join(p))
}

fn is_bind(m: &Value) -> bool {
    let typ = m.get("type").and_then(Value::as_str).unwrap_or("");
    let opts = options(m);
    typ == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind")
}

fn options(m: &Value) -> Vec<String> {
    m.get("options")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The guest's /dev/shm: the pod's shared memory.
const GUEST_SHM: &str = "/dev/shm";

/// Plans the guest's view of `spec`'s root (at `root` on the host) and bind mounts,
/// exported under `folder` (one path component, unique in the pod).
pub fn plan(spec: &Value, root: &Path, folder: &str) -> Plan {
    let share = format!("{}/{folder}", guest_share());
    let mut exports = vec![(format!("{folder}/{ROOT_EXPORT}"), root.to_path_buf(), false)];
    let mut spec = spec.clone();
    let mut n = 0;
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        for m in mounts.iter_mut() {
            if !is_bind(m) {
                continue;
            }
            let dest = m
                .get("destination")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if Path::new(&dest)
                .components()
                .eq(Path::new(GUEST_SHM).components())
            {
                // The pod's shared memory: the guest's /dev/shm (a tmpfs the agent
                // mounts at boot), shared by every container of the pod that binds it.
                *m = serde_json::json!({
                    "destination": "/dev/shm",
                    "type": "bind",
                    "source": GUEST_SHM,
                    "options": ["rbind", "nosuid", "noexec", "nodev"],
                });
                continue;
            }
            let Some(source) = m.get("source").and_then(Value::as_str).map(PathBuf::from) else {
                continue;
            };
            let read_only = options(m).iter().any(|o| o == "ro");
            let name = format!("m{n}");
            n += 1;
            m["source"] = Value::String(format!("{share}/{name}"));
            debug!(source = %source.display(), %dest, read_only, "bind mount through the share");
            exports.push((format!("{folder}/{name}"), source, read_only));
        }
    }
    Plan {
        folder: folder.to_string(),
        exports,
        guest_root: format!("{share}/{ROOT_EXPORT}"),
        spec,
    }
}

/// Mounts containerd's `mounts` (Create.rootfs) onto `target`, in order. Returns
/// whether anything was mounted (then [`unmount`] undoes it).
pub async fn mount_all(mounts: &[Mount], target: &Path) -> Result<bool, RootfsError> {
    if mounts.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(target).map_err(|err| RootfsError::Io {
        path: target.to_path_buf(),
        err,
    })?;
    for m in mounts {
        containerd_shim::asynchronous::util::mount_rootfs(m, target)
            .await
            .map_err(|err| RootfsError::Mount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                target: target.to_path_buf(),
                err: Box::new(err),
            })?;
    }
    Ok(true)
}

/// Unmounts whatever is mounted on `target` (lazily; nothing mounted: nothing done).
pub fn unmount(target: &Path) {
    if let Err(e) = crate::share::detach_all(target) {
        warn!(target = %target.display(), error = %e, "unmount rootfs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn root_and_binds() {
        let spec = json!({
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/c/hosts",
                 "options": ["rbind", "rprivate", "rw"]},
                {"destination": "/data", "source": "/srv/data", "options": ["rbind", "ro"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/c/shm",
                 "options": ["rbind"]},
            ]
        });
        let root = host_root(Path::new("/b"), &spec).unwrap();
        assert_eq!(root, Path::new("/b/rootfs"));
        let p = plan(&spec, &root, "c1");
        assert_eq!(p.guest_root, "/run/husk-shares/husk-vol/c1/rootfs");
        assert_eq!(
            p.exports,
            vec![
                ("c1/rootfs".into(), PathBuf::from("/b/rootfs"), false),
                ("c1/m0".into(), PathBuf::from("/var/lib/c/hosts"), false),
                ("c1/m1".into(), PathBuf::from("/srv/data"), true),
            ]
        );
        let m = p.spec["mounts"].as_array().unwrap();
        assert_eq!(m[0]["source"], "proc");
        assert_eq!(m[1]["source"], "/run/husk-shares/husk-vol/c1/m0");
        assert_eq!(m[2]["source"], "/run/husk-shares/husk-vol/c1/m1");
        assert_eq!(m[3]["type"], "bind");
        assert_eq!(m[3]["source"], "/dev/shm", "the guest's, one per pod");
        assert_eq!(p.share_exports().len(), 3);
    }

    #[test]
    fn absolute_root_and_none() {
        let spec = json!({"root": {"path": "/snap/1/fs"}});
        assert_eq!(
            host_root(Path::new("/b"), &spec).unwrap(),
            Path::new("/snap/1/fs")
        );
        assert!(host_root(Path::new("/b"), &json!({})).is_err());
    }

    #[test]
    fn unmount_of_nothing_is_quiet() {
        let d = tempfile::tempdir().unwrap();
        unmount(d.path());
        unmount(&d.path().join("missing"));
    }
}
