//! husk-agent in a VM, in the lab: husk-vmm boots the guest image (Debian's kernel,
//! the static agent as /init), the agent announces readiness on host vsock port 1025,
//! and containers run from a busybox erofs image on virtio-blk (with a tmpfs overlay),
//! driven over hybrid vsock: echo, exit codes, stdin, 1 MiB of stdout, exec, a signal,
//! an OOM kill and a pids limit under the guest's cgroup v2, bad requests, and a clean
//! power-off (husk-vmm exits 0, nothing left behind).
//!
//! The host-side code runs inside the lab (the test binary re-runs itself there with
//! only `inside_the_lab`), where /dev/kvm boots stock kernels.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use husk::guest::{GuestImage, vmm_binary};
use husk::sandbox::{Disk, Sandbox, SandboxSpec};
use husk_agent_protocol::agent::*;
use husk_agent_protocol::client::StdioKind;
use husk_agent_protocol::spec::{default_spec, process};
use husk_tests::agent::*;
use husk_tests::require_lab;
use serde_json::json;

const IMAGE_ENV: &str = "HUSK_TEST_EROFS";

fn guest_dir() -> PathBuf {
    husk_tests::repo_root().join("build/guest")
}

#[test]
fn containers_in_a_vm() {
    let lab = require_lab!();
    assert!(
        guest_dir().join("initramfs.img").is_file(),
        "no guest image in {}: run `make guest-image` (make test does)",
        guest_dir().display()
    );
    // husk-vmm next to the test binary (cargo test --workspace builds it).
    vmm_binary().expect("husk-vmm: run `cargo build -p husk-vmm`");
    let scratch = husk_tests::scratch_dir();
    let rootfs = scratch.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let img = scratch.path().join("busybox.erofs");
    let st = Command::new("mkfs.erofs")
        .arg(&img)
        .arg(&rootfs)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.erofs failed");
    let r = lab
        .timeout(Duration::from_secs(500))
        .env(IMAGE_ENV, &img.display().to_string())
        .env("HUSK_GUEST_DIR", &guest_dir().display().to_string())
        .run_test("inside_the_lab")
        .unwrap();
    println!("{}", r.stdout);
    eprintln!("{}", r.stderr);
    r.assert_success();
    assert!(
        r.stdout.contains("test result: ok. 1 passed"),
        "the inner test did not run"
    );
}

fn spec_with(args: &[&str], f: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut s = default_spec(args);
    f(&mut s);
    s
}

