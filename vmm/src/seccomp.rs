//! The seccomp filter husk-vmm runs under once the VM is built: an allowlist of the
//! system calls the vCPU loop, the device workers, the API and the exit path make, with
//! `ioctl` limited to the requests used at run time. It is installed on every thread
//! (TSYNC) before the first KVM_RUN; threads started later inherit it.
//!
//! A call outside the list raises SIGSYS; our handler names the call on stderr and ends
//! the process with the host-failure status, instead of a silent kill.

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
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
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
    libc::SYS_socket,
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
    let ioctl_rules = [KVM_RUN, FIONBIO, TCGETS, TIOCGWINSZ, TUNSETOFFLOAD]
        .iter()
        .map(|req| {
            let c = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *req)
                .map_err(SeccompError::Build)?;
            SeccompRule::new(vec![c]).map_err(SeccompError::Build)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    BpfProgram::try_from(f).map_err(SeccompError::Compile)
}

/// Installs the filter on every thread of the process.
pub fn install() -> Result<(), SeccompError> {
    let prog = filter()?;
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(SeccompError::Handler)?;
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
    }
}
