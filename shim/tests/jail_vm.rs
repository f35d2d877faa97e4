//! System test of husk-vmm's jail in real VMs (shim/tests/jail_vm.sh drives `husk run`
//! in the lab): a jailed run's exit status and output, a volume (virtiofsd's socket
//! reached from the jail), the default network (an inherited tap), `--no-jail`; a
//! running jailed husk-vmm seen from the host (unprivileged uid and gid, no
//! capabilities, no_new_privs, seccomp, PID 1 of its own pid namespace, own mount and
//! IPC namespaces, a root with only its files, its cgroup's limits); and nothing left
//! (process, folder, cgroup, mount) after each run and after `kill -9` of husk.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::PathBuf;
use std::time::{Duration, Instant};

use husk_tests::require_lab;

#[test]
fn jailed_vms_in_the_lab() {
    let lab = require_lab!();
    let f = husk_tests::cli_fixture(std::path::Path::new(env!("CARGO_BIN_EXE_husk")));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/jail_vm.sh");
    let t0 = Instant::now();
    let r = lab
        .mem_mib(3072)
        .timeout(Duration::from_secs(1200))
        .env("HUSK_GUEST_DIR", &f.guest.display().to_string())
        .run(&[
            script.display().to_string(),
            env!("CARGO_BIN_EXE_husk").to_string(),
            f.image.display().to_string(),
        ])
        .unwrap();
    eprintln!("lab run: {:.1} s", t0.elapsed().as_secs_f64());
    let shown = [" run: ", "jail: ", "timing ", "case "];
    for l in r
        .stderr
        .lines()
        .filter(|l| shown.iter().any(|s| l.contains(s)))
    {
        eprintln!("{l}");
    }
    let all = format!("--- stdout\n{}\n--- stderr\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{all}");
    let cases = r.cases();
    let get = |k: &str| {
        cases
            .get(k)
            .copied()
            .unwrap_or_else(|| panic!("no case {k}\n{all}"))
    };
    let check = |k: &str, want: &str| assert_eq!(get(k), want, "case {k}\n{all}");
    let clean = "vmm=0 dirs=0 cgroups=0 mounts=0";
    check("exit_stdout", "7_hello-jail");
    check("after_run", clean);
    check("volume", "0_host-file_from-guest");
    check("after_volume", clean);
    check("network", "0_1");
    check("no_jail", "5_no-jail");
    check("after_no_jail", clean);
    check("keeper", "husk-jail");
    let ids: Vec<u32> = get("vmm_ids")
        .split(['_', '\t'])
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "Uid and Gid lines\n{all}");
    assert!(
        ids.iter().all(|&i| i >= 100_000),
        "husk-vmm runs as uid/gid {ids:?}\n{all}"
    );
    check(
        "vmm_caps",
        "0000000000000000_0000000000000000_0000000000000000_0000000000000000_",
    );
    check("vmm_nnp_seccomp", "1_2_");
    check("vmm_nspid", "1");
    check("ns", "mnt_ipc_pid");
    let root = get("vmm_root");
    for want in ["./dev", "./run", "./var"] {
        assert!(
            root.split(',').any(|e| e == want),
            "{want} not in the jail's root {root}\n{all}"
        );
    }
    for not in ["./etc", "./proc", "./sys", "./home", "./root"] {
        assert!(
            !root.split(',').any(|e| e == not),
            "{not} in the jail's root {root}\n{all}"
        );
    }
    check("vmm_dev", "kvm,urandom,");
    let cg = get("vmm_cgroup");
    let memory: u64 = cg.split('_').nth(1).unwrap().parse().unwrap();
    // 1024 MiB of guest (vm.memory_mib) + 256 MiB of VMM overhead, + the scratch disk
    // when its data is in RAM (the lab's /var/lib is an overlay on a tmpfs).
    let (fs, size) = get("scratch_fs").split_once('_').unwrap();
    let in_ram = matches!(fs, "tmpfs" | "ramfs" | "overlayfs");
    let disk: u64 = if in_ram { size.parse().unwrap() } else { 0 };
    assert_eq!(
        memory,
        ((1024 + 256) << 20) + disk,
        "memory.max {cg} ({fs})\n{all}"
    );
    assert!(
        cg.starts_with("husk_") && cg.ends_with("_256"),
        "cgroup {cg}\n{all}"
    );
    check("after_kill9", clean);
}
