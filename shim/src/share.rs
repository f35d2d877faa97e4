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

use std::ffi::CString;
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
        let socket = dir.virtiofsd_socket();
        let _ = std::fs::remove_file(&socket);
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
        let log_path = dir.virtiofsd_log();
        let log = std::fs::File::create(&log_path).map_err(io(&log_path))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&staging)
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
        // SAFETY: setup_namespace only makes raw syscalls on memory `plan` owns; `plan`
        // is moved into the closure and lives until the command is dropped.
        unsafe {
            cmd.pre_exec(move || setup_namespace(&plan));
        }
        // From the process-long spawner thread: PDEATHSIG follows the forking thread.
        let child = crate::spawner::spawn(cmd).map_err(|err| ShareError::Spawn { bin, err })?;
        tracing::debug!(pid = child.id(), socket = %socket.display(), volumes = exports.len(), "virtiofsd started");
        let mut server = Server {
            child: Some(child),
            socket,
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

    /// Kills virtiofsd (it ends by itself when its VM goes; this is for the paths
    /// where the VM never connected).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
}
