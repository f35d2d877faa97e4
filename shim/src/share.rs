//! A VM's shared folder: one virtiofsd per VM that sees only the host paths the
//! container asked for.
//!
//! virtiofsd is started in a mount namespace of its own. There, before it runs, a small
//! tmpfs is mounted on the sandbox's `share/` folder and each volume is bind-mounted
//! into it as `v0`, `v1`, … (a folder or a single file; read-only volumes are remounted
//! read-only, so even a hostile guest cannot write them through virtiofsd); then the
//! tmpfs itself is made read-only. virtiofsd then sandboxes itself into that folder
//! (`--sandbox namespace`: its own pid, net and mount namespaces, pivot_root). None of
//! these mounts exist in the host's namespace, so nothing is left behind whatever way
//! husk ends; virtiofsd dies with husk (PR_SET_PDEATHSIG) and when its VM goes.
//!
//! A pod's share ([`Server::start_pod`], the containerd shim) takes exports while it
//! runs: containers join the pod after its VM booted. Its exports are bind mounts in
//! the host's namespace, under a tmpfs (`share.rw/`) with shared propagation; virtiofsd
//! serves `share/`, a read-only bind of it that is a slave of it, so each export
//! added later propagates into virtiofsd's own (slave) namespace while the guest still
//! cannot write the tmpfs. These mounts exist on the host: [`unmount_pod`] removes
//! them (on shutdown, and from the shim's `delete` after a shim died) before the
//! folder is removed.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The virtio-fs tag of the volumes share.
pub const TAG: &str = "husk-vol";
/// Where the agent mounts a share in the guest: `<GUEST_DIR>/<tag>`.
pub const GUEST_DIR: &str = "/run/husk-shares";
/// How long virtiofsd may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the share could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(
        "virtiofsd not found (looked at $HUSK_VIRTIOFSD, next to husk, .tools/bin of its build tree, the usual places and $PATH for one with --shared-dir; QEMU's old C virtiofsd does not do; `make setup` builds one)"
    )]
    NoVirtiofsd,
    #[error("start {bin}: {err}")]
    Spawn { bin: PathBuf, err: std::io::Error },
    #[error("virtiofsd for {dir} did not start: {why}{log}")]
    NotStarted {
        dir: PathBuf,
        why: String,
        log: String,
    },
    #[error("share folder {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

/// A volume as the share serves it.
#[derive(Debug, Clone)]
pub struct Export {
    /// Its name in the share (`v0`, …).
    pub name: String,
    pub source: PathBuf,
    pub read_only: bool,
}

/// The running virtiofsd; killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// Its vhost-user socket (husk-vmm's `fs[].socket`).
    pub socket: PathBuf,
    /// A pod's share: the sandbox folder (exports are host mounts under it).
    pod: Option<crate::layout::SandboxDir>,
}

/// The virtiofsd to use.
pub fn virtiofsd_binary() -> Result<PathBuf, ShareError> {
    if let Some(p) = std::env::var_os("HUSK_VIRTIOFSD") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        // Next to husk, or the build tree's .tools (target/debug/husk, and
        // target/debug/deps/* for tests).
        for dir in exe.ancestors().skip(1).take(4) {
            for p in [dir.join("virtiofsd"), dir.join(".tools/bin/virtiofsd")] {
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
    }
    husk_vmm::host::find_virtiofsd(Path::new("/"))
        .filter(|p| speaks_shared_dir(p))
        .ok_or(ShareError::NoVirtiofsd)
}

/// Whether `bin` is the Rust virtiofsd (`--shared-dir`), not QEMU's old C one that
/// Debian's qemu still ships as /usr/lib/qemu/virtiofsd (other options).
fn speaks_shared_dir(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--shared-dir"))
}

fn cstr(p: &Path) -> Result<CString, ShareError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| ShareError::Io {
        path: p.to_path_buf(),
        err: std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in the path"),
    })
}

