//! System tests of the lab itself (tests/lab/run): the acceptance checks of issue #2.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::time::{Duration, Instant};

use husk_tests::lab::{Lab, LabMode};
use husk_tests::require_lab;

/// One boot checks several things: /dev/kvm boots stock kernels (nested SVM in the
/// emulated mode), the results folder is shared back, the exit code comes through, the
/// project's tree is at its own path, and stdout and stderr stay apart.
#[test]
fn lab_gives_kvm_results_folder_and_exit_code() {
    let lab = require_lab!();
    let out = husk_tests::scratch_dir();
    let root = husk_tests::repo_root();
    let script = format!(
        r#"
        test -c /dev/kvm
        if [ "$LAB_MODE" = emulated ]; then
            echo "nested=$(cat /sys/module/kvm_amd/parameters/nested)"
        fi
        test -x {root}/tests/lab/run
        echo "written inside" > "$LAB_OUT/result.txt"
        echo to-stderr >&2
        exit 7
        "#,
        root = root.display()
    );
    let r = lab.out_dir(out.path()).run_script(&script).unwrap();
    assert_eq!(
        r.code,
        Some(7),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.mode.is_some(),
        "the lab did not say its mode: {}",
        r.stderr
    );
    if r.mode == Some(LabMode::Emulated) {
        assert!(
            r.stdout.lines().any(|l| l == "nested=1" || l == "nested=Y"),
            "{}",
            r.stdout
        );
    }
    assert!(!r.stdout.contains("to-stderr"));
    assert!(r.stderr.contains("to-stderr"));
    let written = std::fs::read_to_string(out.path().join("result.txt")).unwrap();
    assert_eq!(written, "written inside\n");
}

#[test]
fn lab_timeout_stops_the_command_and_leaves_nothing() {
    let lab = require_lab!();
    let t0 = Instant::now();
    let r = lab
        .timeout(Duration::from_secs(15))
        .run(&["sleep", "600"])
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(r.code, Some(124), "{}", r.stderr);
    assert!(r.stderr.contains("timed out after 15s"), "{}", r.stderr);
    assert!(took < Duration::from_secs(40), "took {took:?}");
    // No QEMU or virtiofsd of that run is left: each run's folder name is in their
    // command lines, and the run removes its folder. A process naming a folder that is
    // gone was left behind; one whose folder exists belongs to another lab run going
    // on beside this test (a soak, another tree's tests), which is not ours to judge.
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    const PREFIX: &str = "/tmp/husk-lab.";
    let folder_of = |l: &str| -> Option<String> {
        let at = l.find(PREFIX)? + PREFIX.len();
        let name: String = l[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        Some(format!("{PREFIX}{name}"))
    };
    let leftovers: Vec<_> = ps
        .lines()
        .filter(|l| !l.contains("ps -eo"))
        .filter(|l| folder_of(l).is_some_and(|d| !std::path::Path::new(&d).exists()))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn lab_refuses_bad_input_clearly() {
    // These fail before anything boots, so they need no lab.
    let r = Lab::new().raw_args(&["--bogus"]).run(&["true"]).unwrap();
    assert_eq!(r.code, Some(125));
    assert!(
        r.stderr.contains("unknown option '--bogus'"),
        "{}",
        r.stderr
    );

    let r = Lab::new()
        .raw_args(&["--mode", "emulated"])
        .env("HUSK_QEMU", "/nonexistent/qemu")
        .run(&["true"])
        .unwrap();
    assert_eq!(r.code, Some(125));
    assert!(
        r.stderr.contains("HUSK_QEMU=/nonexistent/qemu"),
        "{}",
        r.stderr
    );

    let cache = husk_tests::scratch_dir();
    let r = Lab::new()
        .raw_args(&["--mode", "emulated"])
        .env("HUSK_KERNEL_PACKAGE", "linux-image-0.0.0-husk-none-amd64")
        .env("HUSK_CACHE", cache.path().to_str().unwrap())
        .run(&["true"])
        .unwrap();
    assert_eq!(r.code, Some(125));
    assert!(
        r.stderr
            .contains("could not download the Debian package linux-image-0.0.0-husk-none-amd64"),
        "{}",
        r.stderr
    );
}
