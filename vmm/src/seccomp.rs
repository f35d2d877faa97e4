//! The seccomp filter husk-vmm runs under once the VM is built: an allowlist of the
//! system calls the vCPU loop, the device workers, the API and the exit path make, with
//! `ioctl` limited to the requests used at run time. It is installed on every thread
//! (TSYNC) before the first KVM_RUN; threads started later inherit it.
//!
//! A call outside the list raises SIGSYS; our handler names the call on stderr and ends
//! the process with the host-failure status, instead of a silent kill.
//!
//! Some calls are allowed only with the arguments husk-vmm uses after the filter is in:
//! `socket` only AF_UNIX (the vsock device's connections to host listeners), `clone`
//! only for threads (CLONE_THREAD set: no new processes), `prctl` only PR_SET_NAME
//! (thread names). `clone3` takes its flags in memory, which a filter cannot read, so it
//! fails with ENOSYS (a second, stacked filter) and glibc falls back to `clone`, as
//! under Firecracker's filters. `openat`, `connect`, `unlink` and `unlinkat` take
//! paths, which a filter cannot read either: what they can reach is bounded by the jail
//! the runtime starts husk-vmm in (a root holding only its own files; docs/security.md).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot compile the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] vmm_sys_util::errno::Error),
}

/// KVM_RUN = _IO(KVMIO, 0x80).
const KVM_RUN: u64 = 0xae80;
/// Terminal and socket ioctls std and tracing use: FIONBIO (set_nonblocking), TCGETS and
/// TIOCGWINSZ (is-a-terminal checks).
const FIONBIO: u64 = 0x5421;
const TCGETS: u64 = 0x5401;
const TIOCGWINSZ: u64 = 0x5413;
/// virtio-net sets the tap's offloads when the driver activates the device, on a vCPU
/// thread, from the features it accepted (the tap's other ioctls run before the filter).
const TUNSETOFFLOAD: u64 = crate::devices::virtio::net::tap::TUNSETOFFLOAD;

/// Calls allowed with any arguments.
const ALLOWED: &[i64] = &[
    // memory
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // threads, signals, time
    // clone3: refused with ENOSYS by the second filter (see the module header); allowed
    // here so that ENOSYS, not SIGSYS, is the answer.
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getrandom,
    // files: block I/O, the rng source, the report, /proc/self for memory figures
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_fdatasync,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // event loops
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    // the vsock device's timeouts
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    // unix sockets: vsock, the API
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
];

fn filter() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
    // A snapshot of the running VM reads vCPU and VM state (KVM's GET requests); no
    // state is set after the filter is in (restores come before it).
    let mut requests = vec![KVM_RUN, FIONBIO, TCGETS, TIOCGWINSZ, TUNSETOFFLOAD];
    requests.extend(crate::vstate::state::save_ioctls());
    requests.sort_unstable();
    requests.dedup();
    let ioctl_rules = requests
        .iter()
        .map(|req| {
            let c = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *req)
                .map_err(SeccompError::Build)?;
            SeccompRule::new(vec![c]).map_err(SeccompError::Build)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let eq = |arg: u8, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(SeccompError::Build)
    };
    rules.insert(libc::SYS_socket, vec![eq(0, libc::AF_UNIX as u64)?]);
    rules.insert(libc::SYS_prctl, vec![eq(0, libc::PR_SET_NAME as u64)?]);
    let thread = libc::CLONE_THREAD as u64;
    let clone_thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(thread),
        thread,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(SeccompError::Build)?;
    rules.insert(libc::SYS_clone, vec![clone_thread]);
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    BpfProgram::try_from(f).map_err(SeccompError::Compile)
}

/// The second filter: `clone3` fails with ENOSYS (glibc then uses `clone`, which the
/// first filter checks), everything else passes on to the first.
fn clone3_filter() -> Result<BpfProgram, SeccompError> {
    // Arguments: rules, the action when no rule matches, the action when one does.
    let f = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    BpfProgram::try_from(f).map_err(SeccompError::Compile)
}

/// Installs the filters on every thread of the process.
pub fn install() -> Result<(), SeccompError> {
    let prog = filter()?;
    let clone3 = clone3_filter()?;
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(SeccompError::Handler)?;
    // The clone3 filter first: installing a filter calls prctl(PR_SET_NO_NEW_PRIVS),
    // which the main filter then refuses.
    seccompiler::apply_filter_all_threads(&clone3).map_err(SeccompError::Install)?;
    seccompiler::apply_filter_all_threads(&prog).map_err(SeccompError::Install)
}

