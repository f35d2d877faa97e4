//! System test of virtio-net in the lab (tests/lab/run): Debian's stock cloud kernel
//! drives husk-vmm's net device on a tap that the test makes inside the lab (host
//! 10.77.0.1/24, guest 10.77.0.2/24; the lab's L1 has no other network, so nothing
//! leaves it). The guest pings the host, then TCP carries [`NET_BYTES`] each way with
//! sha256 equal on both sides; the guest powers off, husk-vmm exits 0, and the test
//! removes the tap.
//!
//! 64 MiB each way rather than 256: in the emulated lab (the L2 guest runs under KVM
//! inside a TCG-emulated L1, on 2 host cores shared with other work) TCP is bound by
//! latency, not by the device: ping averaged 64 ms (min 10 ms) and TCP ran at
//! 0.1–0.2 MiB/s guest to host and 0.3–0.5 MiB/s host to guest (first runs, 2026-12-01:
//! 64 MiB took 342 s and 209 s), so 256 MiB each way would take over half an hour.
//! `HUSK_NET_TEST_MIB` sets another size for a quicker look.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_tests::{guest, require_lab};

const NET_BYTES: usize = 64 << 20;

/// The bytes each way: [`NET_BYTES`], or `HUSK_NET_TEST_MIB` MiB (for a quicker look).
fn net_bytes() -> usize {
    std::env::var("HUSK_NET_TEST_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(NET_BYTES, |m| m << 20)
}
const TAP: &str = "husknet0";
const MAC: &str = "02:00:5e:77:00:02";

fn write_vm_json(dir: &Path, kernel: &Path, bytes: usize) {
    let json = serde_json::json!({
        "kernel": kernel,
        "initramfs": dir.join("initrd.cpio.gz"),
        "cmdline": format!("console=ttyS0 panic=-1 quiet husk.size={bytes}"),
        "vcpus": 2,
        "memory_mib": 512,
        "serial": {"file": dir.join("console.log")},
        "net": [{"tap": TAP, "mac": MAC}],
    });
    std::fs::write(
        dir.join("vm.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}

/// The Debian kernel's tun module, for the lab's L1 (which loads only what it needs).
fn tun_module(kernel: &Path) -> PathBuf {
    let pkg = kernel.parent().unwrap().parent().unwrap();
    let modules = pkg.join("lib/modules");
    let release = std::fs::read_dir(&modules)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    release.join("kernel/drivers/net/tun.ko")
}

/// Seconds between two `START END` numbers printed by the scripts.
fn seconds(out: &str, key: &str) -> f64 {
    let v: Vec<f64> = guest::field(out, key)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    if v.len() == 2 { v[1] - v[0] } else { f64::NAN }
}

#[test]
fn guest_talks_tcp_through_a_tap() {
    let lab = require_lab!();
    let dir = husk_tests::scratch_dir();
    let d = dir.path();
    let kernel = guest::debian_kernel().unwrap();
    let tun = tun_module(&kernel);
    let init = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/net-init.sh"),
    )
    .unwrap();
    guest::busybox_initramfs(
        &d.join("initrd.cpio.gz"),
        &init,
        &["virtio_mmio", "virtio_net"],
        &["socat"],
    )
    .unwrap();
    let bytes = net_bytes();
    write_vm_json(d, &kernel, bytes);

    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/net-host.sh");
    let started = Instant::now();
    let r = lab
        // Generous: one 64 MiB run took 660 s with the host's load at ~4.5 and did not
        // finish in 840 s at ~10. The inner timeout leaves the L1 two minutes to boot, so
        // that a slow run still prints what it got.
        .timeout(Duration::from_secs(1500))
        .run(&[
            "timeout".to_string(),
            "1320".to_string(),
            host.display().to_string(),
            d.display().to_string(),
            env!("CARGO_BIN_EXE_husk-vmm").to_string(),
            bytes.to_string(),
            tun.display().to_string(),
        ])
        .unwrap();
    let out = &r.stdout;
    let ctx = format!("stdout:\n{out}\nstderr:\n{}", r.stderr);
    for key in ["NET-METRICS", "TAP-STATS", "RX-DROPPED", "PING-RTT"] {
        eprintln!("{key} {}", guest::field(out, key).unwrap_or("(missing)"));
    }
    assert_eq!(r.code, Some(0), "{ctx}");
    assert_eq!(guest::field(out, "NET-MAC"), Some(MAC), "{ctx}");
    assert_eq!(guest::field(out, "PING"), Some("ok"), "{ctx}");
    let g2h = guest::field(out, "G2H-SENT");
    assert!(
        g2h.is_some_and(|s| s.len() == 64) && g2h == guest::field(out, "G2H-GOT"),
        "guest to host: {ctx}"
    );
    let h2g = guest::field(out, "H2G-SENT");
    assert!(
        h2g.is_some_and(|s| s.len() == 64) && h2g == guest::field(out, "H2G-GOT"),
        "host to guest: {ctx}"
    );
    assert_eq!(guest::field(out, "VMM-EXIT"), Some("0"), "{ctx}");
    assert_eq!(
        guest::field(out, "TAP-LEFT"),
        Some(""),
        "tap not removed: {ctx}"
    );
    let metrics: serde_json::Value = serde_json::from_str(
        guest::field(out, "NET-METRICS")
            .unwrap_or("{}")
            .split_once(':')
            .map_or("{}", |(_, v)| v),
    )
    .unwrap_or_default();
    for bad in ["rx_bad_chains", "tx_bad_chains", "tap_errors"] {
        assert_eq!(metrics[bad], 0, "{bad}: {ctx}");
    }
    let mib = bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "net: {mib} MiB guest->host in {:.1} s ({:.1} MiB/s), host->guest in {:.1} s \
         ({:.1} MiB/s); lab run {:.0} s; features {:?}",
        seconds(out, "G2H-SECONDS"),
        mib / seconds(out, "G2H-SECONDS"),
        seconds(out, "H2G-SECONDS"),
        mib / seconds(out, "H2G-SECONDS"),
        started.elapsed().as_secs_f64(),
        guest::field(out, "NET-FEATURES"),
    );
}
