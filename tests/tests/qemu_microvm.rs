//! The peer that husk-vmm's benchmarks compare against: inside the lab, QEMU
//! `-M microvm,rtc=on -enable-kvm` boots Debian's cloud kernel with a tiny busybox
//! initramfs that prints a marker and powers off. This proves that the lab's /dev/kvm
//! boots a stock distribution kernel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::time::Duration;

use husk_tests::{guest, require_lab};

const MARKER: &str = "HUSK-TEST-MARKER: guest booted";

/// The L2 guest's /init.
fn init_script() -> String {
    format!(
        "#!/bin/sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         echo \"{MARKER} with $(grep -c ^processor /proc/cpuinfo) cpu(s), kernel $(uname -r)\"\n\
         poweroff -f\n"
    )
}

#[test]
fn qemu_microvm_boots_the_debian_kernel_in_the_lab() {
    let lab = require_lab!();
    let dir = husk_tests::scratch_dir();
    let kernel = guest::debian_kernel().unwrap();
    let initrd = dir.path().join("marker.cpio.gz");
    guest::busybox_initramfs(&initrd, &init_script(), &[], &[]).unwrap();

    let qemu = format!(
        "qemu-system-x86_64 -M microvm,rtc=on -enable-kvm -cpu host -smp 1 -m 256 \
         -nodefaults -no-user-config -display none -no-reboot -serial stdio \
         -kernel {} -initrd {} -append 'console=ttyS0 quiet panic=-1'",
        kernel.display(),
        initrd.display()
    );
    // `timeout` inside too: a guest that never powers off must not hold the lab until
    // the outer timeout.
    let r = lab
        .timeout(Duration::from_secs(240))
        .run_script(&format!("timeout 180 {qemu} </dev/null"))
        .unwrap();
    r.assert_success();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains(MARKER) && l.contains("1 cpu(s)")),
        "no marker in the guest's output:\n{}",
        r.stdout
    );
}
