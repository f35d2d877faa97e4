//! The jailed husk-vmm's cgroup (v2): `<cgroup2 mount>/<jail.cgroup_parent>/vm-<uid>`,
//! with `memory.max` (guest memory plus `jail.memory_overhead_mib`) and `pids.max`.
//!
//! Only cgroup v2 is used (Documentation/admin-guide/cgroup-v2.rst). The memory and
//! pids controllers must be available in the hierarchy; where they are not (a v1 host
//! whose unified hierarchy has no controllers), starting a jailed VM fails and says so
//! (`--no-jail` runs without the jail): a VM without the limits it was promised is not
//! started silently. The child joins the cgroup itself before it forks husk-vmm
//! (crate::jail::child), so husk-vmm never runs outside it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The controllers the jail needs.
const CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// Why the cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (the jail limits husk-vmm's memory and pids there; mount cgroup2, or run with --no-jail)"
    )]
    NotMounted,
    #[error(
        "the cgroup v2 hierarchy at {mount} lacks the {controller} controller (available: {available:?}); the jail needs memory and pids (boot with cgroup v2, or run with --no-jail)"
    )]
    NoController {
        mount: PathBuf,
        controller: &'static str,
        available: String,
    },
    #[error("cgroup {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
}

/// The limits written into a VM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u32,
}

/// The first cgroup2 mount point in a mountinfo text (proc(5), /proc/self/mountinfo).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| pre.split_whitespace().nth(4).map(unescape))?
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The path of VM `uid`'s cgroup under the hierarchy at `mount`.
pub fn path_of(mount: &Path, parent: &str, uid: u32) -> PathBuf {
    mount
        .join(parent.trim_matches('/'))
        .join(format!("vm-{uid}"))
}

fn write(path: &Path, what: &'static str, text: &str) -> Result<(), CgroupError> {
    std::fs::write(path, text).map_err(|err| CgroupError::Io {
        path: path.to_path_buf(),
        what,
        err,
    })
}

/// Makes sure `dir`'s children get the controllers (writes `+memory +pids` to its
/// `cgroup.subtree_control` unless they are on already).
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let on = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| !on.split_whitespace().any(|x| x == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(
        &dir.join("cgroup.subtree_control"),
        "enable the memory and pids controllers",
        &missing.join(" "),
    )
}

/// The cgroup v2 mount of this process's mount namespace.
pub fn find_mount() -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    cgroup2_mount(&text).ok_or(CgroupError::NotMounted)
}

/// Whether the hierarchy at `mount` offers the memory and pids controllers.
pub fn check_controllers(mount: &Path) -> Result<(), CgroupError> {
    let available = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    for c in CONTROLLERS {
        if !available.split_whitespace().any(|x| x == c) {
            return Err(CgroupError::NoController {
                mount: mount.to_path_buf(),
                controller: c,
                available: available.trim().to_string(),
            });
        }
    }
    Ok(())
}

/// Whether a jail can get its cgroup on this host (run before the slow steps of a
/// start, so that a host without it says so at once).
pub fn check() -> Result<(), CgroupError> {
    check_controllers(&find_mount()?)
}

/// Creates VM `uid`'s cgroup with `limits` (a left-over one of that uid, from a killed
/// `husk`, is emptied and replaced). Returns its path.
pub fn create(
    mount: &Path,
    parent: &str,
    uid: u32,
    limits: Limits,
) -> Result<PathBuf, CgroupError> {
    check_controllers(mount)?;
    let path = path_of(mount, parent, uid);
    let io = |p: &Path, what| {
        let path = p.to_path_buf();
        move |err| CgroupError::Io { path, what, err }
    };
    // Every level from the mount down to the parent hands the controllers on.
    enable_controllers(mount)?;
    let parent_dir = path.parent().unwrap_or(mount).to_path_buf();
    let mut level = mount.to_path_buf();
    for part in parent_dir
        .strip_prefix(mount)
        .unwrap_or(Path::new(""))
        .components()
    {
        level.push(part);
        match std::fs::create_dir(&level) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&level, "create")(e)),
        }
        enable_controllers(&level)?;
    }
    if path.exists() {
        remove(&path);
    }
    std::fs::create_dir(&path).map_err(io(&path, "create"))?;
    let set = || -> Result<(), CgroupError> {
        write(
            &path.join("memory.max"),
            "set memory.max",
            &limits.memory_bytes.to_string(),
        )?;
        write(
            &path.join("pids.max"),
            "set pids.max",
            &limits.pids.to_string(),
        )
    };
    if let Err(e) = set() {
        remove(&path);
        return Err(e);
    }
    tracing::debug!(cgroup = %path.display(), memory = limits.memory_bytes, pids = limits.pids, "jail cgroup created");
    Ok(path)
}

/// Kills what is left in the cgroup (`cgroup.kill`, Linux 5.14) and removes it,
/// waiting up to 2 s for its processes to be gone. Quiet when it does not exist.
pub fn remove(path: &Path) {
    if !path.exists() {
        return;
    }
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                tracing::warn!(cgroup = %path.display(), error = %e, "cannot remove the jail's cgroup");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let v1_host = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
29 28 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
31 28 0:29 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
";
        assert_eq!(
            cgroup2_mount(v1_host),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v2 = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(v2), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            cgroup2_mount("25 30 0:23 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        let spaced = "35 24 0:30 / /mnt/c\\040g rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/mnt/c g")));
    }

    #[test]
    fn vm_cgroup_paths() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            path_of(m, "husk", 100_007),
            Path::new("/sys/fs/cgroup/husk/vm-100007")
        );
        assert_eq!(path_of(m, "/a/b/", 5), Path::new("/sys/fs/cgroup/a/b/vm-5"));
    }

    #[test]
    fn a_hierarchy_without_memory_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "hugetlb\n").unwrap();
        let e = create(
            d.path(),
            "husk",
            1,
            Limits {
                memory_bytes: 1,
                pids: 1,
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                &e,
                CgroupError::NoController {
                    controller: "memory",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--no-jail"), "{e}");
    }
}
