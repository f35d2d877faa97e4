//! System test of husk-vmm in the lab (tests/lab/run): Debian's stock cloud kernel boots
//! with 2 vCPUs and finds every device through ACPI; the guest checksums a block device
//! the test wrote, reads /dev/hwrng, echoes 16 MiB through vsock in both directions, and
//! powers off; husk-vmm exits 0 and removes its socket.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::time::Duration;

use husk_tests::{guest, require_lab};

const VSOCK_BYTES: usize = 16 << 20;

fn write_vm_json(dir: &Path, kernel: &Path) {
    let json = serde_json::json!({
        "kernel": kernel,
        "initramfs": dir.join("initrd.cpio.gz"),
        "cmdline": format!("console=ttyS0 panic=-1 quiet husk.size={VSOCK_BYTES}"),
        "vcpus": 2,
        "memory_mib": 512,
        "serial": {"file": dir.join("console.log")},
        "block": [{"path": dir.join("disk.img"), "read_only": true}],
        "vsock": {"cid": 3, "uds": dir.join("v.sock")},
        "rng": true
    });
    std::fs::write(
        dir.join("vm.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}

#[test]
fn debian_kernel_boots_with_all_devices() {
    let lab = require_lab!();
    let dir = husk_tests::scratch_dir();
    let d = dir.path();
    let kernel = guest::debian_kernel().unwrap();
    let init = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/devices-init.sh"),
    )
    .unwrap();
    guest::busybox_initramfs(
        &d.join("initrd.cpio.gz"),
        &init,
        &[
            "virtio_mmio",
            "virtio_blk",
            "virtio-rng",
            "vmw_vsock_virtio_transport",
        ],
        &["socat"],
    )
    .unwrap();
    // A 4 MiB disk of known, non-trivial content.
    let disk: Vec<u8> = (0u32..4 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(d.join("disk.img"), &disk).unwrap();
    let disk_sha = guest::sha256_file(&d.join("disk.img")).unwrap();
    write_vm_json(d, &kernel);

    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/devices-host.sh");
    let r = lab
        .timeout(Duration::from_secs(540))
        .run(&[
            "timeout".to_string(),
            "480".to_string(),
            host.display().to_string(),
            d.display().to_string(),
            env!("CARGO_BIN_EXE_husk-vmm").to_string(),
            VSOCK_BYTES.to_string(),
        ])
        .unwrap();
    let out = &r.stdout;
    let ctx = format!("stdout:\n{out}\nstderr:\n{}", r.stderr);
    assert_eq!(r.code, Some(0), "{ctx}");
    assert_eq!(guest::field(out, "HUSK-MARKER"), Some("cpus=2"), "{ctx}");
    assert_eq!(
        guest::field(out, "BLK-SHA"),
        Some(disk_sha.as_str()),
        "{ctx}"
    );
    let rng = guest::field(out, "RNG").unwrap_or_default();
    assert_eq!(rng.len(), 64, "32 bytes of /dev/hwrng as hex: {ctx}");
    assert_ne!(rng, "0".repeat(64));
    let g2h = guest::field(out, "G2H-SENT");
    assert!(
        g2h.is_some() && g2h == guest::field(out, "G2H-BACK"),
        "{ctx}"
    );
    assert!(
        guest::field(out, "H2G-OK").is_some_and(|s| s.starts_with("OK ")),
        "{ctx}"
    );
    let h2g = guest::field(out, "H2G-SENT");
    assert!(
        h2g.is_some() && h2g == guest::field(out, "H2G-BACK"),
        "{ctx}"
    );
    assert_eq!(guest::field(out, "VMM-EXIT"), Some("0"), "{ctx}");
    assert_eq!(
        guest::field(out, "SOCKET-LEFT"),
        Some(""),
        "socket not removed: {ctx}"
    );
}
