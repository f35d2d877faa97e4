//! vsock abuse in the lab: a guest floods a host port whose listener backlog is full
//! with connection requests, and opens 2000 connections the host closes at once and
//! never closes its ends. Meanwhile a new host-to-guest connection must still be served
//! promptly, husk-vmm's memory must stay put, the connections the host closed must be
//! freed (timeout), and SIGTERM must still end husk-vmm at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::time::Duration;

use husk_tests::{guest, require_lab};

fn num(out: &str, key: &str, i: usize) -> f64 {
    guest::field(out, key)
        .and_then(|v| v.split_whitespace().nth(i))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the output:\n{out}"))
}

#[test]
fn a_hostile_guest_cannot_stall_or_grow_the_vsock_device() {
    let lab = require_lab!();
    let dir = husk_tests::scratch_dir();
    let d = dir.path();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest");
    // The guest's hostile program, built here (gcc is part of the toolchain set-up).
    let abuse = d.join("vsock-abuse");
    guest::compile_c(&here.join("vsock-abuse.c"), &abuse).unwrap();
    let kernel = guest::debian_kernel().unwrap();
    let init = std::fs::read_to_string(here.join("vsock-abuse-init.sh")).unwrap();
    guest::busybox_initramfs(
        &d.join("initrd.cpio.gz"),
        &init,
        &["virtio_mmio", "vmw_vsock_virtio_transport"],
        &["socat", abuse.to_str().unwrap()],
    )
    .unwrap();
    let config = husk_vmm::config::VmConfig {
        initramfs: Some(d.join("initrd.cpio.gz")),
        cmdline: "console=ttyS0 panic=-1 quiet".into(),
        memory_mib: 512,
        serial: husk_vmm::config::SerialConfig(husk_vmm::config::SerialOutput::file(
            d.join("console.log"),
        )),
        vsock: Some(husk_vmm::config::VsockConfig {
            cid: 3,
            uds: d.join("v.sock"),
        }),
        ..husk_vmm::config::VmConfig::new(kernel)
    };
    std::fs::write(
        d.join("vm.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let r = lab
        .timeout(Duration::from_secs(900))
        .run(&[
            "timeout".to_string(),
            "840".to_string(),
            "python3".to_string(),
            here.join("vsock-abuse-host.py").display().to_string(),
            d.display().to_string(),
            env!("CARGO_BIN_EXE_husk-vmm").to_string(),
        ])
        .unwrap();
    let out = &r.stdout;
    let ctx = format!("stdout:\n{out}\nstderr:\n{}", r.stderr);
    eprintln!("{ctx}");
    assert_eq!(r.code, Some(0), "{ctx}");
    // The guest did what a hostile guest does: thousands of refused requests, and its
    // connections opened (or refused at the limit), without the VMM stalling.
    let flood = guest::field(out, "FLOOD").unwrap_or_else(|| panic!("no FLOOD: {ctx}"));
    assert!(flood.contains("tries="), "{ctx}");
    assert!(guest::field(out, "HOLD").is_some(), "{ctx}");
    // A new host connection is served within 100 ms while the abuse goes on, or, where
    // the lab's nested emulation is slower than that even when idle, within 3 times the
    // idle latency measured in the same run.
    let base_max = num(out, "BASE-LATENCY-MS", 1);
    let abuse_median = num(out, "ABUSE-LATENCY-MS", 0);
    let bound = 100f64.max(3.0 * base_max);
    assert!(
        abuse_median <= bound,
        "median host connection latency {abuse_median} ms under abuse, bound {bound} ms: {ctx}"
    );
    // Memory: less than 16 MiB of growth, from before the abuse to its height and end.
    let rss0 = num(out, "RSS0-KIB", 0);
    for key in ["RSS1-KIB", "RSS2-KIB"] {
        let grown = num(out, key, 0) - rss0;
        assert!(
            grown < 16.0 * 1024.0,
            "{key}: VMM RSS grew {grown} KiB: {ctx}"
        );
    }
    // The connections the host closed are gone: descriptors back near the start.
    let fds0 = num(out, "FDS0", 0);
    let fds2 = num(out, "FDS2", 0);
    assert!(fds2 <= fds0 + 8.0, "descriptors {fds0} -> {fds2}: {ctx}");
    // SIGTERM ends husk-vmm within 2 s, with the stopped-by-host status.
    let term = num(out, "TERM-MS", 0);
    assert!(term <= 2000.0, "SIGTERM took {term} ms: {ctx}");
    assert_eq!(guest::field(out, "VMM-EXIT"), Some("4"), "{ctx}");
}