/// What the child does before exec, prepared (allocated) in the parent.
struct Plan {
    staging: CString,
    mounts: Vec<(CString, CString, bool, bool)>, // source, target, is_dir, read_only
}

/// Runs in the forked child: only raw syscalls on memory prepared by the parent.
fn setup_namespace(plan: &Plan) -> std::io::Result<()> {
    fn check(r: libc::c_int) -> std::io::Result<()> {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: raw syscalls in the child between fork and exec, on NUL-terminated strings
    // owned by `plan` (alive for the call); nothing is allocated.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            c"husk-share".as_ptr(),
            plan.staging.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=0755,size=64k".as_ptr().cast(),
        ))?;
        for (src, dst, is_dir, ro) in &plan.mounts {
            if *is_dir {
                check(libc::mkdir(dst.as_ptr(), 0o755))?;
            } else {
                let fd = libc::open(
                    dst.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                check(fd)?;
                libc::close(fd);
            }
            check(libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            if *ro {
                check(libc::mount(
                    none,
                    dst.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
            }
        }
        check(libc::mount(
            none,
            plan.staging.as_ptr(),
            none,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        ))?;
    }
    Ok(())
}

impl Server {
    /// Starts virtiofsd for `exports` in the sandbox folder `dir` and waits until it
    /// listens.
    pub async fn start(dir: &Path, exports: &[Export]) -> Result<Server, ShareError> {
        let bin = virtiofsd_binary()?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |err| ShareError::Io { path, err }
        };
        let dir = crate::layout::SandboxDir::new(dir);
        let staging = dir.share();
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        let mut mounts = Vec::new();
        for e in exports {
            let meta = std::fs::metadata(&e.source).map_err(io(&e.source))?;
            mounts.push((
                cstr(&e.source)?,
                cstr(&staging.join(&e.name))?,
                meta.is_dir(),
                e.read_only,
            ));
        }
        let plan = Plan {
            staging: cstr(&staging)?,
            mounts,
        };
        // setup_namespace only makes raw syscalls on memory `plan` owns; `plan` is moved
        // into the closure and lives until the command is dropped.
        let pre_exec = move || setup_namespace(&plan);
        spawn_and_wait(bin, &dir, &staging, Box::new(pre_exec), None).await
    }

    /// Starts virtiofsd for a pod in the sandbox folder `dir`, with no export yet
    /// ([`Server::add`] adds them while it runs), and waits until it listens.
    pub async fn start_pod(dir: &Path) -> Result<Server, ShareError> {
        let bin = virtiofsd_binary()?;
        let dir = crate::layout::SandboxDir::new(dir);
        let (rw, served) = (dir.share_mounts(), dir.share());
        for p in [&rw, &served] {
            std::fs::create_dir_all(p).map_err(|err| ShareError::Io {
                path: p.clone(),
                err,
            })?;
        }
        let mount =
            |src: Option<&Path>, dst: &Path, fstype: Option<&str>, flags, data: Option<&str>| {
                nix::mount::mount(src, dst, fstype, flags, data).map_err(|e| ShareError::Io {
                    path: dst.to_path_buf(),
                    err: e.into(),
                })
            };
        use nix::mount::MsFlags as F;
        let set_up = (|| {
            mount(
                Some(Path::new("husk-share")),
                &rw,
                Some("tmpfs"),
                F::MS_NOSUID | F::MS_NODEV,
                Some("mode=0755,size=1m"),
            )?;
            mount(None, &rw, None, F::MS_SHARED, None)?;
            mount(Some(&rw), &served, None, F::MS_BIND | F::MS_REC, None)?;
            mount(None, &served, None, F::MS_SLAVE, None)?;
            mount(
                None,
                &served,
                None,
                F::MS_BIND | F::MS_REMOUNT | F::MS_RDONLY | F::MS_NOSUID | F::MS_NODEV,
                None,
            )
        })();
        if let Err(e) = set_up {
            unmount_pod(&dir);
            return Err(e);
        }
        let pre_exec = || {
            // SAFETY: prctl in the forked child before exec; async-signal-safe.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        let r = spawn_and_wait(bin, &dir, &served, Box::new(pre_exec), Some(dir.clone())).await;
        if r.is_err() {
            unmount_pod(&dir);
        }
        r
    }

    /// Adds `e` to a pod's share (a bind mount in the host's namespace, read-only when
    /// asked; `e.name` may hold `/`: its folders are made).
    pub fn add(&self, e: &Export) -> Result<(), ShareError> {
        let Some(dir) = &self.pod else {
            return Err(ShareError::Io {
                path: self.socket.clone(),
                err: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "this share's exports are fixed (not a pod's share)",
                ),
            });
        };
        if e.name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(ShareError::Io {
                path: PathBuf::from(&e.name),
                err: std::io::Error::new(std::io::ErrorKind::InvalidInput, "a bad export name"),
            });
        }
        let target = dir.share_mounts().join(&e.name);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |err| ShareError::Io { path, err }
        };
        let meta = std::fs::metadata(&e.source).map_err(io(&e.source))?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if meta.is_dir() {
            std::fs::create_dir(&target).map_err(io(&target))?;
        } else {
            std::fs::File::create(&target).map_err(io(&target))?;
        }
        let mounted = attach(&e.source, &target, e.read_only);
        if let Err(err) = mounted {
            self.remove(&e.name);
            return Err(ShareError::Io { path: target, err });
        }
        tracing::debug!(name = %e.name, source = %e.source.display(), read_only = e.read_only, "export added to the pod's share");
        Ok(())
    }

    /// Removes the export `name` (and everything under it) from a pod's share.
    pub fn remove(&self, name: &str) {
        if let Some(dir) = &self.pod {
            let target = dir.share_mounts().join(name);
            let _ = detach_all(&target);
            let _ = std::fs::remove_dir(&target).or_else(|_| std::fs::remove_file(&target));
        }
    }
}