#[test]
#[ignore = "runs inside the lab, started by containers_in_a_vm"]
fn inside_the_lab() {
    if !husk_tests::lab::inside() {
        eprintln!("SKIPPED: only runs inside the lab (containers_in_a_vm starts it)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(in_vm(Path::new(&std::env::var(IMAGE_ENV).unwrap())));
}

async fn in_vm(erofs: &Path) {
    let image = GuestImage::locate(Path::new("/nonexistent"), None).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("husk-vm-")
        .tempdir_in("/tmp")
        .unwrap();
    let sb_spec = SandboxSpec {
        disks: vec![Disk {
            path: erofs.to_path_buf(),
            read_only: true,
        }],
        ready_timeout: Duration::from_secs(180),
        ..SandboxSpec::new(
            "vmtest",
            dir.path().join("sb"),
            vmm_binary().unwrap(),
            &image,
        )
    };
    let t0 = Instant::now();
    let sb = Sandbox::boot(&sb_spec)
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    println!(
        "BOOT vmm_spawned={:?} agent_ready={:?} connected={:?} guest_uptime={:?} kernel={}",
        sb.times.vmm_spawned,
        sb.times.agent_ready,
        sb.times.connected,
        sb.times.guest_uptime,
        image.kernel.display()
    );
    let (ep, c) = (sb.endpoint.clone(), &sb.agent);
    let root = block_rootfs("/dev/vda", "erofs");

    let o = run(
        &ep,
        c,
        &root,
        "echo",
        default_spec(&["echo", "hello from a microVM"]),
        None,
    )
    .await;
    assert_eq!(
        (o.stdout().as_str(), o.exit.exit_status),
        ("hello from a microVM\n", 0),
        "{o:?}"
    );

    let o = run(
        &ep,
        c,
        &root,
        "exit3",
        default_spec(&["sh", "-c", "echo oops >&2; exit 3"]),
        None,
    )
    .await;
    assert_eq!(
        (o.exit.exit_status, o.stderr().as_str(), o.stdout.len()),
        (3, "oops\n", 0)
    );

    let o = run(
        &ep,
        c,
        &root,
        "stdin",
        default_spec(&["sh", "-c", "cat; echo done"]),
        Some(b"abc\n"),
    )
    .await;
    assert_eq!(o.stdout(), "abc\ndone\n");

    let o = run(
        &ep,
        c,
        &root,
        "big",
        default_spec(&[
            "sh",
            "-c",
            "head -c 1048576 /dev/urandom >/tmp/r; cat /tmp/r; md5sum </tmp/r >&2",
        ]),
        None,
    )
    .await;
    assert_eq!(o.stdout.len(), 1 << 20);
    assert_eq!(
        Some(md5(&o.stdout).as_str()),
        o.stderr().split_whitespace().next()
    );

    // The overlay is writable, the image below it is not touched.
    let o = run(
        &ep,
        c,
        &root,
        "write",
        default_spec(&["sh", "-c", "echo x >/etc/new && cat /etc/new && id -un"]),
        None,
    )
    .await;
    assert_eq!(o.stdout(), "x\nroot\n", "{o:?}");

    // exec into a running container, then kill it.
    start_detached(c, &root, "sleeper", &default_spec(&["sleep", "300"])).await;
    let so = ep.stdio("sleeper", "e1", StdioKind::Stdout).await.unwrap();
    let mut e = ExecProcessRequest::new();
    e.container_id = "sleeper".into();
    e.exec_id = "e1".into();
    e.process_json = process(&["sh", "-c", "cat /proc/1/cmdline"])
        .to_string()
        .into_bytes();
    e.stdio = Some(stdio(false, true, false)).into();
    e.user = "alice".into();
    c.exec_process(ctx(), &e).await.unwrap();
    assert!(String::from_utf8_lossy(&read_all(so).await).starts_with("sleep\u{0}300"));
    assert_eq!(wait(c, "sleeper", "e1").await.exit_status, 0);
    signal(c, "sleeper", 9).await;
    assert_eq!(wait(c, "sleeper", "").await.exit_status, 137);
    delete(c, "sleeper").await;

    // cgroup v2 in the guest: an OOM kill and a pids limit.
    let spec = spec_with(&["tail", "/dev/zero"], |s| {
        s["linux"]["resources"]["memory"] = json!({"limit": 16 << 20, "swap": 16 << 20});
    });
    start_detached(c, &root, "oom", &spec).await;
    let w = wait(c, "oom", "").await;
    assert_eq!((w.exit_status, w.oom_killed), (137, true), "{w:?}");
    delete(c, "oom").await;
    let spec = spec_with(
        &["sh", "-c", "for i in $(seq 30); do sleep 2 & done; wait"],
        |s| {
            s["linux"]["resources"]["pids"] = json!({"limit": 8});
        },
    );
    let o = run(&ep, c, &root, "pids", spec, None).await;
    assert!(o.stderr().contains("fork"), "{o:?}");

    // Bad requests: clear errors, and the agent (PID 1) lives on.
    let mut r = create_req(&root, "../x", &default_spec(&["true"]), Stdio::new());
    let (code, msg) = rpc_error(c.create_container(ctx(), &r).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    r.container_id = "ok".into();
    r.rootfs = Some(block_rootfs("/dev/../etc/shadow", "erofs")).into();
    let (_, msg) = rpc_error(c.create_container(ctx(), &r).await.unwrap_err());
    assert!(msg.contains("rootfs.block_device"), "{msg}");
    r.spec_json = vec![b'x'; 100 << 20];
    assert!(c.create_container(ctx(), &r).await.is_err());
    let mut g = GuestDetailsRequest::new();
    g.protocol_major = husk_agent_protocol::PROTOCOL_VERSION.0;
    let d = c.guest_details(ctx(), &g).await.unwrap();
    println!(
        "GUEST kernel={} cpus={} memory={} MiB",
        d.kernel_release,
        d.cpus,
        d.memory_bytes >> 20
    );

    let code = sb.shutdown().await;
    assert_eq!(
        code,
        Some(0),
        "husk-vmm should exit 0 after the agent powers off"
    );
    assert!(!sb_spec.dir.exists(), "sandbox folder left behind");
    println!("TOTAL {:?}", t0.elapsed());
}
