//! The library's `Pod` against husk-agent on this host (no VM; `--listen unix:`): two
//! containers with their own ids in one pod, stdio to files and to a FIFO, exec, wait,
//! kill, pids, stats, pause/resume, delete, error kinds, and the event pump's order (an
//! exec's exit before its init's, also when the init is killed first). Needs root and
//! the husk-agent binary (`cargo build -p husk-agent`); skipped loudly otherwise
//! (failing under `HUSK_REQUIRE_LAB=1`, as in `make test`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use husk::error::ErrorKind;
use husk::pod::{Pod, PodEvent, ProcessKey};
use husk::stdio::{Output, ProcessStdio};
use husk_agent_protocol::client::Endpoint;
use husk_agent_protocol::spec::default_spec;
use husk_tests::agent::dir_rootfs;
use tokio::io::AsyncReadExt;

struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
    rootfs: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        husk_tests::agent::stop(&mut self.child);
    }
}

fn agent_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| husk_tests::repo_root().join("target"));
    target.join("debug/husk-agent")
}

/// Why this test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("it needs root (namespaces, mounts, cgroups)".into());
    }
    let bin = agent_binary();
    if !bin.is_file() {
        return Some(format!(
            "no husk-agent at {} (cargo build -p husk-agent)",
            bin.display()
        ));
    }
    None
}

fn start_agent() -> Agent {
    let dir = tempfile::Builder::new()
        .prefix("husk-pod-")
        .tempdir_in("/tmp")
        .unwrap();
    let rootfs = dir.path().join("rootfs");
    husk_tests::agent::busybox_rootfs(&rootfs);
    let sock = dir.path().join("agent.sock");
    let child = Command::new(agent_binary())
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("HUSK_AGENT_LOG", "warn,libcontainer=warn,libcgroups=error")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stdio = dir.path().join("agent.sock.stdio");
    while !(sock.exists() && stdio.exists()) {
        assert!(Instant::now() < deadline, "agent socket did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    Agent {
        child,
        dir,
        sock,
        rootfs,
    }
}

/// The next exit on `events` (OOM events skipped), within 30 s.
async fn next_exit(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<PodEvent>,
) -> (ProcessKey, i32) {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("no event within 30 s")
            .expect("the event channel closed");
        if let PodEvent::Exit {
            process, status, ..
        } = ev
        {
            return (process, status);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_over_a_host_agent() {
    if let Some(why) = cannot_run() {
        if std::env::var_os("HUSK_REQUIRE_LAB").is_some() {
            panic!("a_pod_over_a_host_agent cannot run: {why}");
        }
        eprintln!("SKIPPED a_pod_over_a_host_agent: {why}");
        return;
    }
    let a = start_agent();
    let root = || dir_rootfs(&a.rootfs.display().to_string());
    let pod = Pod::connect(Endpoint::Unix(a.sock.clone())).await.unwrap();
    let mut events = pod.events();
    let logs = a.dir.path();

    // A container whose init runs until killed, its output in files.
    let files = ProcessStdio {
        stdout: Some(Output::File(logs.join("web.out"))),
        stderr: Some(Output::File(logs.join("web.err"))),
        ..Default::default()
    };
    let spec = default_spec(&["sh", "-c", "echo hello; echo oops >&2; exec sleep 60"]);
    pod.create_container("web", &spec, root(), "", &files)
        .await
        .unwrap();
    pod.start("web").await.unwrap();

    // A second container of the same pod, its stdout on a FIFO (containerd's way).
    let fifo = logs.join("second.out");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut reader = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&fifo)
        .unwrap();
    let fifo_io = ProcessStdio {
        stdout: Some(Output::Fifo(fifo.clone())),
        ..Default::default()
    };
    let spec = default_spec(&["sh", "-c", "echo second; exit 3"]);
    pod.create_container("second", &spec, root(), "", &fifo_io)
        .await
        .unwrap();
    pod.start("second").await.unwrap();
    assert_eq!(pod.wait("second", "").await.unwrap().status, 3);
    pod.drain_io("second", "").await;
    let mut got = [0u8; 7];
    reader.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"second\n");
    assert_eq!(
        next_exit(&mut events).await,
        (ProcessKey::new("second", ""), 3)
    );

    // An exec that ends by itself.
    let out = logs.join("exec1.out");
    let exec_io = ProcessStdio {
        stdout: Some(Output::File(out.clone())),
        ..Default::default()
    };
    let p = husk_agent_protocol::spec::process(&["sh", "-c", "echo from-exec; exit 7"]);
    pod.exec("web", "exec1", &p, "", &exec_io).await.unwrap();
    let exit = pod.wait("web", "exec1").await.unwrap();
    assert_eq!(exit.status, 7);
    pod.drain_io("web", "exec1").await;
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "from-exec\n");
    assert_eq!(
        next_exit(&mut events).await,
        (ProcessKey::new("web", "exec1"), 7)
    );

    // The container as a whole.
    assert!(!pod.pids("web").await.unwrap().is_empty());
    pod.stats("web").await.unwrap();
    pod.pause("web").await.unwrap();
    pod.resume("web").await.unwrap();

    // A long exec, then the init killed: the exec's exit is delivered first.
    let p = husk_agent_protocol::spec::process(&["sleep", "60"]);
    pod.exec("web", "long", &p, "", &ProcessStdio::default())
        .await
        .unwrap();
    pod.kill("web", "", 9, false).await.unwrap();
    assert_eq!(pod.wait("web", "").await.unwrap().status, 137);
    let first = next_exit(&mut events).await;
    let second = next_exit(&mut events).await;
    assert_eq!(
        first.0,
        ProcessKey::new("web", "long"),
        "{first:?} {second:?}"
    );
    assert_eq!(second, (ProcessKey::new("web", ""), 137));
    pod.drain_io("web", "").await;
    assert_eq!(
        std::fs::read_to_string(logs.join("web.out")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(logs.join("web.err")).unwrap(),
        "oops\n"
    );

    // Error kinds.
    let e = pod.kill("nope", "", 9, false).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let spec = default_spec(&["/no/such/command"]);
    let e = pod
        .create_container("bad", &spec, root(), "", &ProcessStdio::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CommandNotFound, "{e}");
    assert_eq!(e.exit_code(), 127);
    let e = pod
        .create_container(
            "web",
            &default_spec(&["true"]),
            root(),
            "",
            &ProcessStdio::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");

    pod.delete("web", false).await.unwrap();
    pod.delete("second", false).await.unwrap();
    let _ = pod.delete("bad", true).await;
}
