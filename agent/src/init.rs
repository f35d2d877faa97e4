//! PID 1 duties in the guest: kernel modules, leaving the initramfs, the standard
//! mounts, the console, and a clean power-off.
//!
//! Leaving the initramfs matters: pivot_root(2) refuses to work while the caller's root
//! is the initial ramfs, and every container is created with pivot_root. So the agent
//! moves a fresh tmpfs over `/` and chroots into it (what switch_root does), after
//! loading the modules packed in the initramfs.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Where the initramfs keeps modules: `order` lists them, one name per line, in load
/// order (dependencies first); each is `<name>.ko` beside it.
pub const MODULES_DIR: &str = "/modules";

/// Why the guest could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mount {what} on {target}: {err}")]
    Mount {
        what: &'static str,
        target: String,
        err: nix::Error,
    },
    #[error("{what}: {err}")]
    Sys { what: &'static str, err: nix::Error },
    #[error("{what}: {err}")]
    Io {
        what: &'static str,
        err: std::io::Error,
    },
}

fn mnt(
    src: &str,
    target: &str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    std::fs::create_dir_all(target).map_err(|err| InitError::Io { what: "mkdir", err })?;
    mount(Some(src), target, Some(fstype), flags, data).map_err(|err| InitError::Mount {
        what: fstype,
        target: target.to_string(),
        err,
    })
}

/// Loads the modules listed in /modules/order. A module already built in (EEXIST) or
/// for hardware this VM lacks (ENODEV) is fine; another failure is logged and the next
/// module tried (a missing device driver shows up later as a clear error about that
/// device).
pub fn load_modules() -> usize {
    let order = Path::new(MODULES_DIR).join("order");
    let Ok(list) = std::fs::read_to_string(&order) else {
        return 0;
    };
    let params = CString::default();
    let mut loaded = 0;
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new(MODULES_DIR).join(format!("{name}.ko"));
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(module = name, error = %e, "module missing");
                continue;
            }
        };
        // SAFETY: finit_module reads the module from a valid open fd and a valid
        // NUL-terminated (empty) parameter string; no memory of ours is written.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if rc == 0 {
            loaded += 1;
        } else {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EEXIST) => {}
                // A driver for hardware this VM lacks, such as crc32c-intel (a soft
                // dependency) on a CPU without SSE4.2: its fallback is loaded too.
                Some(libc::ENODEV) => tracing::info!(module = name, "module not for this machine"),
                _ => tracing::warn!(module = name, error = %err, "module did not load"),
            }
        }
    }
    loaded
}

/// Moves a fresh tmpfs over `/` and chroots into it (see the module docs).
pub fn leave_initramfs() -> Result<(), InitError> {
    let new = "/husk-root";
    mnt("tmpfs", new, "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
    std::env::set_current_dir(new).map_err(|err| InitError::Io { what: "chdir", err })?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|err| {
        InitError::Mount {
            what: "move",
            target: "/".into(),
            err,
        }
    })?;
    nix::unistd::chroot(".").map_err(|err| InitError::Sys {
        what: "chroot",
        err,
    })?;
    std::env::set_current_dir("/").map_err(|err| InitError::Io { what: "chdir", err })?;
    Ok(())
}

/// The standard mounts, cgroup v2 with its controllers enabled, and the console on
/// fds 0-2.
pub fn mount_basics() -> Result<(), InitError> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nodev, None)?;
    mnt("sysfs", "/sys", "sysfs", nodev, None)?;
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mnt(
        "shm",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mnt(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mnt(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mnt(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nodev,
        Some("nsdelegate"),
    )?;
    let available =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    for c in available.split_whitespace() {
        if let Err(e) = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", format!("+{c}")) {
            tracing::debug!(controller = c, error = %e, "controller not enabled");
        }
    }
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    reopen_console();
    Ok(())
}

/// Puts /dev/console on fds 0, 1 and 2 (the initramfs may have had no /dev/console,
/// leaving PID 1 without stdio).
fn reopen_console() {
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 of a valid open fd onto the standard fds.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

/// Ends the VM: every process killed, filesystems synced, ACPI power-off.
pub fn poweroff() -> ! {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-1),
        nix::sys::signal::Signal::SIGKILL,
    );
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot() only returns on failure; PID 1 must not exit (that is a kernel panic,
    // which ends the VM too, but loudly).
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
