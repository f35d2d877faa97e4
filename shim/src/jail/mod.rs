//! The jail husk-vmm runs in (docs/security.md, "The VMM's jail"; Firecracker's
//! jailer is the model): its own mount, IPC and pid namespaces with a root that holds
//! only its binary, its image files, its sandbox folder, /dev/kvm and /dev/urandom
//! (root.rs); an unprivileged uid and gid of its own (ids.rs); no capabilities and
//! no_new_privs; a cgroup v2 with memory and pids limits (cgroup.rs). husk-vmm installs
//! its seccomp filter itself, inside all that, before the first KVM_RUN.
//!
//! The runtime [`Jail::prepare`]s a jail before spawning husk-vmm, [`Jail::apply`]s it
//! to the command (a pre_exec hook, child.rs) and keeps it as long as the VM: dropping it
//! removes the cgroup and frees the uid. A sandbox folder keeps a record (`jail`) so that
//! [`reap`] can remove the cgroup of a VM whose `husk` was killed. Mounts need no
//! clean-up: they exist only in husk-vmm's mount namespace and go with it.

pub mod cgroup;
pub mod child;
pub mod ids;
pub mod root;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::JailSettings;

/// Why a jail could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(transparent)]
    Ids(#[from] ids::IdsError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Root(#[from] root::RootError),
    #[error("jail: {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("jail: {path}: a NUL byte in the path")]
    Nul { path: PathBuf },
}

/// What a jail is made of for one VM.
#[derive(Debug, Clone)]
pub struct JailSpec {
    pub settings: JailSettings,
    /// Where uid locks live (`<run_dir>/.jail`).
    pub run_dir: PathBuf,
}

/// What husk-vmm is given (paths as vm.json names them).
#[derive(Debug, Clone)]
pub struct Files<'a> {
    pub vm_dir: &'a Path,
    pub vmm: &'a Path,
    pub read_only: Vec<&'a Path>,
    pub writable: Vec<&'a Path>,
    /// Guest memory, for memory.max.
    pub memory_mib: u32,
}

/// A prepared jail, held while its VM lives.
#[derive(Debug)]
pub struct Jail {
    claim: ids::Claim,
    /// The group every jail shares, for read-only inputs not readable by all.
    pub shared_gid: u32,
    pub cgroup: Option<PathBuf>,
    pub plan: root::Plan,
    /// husk-vmm's binary, absolute (exec'd inside the root at that path).
    pub vmm: PathBuf,
}

/// The record of a sandbox's jail ("uid\ncgroup path\n"; crate::layout).
pub fn record_path(vm_dir: &Path) -> PathBuf {
    crate::layout::SandboxDir::new(vm_dir).jail_record()
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> JailError {
    let path = path.to_path_buf();
    move |err| JailError::Io { path, what, err }
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Nul {
        path: p.to_path_buf(),
    })
}

/// Filesystems whose file data lives in RAM: tmpfs, ramfs, and overlayfs, whose upper
/// layer may be a tmpfs (the lab's is; statfs(2) cannot tell through it).
const RAM_BACKED: [i64; 3] = [0x0102_1994, 0x8584_58f6, 0x794c_7630];

/// Whether `path`'s data is held in RAM (see [`RAM_BACKED`]).
pub fn ram_backed(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| RAM_BACKED.contains(&s.filesystem_type().0))
}

/// `memory.max` of a VM: its guest memory, husk-vmm's overhead, and the size of each
/// writable disk whose data lives in RAM. Pages the VM writes to a tmpfs-backed file
/// are charged to its cgroup and cannot be reclaimed (no swap), so without them a guest
/// that fills its scratch disk would get husk-vmm OOM-killed; a disk-backed file's page
/// cache is reclaimable and not counted. Rounded up to whole pages (the kernel rounds
/// down).
pub fn memory_max(files: &Files, overhead_mib: u32) -> u64 {
    let disks: u64 = files
        .writable
        .iter()
        .filter(|p| ram_backed(p))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let bytes =
        ((u64::from(files.memory_mib) + u64::from(overhead_mib)) << 20).saturating_add(disks);
    bytes.div_ceil(4096).saturating_mul(4096)
}

