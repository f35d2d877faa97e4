//! System test of virtio-fs and virtio-net in the lab (tests/lab/run), one VM with both:
//! Debian's stock cloud kernel drives husk-vmm's net device on a tap the test makes
//! inside the lab (host 10.77.0.1/24, guest .2; the lab's L1 has no other network, so
//! nothing leaves it) and mounts a virtiofsd share through husk-vmm's vhost-user
//! frontend. The guest pings the host, TCP carries bytes each way (sha256 equal on both
//! sides), the guest reads a file the host wrote and writes one back (sha256 equal),
//! creates small files the host then counts, and powers off: husk-vmm (seccomp on)
//! exits 0, virtiofsd ends with it. A second VM in the same lab run rebinds the guest's
//! virtiofs driver: the device is reset and activated again. No tap or virtiofsd is
//! left.
//!
//! Sizes: `make test` uses 4 MiB each way over TCP, an 8 MiB file each way and 500
//! files: in the emulated lab the guest makes and checksums random data at well under
//! 1 MiB/s, moves 0.1–3 MiB/s and ~60 ms per small file (measured), and CI's time is
//! bounded. `HUSK_IO_TEST_FULL=1` runs the full sizes (256 MiB each way, 64 MiB files,
//! 10 000 files), which take tens of minutes there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_tests::{guest, repo_root, require_lab};
use husk_vmm::config::{FsConfig, NetConfig, SerialConfig, SerialOutput, VmConfig};

const TAP: &str = "husknet0";
const MAC: &str = "02:00:5e:77:00:02";

/// (TCP bytes each way, file MiB each way, small files), and the lab's time budget.
fn sizes() -> (usize, u32, u32, u64) {
    if std::env::var_os("HUSK_IO_TEST_FULL").is_some() {
        (256 << 20, 64, 10_000, 5400)
    } else {
        (4 << 20, 8, 500, 1500)
    }
}

