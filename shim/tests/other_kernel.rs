//! `husk run` on a guest kernel other than the default cloud one: Debian's generic
//! kernel, whose configuration differs where it matters (ext4 and crc32c are modules,
//! AGP and early PCI quirks are built in). Builds that guest image with
//! `HUSK_KERNEL_FLAVOUR=amd64 guest-image/build` (the package is downloaded once into
//! build/cache) and runs a container from an erofs image in the lab.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::process::Command;
use std::time::Duration;

use husk_tests::require_lab;

#[test]
fn husk_run_on_the_generic_kernel() {
    let lab = require_lab!();
    let root = husk_tests::repo_root();
    let guest = root.join("build/guest-generic");
    let out = Command::new(root.join("guest-image/build"))
        .args(["--out", &guest.display().to_string()])
        .env("HUSK_KERNEL_FLAVOUR", "amd64")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "guest-image/build failed:\n{log}");
    let manifest = std::fs::read_to_string(guest.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("crc32c_generic") && manifest.contains("\"ext4\""),
        "generic kernel: crc32c_generic (libcrc32c's soft dependency) and ext4 are modules, \
         expected in the image: {manifest}"
    );

    husk_tests::ensure_husk_vmm(std::path::Path::new(env!("CARGO_BIN_EXE_husk")));
    let scratch = husk_tests::scratch_dir();
    let img = scratch.path().join("busybox");
    husk_tests::busybox_oci(&img, None);

    let script = format!(
        "rc=0; {husk} run -q oci:{img} sh -c 'uname -r; seq 100000 | md5sum; exit 7' || rc=$?
         echo \"exit=$rc\"
         echo piped | {husk} run -q -i oci:{img} cat
         seq 100000 | md5sum
         echo \"left=$(pgrep -x husk-vmm | wc -l)/$(ls -A /run/husk | wc -l)\"",
        husk = env!("CARGO_BIN_EXE_husk"),
        img = img.display(),
    );
    let r = lab
        .timeout(Duration::from_secs(600))
        .env("HUSK_GUEST_DIR", &guest.display().to_string())
        .run_script(&script)
        .unwrap();
    let all = format!("--- stdout\n{}\n--- stderr\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{all}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    let [release, md5_guest, exit, piped, md5_host, left] = lines[..] else {
        panic!("expected 6 lines\n{all}");
    };
    assert!(
        release.ends_with("-amd64") && !release.contains("cloud"),
        "{all}"
    );
    assert_eq!(md5_guest, md5_host, "{all}");
    assert_eq!(exit, "exit=7", "{all}");
    assert_eq!(piped, "piped", "{all}");
    assert_eq!(left, "left=0/0", "{all}");
}