fn rdev(path: &str) -> Result<u64, JailError> {
    std::fs::metadata(path)
        .map(|m| m.rdev())
        .map_err(io_err(Path::new(path), "stat"))
}

impl Jail {
    /// Claims a uid, creates the cgroup, plans the root and gives the VM's uid access
    /// to what it must open: the sandbox folder (root:gid, mode 1770: it may create
    /// files there and remove only its own), the writable disks (chowned to it), the
    /// read-only files that are not readable by all (group `shared_gid`, g+r).
    pub fn prepare(spec: &JailSpec, files: &Files) -> Result<Jail, JailError> {
        let s = &spec.settings;
        let vmm = std::fs::canonicalize(files.vmm).map_err(io_err(files.vmm, "find husk-vmm"))?;
        let libraries = root::libraries(&vmm)?;
        let plan = root::plan(&root::Inputs {
            vm_dir: files.vm_dir,
            vmm: &vmm,
            libraries: &libraries,
            read_only: files.read_only.clone(),
            writable: files.writable.clone(),
            kvm_rdev: rdev("/dev/kvm")?,
            urandom_rdev: rdev("/dev/urandom")?,
        })?;
        let key = files.vm_dir.to_string_lossy();
        let claim = ids::claim(&spec.run_dir, &key, s.uid_base, s.uid_count)?;
        let uid = claim.uid;
        let mount = cgroup::find_mount()?;
        let limits = cgroup::Limits {
            memory_bytes: memory_max(files, s.memory_overhead_mib),
            pids: s.pids_max,
        };
        let cg = cgroup::create(&mount, &s.cgroup_parent, uid, limits)?;
        let jail = Jail {
            claim,
            shared_gid: s.uid_base - 1,
            cgroup: Some(cg),
            plan,
            vmm,
        };
        jail.grant_files()?;
        let rec = record_path(files.vm_dir);
        let text = format!(
            "{uid}\n{}\n",
            jail.cgroup.as_deref().unwrap_or(Path::new("")).display()
        );
        std::fs::write(&rec, text).map_err(io_err(&rec, "write the jail record"))?;
        tracing::info!(uid, vm = %files.vm_dir.display(), "husk-vmm jailed");
        Ok(jail)
    }

    /// The VM's uid (its gid has the same number).
    pub fn uid(&self) -> u32 {
        self.claim.uid
    }

