//! The jail's steps in the forked child, between fork and exec (a `pre_exec` hook):
//! raw system calls on memory prepared by the parent, no allocation, nothing that may
//! take a lock another thread of the parent held at fork (fork(2), signal-safety(7)).
//!
//! In order: PR_SET_PDEATHSIG; join the cgroup; new mount, IPC and pid namespaces;
//! build the root and pivot_root into it; fork, since a new pid namespace takes
//! effect for children only. The parent of that fork (the *keeper*, named
//! `husk-jail`) stays outside the namespace, waits for husk-vmm and exits as it did,
//! so the runtime's `Child` and recorded pid still stand for the VM: SIGKILL to the
//! keeper kills husk-vmm too (its PR_SET_PDEATHSIG). Both drop every capability,
//! take the VM's uid and gid and set no_new_privs; then husk-vmm is exec'd (by std,
//! after this hook returns) as PID 1 of its namespace.
//!
//! A step that fails writes `husk-vmm jail: <step> <path>: errno N` to stderr (the
//! sandbox's vmm.log) and returns the error, which std hands to the spawning parent.

use std::ffi::{CStr, CString};
use std::io;

/// A bind mount, prepared.
#[derive(Debug)]
pub struct BindC {
    pub source: CString,
    /// Inside the root, as the host sees it before pivot_root (`<root><path>`).
    pub target: CString,
    pub dir: bool,
    /// Flags of the read-only/nosuid/nodev/noexec remount.
    pub remount: libc::c_ulong,
}

/// A device node, prepared.
#[derive(Debug)]
pub struct NodeC {
    pub target: CString,
    pub mode: libc::mode_t,
    pub rdev: libc::dev_t,
    pub owned: bool,
}

/// Everything the child does, allocated before fork.
#[derive(Debug)]
pub struct Prepared {
    /// `<cgroup>/cgroup.procs` (none: no cgroup, the host test of the namespaces only).
    pub cgroup_procs: Option<CString>,
    pub root: CString,
    pub dirs: Vec<CString>,
    pub binds: Vec<BindC>,
    pub nodes: Vec<NodeC>,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    /// The highest capability number (/proc/sys/kernel/cap_last_cap).
    pub last_cap: libc::c_int,
}

/// Writes "husk-vmm jail: STEP [PATH]: errno N" to stderr and returns errno's error.
fn fail(step: &CStr, path: Option<&CStr>) -> io::Error {
    let err = io::Error::last_os_error();
    let mut num = [0u8; 12];
    let mut n = err.raw_os_error().unwrap_or(0).unsigned_abs();
    let mut i = num.len();
    loop {
        i -= 1;
        num[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    let parts: [&[u8]; 6] = [
        b"husk-vmm jail: ",
        step.to_bytes(),
        if path.is_some() { b" " } else { b"" },
        path.map_or(&b""[..], CStr::to_bytes),
        b": errno ",
        &num[i..],
    ];
    for p in parts.iter().chain(std::iter::once(&&b"\n"[..])) {
        // SAFETY: write(2) of a valid buffer to stderr; async-signal-safe.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
    err
}

fn check(r: libc::c_int, step: &CStr, path: Option<&CStr>) -> io::Result<()> {
    if r < 0 { Err(fail(step, path)) } else { Ok(()) }
}

/// The version-3 capability header and data of capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_V3: u32 = 0x2008_0522;

/// Bounding and ambient sets emptied, the VM's ids taken (which clears the permitted
/// and effective sets: no SECBIT_KEEP_CAPS), capset to zero, no_new_privs.
fn drop_privileges(p: &Prepared) -> io::Result<()> {
    for cap in 0..=p.last_cap {
        // SAFETY: prctl with integer arguments; async-signal-safe.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(fail(c"drop the capability bounding set", None));
        }
    }
    // SAFETY: prctl with integer arguments.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(fail(c"clear the ambient capabilities", None));
    }
    // SAFETY: setgroups reads `groups.len()` gids from a live slice.
    let r = unsafe { libc::setgroups(p.groups.len(), p.groups.as_ptr()) };
    check(r, c"setgroups", None)?;
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::setresgid(p.gid, p.gid, p.gid) };
    check(r, c"setresgid", None)?;
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::setresuid(p.uid, p.uid, p.uid) };
    check(r, c"setresuid", None)?;
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) reads a v3 header and two data structs, both live locals.
    let r = unsafe { libc::syscall(libc::SYS_capset, std::ptr::addr_of_mut!(hdr), data.as_ptr()) };
    if r < 0 {
        return Err(fail(c"capset", None));
    }
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(r, c"no_new_privs", None)
}