/// Writes "husk-vmm: seccomp blocked system call N" with async-signal-safe calls only,
/// then exits with the host-failure status.
extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo for SIGSYS: si_signo, si_errno, si_code (3 ints + padding), then
    // _sigsys { void *call_addr; int syscall; unsigned arch; } at offset 16.
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t of at least 128 bytes; offset 24 is
        // the int `_sigsys._syscall` for SIGSYS.
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(24).cast::<i32>()) }
    };
    let mut buf = *b"husk-vmm: seccomp blocked system call           \n";
    let mut n = nr.unsigned_abs();
    let mut i = buf.len() - 2;
    loop {
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 38 {
            break;
        }
        i -= 1;
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf` is a valid buffer.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), buf.len());
        libc::_exit(3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles() {
        let prog = filter().unwrap();
        assert!(prog.len() > ALLOWED.len());
        assert!(!clone3_filter().unwrap().is_empty());
    }

    const PROBE_ENV: &str = "HUSK_SECCOMP_PROBE";

    /// Runs `filter_probe` in a process of its own (the filter cannot be taken off)
    /// with `case`; its exit status and output.
    fn probe(case: &str) -> (Option<i32>, String) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::filter_probe",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PROBE_ENV, case)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    #[test]
    fn what_husk_vmm_does_is_allowed() {
        let (code, out) = probe("allowed");
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("allowed-ok"), "{out}");
    }

    #[test]
    fn narrowed_calls_are_refused() {
        // (case, the call the handler names: socket 41, prctl 157, clone 56)
        for (case, nr) in [("socket_inet", 41), ("prctl_other", 157), ("fork", 56)] {
            let (code, out) = probe(case);
            assert_eq!(
                code,
                Some(3),
                "{case}: the host-failure status expected\n{out}"
            );
            let named = out.lines().find_map(|l| {
                l.split("husk-vmm: seccomp blocked system call")
                    .nth(1)
                    .map(str::trim)
            });
            assert_eq!(
                named,
                Some(nr.to_string().as_str()),
                "{case}: expected the handler to name call {nr}\n{out}"
            );
            assert!(!out.contains("NOT REFUSED"), "{case}\n{out}");
        }
    }

    /// Not a test: the process the filter is installed in (run by `probe`).
    #[test]
    #[ignore = "a helper run in its own process by the seccomp tests"]
    fn filter_probe() {
        let Ok(case) = std::env::var(PROBE_ENV) else {
            return;
        };
        install().unwrap();
        match case.as_str() {
            "allowed" => {
                // SAFETY: socket() with integer arguments; the descriptor is closed.
                let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
                assert!(fd >= 0, "socket(AF_UNIX) refused");
                // SAFETY: closes the descriptor just opened.
                unsafe { libc::close(fd) };
                // SAFETY: clone3 with a null argument: refused before it is read.
                let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
                let errno = std::io::Error::last_os_error().raw_os_error();
                assert_eq!((r, errno), (-1, Some(libc::ENOSYS)), "clone3");
                // A thread (glibc: clone3 refused, then clone with CLONE_THREAD), named.
                let t = std::thread::Builder::new()
                    .name("probe".into())
                    .spawn(|| 6 * 7)
                    .unwrap();
                assert_eq!(t.join().unwrap(), 42);
                println!("allowed-ok");
            }
            "socket_inet" => {
                // SAFETY: socket() with integer arguments; expected to trap.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            }
            "prctl_other" => {
                // SAFETY: prctl with integer arguments; expected to trap.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
            }
            "fork" => {
                // SAFETY: fork is expected to trap; a child that got through only exits.
                if unsafe { libc::fork() } == 0 {
                    // SAFETY: _exit in the child.
                    unsafe { libc::_exit(0) };
                }
            }
            other => panic!("unknown probe case {other}"),
        }
        if case != "allowed" {
            println!("NOT REFUSED: {case}");
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        // SAFETY: ends the process at once, before the test harness makes calls the
        // filter does not allow.
        unsafe { libc::_exit(0) };
    }
}
