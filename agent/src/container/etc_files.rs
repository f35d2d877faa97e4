//! The sandbox's name files (CreateSandbox's `etc_hosts`, `etc_resolv_conf`,
//! `etc_hostname`, protocol 0.4): written by the agent into its own folder
//! (`<state dir>/sandbox/`, `/run/husk-agent/sandbox/` in a guest) and bind-mounted
//! (read-write, `rbind`, as docker does) at `/etc/hosts`, `/etc/resolv.conf` and
//! `/etc/hostname` of every container whose spec mounts nothing there (a CRI bundle
//! brings its own).
//!
//! The mounts are added by the agent after the request policy has checked the spec
//! ([`super::policy`]): their sources are in the agent's state folder, which a spec
//! may not bind from, and still may not.
//!
//! The files are rewritten in place, so a later CreateSandbox reaches containers that
//! already run. A container's rootfs that lacks a target gets an empty file there first
//! (resolved inside the root; a dangling symlink such as systemd-resolved's
//! `/etc/resolv.conf` is replaced in the container's own writable layer); a root where
//! it cannot be made (a read-only one without an overlay) goes without that mount.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use oci_spec::runtime::{Mount, Spec};

use crate::lock;

/// One name file: the request's field, its file in the agent's folder, where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameFile {
    pub field: &'static str,
    pub file: &'static str,
    pub destination: &'static str,
}

/// The three name files, in the request's order.
pub const NAME_FILES: [NameFile; 3] = [
    NameFile {
        field: "etc_hosts",
        file: "hosts",
        destination: "/etc/hosts",
    },
    NameFile {
        field: "etc_resolv_conf",
        file: "resolv.conf",
        destination: "/etc/resolv.conf",
    },
    NameFile {
        field: "etc_hostname",
        file: "hostname",
        destination: "/etc/hostname",
    },
];

/// Why a name file could not be written or prepared.
#[derive(Debug, thiserror::Error)]
pub enum EtcFilesError {
    #[error("{field}: write {path}")]
    Write {
        field: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("{destination} in the container's root: {what}")]
    Target {
        destination: &'static str,
        what: &'static str,
        #[source]
        err: Errno,
    },
}

/// The sandbox's name files: where they are and which were given.
#[derive(Debug)]
pub struct EtcFiles {
    dir: PathBuf,
    given: Mutex<[bool; 3]>,
}

impl EtcFiles {
    /// Files under `<state_dir>/sandbox` (nothing written yet).
    pub fn new(state_dir: &Path) -> EtcFiles {
        EtcFiles {
            dir: state_dir.join("sandbox"),
            given: Mutex::new([false; 3]),
        }
    }

    /// The agent's folder for them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes each non-empty content (in [`NAME_FILES`]' order); an empty one leaves
    /// that file as it was (unset, or what an earlier CreateSandbox gave).
    pub fn write(&self, contents: [&[u8]; 3]) -> Result<(), EtcFilesError> {
        if contents.iter().all(|c| c.is_empty()) {
            return Ok(());
        }
        let mut given = lock(&self.given);
        for (i, (nf, data)) in NAME_FILES.iter().zip(contents).enumerate() {
            if data.is_empty() {
                continue;
            }
            let path = self.dir.join(nf.file);
            let fail = |err| EtcFilesError::Write {
                field: nf.field,
                path: path.clone(),
                err,
            };
            std::fs::create_dir_all(&self.dir).map_err(fail)?;
            // In place (not a rename): containers that bind it see the new content.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(fail)?;
            f.write_all(data).map_err(fail)?;
            if let Some(g) = given.get_mut(i) {
                *g = true;
            }
            tracing::info!(file = %path.display(), bytes = data.len(), "sandbox name file written");
        }
        Ok(())
    }

    /// The (source, destination) of every file given so far.
    pub fn mounts(&self) -> Vec<(PathBuf, &'static str)> {
        let given = *lock(&self.given);
        NAME_FILES
            .iter()
            .zip(given)
            .filter(|(_, g)| *g)
            .map(|(nf, _)| (self.dir.join(nf.file), nf.destination))
            .collect()
    }
}