/// Namespaces and the root, up to pivot_root.
fn enter_root(p: &Prepared) -> io::Result<()> {
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: unshare with flags only.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID) };
    check(r, c"unshare", None)?;
    // Nothing mounted here reaches the host's namespace.
    // SAFETY: mount(2) on static NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    };
    check(r, c"make / a slave", None)?;
    // SAFETY: mount(2) on NUL-terminated strings owned by `p`.
    let r = unsafe {
        libc::mount(
            c"husk-jail".as_ptr(),
            p.root.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID,
            c"mode=0755,size=64k,nr_inodes=256".as_ptr().cast(),
        )
    };
    check(r, c"mount the root tmpfs on", Some(&p.root))?;
    for d in &p.dirs {
        // SAFETY: mkdir on a NUL-terminated string owned by `p`.
        let r = unsafe { libc::mkdir(d.as_ptr(), 0o755) };
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(fail(c"mkdir", Some(d)));
        }
    }
    for b in &p.binds {
        if b.dir {
            // SAFETY: as above.
            let r = unsafe { libc::mkdir(b.target.as_ptr(), 0o755) };
            check(r, c"mkdir", Some(&b.target))?;
        } else {
            // SAFETY: open(2) on a NUL-terminated string; the descriptor is closed below.
            let fd = unsafe {
                libc::open(
                    b.target.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o600,
                )
            };
            check(fd, c"create the mount point", Some(&b.target))?;
            // SAFETY: closes the descriptor just opened.
            unsafe { libc::close(fd) };
        }
        // SAFETY: mount(2) on NUL-terminated strings owned by `p`. Not MS_REC: the
        // sandbox folder's own submounts (this root among them) stay out.
        let r = unsafe {
            libc::mount(
                b.source.as_ptr(),
                b.target.as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        check(r, c"bind", Some(&b.source))?;
        // SAFETY: as above.
        let r = unsafe {
            libc::mount(
                none,
                b.target.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REMOUNT | b.remount,
                std::ptr::null(),
            )
        };
        check(r, c"remount", Some(&b.target))?;
    }
    for n in &p.nodes {
        // SAFETY: mknod/chmod/chown on a NUL-terminated string owned by `p`.
        let r = unsafe { libc::mknod(n.target.as_ptr(), libc::S_IFCHR | n.mode, n.rdev) };
        check(r, c"mknod", Some(&n.target))?;
        // SAFETY: as above (mknod's mode went through the umask).
        let r = unsafe { libc::chmod(n.target.as_ptr(), n.mode) };
        check(r, c"chmod", Some(&n.target))?;
        if n.owned {
            // SAFETY: as above.
            let r = unsafe { libc::chown(n.target.as_ptr(), p.uid, p.gid) };
            check(r, c"chown", Some(&n.target))?;
        }
    }
    // SAFETY: mount(2) on a NUL-terminated string owned by `p`.
    let r = unsafe {
        libc::mount(
            none,
            p.root.as_ptr(),
            none,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID,
            std::ptr::null(),
        )
    };
    check(r, c"remount the root read-only", Some(&p.root))?;
    // pivot_root(".", "."), then detach the old root stacked on it (pivot_root(2)).
    // SAFETY: chdir on a NUL-terminated string owned by `p`.
    let r = unsafe { libc::chdir(p.root.as_ptr()) };
    check(r, c"chdir", Some(&p.root))?;
    // SAFETY: pivot_root with two static NUL-terminated strings.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if r < 0 {
        return Err(fail(c"pivot_root", Some(&p.root)));
    }
    // SAFETY: umount2 on a static string.
    let r = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
    check(r, c"detach the old root", None)?;
    // SAFETY: chdir on a static string.
    check(unsafe { libc::chdir(c"/".as_ptr()) }, c"chdir /", None)
}

/// The keeper: waits for husk-vmm and ends the way it did. Never returns.
fn keep(p: &Prepared, child: libc::pid_t) -> ! {
    // SAFETY: close_range(2) on this process's descriptors; the keeper needs none of
    // them, and std's exec-status pipe must reach EOF when husk-vmm has exec'd.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r < 0 {
        for fd in 3..4096 {
            // SAFETY: closing descriptors this process may hold; errors ignored.
            unsafe { libc::close(fd) };
        }
    }
    // SAFETY: prctl with a static name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"husk-jail".as_ptr(), 0, 0, 0) };
    let _ = drop_privileges(p);
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid on our own child, into a live local.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(3) };
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restore the default action and raise it: the keeper dies as husk-vmm did.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) };
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}

/// The whole hook; returns in husk-vmm's process only (the keeper never returns).
pub fn run(p: &Prepared) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(r, c"PR_SET_PDEATHSIG", None)?;
    if let Some(procs) = &p.cgroup_procs {
        // SAFETY: open/write/close on a NUL-terminated path owned by `p` and a static
        // buffer; "0" moves the writing process (cgroup-v2.rst, cgroup.procs).
        let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        check(fd, c"open", Some(procs))?;
        // SAFETY: as above.
        let w = unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) };
        // SAFETY: closes the descriptor just opened.
        unsafe { libc::close(fd) };
        if w != 1 {
            return Err(fail(c"join the cgroup", Some(procs)));
        }
    }
    enter_root(p)?;
    // SAFETY: fork in a single-threaded child; both sides continue with
    // async-signal-safe calls only.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail(c"fork", None));
    }
    if pid > 0 {
        keep(p, pid);
    }
    // husk-vmm, PID 1 of the new namespace: dies with the keeper.
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(r, c"PR_SET_PDEATHSIG", None)?;
    drop_privileges(p)
}
