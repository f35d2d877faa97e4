//! Network namespaces by path: made by husk (a bind mount of a thread's namespace, so it
//! outlives every process and can be found again after a crash) or given (containerd's
//! pod netns); code and commands run inside one on a thread or child of their own.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a namespace could not be made, entered or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {what}: {source}")]
    Sys {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {0}: the thread setting it up died")]
    Thread(PathBuf),
}

/// A network namespace, named by the file it is mounted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    path: PathBuf,
}

fn sys<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> NetnsError + 'a {
    move |source| NetnsError::Sys {
        path: path.to_path_buf(),
        what,
        source,
    }
}

impl Netns {
    /// A new, empty namespace (only `lo`, down) mounted on `path` (created; its folder
    /// must exist). On failure nothing is left at `path`.
    pub fn create(path: &Path) -> Result<Netns, NetnsError> {
        File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(sys(path, "create the mount point"))?;
        let p = path.to_path_buf();
        // unshare on a thread of its own: the namespace change stays on that thread,
        // which then ends.
        let r = std::thread::spawn(move || -> Result<(), NetnsError> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| sys(&p, "unshare")(e.into()))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &p,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| sys(&p, "bind mount")(e.into()))
        })
        .join()
        .unwrap_or_else(|_| Err(NetnsError::Thread(path.to_path_buf())));
        if let Err(e) = r {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        tracing::debug!(netns = %path.display(), "network namespace created");
        Ok(Netns {
            path: path.to_path_buf(),
        })
    }

    /// A namespace someone else made (containerd's pod netns, or ours found again).
    pub fn at(path: &Path) -> Netns {
        Netns {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<File, NetnsError> {
        File::open(&self.path).map_err(sys(&self.path, "open"))
    }

    /// Runs `f` on a new thread that has entered the namespace (the caller's threads stay
    /// where they are).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let ns = self.open()?;
        let path = self.path.clone();
        std::thread::spawn(move || -> Result<T, NetnsError> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| sys(&path, "setns")(e.into()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(NetnsError::Thread(self.path.clone())))
    }

    /// `program` as a command that runs inside the namespace (it enters it between fork
    /// and exec).
    pub fn command(&self, program: &str) -> Result<Command, NetnsError> {
        let ns = self.open()?;
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; it runs in the forked child before exec on
        // an fd the closure owns (kept open by the move; closed at exec by O_CLOEXEC).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Unmounts and removes a namespace file made by [`Netns::create`] (the namespace
    /// goes when nothing else holds it, taking its interfaces with it). A missing file is
    /// no error.
    pub fn remove(path: &Path) -> Result<(), NetnsError> {
        if !path.exists() {
            return Ok(());
        }
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a crash between create and mount).
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(sys(path, "unmount")(e.into())),
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(sys(path, "remove")(e)),
        }
    }
}