    fn grant_files(&self) -> Result<(), JailError> {
        let (uid, gid) = (self.uid(), self.uid());
        for b in &self.plan.binds {
            let p = &b.path;
            if b.dir {
                std::os::unix::fs::chown(p, Some(0), Some(gid)).map_err(io_err(p, "chown"))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o1770))
                    .map_err(io_err(p, "chmod"))?;
            } else if b.writable {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(io_err(p, "chown"))?;
            } else {
                let m = std::fs::metadata(p).map_err(io_err(p, "stat"))?;
                if m.mode() & 0o004 == 0 {
                    std::os::unix::fs::chown(p, None, Some(self.shared_gid))
                        .map_err(io_err(p, "chgrp"))?;
                    std::fs::set_permissions(
                        p,
                        std::fs::Permissions::from_mode((m.mode() & 0o7777) | 0o040),
                    )
                    .map_err(io_err(p, "chmod"))?;
                }
            }
        }
        Ok(())
    }

    /// Lets the VM's uid use `path` (a socket the runtime listens on, a file it
    /// pre-creates for husk-vmm).
    pub fn grant(&self, path: &Path) -> Result<(), JailError> {
        std::os::unix::fs::chown(path, Some(self.uid()), Some(self.uid()))
            .map_err(io_err(path, "chown"))
    }

    /// The child's steps, allocated now (child.rs runs them after fork).
    pub fn prepared(&self) -> Result<child::Prepared, JailError> {
        let root = &self.plan.root;
        let inside = |p: &Path| cstr(&root.join(p.strip_prefix("/").unwrap_or(p)));
        let binds = self
            .plan
            .binds
            .iter()
            .map(|b| {
                let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
                if !b.writable {
                    flags |= libc::MS_RDONLY;
                }
                if !b.exec {
                    flags |= libc::MS_NOEXEC;
                }
                Ok(child::BindC {
                    source: cstr(&b.path)?,
                    target: inside(&b.path)?,
                    dir: b.dir,
                    remount: flags,
                })
            })
            .collect::<Result<Vec<_>, JailError>>()?;
        let nodes = self
            .plan
            .nodes
            .iter()
            .map(|n| {
                Ok(child::NodeC {
                    target: inside(Path::new(n.path))?,
                    mode: n.mode,
                    rdev: n.rdev,
                    owned: n.owned,
                })
            })
            .collect::<Result<Vec<_>, JailError>>()?;
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(63);
        std::fs::create_dir_all(root).map_err(io_err(root, "create the jail root"))?;
        Ok(child::Prepared {
            cgroup_procs: self
                .cgroup
                .as_ref()
                .map(|c| cstr(&c.join("cgroup.procs")))
                .transpose()?,
            root: cstr(root)?,
            dirs: self
                .plan
                .dirs
                .iter()
                .map(|d| inside(d))
                .collect::<Result<_, _>>()?,
            binds,
            nodes,
            uid: self.uid(),
            gid: self.uid(),
            groups: vec![self.shared_gid],
            last_cap,
        })
    }

    /// Makes `cmd` (husk-vmm's command, already holding its own pre_exec hooks) start
    /// inside the jail; its program must be [`Jail::vmm`].
    pub fn apply(&self, cmd: &mut Command) -> Result<(), JailError> {
        let prepared = self.prepared()?;
        // SAFETY: the hook runs in the forked child before exec and only makes raw,
        // async-signal-safe system calls on memory it owns (child.rs).
        unsafe {
            cmd.pre_exec(move || child::run(&prepared));
        }
        Ok(())
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        if let Some(c) = &self.cgroup {
            cgroup::remove(c);
        }
    }
}

/// Removes the cgroup recorded in the sandbox folder `vm_dir` (its `husk` was killed;
/// the uid's lock went with that process). Quiet when there is no record.
pub fn reap(vm_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(record_path(vm_dir)) else {
        return;
    };
    if let Some(cg) = text.lines().nth(1).filter(|l| !l.is_empty()) {
        let cg = Path::new(cg);
        // Only a cgroup this module names (`.../vm-<uid>` under a cgroup2 mount).
        if cg.is_absolute()
            && cg
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vm-"))
            && cg.join("cgroup.procs").exists()
        {
            cgroup::remove(cg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_backed_writable_disks_count_in_memory_max() {
        let shm = Path::new("/dev/shm");
        if !ram_backed(shm) {
            eprintln!(
                "SKIPPED ram_backed_writable_disks_count_in_memory_max: /dev/shm is not a tmpfs here"
            );
            return;
        }
        let d = tempfile::tempdir_in(shm).unwrap();
        let disk = d.path().join("scratch.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(10 << 20)
            .unwrap();
        let ro = d.path().join("image.erofs");
        std::fs::File::create(&ro)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let mut files = Files {
            vm_dir: d.path(),
            vmm: Path::new("/usr/bin/true"),
            read_only: vec![&ro],
            writable: vec![],
            memory_mib: 64,
        };
        assert_eq!(memory_max(&files, 256), 320 << 20, "no writable disk");
        files.writable.push(&disk);
        assert_eq!(
            memory_max(&files, 256),
            (320 << 20) + (10 << 20),
            "a tmpfs-backed writable disk counts whole, a read-only one not at all"
        );
        std::fs::File::create(&disk).unwrap().set_len(5).unwrap();
        assert_eq!(memory_max(&files, 256), (320 << 20) + 4096, "whole pages");
    }
}
