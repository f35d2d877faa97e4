//! The seccomp profile a container gets when its spec brings none.
//!
//! Modelled on docker's default profile, as a deny list (docker's is an allow list of
//! ~370 names; a deny list keeps working with syscalls newer than this table, which
//! matters for the distribution images husk must run unchanged):
//! - **AF_VSOCK refused** (`socket`, `socketpair`: EAFNOSUPPORT, as on a kernel without
//!   vsock): the guest's vsock reaches husk-vmm's host side, which is the agent's
//!   channel, never a container's. 32-bit `socketcall` cannot be filtered by argument,
//!   so it is refused too (32-bit programs of the last decade use `socket` directly).
//! - what docker refuses to every container: the kernel keyring, userfaultfd, kexec,
//!   obsolete and dangerous calls (`uselib`, `ustat`, `sysfs`, `_sysctl`, `nfsservctl`,
//!   `create_module`, `get_kernel_syms`, `query_module`, `lookup_dcookie`);
//! - what docker refuses unless the container has the capability that makes it
//!   useful: CAP_SYS_ADMIN (mount, umount2, pivot_root, unshare, setns, bpf, quotactl,
//!   fanotify_init, open_by_handle_at with CAP_DAC_READ_SEARCH…), CAP_SYS_MODULE,
//!   CAP_SYS_BOOT, CAP_SYS_TIME, CAP_SYS_PTRACE, CAP_SYS_PACCT, CAP_SYS_RAWIO,
//!   CAP_SYS_NICE (NUMA policy), CAP_SYSLOG, CAP_PERFMON.
//!
//! Refused calls fail with EPERM (docker's errno), except the vsock rule.

use oci_spec::runtime::{Capability, LinuxSeccomp};

/// AF_VSOCK (linux/socket.h).
const AF_VSOCK: u64 = 40;
const EPERM: u32 = 1;
const EAFNOSUPPORT: u32 = 97;

/// Refused to every container.
const ALWAYS: &[&str] = &[
    "add_key",
    "keyctl",
    "request_key",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "nfsservctl",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "lookup_dcookie",
    "socketcall",
];

/// Refused unless the container has the capability.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "bpf",
            "quotactl",
            "fanotify_init",
            "name_to_handle_at",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "swapon",
            "swapoff",
            "setdomainname",
            "sethostname",
            "vhangup",
        ],
    ),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysModule,
        &["init_module", "finit_module", "delete_module"],
    ),
    (Capability::SysBoot, &["reboot"]),
    (
        Capability::SysTime,
        &["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"],
    ),
    (
        Capability::SysPtrace,
        &["process_vm_readv", "process_vm_writev", "kcmp", "ptrace"],
    ),
    (Capability::SysPacct, &["acct"]),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysNice,
        &["mbind", "set_mempolicy", "move_pages", "get_mempolicy"],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// The default profile for a container whose bounding set is `caps`.
pub fn default_profile(caps: &[Capability]) -> Result<LinuxSeccomp, String> {
    let mut denied: Vec<&str> = ALWAYS.to_vec();
    for (cap, names) in BY_CAPABILITY {
        if !caps.contains(cap) {
            denied.extend(names.iter().copied());
        }
    }
    // ptrace: docker allows it on kernels ≥ 4.8 (seccomp is checked after ptrace's
    // own checks there); so do we.
    denied.retain(|n| *n != "ptrace");
    let vsock_arg = serde_json::json!([{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_EQ"}]);
    let v = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": EAFNOSUPPORT, "args": vsock_arg},
            {"names": ["socketpair"], "action": "SCMP_ACT_ERRNO", "errnoRet": EAFNOSUPPORT, "args": vsock_arg},
        ]
    });
    serde_json::from_value(v).map_err(|e| format!("the default seccomp profile: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn capabilities_lift_their_rules() {
        let none = default_profile(&[]).unwrap();
        let n = names(&none);
        for must in [
            "keyctl",
            "mount",
            "unshare",
            "init_module",
            "socket",
            "reboot",
        ] {
            assert!(n.iter().any(|x| x == must), "{must} not refused");
        }
        assert!(!n.iter().any(|x| x == "ptrace"));
        let admin = names(&default_profile(&[Capability::SysAdmin]).unwrap());
        assert!(!admin.iter().any(|x| x == "mount"));
        assert!(admin.iter().any(|x| x == "keyctl"));
        // The vsock rules carry their argument.
        let vs = none
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names() == &["socket".to_string()])
            .unwrap();
        assert_eq!(vs.errno_ret(), Some(EAFNOSUPPORT));
        assert_eq!(vs.args().as_ref().unwrap()[0].value(), AF_VSOCK);
    }
}
