//! Free page reporting in the lab: a guest with a balloon maps and touches memory
//! (balloon-fill.c, built here), then unmaps it; the free pages the guest reports must go
//! back to the host, so husk-vmm's RSS falls by most of what it had grown by. Both
//! backings: private anonymous memory (MADV_DONTNEED) and the shared memfd (MADV_REMOVE).
//!
//! Sizes: `make test` fills 256 MiB of a 768 MiB guest (touching memory is slow in the
//! emulated lab: ~3 MiB/s); `HUSK_BALLOON_TEST_FULL=1` fills 1 GiB of a 1.5 GiB guest
//! (measured: RSS 133 -> 1151 -> 165 MiB, ~10 min a run).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::time::Duration;

use husk_tests::{guest, require_lab};
use husk_vmm::config::{BalloonConfig, SerialConfig, SerialOutput, VmConfig};

/// (MiB filled and freed, guest memory MiB).
fn sizes() -> (u64, u64) {
    if std::env::var_os("HUSK_BALLOON_TEST_FULL").is_some() {
        (1024, 1536)
    } else {
        (256, 768)
    }
}

fn num(out: &str, key: &str) -> f64 {
    guest::field(out, key)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the output:\n{out}"))
}

#[test]
fn freed_guest_memory_goes_back_to_the_host() {
    let lab = require_lab!();
    fill_and_free(lab, false);
}

#[test]
fn freed_shared_guest_memory_goes_back_to_the_host() {
    let lab = require_lab!();
    fill_and_free(lab, true);
}

/// Boots the guest (with `memory_shared` as given), lets it touch and free 1 GiB, and
/// checks husk-vmm's RSS.
fn fill_and_free(lab: husk_tests::lab::Lab, shared: bool) {
    let dir = husk_tests::scratch_dir();
    let d = dir.path();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest");
    let fill = d.join("balloon-fill");
    guest::compile_c(&here.join("balloon-fill.c"), &fill).unwrap();
    let kernel = guest::debian_kernel().unwrap();
    let init = std::fs::read_to_string(here.join("balloon-init.sh")).unwrap();
    guest::busybox_initramfs(
        &d.join("initrd.cpio.gz"),
        &init,
        &["virtio_mmio", "virtio_balloon"],
        &[fill.to_str().unwrap()],
    )
    .unwrap();
    let (fill_mib, memory_mib) = sizes();
    let config = VmConfig {
        initramfs: Some(d.join("initrd.cpio.gz")),
        // init_on_alloc=0: Debian zeroes every allocated page by default, which would
        // double the (slow, in the lab) cost of touching the memory.
        cmdline: format!("console=ttyS0 panic=-1 quiet init_on_alloc=0 husk.fill={fill_mib}"),
        memory_mib,
        memory_shared: shared,
        serial: SerialConfig(SerialOutput::file(d.join("console.log"))),
        balloon: Some(BalloonConfig {
            free_page_reporting: true,
        }),
        ..VmConfig::new(kernel)
    };
    std::fs::write(
        d.join("vm.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let r = lab
        .mem_mib(3072)
        .timeout(Duration::from_secs(1500))
        .run(&[
            "timeout".to_string(),
            "1440".to_string(),
            "python3".to_string(),
            here.join("balloon-host.py").display().to_string(),
            d.display().to_string(),
            env!("CARGO_BIN_EXE_husk-vmm").to_string(),
            fill_mib.to_string(),
        ])
        .unwrap();
    let out = &r.stdout;
    let ctx = format!("stdout:\n{out}\nstderr:\n{}", r.stderr);
    eprintln!("{ctx}");
    assert_eq!(r.code, Some(0), "{ctx}");
    let before = num(out, "RSS-BEFORE-KIB");
    let peak = num(out, "RSS-PEAK-KIB");
    let after = num(out, "RSS-AFTER-KIB");
    let fill_kib = fill_mib as f64 * 1024.0;
    // What the guest touched reached the host ...
    assert!(
        peak - before >= 0.88 * fill_kib,
        "RSS grew only {} MiB while the guest filled {fill_mib} MiB: {ctx}",
        (peak - before) / 1024.0
    );
    // ... and most of it came back once the guest freed it.
    assert!(
        peak - after >= 0.68 * fill_kib,
        "RSS fell only {} MiB after the guest freed {fill_mib} MiB: {ctx}",
        (peak - after) / 1024.0
    );
    let metrics = guest::field(out, "METRICS").unwrap_or_else(|| panic!("no METRICS: {ctx}"));
    assert!(metrics.contains("\"reported_bytes\""), "{ctx}");
    assert_eq!(guest::field(out, "VMM-EXIT"), Some("4"), "{ctx}");
}
