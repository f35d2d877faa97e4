//! The OCI runtime spec a host sends: parsed, checked, and rewritten for the guest
//! (root path, cgroup path, user) before it is written into the bundle.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxBuilder, Process, Root, Spec, User};

use husk_agent_protocol::validate;

use super::policy::{Policy, PolicyError};
use super::{seccomp, user};

/// Mount types a container may ask for.
const MOUNT_TYPES: &[&str] = &[
    "bind", "tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "none",
];

/// Why a spec was refused. Messages name the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("spec_json: not a valid OCI runtime spec: {0}")]
    Json(String),
    #[error("{0}: missing")]
    Missing(&'static str),
    #[error("process.args: empty (nothing to run)")]
    NoArgs,
    #[error("mounts[{index}].destination {dest:?}: {why}")]
    MountDestination {
        index: usize,
        dest: String,
        why: &'static str,
    },
    #[error("mounts[{index}].type {typ:?}: not supported (one of {MOUNT_TYPES:?})")]
    MountType { index: usize, typ: String },
    #[error("mounts[{index}].source: required for a bind mount and must be absolute")]
    MountSource { index: usize },
    #[error("linux.namespaces[{index}].path {path:?}: must be absolute")]
    NamespacePath { index: usize, path: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("process.cwd {0:?}: must be absolute")]
    Cwd(String),
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error(transparent)]
    Validate(#[from] validate::ValidateError),
}

/// Parses the runtime spec (bounded by the caller).
pub fn parse(json: &[u8]) -> Result<Spec, SpecError> {
    serde_json::from_slice(json).map_err(|e| SpecError::Json(e.to_string()))
}

/// Parses an OCI `process` object (for exec).
pub fn parse_process(json: &[u8]) -> Result<Process, SpecError> {
    serde_json::from_slice(json).map_err(|e| SpecError::Json(format!("process_json: {e}")))
}

/// A destination must be absolute and may not climb with `..` (lexically: what the
/// runtime resolves inside the root is confined by it, but a `..` is always a mistake
/// or an attack).
fn check_destination(index: usize, dest: &Path) -> Result<(), SpecError> {
    let d = dest.display().to_string();
    if !dest.is_absolute() {
        return Err(SpecError::MountDestination {
            index,
            dest: d,
            why: "must be absolute",
        });
    }
    if dest.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::MountDestination {
            index,
            dest: d,
            why: "contains `..` and could leave the container's root",
        });
    }
    if dest == Path::new("/") {
        return Err(SpecError::MountDestination {
            index,
            dest: d,
            why: "mounting over the root is not allowed",
        });
    }
    Ok(())
}

/// Checks a process: args, cwd.
pub fn check_process(p: &Process) -> Result<(), SpecError> {
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::NoArgs);
    }
    let cwd = p.cwd();
    if !cwd.is_absolute() || cwd.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::Cwd(cwd.display().to_string()));
    }
    Ok(())
}

/// Applies `user` (a "user[:group]" string) to a process, resolved in `rootfs`; sets
/// HOME when the process has none and the user has one.
pub fn apply_user(p: &mut Process, rootfs: &Path, spec: &str) -> Result<(), SpecError> {
    let r = user::resolve(rootfs, spec)?;
    let mut u = User::default();
    u.set_uid(r.uid);
    u.set_gid(r.gid);
    u.set_additional_gids(if r.additional_gids.is_empty() {
        None
    } else {
        Some(r.additional_gids)
    });
    u.set_umask(p.user().umask());
    p.set_user(u);
    if let Some(home) = r.home {
        let mut env = p.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={home}"));
            p.set_env(Some(env));
        }
    }
    Ok(())
}

