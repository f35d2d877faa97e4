//! The control API and clean stops, through the husk-vmm binary, with a minimal ELF
//! "kernel" that spins forever (`jmp $`): it runs on any /dev/kvm, PVM included.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_vmm::api::{self, Request};

const VMM: &str = env!("CARGO_BIN_EXE_husk-vmm");

/// An ELF64 executable with one PT_LOAD segment at 1 MiB holding `jmp $`.
fn spinning_elf(path: &Path) {
    const LOAD: u64 = 0x10_0000;
    let code = [0xeb, 0xfe]; // jmp $
    let mut e = Vec::new();
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, LE, v1
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    e.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    e.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    e.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    let off = 64 + 56u64;
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&off.to_le_bytes()); // p_offset
    e.extend_from_slice(&LOAD.to_le_bytes()); // p_vaddr
    e.extend_from_slice(&LOAD.to_le_bytes()); // p_paddr
    e.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    e.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    e.extend_from_slice(&code);
    std::fs::write(path, e).unwrap();
}

struct Vm {
    child: Child,
    dir: tempfile::TempDir,
}

impl Vm {
    fn api(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }
    fn vsock(&self) -> PathBuf {
        self.dir.path().join("v.sock")
    }
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

/// Starts a spinning VM with an API socket and a vsock device; `None` without KVM.
fn start() -> Option<Vm> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: this host has no /dev/kvm");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("spin.elf");
    spinning_elf(&kernel);
    let cfg = dir.path().join("vm.json");
    let json = serde_json::json!({
        "kernel": kernel, "memory_mib": 32, "serial": "none", "rng": true,
        "vsock": {"cid": 3, "uds": dir.path().join("v.sock")},
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let child = Command::new(VMM)
        .arg("--config")
        .arg(&cfg)
        .arg("--api-sock")
        .arg(dir.path().join("api.sock"))
        .arg("--report")
        .arg(dir.path().join("report.json"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let vm = Vm { child, dir };
    let start = Instant::now();
    while !vm.api().exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(vm)
}

#[test]
fn pause_resume_metrics_and_shutdown() {
    let Some(mut vm) = start() else {
        return;
    };
    // The socket appears before the server thread runs: retry the first call briefly.
    let mut status = None;
    for _ in 0..100 {
        if let Ok(v) = api::call(&vm.api(), Request::Status) {
            status = Some(v);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status.unwrap()["state"], "running");
    // The VMM runs under its seccomp filter (mode 2) on every thread.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", vm.child.id())).unwrap();
    for t in tasks {
        let st = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        assert!(
            st.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"]),
            "{st}"
        );
    }
    api::call(&vm.api(), Request::Pause).unwrap();
    assert_eq!(
        api::call(&vm.api(), Request::Status).unwrap()["state"],
        "paused"
    );
    api::call(&vm.api(), Request::Resume).unwrap();
    assert_eq!(
        api::call(&vm.api(), Request::Status).unwrap()["state"],
        "running"
    );
    let m = api::call(&vm.api(), Request::Metrics).unwrap();
    assert!(m["metrics"]["rng0"].is_object(), "{m}");
    assert!(m["metrics"]["vsock1"].is_object(), "{m}");
    api::call(&vm.api(), Request::Shutdown).unwrap();
    assert_eq!(vm.wait(Duration::from_secs(10)), Some(4));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vm.dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["exit"], "stopped");
    assert!(
        !vm.api().exists() && !vm.vsock().exists(),
        "sockets left behind"
    );
}

#[test]
fn bad_api_requests_get_errors() {
    use std::io::{BufRead, BufReader, Write};
    let Some(mut vm) = start() else {
        return;
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut s = std::os::unix::net::UnixStream::connect(vm.api()).unwrap();
    s.write_all(b"{\"op\": \"reboot\"}\nnot json\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":false"), "{line}");
    }
    // An endless line is cut off with an error, and the VMM carries on.
    s.write_all(&vec![b'x'; 64 * 1024]).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("longer than"), "{line}");
    assert_eq!(
        api::call(&vm.api(), Request::Status).unwrap()["state"],
        "running"
    );
    api::call(&vm.api(), Request::Shutdown).unwrap();
    assert_eq!(vm.wait(Duration::from_secs(10)), Some(4));
}

#[test]
fn sigterm_stops_cleanly() {
    let Some(mut vm) = start() else {
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    assert_eq!(vm.wait(Duration::from_secs(10)), Some(4));
    assert!(
        !vm.api().exists() && !vm.vsock().exists(),
        "sockets left behind"
    );
}

#[test]
fn api_socket_in_use_is_refused() {
    let Some(mut vm) = start() else {
        return;
    };
    std::thread::sleep(Duration::from_millis(200));
    let cfg = vm.dir.path().join("vm.json");
    let out = Command::new(VMM)
        .arg("--config")
        .arg(&cfg)
        .arg("--api-sock")
        .arg(vm.api())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    api::call(&vm.api(), Request::Shutdown).unwrap();
    assert_eq!(vm.wait(Duration::from_secs(10)), Some(4));
}
