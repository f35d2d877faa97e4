//! husk-vmm's command line with bad input: each mistake gets exit status 2 and a message
//! naming the field, and leaves nothing behind (its vsock socket included). These run on
//! any host: they fail before a guest would run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::process::{Command, Output};

const VMM: &str = env!("CARGO_BIN_EXE_husk-vmm");

fn run_config(dir: &Path, json: &str) -> Output {
    let cfg = dir.join("vm.json");
    std::fs::write(&cfg, json).unwrap();
    Command::new(VMM)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap()
}

fn assert_refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

/// A file that exists but is no kernel.
fn junk_kernel(dir: &Path) -> String {
    let k = dir.join("not-a-kernel");
    std::fs::write(&k, vec![0u8; 4096]).unwrap();
    k.display().to_string()
}

#[test]
fn missing_config_file() {
    let out = Command::new(VMM)
        .args(["--config", "/nonexistent/vm.json"])
        .output()
        .unwrap();
    assert_refused(&out, "cannot read the config file /nonexistent/vm.json");
}

#[test]
fn usage_errors() {
    let out = Command::new(VMM).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(VMM)
        .args(["--config", "x", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
fn field_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = junk_kernel(d);
    let cases: &[(String, &str)] = &[
        (
            r#"{"kernel": "/nonexistent/vmlinuz"}"#.into(),
            "config field kernel: /nonexistent/vmlinuz",
        ),
        (
            format!(r#"{{"kernel": "{k}", "memory": 64}}"#),
            "unknown field `memory`",
        ),
        (
            format!(r#"{{"kernel": "{k}", "memory_mib": 0}}"#),
            "config field memory_mib",
        ),
        (
            format!(r#"{{"kernel": "{k}", "memory_mib": 100000000}}"#),
            "config field memory_mib",
        ),
        (
            format!(r#"{{"kernel": "{k}", "vcpus": 0}}"#),
            "config field vcpus: must be at least 1",
        ),
        (
            format!(r#"{{"kernel": "{k}", "vcpus": 100000}}"#),
            "config field vcpus",
        ),
        (format!(r#"{{"kernel": "{k}", "serial": "tty"}}"#), "serial"),
        (
            format!(
                r#"{{"kernel": "{k}", "vsock": {{"cid": 3, "uds": "/{}"}}}}"#,
                "x".repeat(120)
            ),
            "config field vsock.uds",
        ),
        (
            format!(r#"{{"kernel": "{k}", "block": [{{"path": "/nonexistent/disk"}}]}}"#),
            "block[0].path",
        ),
        ("{not json".into(), "vm.json"),
    ];
    for (json, needle) in cases {
        let out = run_config(d, json);
        assert_refused(&out, needle);
    }
}

#[test]
fn a_file_that_is_no_kernel_is_refused_and_the_socket_removed() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: needs /dev/kvm (the kernel is checked after the VM is made)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = junk_kernel(d);
    let uds = d.join("v.sock");
    let json = format!(
        r#"{{"kernel": "{k}", "vsock": {{"cid": 3, "uds": "{}"}}}}"#,
        uds.display()
    );
    let out = run_config(d, &json);
    assert_refused(&out, "is neither an ELF vmlinux nor a bzImage");
    assert!(!uds.exists(), "the vsock socket was left behind");
}

#[test]
fn a_socket_in_use_is_refused_and_kept() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: needs /dev/kvm");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let uds = d.join("busy.sock");
    let _owner = std::os::unix::net::UnixListener::bind(&uds).unwrap();
    let k = junk_kernel(d);
    let json = format!(
        r#"{{"kernel": "{k}", "vsock": {{"cid": 3, "uds": "{}"}}}}"#,
        uds.display()
    );
    let out = run_config(d, &json);
    assert_refused(&out, "is in use by another process");
    assert!(uds.exists(), "someone else's socket was removed");
}

#[test]
fn net_entries_that_cannot_work_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = junk_kernel(d);
    let out = run_config(
        d,
        &format!(r#"{{"kernel": "{k}", "net": [{{"tap": "t0", "mac": "01:00:00:00:00:01"}}]}}"#),
    );
    assert_refused(&out, "net[0].mac");
    let out = run_config(
        d,
        &format!(r#"{{"kernel": "{k}", "net": [{{"mtu": 1500}}]}}"#),
    );
    assert_refused(&out, "net[0]");
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED the fd case: needs /dev/kvm (taps are opened after the VM is made)");
        return;
    }
    // An fd that is not open in husk-vmm: a configuration error naming entry and fd.
    let out = run_config(
        d,
        &format!(r#"{{"kernel": "{k}", "net": [{{"fd": 987}}]}}"#),
    );
    assert_refused(&out, "net[0]: cannot use the tap: fd 987 is not open");
}

#[test]
fn a_virtio_fs_share_without_a_backend_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = d.join("k");
    std::fs::write(&k, b"x").unwrap();
    let out = run_config(
        d,
        &format!(
            r#"{{"kernel": "{}", "fs": [{{"tag": "", "socket": "/s"}}]}}"#,
            k.display()
        ),
    );
    assert_refused(&out, "fs[0].tag");
    if !Path::new("/dev/kvm").exists() {
        eprintln!(
            "SKIPPED (the rest): needs /dev/kvm (the backend is reached after the VM is made)"
        );
        return;
    }
    let k = junk_kernel(d);
    let sock = d.join("nobody.sock");
    let json = format!(
        r#"{{"kernel": "{k}", "fs": [{{"tag": "share", "socket": "{}"}}]}}"#,
        sock.display()
    );
    let out = run_config(d, &json);
    assert_refused(&out, "fs[0]");
    assert_refused(&out, &sock.display().to_string());
}