/// Checks `spec` and rewrites it for this guest: the root is `rootfs`, the cgroup is
/// `/husk/<id>`, `user` (if not empty) replaces process.user.
pub fn prepare(
    spec: &mut Spec,
    id: &str,
    rootfs: &Path,
    user: &str,
    policy: &Policy,
) -> Result<(), SpecError> {
    let mut process = spec
        .process()
        .clone()
        .ok_or(SpecError::Missing("process"))?;
    check_process(&process)?;
    if !user.is_empty() {
        apply_user(&mut process, rootfs, user)?;
    }
    spec.set_process(Some(process));

    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        check_destination(index, m.destination())?;
        let typ = m.typ().clone().unwrap_or_else(|| "none".into());
        if !MOUNT_TYPES.contains(&typ.as_str()) {
            return Err(SpecError::MountType { index, typ });
        }
        let is_bind = typ == "bind"
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if is_bind {
            match m.source() {
                Some(src) if src.is_absolute() => {
                    policy.check_exposed(&format!("mounts[{index}].source"), src)?;
                }
                _ => return Err(SpecError::MountSource { index }),
            }
        }
    }

    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(spec.root().as_ref().and_then(|r| r.readonly()));
    spec.set_root(Some(root));

    let mut linux = match spec.linux().clone() {
        Some(l) => l,
        None => LinuxBuilder::default()
            .build()
            .map_err(|e| SpecError::Json(e.to_string()))?,
    };
    let mut namespaces = Vec::new();
    for (index, ns) in linux.namespaces().iter().flatten().enumerate() {
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(SpecError::NamespacePath {
                    index,
                    path: p.display().to_string(),
                });
            }
            let typ = serde_json::to_value(ns.typ())
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            if !policy.check_namespace(index, &typ, p)? {
                continue;
            }
        }
        namespaces.push(ns.clone());
    }
    if linux.namespaces().is_some() {
        linux.set_namespaces(Some(namespaces));
    }
    // No profile from the host: the default one (docker's shape; AF_VSOCK refused).
    if linux.seccomp().is_none() {
        let caps: Vec<_> = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().as_ref())
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default();
        linux.set_seccomp(Some(
            seccomp::default_profile(&caps).map_err(SpecError::Json)?,
        ));
    }
    linux.set_cgroups_path(Some(PathBuf::from(format!("/husk/{id}"))));
    spec.set_linux(Some(linux));
    // Hooks run programs in the agent's own context (the guest's, outside the
    // container): not accepted from the host.
    spec.set_hooks(None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    fn prep(v: serde_json::Value) -> Result<Spec, SpecError> {
        let mut s = parse(v.to_string().as_bytes())?;
        prepare(
            &mut s,
            "c1",
            Path::new("/r"),
            "",
            &Policy::new(Path::new("/run/husk-agent")),
        )?;
        Ok(s)
    }

    #[test]
    fn rewrites_root_and_cgroup() {
        let s = prep(minimal()).unwrap();
        assert_eq!(s.root().as_ref().unwrap().path(), Path::new("/r"));
        assert_eq!(
            s.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("/husk/c1"))
        );
    }

    #[test]
    fn refuses_bad_input_with_the_field() {
        let mut v = minimal();
        v["mounts"][0]["destination"] = "/../../etc".into();
        let e = prep(v).unwrap_err().to_string();
        assert!(e.contains("mounts[0].destination"), "{e}");

        let mut v = minimal();
        v["mounts"][0]["destination"] = "relative".into();
        assert!(prep(v).unwrap_err().to_string().contains("absolute"));

        let mut v = minimal();
        v["linux"]["namespaces"][0]["type"] = "bogus".into();
        let e = prep(v).unwrap_err().to_string();
        assert!(e.contains("spec_json") && e.contains("bogus"), "{e}");

        let mut v = minimal();
        v["process"]["args"] = serde_json::json!([]);
        assert!(matches!(prep(v), Err(SpecError::NoArgs)));

        let mut v = minimal();
        v["mounts"][0]["type"] = "nfs".into();
        assert!(matches!(prep(v), Err(SpecError::MountType { .. })));

        let mut v = minimal();
        v["mounts"][0] = serde_json::json!({"destination": "/x", "type": "bind", "source": "rel"});
        assert!(matches!(prep(v), Err(SpecError::MountSource { .. })));

        assert!(matches!(parse(b"{not json"), Err(SpecError::Json(_))));
    }
}
