//! `husk run` on a host whose KVM cannot boot the guest's stock kernel (kvm_pvm, as on
//! this project's build machines): exit 125 at once with what to do, instead of a
//! minute of emulation ending in "KVM internal error". Skipped, saying so, on hosts
//! with hardware KVM (there the run would boot).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_vmm::host::KvmBackend;

#[test]
fn run_fails_fast_on_a_pvm_host() {
    let backend = KvmBackend::detect(Path::new("/sys/module"));
    if backend != KvmBackend::KvmPvm {
        eprintln!(
            "SKIPPED run_fails_fast_on_a_pvm_host: this host's KVM backend is {backend:?}, \
             not kvm_pvm (the check only refuses PVM hosts)"
        );
        return;
    }
    let scratch = husk_tests::scratch_dir();
    let dir = scratch.path();
    // The check comes before the image is converted: nothing lands in the cache.
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nrun_dir = \"{}\"\n",
            dir.join("state").display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    let busybox = dir.join("busybox");
    husk_tests::busybox_oci(&busybox, None);
    let t0 = Instant::now();
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(env!("CARGO_BIN_EXE_husk"))
        .arg("--config")
        .arg(&config)
        .args(["run", "-q"])
        .arg(format!("oci:{}", busybox.display()))
        .args(["echo", "hi"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
    for want in ["kvm_pvm", "tests/lab/run", "make demo", "vm.kernel"] {
        assert!(err.contains(want), "{want:?} missing: {err}");
    }
    assert!(out.stdout.is_empty());
    // Nothing converted, nothing left in the run folder.
    assert!(!dir.join("state/images").exists());
    assert_eq!(std::fs::read_dir(dir.join("run")).unwrap().count(), 0);
}
