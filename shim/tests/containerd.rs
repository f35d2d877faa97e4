//! System test of `containerd-shim-husk-v2` in the lab (shim/tests/containerd.sh
//! drives it there): Debian's containerd 1.6.20, started by the test on a tmpfs, runs
//! busybox with `ctr run --runtime io.containerd.husk.v2`: exit codes, env, stdin, a
//! terminal, 10 MiB of stdout (md5 equal); a detached task with exec (also `-t`),
//! ps, pause/resume, metrics; a second container joining the first's pod by CRI's
//! annotations (one VM, the first's pid namespace, its own root); a third that outlives the first's delete; a file written into
//! the snapshot; the pod's network (a namespace the test made, joined to the VM's tap:
//! the guest gets its address and route and reaches the L1; Kubernetes' port-forward:
//! localhost in that namespace reaches an httpd in the VM, no rule left after); the
//! host's network
//! refused by name; kill -9 of husk-vmm (the exit seen, `--rm` frees everything) and of
//! the shim (containerd's delete cleans up). After each case no husk-vmm, virtiofsd,
//! shim, mount or /run/husk folder is left.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::PathBuf;
use std::time::{Duration, Instant};

use husk_tests::require_lab;

#[test]
fn containerd_runs_husk_pods() {
    let lab = require_lab!();
    if !husk_tests::tools_present(
        "containerd_runs_husk_pods",
        &["containerd", "ctr", "script"],
    ) {
        return;
    }
    let guest = husk_tests::repo_root().join("build/guest");
    assert!(
        guest.join("initramfs.img").is_file(),
        "no guest image: run `make guest-image` (make test does)"
    );
    husk_tests::ensure_husk_vmm(std::path::Path::new(env!("CARGO_BIN_EXE_husk")));
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-husk-v2"));
    let scratch = husk_tests::scratch_dir();
    let img = scratch.path().join("busybox");
    let archive = scratch.path().join("busybox.tar");
    husk_tests::busybox_oci(&img, Some(&archive));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/containerd.sh");
    let started = Instant::now();
    let r = lab
        .mem_mib(3072)
        .timeout(Duration::from_secs(1800))
        .env("HUSK_GUEST_DIR", &guest.display().to_string())
        .run(&[
            script.display().to_string(),
            shim.parent().unwrap().display().to_string(),
            archive.display().to_string(),
        ])
        .unwrap();
    eprintln!("lab run: {:.0} s", started.elapsed().as_secs_f64());
    for l in r
        .stderr
        .lines()
        .filter(|l| l.starts_with("MEASURE ") || l.starts_with("case "))
    {
        eprintln!("{l}");
    }
    let all = format!("--- stdout\n{}\n--- stderr\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{all}");
    let cases = r.cases();
    let get = |k: &str| cases.get(k).copied().unwrap_or("<missing>");
    let check = |k: &str, want: &str| assert_eq!(get(k), want, "case {k}\n{all}");
    let nothing = "vmm=0 virtiofsd=0 shims=0 mounts=0 cgroups=0 dirs=0";
    check("before", nothing);
    check("exit_code", "3");
    check("after_rc", nothing);
    check("env_stdin", "0 FOO=bar piped-in");
    check("big_stdout", "equal");
    assert!(get("big_size").parse::<u64>().unwrap() > 10 << 20, "{all}");
    check("binary_logger", "0 out-line err-line default/lg");
    check("tty", "1 size=40_100");
    check("detached", "0 RUNNING");
    check("task_pid_is_vmm", "husk-jail husk-vmm uid=unprivileged");
    check("exec", "4 exec-out");
    check("exec_tty", "1");
    assert!(get("ps").parse::<u32>().unwrap() >= 1, "ps\n{all}");
    check("pause", "0 PAUSED");
    check("resume", "0 RUNNING");
    assert!(
        get("metrics").starts_with("0 ") && !get("metrics").ends_with(" 0"),
        "metrics\n{all}"
    );
    check("pod_second", "0 RUNNING vmm=1");
    check("pod_same_pid", "yes");
    check("pod_sees_first", "1");
    assert_ne!(get("pod_own_roots"), "0", "d1 sees d2's file\n{all}");
    check("pod_first_killed", "STOPPED STOPPED RUNNING");
    check("pod_survives_first", "RUNNING alive vmm=1");
    check("after_pod", nothing);
    check("snapshot", "persisted");
    check("after_snapshot", nothing);
    check(
        "pod_net",
        "0 ADDR=inet_10.123.0.2/24 ROUTE=default_via_10.123.0.1 GET=hello-pod",
    );
    check("pod_net_after", "ingress=0 taps=0");
    check("port_forward", "hello-forward rules=1 refused=yes");
    check("port_forward_after", "rules=0 ingress=0");
    let hostns = get("host_netns_path");
    assert!(
        hostns.starts_with("1 1 "),
        "the host's own netns named as the pod's: {hostns}\n{all}"
    );
    check("host_network", "1 1");
    check("after_net", nothing);
    check("vmm_killed", "255");
    check("after_vmm_kill", nothing);
    check("shim_found", "yes");
    check("after_shim_kill", &format!("{nothing} 0"));
    // Every pod's VM came from a template.
    assert!(
        get("pods_restored").parse::<u32>().unwrap_or(0) >= 5,
        "pods restored from templates\n{all}"
    );
    check("pods_booted", "0");
    check("restore_failed", "0");
}
