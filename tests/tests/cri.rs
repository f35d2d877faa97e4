//! System test of the `husk` runtime handler under containerd's CRI plugin, in the lab
//! (tests/tests/cri.sh sets containerd up with CNI; the Rust CRI driver,
//! `husk-cri-driver`, plays the kubelet): a pod of two containers (ExecSync in each,
//! localhost and /dev/shm between them, the pod IP from the host and from a pod in another VM, CRI
//! logs with both streams, CRI PortForward and Attach over containerd's websocket
//! streams, container stats, DNS config, UpdateContainerResources,
//! stats of a created container as runc's, StopContainer's SIGKILL), a pod sharing one pid
//! namespace (the pause process its PID 1), an OOM-killed container reported
//! `OOMKilled`, a hostNetwork pod refused by name, and nothing left after
//! StopPodSandbox + RemovePodSandbox: no VM, virtiofsd, shim, mount, netns, veth or IPAM
//! lease.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_tests::require_lab;

#[test]
fn cri_runs_husk_pods() {
    let lab = require_lab!();
    if !husk_tests::tools_present(
        "cri_runs_husk_pods",
        &["containerd", "ctr", "/usr/lib/cni/bridge"],
    ) {
        return;
    }
    let guest = husk_tests::repo_root().join("build/guest");
    assert!(
        guest.join("initramfs.img").is_file(),
        "no guest image: run `make guest-image` (make test does)"
    );
    let driver = PathBuf::from(env!("CARGO_BIN_EXE_husk-cri-driver"));
    let bin_dir = driver.parent().unwrap();
    husk_tests::ensure_bin(bin_dir, "husk-vmm", "husk-vmm");
    husk_tests::ensure_bin(bin_dir, "husk-shim", "containerd-shim-husk-v2");
    let scratch = husk_tests::scratch_dir();
    let img = scratch.path().join("busybox");
    let archive = scratch.path().join("busybox.tar");
    husk_tests::busybox_oci(&img, None);
    // CRI's sandbox ("pause") image: busybox that sleeps (tag `pause`), in the same
    // archive as `latest`.
    let sh = |cmd: &str| {
        let st = std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}: {st}");
    };
    sh(&format!(
        "umoci config --image {0}:latest --tag pause --config.entrypoint sleep \
         --config.cmd 2147483647 && tar -C {0} -cf {1} .",
        img.display(),
        archive.display()
    ));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cri.sh");
    let started = Instant::now();
    let r = lab
        .mem_mib(3072)
        .timeout(Duration::from_secs(1500))
        .env("HUSK_GUEST_DIR", &guest.display().to_string())
        .run(&[
            script.display().to_string(),
            bin_dir.display().to_string(),
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
    eprintln!("{}", r.stdout);
    let cases = r.cases();
    let get = |k: &str| cases.get(k).copied().unwrap_or("<missing>");
    let check = |k: &str, want: &str| assert_eq!(get(k), want, "case {k}\n{all}");
    let nothing = "vmm=0 virtiofsd=0 shims=0 mounts=0 dirs=0 netns=0 leases=0 veths=0";
    check("before", nothing);
    check("version", "containerd");
    check("pod_a", "ready");
    check("web", "started");
    check("client", "started");
    check("exec_web", "0 pod-a");
    check("resolv_conf", "0 3");
    check("exec_exit", "7 x");
    check("localhost", "0 hello-from-web");
    check("pod_shm", "0 pod-wide");
    check("pod_ip", "yes");
    check("from_host", "hello-from-web");
    check("logs", "stderr:err-line stdout:out-line");
    check("port_forward", "hello-from-web");
    check("attach", "hello-attach");
    check("stats", "cpu=nonzero mem=nonzero");
    assert!(
        get("list_stats").parse::<u32>().unwrap_or(0) >= 2,
        "list_stats\n{all}"
    );
    check("update_resources", "0 67108864");
    // containerd 1.6 has no task for a created container to ask: husk answers as runc.
    assert_eq!(
        get("created_stats"),
        get("created_stats_runc"),
        "created_stats\n{all}"
    );
    check("stop_container", "137");
    check("pod_b", "ready");
    check("pod_to_pod", "0 hello-from-web");
    check("shared_pid", "0 sleep 2147483647");
    check("oom", "137 OOMKilled");
    check("remove_a", "ok");
    check("remove_b", "ok");
    check("host_network", "refused by name");
    check("pods_left", "0");
    check("after", nothing);
}