/// Adds a bind mount of each of `files` to `spec`, at its destination, unless the spec
/// already mounts something there, and once its target exists in `root`. Call after
/// the spec passed the policy.
pub fn inject(
    spec: &mut Spec,
    root: &Path,
    files: &[(PathBuf, &'static str)],
) -> Result<(), EtcFilesError> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (source, destination) in files {
        let dest = Path::new(destination);
        if mounts.iter().any(|m| m.destination() == dest) {
            tracing::debug!(destination, "the spec mounts its own");
            continue;
        }
        if !prepare_target(root, destination)? {
            tracing::warn!(
                destination,
                "the container's root has no such file and is read-only: not mounted"
            );
            continue;
        }
        let mut m = Mount::default();
        m.set_destination(dest.to_path_buf());
        m.set_typ(Some("bind".into()));
        m.set_source(Some(source.clone()));
        m.set_options(Some(vec!["rbind".into(), "rw".into()]));
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// Makes sure `destination` (a file's absolute path) exists inside `root`, every step
/// resolved in it: an empty 0644 file where it is missing, a dangling symlink replaced
/// by one. `Ok(false)`: it is missing and the root is read-only.
fn prepare_target(root: &Path, destination: &'static str) -> Result<bool, EtcFilesError> {
    let fail = |what| {
        move |err| EtcFilesError::Target {
            destination,
            what,
            err,
        }
    };
    let dest = Path::new(destination);
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(fail("not a file's path")(Errno::EINVAL));
    };
    let rootfd = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("open the root"))?;
    let in_root = |flags: OFlag| {
        OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT)
    };
    let rel = dest.strip_prefix("/").unwrap_or(dest);
    if openat2(&rootfd, rel, in_root(OFlag::O_PATH | OFlag::O_CLOEXEC)).is_ok() {
        return Ok(true);
    }
    if let Err(e) = super::rootfs::make_dir_in(root, parent) {
        tracing::debug!(error = %e, "cannot make the parent folder");
        return Ok(false);
    }
    let prel = parent.strip_prefix("/").unwrap_or(parent);
    let pfd = openat2(
        &rootfd,
        prel,
        in_root(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC),
    )
    .map_err(fail("open its folder"))?;
    let create = || {
        openat(
            &pfd,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
    };
    match create() {
        Ok(_) => Ok(true),
        Err(Errno::EROFS) => Ok(false),
        // A dangling symlink (its target is missing in this root): replaced in the
        // container's layer.
        Err(Errno::EEXIST) => match unlinkat(&pfd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => create().map(|_| true).map_err(fail("create")),
            Err(Errno::EROFS) => Ok(false),
            Err(e) => Err(fail("replace a dangling symlink")(e)),
        },
        Err(e) => Err(fail("create")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_and_mounted_where_the_spec_has_none() {
        let tmp = tempfile::tempdir().unwrap();
        let files = EtcFiles::new(&tmp.path().join("state"));
        assert!(files.mounts().is_empty());
        files
            .write([b"127.0.0.1 localhost\n", b"", b"pod\n"])
            .unwrap();
        assert_eq!(
            std::fs::read(files.dir().join("hosts")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
        assert!(!files.dir().join("resolv.conf").exists());
        let m = files.mounts();
        assert_eq!(
            m.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
            ["/etc/hosts", "/etc/hostname"]
        );
        // A later write replaces in place and keeps what it does not name.
        files.write([b"", b"nameserver 10.0.0.2\n", b""]).unwrap();
        assert_eq!(files.mounts().len(), 3);

        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/x", "options": ["rbind"]}]
        }))
        .unwrap();
        inject(&mut spec, &root, &files.mounts()).unwrap();
        let ms = spec.mounts().clone().unwrap();
        assert_eq!(ms.len(), 3, "the spec's /etc/hosts is kept");
        assert_eq!(ms[0].source().as_deref(), Some(Path::new("/x")));
        assert_eq!(ms[1].destination(), Path::new("/etc/resolv.conf"));
        assert_eq!(
            ms[1].source().as_deref(),
            Some(files.dir().join("resolv.conf").as_path())
        );
        assert_eq!(
            ms[1].options().clone().unwrap(),
            vec!["rbind".to_string(), "rw".to_string()]
        );
        // The targets were made in the root.
        assert!(root.join("etc/resolv.conf").is_file());
        assert!(root.join("etc/hostname").is_file());
    }

    #[test]
    fn targets_are_made_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // Dangling, absolute, aiming outside: replaced inside the root, nothing outside.
        std::os::unix::fs::symlink(outside.join("resolv.conf"), root.join("etc/resolv.conf"))
            .unwrap();
        assert!(prepare_target(&root, "/etc/resolv.conf").unwrap());
        assert!(
            std::fs::symlink_metadata(root.join("etc/resolv.conf"))
                .unwrap()
                .is_file()
        );
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        // A symlink resolving inside the root is kept.
        std::fs::write(root.join("etc/real-hosts"), b"x").unwrap();
        std::os::unix::fs::symlink("real-hosts", root.join("etc/hosts")).unwrap();
        assert!(prepare_target(&root, "/etc/hosts").unwrap());
        assert!(
            std::fs::symlink_metadata(root.join("etc/hosts"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // /etc itself missing.
        let bare = tmp.path().join("bare");
        std::fs::create_dir_all(&bare).unwrap();
        assert!(prepare_target(&bare, "/etc/hostname").unwrap());
        assert!(bare.join("etc/hostname").is_file());
    }
}