/// Bind-mounts `source` (recursively) on `target`, read-only when asked, through the
/// new mount API: the copy is made detached, made read-only there, and only then
/// attached, so the copies that propagate into virtiofsd's namespace are read-only
/// too (a remount after the fact changes only the host's copy).
fn attach(source: &Path, target: &Path, read_only: bool) -> std::io::Result<()> {
    // Linux UAPI constants (linux/mount.h, fcntl.h).
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const AT_EMPTY_PATH: libc::c_uint = 0x1000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let to_c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL in a path"))
    };
    let (src, dst) = (to_c(source)?, to_c(target)?);
    // SAFETY: open_tree on a NUL-terminated path; a non-negative result is a new fd
    // owned here (wrapped at once).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("open_tree: a bad fd"))?;
    // SAFETY: `fd` was just returned by open_tree and is owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    if read_only {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: mount_setattr on the detached tree's fd with a valid, sized struct.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                AT_EMPTY_PATH | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: move_mount of the detached tree onto a NUL-terminated target path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Lazily unmounts whatever is mounted on `target` (stacked mounts too).
/// Nothing (left) mounted there is no error; any other failure is returned.
pub fn detach_all(target: &Path) -> Result<(), nix::errno::Errno> {
    loop {
        match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Removes a pod's share mounts from the host (the exports, the tmpfs and its
/// read-only view). Idempotent; a folder never set up is left as it is.
pub fn unmount_pod(dir: &crate::layout::SandboxDir) {
    let _ = detach_all(&dir.share());
    let _ = detach_all(&dir.share_mounts());
}

/// Whether anything is mounted at or under `dir` in this process's namespace.
/// (Unreadable mountinfo counts as "yes": the answer guards a recursive removal.)
pub fn has_mounts_under(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| Path::new(&unescape_mountinfo(mp)).starts_with(dir))
}

/// A mountinfo path field with its octal escapes (`\040` for a space, ...) decoded.
fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| &b[i + 1..i + 4])
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// A pre-exec hook run in virtiofsd's forked child.
type PreExec = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>;

