//! System test of virtio-fs in the lab (tests/lab/run): virtiofsd serves a fresh folder,
//! Debian's stock kernel mounts it through husk-vmm's vhost-user frontend, reads a
//! 64 MiB file the host wrote, writes one back, creates 10 000 small files, and powers
//! off; husk-vmm (seccomp on) exits 0 and virtiofsd ends with it. A second, short run
//! rebinds the guest driver: the device is reset and activated again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::time::{Duration, Instant};

use husk_tests::{guest, repo_root, require_lab};

const FILES: usize = 10_000;

fn write_vm_json(dir: &Path, kernel: &Path, extra_cmdline: &str) {
    let json = serde_json::json!({
        "kernel": kernel,
        "initramfs": dir.join("initrd.cpio.gz"),
        "cmdline": format!("console=ttyS0 panic=-1 quiet husk.files={FILES} {extra_cmdline}"),
        "vcpus": 1,
        "memory_mib": 512,
        "serial": {"file": dir.join("console.log")},
        "fs": [{"tag": "hostshare", "socket": dir.join("vfs.sock")}]
    });
    std::fs::write(
        dir.join("vm.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}

fn num(out: &str, key: &str) -> Option<u64> {
    guest::field(out, key).and_then(|v| v.parse().ok())
}

/// Builds the guest in a scratch folder and runs fs-host.sh in the lab; returns the
/// lab's output and the folder.
fn run_share_test(
    lab: husk_tests::lab::Lab,
    extra_cmdline: &str,
    host_file_mib: u32,
    timeout_s: u64,
) -> (husk_tests::lab::LabOutput, tempfile::TempDir) {
    let virtiofsd = repo_root().join(".tools/bin/virtiofsd");
    assert!(
        virtiofsd.is_file(),
        "{} is missing: run `make setup-tools`",
        virtiofsd.display()
    );
    let dir = husk_tests::scratch_dir();
    let d = dir.path();
    let kernel = guest::debian_kernel().unwrap();
    let init = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/fs-init.sh"),
    )
    .unwrap();
    guest::busybox_initramfs(
        &d.join("initrd.cpio.gz"),
        &init,
        &["virtio_mmio", "virtiofs"],
        &[],
    )
    .unwrap();
    write_vm_json(d, &kernel, extra_cmdline);
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/fs-host.sh");
    let r = lab
        .timeout(Duration::from_secs(timeout_s + 100))
        .env("HUSK_FS_VMM_TIMEOUT", &(timeout_s - 120).to_string())
        .run(&[
            "timeout".to_string(),
            timeout_s.to_string(),
            host.display().to_string(),
            d.display().to_string(),
            env!("CARGO_BIN_EXE_husk-vmm").to_string(),
            virtiofsd.display().to_string(),
            host_file_mib.to_string(),
        ])
        .unwrap();
    (r, dir)
}

/// The fs device's counters from the `REPORT` line (husk-vmm's --report file).
fn fs_metrics(out: &str) -> serde_json::Value {
    let report: serde_json::Value =
        serde_json::from_str(guest::field(out, "REPORT").unwrap_or("null")).unwrap_or_default();
    report["devices"]["fs0"].clone()
}

#[test]
fn guest_reads_and_writes_a_virtiofsd_share() {
    let lab = require_lab!();
    let start = Instant::now();
    let (r, _dir) = run_share_test(lab, "", 64, 1600);
    let out = &r.stdout;
    let ctx = format!("stdout:\n{out}\nstderr:\n{}", r.stderr);
    assert_eq!(r.code, Some(0), "{ctx}");
    assert!(
        guest::field(out, "MOUNTED").is_some() || out.contains("MOUNTED"),
        "{ctx}"
    );
    let host_sha = guest::field(out, "HOST-SHA").unwrap_or_default();
    assert_eq!(host_sha.len(), 64, "{ctx}");
    assert_eq!(guest::field(out, "READ-SHA"), Some(host_sha), "{ctx}");
    let write_sha = guest::field(out, "WRITE-SHA").unwrap_or_default();
    assert_eq!(write_sha.len(), 64, "{ctx}");
    assert_eq!(guest::field(out, "HOST-GOT-SHA"), Some(write_sha), "{ctx}");
    assert_eq!(num(out, "GUEST-COUNT"), Some(FILES as u64), "{ctx}");
    assert_eq!(num(out, "HOST-COUNT"), Some(FILES as u64), "{ctx}");
    assert_eq!(guest::field(out, "VMM-EXIT"), Some("0"), "{ctx}");
    assert_eq!(guest::field(out, "VIRTIOFSD-LEFT"), Some("no"), "{ctx}");
    let mbps = |key: &str| num(out, key).map(|ms| 64_000.0 / ms.max(1) as f64);
    eprintln!(
        "virtio-fs: read 64 MiB at {:.1} MiB/s, write at {:.1} MiB/s, {FILES} files in {} ms; \
         husk-vmm ran {} s; whole lab run {:.0} s ({:?} mode); fs metrics {}",
        mbps("READ-MS").unwrap_or(0.0),
        mbps("WRITE-MS").unwrap_or(0.0),
        num(out, "FILES-MS").unwrap_or(0),
        num(out, "VMM-SECONDS").unwrap_or(0),
        start.elapsed().as_secs_f64(),
        r.mode,
        fs_metrics(out)
    );
}

#[test]
fn driver_rebind_resets_and_activates_the_device_again() {
    let lab = require_lab!();
    let (r, _dir) = run_share_test(lab, "husk.mode=rebind", 1, 400);
    let out = &r.stdout;
    let ctx = format!("stdout:\n{out}\nstderr:\n{}", r.stderr);
    assert_eq!(r.code, Some(0), "{ctx}");
    let host_sha = guest::field(out, "HOST-SHA").unwrap_or_default();
    assert_eq!(host_sha.len(), 64, "{ctx}");
    assert_eq!(guest::field(out, "READ-SHA"), Some(host_sha), "{ctx}");
    assert_eq!(guest::field(out, "REBIND-SHA"), Some(host_sha), "{ctx}");
    assert_eq!(guest::field(out, "AFTER-REBIND"), Some("after"), "{ctx}");
    assert_eq!(guest::field(out, "VMM-EXIT"), Some("0"), "{ctx}");
    assert_eq!(guest::field(out, "VIRTIOFSD-LEFT"), Some("no"), "{ctx}");
    let m = fs_metrics(out);
    assert_eq!(m["activations"], 2, "{m}\n{ctx}");
    assert!(m["resets"].as_u64() >= Some(1), "{m}\n{ctx}");
    assert_eq!(m["backend_errors"], 0, "{m}\n{ctx}");
    eprintln!("virtio-fs rebind: metrics {m}");
}