/// The Debian kernel's tun module, for the lab's L1 (which loads only what it needs).
fn tun_module(kernel: &Path) -> PathBuf {
    let pkg = kernel.parent().unwrap().parent().unwrap();
    let release = std::fs::read_dir(pkg.join("lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    release.join("kernel/drivers/net/tun.ko")
}

fn num(out: &str, key: &str) -> Option<u64> {
    guest::field(out, key).and_then(|v| v.parse().ok())
}

/// A device's counters from a `--report` line.
fn metrics(out: &str, report_key: &str, device: &str) -> serde_json::Value {
    let report: serde_json::Value =
        serde_json::from_str(guest::field(out, report_key).unwrap_or("null")).unwrap_or_default();
    report["devices"][device].clone()
}

#[test]
fn one_vm_shares_a_folder_and_talks_tcp_through_a_tap() {
    let lab = require_lab!();
    let virtiofsd = repo_root().join(".tools/bin/virtiofsd");
    assert!(
        virtiofsd.is_file(),
        "{} is missing: run `make setup-tools`",
        virtiofsd.display()
    );
    let (net_bytes, fs_mib, files, budget) = sizes();
    let dir = husk_tests::scratch_dir();
    let d = dir.path();
    let kernel = guest::debian_kernel().unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest");
    let init = std::fs::read_to_string(here.join("fs-net-init.sh")).unwrap();
    guest::busybox_initramfs(
        &d.join("initrd.cpio.gz"),
        &init,
        &["virtio_mmio", "virtio_net", "virtiofs"],
        &["socat"],
    )
    .unwrap();
    let cmdline = format!(
        "console=ttyS0 panic=-1 quiet husk.size={net_bytes} husk.fsmib={fs_mib} \
         husk.files={files}"
    );
    let vm = VmConfig {
        initramfs: Some(d.join("initrd.cpio.gz")),
        cmdline: cmdline.clone(),
        vcpus: 2,
        memory_mib: 512,
        serial: SerialConfig(SerialOutput::file(d.join("console.log"))),
        net: vec![NetConfig {
            tap: Some(TAP.into()),
            fd: None,
            mac: Some(MAC.into()),
            mtu: None,
        }],
        fs: vec![FsConfig {
            tag: "hostshare".into(),
            socket: d.join("vfs.sock"),
        }],
        ..VmConfig::new(&kernel)
    };
    let rebind = VmConfig {
        cmdline: format!("{cmdline} husk.mode=rebind"),
        vcpus: 1,
        net: Vec::new(),
        ..vm.clone()
    };
    for (name, c) in [("vm.json", &vm), ("rebind.json", &rebind)] {
        std::fs::write(d.join(name), serde_json::to_vec_pretty(c).unwrap()).unwrap();
    }
    let started = Instant::now();
    let r = lab
        .timeout(Duration::from_secs(budget + 120))
        .run(&[
            "timeout".to_string(),
            budget.to_string(),
            here.join("fs-net-host.sh").display().to_string(),
            d.display().to_string(),
            env!("CARGO_BIN_EXE_husk-vmm").to_string(),
            virtiofsd.display().to_string(),
            net_bytes.to_string(),
            fs_mib.to_string(),
            tun_module(&kernel).display().to_string(),
            (budget - 700).to_string(),
        ])
        .unwrap();
    let out = &r.stdout;
    let ctx = format!("stdout:\n{out}\nstderr:\n{}", r.stderr);
    assert_eq!(r.code, Some(0), "{ctx}");
    // The VM with both devices.
    assert_eq!(guest::field(out, "VMM-EXIT"), Some("0"), "{ctx}");
    assert_eq!(guest::field(out, "NET-MAC"), Some(MAC), "{ctx}");
    assert_eq!(guest::field(out, "PING"), Some("ok"), "{ctx}");
    let sha = |key: &str| guest::field(out, key).filter(|s| s.len() == 64);
    assert!(
        sha("G2H-SENT").is_some() && sha("G2H-SENT") == sha("G2H-GOT"),
        "guest to host: {ctx}"
    );
    assert!(
        sha("H2G-SENT").is_some() && sha("H2G-SENT") == sha("H2G-GOT"),
        "host to guest: {ctx}"
    );
    assert!(
        sha("HOST-SHA").is_some() && sha("HOST-SHA") == sha("READ-SHA"),
        "guest reads the host's file: {ctx}"
    );
    assert!(
        sha("WRITE-SHA").is_some() && sha("WRITE-SHA") == sha("HOST-GOT-SHA"),
        "host reads the guest's file: {ctx}"
    );
    assert_eq!(num(out, "GUEST-COUNT"), Some(u64::from(files)), "{ctx}");
    assert_eq!(num(out, "HOST-COUNT"), Some(u64::from(files)), "{ctx}");
    assert_eq!(guest::field(out, "VIRTIOFSD-LEFT"), Some("no"), "{ctx}");
    let net = metrics(out, "REPORT", "net0");
    for bad in ["rx_bad_chains", "tx_bad_chains", "tap_errors"] {
        assert_eq!(net[bad], 0, "{bad}: {net}\n{ctx}");
    }
    assert_eq!(metrics(out, "REPORT", "fs1")["backend_errors"], 0, "{ctx}");
    // The rebind VM: reset, then a second activation that works.
    assert_eq!(guest::field(out, "REBIND-VMM-EXIT"), Some("0"), "{ctx}");
    assert!(
        sha("REBIND-SHA").is_some() && sha("REBIND-SHA") == sha("HOST-SHA"),
        "{ctx}"
    );
    assert_eq!(guest::field(out, "AFTER-REBIND"), Some("after"), "{ctx}");
    assert_eq!(
        guest::field(out, "REBIND-VIRTIOFSD-LEFT"),
        Some("no"),
        "{ctx}"
    );
    let fs = metrics(out, "REBIND-REPORT", "fs0");
    assert_eq!(fs["activations"], 2, "{fs}\n{ctx}");
    assert!(fs["resets"].as_u64() >= Some(1), "{fs}\n{ctx}");
    assert_eq!(fs["backend_errors"], 0, "{fs}\n{ctx}");
    assert_eq!(guest::field(out, "TAP-LEFT"), Some(""), "tap left: {ctx}");
    let rate = |bytes: f64, key: &str| {
        bytes / 1048576.0 / (num(out, key).unwrap_or(0).max(1) as f64 / 1000.0)
    };
    eprintln!(
        "fs+net: TCP {} MiB guest->host {:.2} MiB/s, host->guest {:.2} MiB/s; share read \
         {fs_mib} MiB {:.2} MiB/s, write {:.2} MiB/s, {files} files in {} ms; lab run {:.0} s",
        net_bytes >> 20,
        rate(net_bytes as f64, "G2H-MS"),
        rate(net_bytes as f64, "H2G-MS"),
        rate(f64::from(fs_mib) * 1048576.0, "READ-MS"),
        rate(f64::from(fs_mib) * 1048576.0, "WRITE-MS"),
        num(out, "FILES-MS").unwrap_or(0),
        started.elapsed().as_secs_f64(),
    );
}