/// Spawns virtiofsd serving `served` for the sandbox folder `dir` and waits until it
/// listens.
async fn spawn_and_wait(
    bin: PathBuf,
    dir: &crate::layout::SandboxDir,
    served: &Path,
    pre_exec: PreExec,
    pod: Option<crate::layout::SandboxDir>,
) -> Result<Server, ShareError> {
    let socket = dir.virtiofsd_socket();
    let _ = std::fs::remove_file(&socket);
    {
        let staging = served;
        let log_path = dir.virtiofsd_log();
        let log = std::fs::File::create(&log_path).map_err(|err| ShareError::Io {
            path: log_path.clone(),
            err,
        })?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(staging)
            .args([
                "--sandbox",
                "namespace",
                "--cache",
                "auto",
                "--announce-submounts",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: the hooks given here (setup_namespace's plan, a prctl) make only raw,
        // async-signal-safe syscalls on memory they own.
        unsafe {
            cmd.pre_exec(pre_exec);
        }
        // From the process-long spawner thread: PDEATHSIG follows the forking thread.
        let child = crate::spawner::spawn(cmd).map_err(|err| ShareError::Spawn { bin, err })?;
        tracing::debug!(pid = child.id(), socket = %socket.display(), pod = pod.is_some(), "virtiofsd started");
        let mut server = Server {
            child: Some(child),
            socket,
            pod,
        };
        let t0 = Instant::now();
        loop {
            if server.socket.exists() {
                return Ok(server);
            }
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let why = match exited {
                Some(st) => Some(format!("it exited ({st})")),
                None if t0.elapsed() > START_TIMEOUT => {
                    Some(format!("no socket after {START_TIMEOUT:?}"))
                }
                None => None,
            };
            if let Some(why) = why {
                server.stop();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let log = if tail.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; its log: {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    )
                };
                return Err(ShareError::NotStarted {
                    dir: dir.to_path_buf(),
                    why,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Server {
    /// Kills virtiofsd (it ends by itself when its VM goes; this is for the paths
    /// where the VM never connected) and removes a pod's share mounts.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(dir) = &self.pod {
            unmount_pod(dir);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// virtiofsd on this host (no VM): it listens, its mount namespace holds the
    /// volumes (read-only ones read-only) and the host's holds none of them.
    #[tokio::test]
    async fn virtiofsd_sees_only_the_volumes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED virtiofsd_sees_only_the_volumes: needs root (mount namespaces)");
            return;
        }
        let Ok(bin) = virtiofsd_binary() else {
            eprintln!(
                "SKIPPED virtiofsd_sees_only_the_volumes: no virtiofsd (make setup builds one)"
            );
            return;
        };
        // SAFETY: set before any thread of this test reads it; tests of this module
        // that start virtiofsd are this one only.
        unsafe { std::env::set_var("HUSK_VIRTIOFSD", &bin) };
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let file = d.path().join("one.txt");
        std::fs::write(&file, "x").unwrap();
        let vm = d.path().join("vm");
        let exports = vec![
            Export {
                name: "v0".into(),
                source: data.clone(),
                read_only: false,
            },
            Export {
                name: "v1".into(),
                source: file.clone(),
                read_only: true,
            },
        ];
        let mut s = Server::start(&vm, &exports).await.unwrap();
        assert!(s.socket.exists());
        let pid = s.child.as_ref().unwrap().id();
        // virtiofsd has pivoted into the share: its root is the read-only tmpfs, the
        // volumes are /v0 (rw) and /v1 (ro), and nothing else of the host is mounted.
        // (It listens before it pivots: wait for its sandbox.)
        let deadline = Instant::now() + Duration::from_secs(5);
        let theirs = loop {
            let m = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
            if m.lines().count() <= 3 || Instant::now() > deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let staging = vm.join("share").display().to_string();
        let line = |mp: &str| {
            theirs
                .lines()
                .find(|l| l.split(' ').nth(4) == Some(mp))
                .unwrap_or_else(|| panic!("{mp} not mounted in virtiofsd's namespace: {theirs}"))
                .to_string()
        };
        let opts = |l: String| l.split(' ').nth(5).unwrap().to_string();
        assert!(opts(line("/")).starts_with("ro"), "{theirs}");
        assert!(opts(line("/v0")).starts_with("rw"), "{theirs}");
        assert!(opts(line("/v1")).starts_with("ro"), "{theirs}");
        assert_eq!(theirs.lines().count(), 3, "{theirs}");
        let ours = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !ours.contains(&staging),
            "the host namespace has the share's mounts"
        );
        s.stop();
        assert!(
            std::fs::read_dir(vm.join("share"))
                .unwrap()
                .next()
                .is_none()
        );
        // A source that does not exist: an error naming it, nothing started.
        let bad = vec![Export {
            name: "v0".into(),
            source: d.path().join("gone"),
            read_only: false,
        }];
        let e = Server::start(&d.path().join("vm2"), &bad)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/run/a\\040b"), "/run/a b");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/x\\777"), "/x\\777");
        assert_eq!(unescape_mountinfo("/x\\04"), "/x\\04");
    }

    /// A pod's share on this host (no VM): exports added after virtiofsd started
    /// appear in its namespace (read-only ones read-only), the tmpfs it serves is
    /// read-only, a removed export goes, and stopping leaves no mount on the host.
    #[tokio::test]
    async fn pod_share_takes_exports_while_running() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED pod_share_takes_exports_while_running: needs root (mounts)");
            return;
        }
        if virtiofsd_binary().is_err() {
            eprintln!(
                "SKIPPED pod_share_takes_exports_while_running: no virtiofsd (make setup builds one)"
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("f"), "in the root").unwrap();
        let hosts = d.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 x").unwrap();
        let vm = crate::layout::SandboxDir::new(d.path().join("vm"));
        let mut s = Server::start_pod(&vm).await.unwrap();
        let pid = s.child.as_ref().unwrap().id();
        // virtiofsd pivots after it listens: wait until its root is the share.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .count()
            > 2
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        s.add(&Export {
            name: "c1/rootfs".into(),
            source: root.clone(),
            read_only: false,
        })
        .unwrap();
        s.add(&Export {
            name: "c1/m0".into(),
            source: hosts.clone(),
            read_only: true,
        })
        .unwrap();
        assert!(
            s.add(&Export {
                name: "../x".into(),
                source: root.clone(),
                read_only: false,
            })
            .is_err()
        );
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let line = |mp: &str| {
            theirs
                .lines()
                .find(|l| l.split(' ').nth(4) == Some(mp))
                .unwrap_or_else(|| panic!("{mp} not in virtiofsd's namespace: {theirs}"))
                .split(' ')
                .nth(5)
                .unwrap()
                .to_string()
        };
        assert!(line("/").starts_with("ro"), "{theirs}");
        assert!(line("/c1/rootfs").starts_with("rw"), "{theirs}");
        assert!(line("/c1/m0").starts_with("ro"), "{theirs}");
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{pid}/root/c1/rootfs/f")).unwrap(),
            "in the root"
        );
        s.remove("c1/m0");
        s.remove("c1/rootfs");
        s.remove("c1");
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        assert!(!theirs.contains("/c1/"), "{theirs}");
        s.stop();
        assert!(!has_mounts_under(vm.path()));
        // The exported folder itself is untouched.
        assert_eq!(
            std::fs::read_to_string(root.join("f")).unwrap(),
            "in the root"
        );
        assert!(crate::sandbox::remove_dir(&vm));
        assert!(!vm.path().exists());
    }
}
