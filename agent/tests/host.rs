//! husk-agent on this host (no VM): busybox containers from a local rootfs, created
//! through the agent API over a unix socket, stdio over the agent's stdio streams.
//! Needs root (namespaces, mounts, cgroups); skipped loudly otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use husk_agent_protocol::agent::*;
use husk_agent_protocol::agent_ttrpc::AgentClient;
use husk_agent_protocol::client::{Endpoint, StdioKind};
use husk_agent_protocol::spec::default_spec;
use husk_tests::agent::{
    create_req, ctx, delete, dir_rootfs, md5, read_all, rpc_error, start_detached, stdio, wait,
};
use serde_json::{Value, json};

struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    ep: Endpoint,
    rootfs: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        husk_tests::agent::stop(&mut self.child);
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            if std::env::var_os("HUSK_REQUIRE_LAB").is_some() {
                panic!("this test needs root (namespaces, mounts, cgroups)");
            }
            eprintln!("SKIPPED: this test needs root (namespaces, mounts, cgroups)");
            return;
        }
    };
}

fn start_agent() -> Agent {
    let dir = tempfile::Builder::new()
        .prefix("husk-agent-")
        .tempdir_in("/tmp")
        .unwrap();
    let rootfs = dir.path().join("rootfs");
    let st = Command::new(husk_tests::repo_root().join("tests/images/busybox-rootfs"))
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(st.success(), "busybox-rootfs failed");
    let sock = dir.path().join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("HUSK_AGENT_LOG", "info,libcontainer=warn,libcgroups=error")
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
        ep: Endpoint::Unix(sock),
        rootfs,
        dir,
    }
}

impl Agent {
    fn rootfs(&self) -> Rootfs {
        dir_rootfs(&self.rootfs.display().to_string())
    }
}

async fn run(
    a: &Agent,
    c: &AgentClient,
    id: &str,
    spec: Value,
    stdin: Option<&[u8]>,
) -> husk_tests::agent::Out {
    husk_tests::agent::run(&a.ep, c, &a.rootfs(), id, spec, stdin).await
}

fn req(a: &Agent, id: &str, spec: &Value, stdin: bool) -> CreateContainerRequest {
    create_req(&a.rootfs(), id, spec, stdio(stdin, true, true))
}

fn spec_with(args: &[&str], f: impl FnOnce(&mut Value)) -> Value {
    let mut s = default_spec(args);
    f(&mut s);
    s
}

fn mounts_under(p: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&p))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_stdio_and_exit_codes() {
    require_root!();
    let a = start_agent();
    let c = a.ep.agent().await.unwrap();

    let o = run(&a, &c, "echo", default_spec(&["echo", "hello"]), None).await;
    assert_eq!((o.stdout().as_str(), o.exit.exit_status), ("hello\n", 0));

    let o = run(
        &a,
        &c,
        "exit3",
        default_spec(&["sh", "-c", "echo err >&2; exit 3"]),
        None,
    )
    .await;
    assert_eq!(o.exit.exit_status, 3);
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    assert!(o.stdout.is_empty(), "stdout and stderr stay apart");

    let spec = spec_with(&["sh", "-c", "echo $FOO; pwd"], |s| {
        s["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("FOO=bar baz"));
        s["process"]["cwd"] = json!("/tmp");
    });
    let o = run(&a, &c, "envcwd", spec, None).await;
    assert_eq!(o.stdout(), "bar baz\n/tmp\n");

    // A network namespace of its own has its loopback up, as under runc (IFF_UP 0x1 |
    // IFF_LOOPBACK 0x8; /sys is mounted in the container's namespace).
    let spec = spec_with(&["cat", "/sys/class/net/lo/flags"], |s| {
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "network"}));
    });
    let o = run(&a, &c, "netns", spec, None).await;
    assert_eq!(
        (o.stdout().as_str(), o.exit.exit_status),
        ("0x9\n", 0),
        "{o:?}"
    );

    // A user by name: uid, gid and supplementary groups from the container's files.
    let mut req = req(&a, "user", &default_spec(&["id"]), false);
    req.user = "alice".into();
    let so = a.ep.stdio("user", "", StdioKind::Stdout).await.unwrap();
    let _se = a.ep.stdio("user", "", StdioKind::Stderr).await.unwrap();
    c.create_container(ctx(), &req).await.unwrap();
    let mut r = ContainerRequest::new();
    r.container_id = "user".into();
    c.start_container(ctx(), &r).await.unwrap();
    let out = String::from_utf8(read_all(so).await).unwrap();
    assert!(out.starts_with("uid=1000(alice) gid=1000(alice)"), "{out}");
    assert!(
        out.contains("10(wheel)") && out.contains("29(audio)"),
        "{out}"
    );
    let mut d = DeleteContainerRequest::new();
    d.container_id = "user".into();
    d.force = true;
    c.delete_container(ctx(), &d).await.unwrap();

    // stdin piped through, closed by the host.
    let o = run(
        &a,
        &c,
        "stdin",
        default_spec(&["sh", "-c", "cat; echo done"]),
        Some(b"abc\n"),
    )
    .await;
    assert_eq!(o.stdout(), "abc\ndone\n");

    // 10 MiB of stdout intact (and the container's own checksum on stderr).
    let spec = default_spec(&[
        "sh",
        "-c",
        "head -c 10485760 /dev/urandom >/tmp/r; cat /tmp/r; md5sum </tmp/r >&2",
    ]);
    let o = run(&a, &c, "big", spec, None).await;
    assert_eq!(o.stdout.len(), 10 << 20);
    let local = md5(&o.stdout);
    let theirs = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        local.split_whitespace().next(),
        theirs.split_whitespace().next()
    );

    assert!(
        mounts_under(a.dir.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(a.dir.path())
    );
    assert!(
        !Path::new("/sys/fs/cgroup/memory/husk/echo").exists(),
        "cgroup left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_exec_pid_namespaces_and_limits() {
    require_root!();
    let a = start_agent();
    let c = a.ep.agent().await.unwrap();

    // A signal the process handles, and one it cannot.
    let spec = default_spec(&[
        "sh",
        "-c",
        "trap 'exit 42' TERM; while true; do sleep 0.05; done",
    ]);
    start_detached(&c, &a.rootfs(), "trap", &spec).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = SignalProcessRequest::new();
    s.container_id = "trap".into();
    s.signal = 15;
    c.signal_process(ctx(), &s).await.unwrap();
    assert_eq!(wait(&c, "trap", "").await.exit_status, 42);
    delete(&c, "trap").await;

    start_detached(&c, &a.rootfs(), "sleeper", &default_spec(&["sleep", "60"])).await;
    // exec into the running container, with its own stdout.
    let so =
        a.ep.stdio("sleeper", "e1", StdioKind::Stdout)
            .await
            .unwrap();
    let mut e = ExecProcessRequest::new();
    e.container_id = "sleeper".into();
    e.exec_id = "e1".into();
    e.process_json =
        husk_agent_protocol::spec::process(&["sh", "-c", "cat /proc/1/cmdline; echo; echo $$"])
            .to_string()
            .into_bytes();
    let mut st = Stdio::new();
    st.stdout = true;
    e.stdio = Some(st).into();
    c.exec_process(ctx(), &e).await.unwrap();
    let out = String::from_utf8(read_all(so).await).unwrap();
    assert!(
        out.starts_with("sleep\u{0}60"),
        "exec sees the container's pid 1: {out:?}"
    );
    assert_eq!(wait(&c, "sleeper", "e1").await.exit_status, 0);
    // A waited exec is freed (execs in a loop must not grow the agent).
    let mut w = ProcessRequest::new();
    w.container_id = "sleeper".into();
    w.exec_id = "e1".into();
    let (code, msg) = rpc_error(c.wait_process(ctx(), &w).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");

    // A second container in the first one's pid namespace sees its processes.
    let pid1 = {
        let mut r = ContainerRequest::new();
        r.container_id = "sleeper".into();
        c.list_pids(ctx(), &r).await.unwrap().pids[0]
    };
    let spec = spec_with(&["sh", "-c", "cat /proc/1/cmdline"], |s| {
        s["linux"]["namespaces"][0] =
            json!({"type": "pid", "path": format!("/proc/{pid1}/ns/pid")});
    });
    let o = run(&a, &c, "sidecar", spec, None).await;
    assert!(o.stdout().starts_with("sleep\u{0}60"), "{:?}", o.stdout());

    // Pause, resume, stats.
    let mut r = ContainerRequest::new();
    r.container_id = "sleeper".into();
    c.pause_container(ctx(), &r).await.unwrap();
    c.resume_container(ctx(), &r).await.unwrap();
    let st = c.stats_container(ctx(), &r).await.unwrap();
    assert!(st.pids_current >= 1 && st.memory_usage_bytes > 0, "{st:?}");

    // SIGKILL: 128 + 9.
    let mut s = SignalProcessRequest::new();
    s.container_id = "sleeper".into();
    s.signal = 9;
    c.signal_process(ctx(), &s).await.unwrap();
    assert_eq!(wait(&c, "sleeper", "").await.exit_status, 137);
    delete(&c, "sleeper").await;

    // A memory limit hit: OOM kill, reported by WaitProcess and as an event.
    let spec = spec_with(&["tail", "/dev/zero"], |s| {
        s["linux"]["resources"]["memory"] = json!({"limit": 32 << 20, "swap": 32 << 20});
    });
    start_detached(&c, &a.rootfs(), "oom", &spec).await;
    let w = wait(&c, "oom", "").await;
    assert_eq!((w.exit_status, w.oom_killed), (137, true));
    let mut saw_oom = false;
    for _ in 0..20 {
        let ev = tokio::time::timeout(Duration::from_secs(5), c.next_event(ctx(), &Empty::new()))
            .await
            .unwrap()
            .unwrap();
        if ev.container_id == "oom" && ev.kind == event::Kind::OOM.into() {
            saw_oom = true;
            break;
        }
    }
    assert!(saw_oom, "no OOM event");
    delete(&c, "oom").await;

    // A pids limit: forks beyond it fail.
    let spec = spec_with(
        &["sh", "-c", "for i in $(seq 30); do sleep 2 & done; wait"],
        |s| {
            s["linux"]["resources"]["pids"] = json!({"limit": 8});
        },
    );
    let o = run(&a, &c, "pids", spec, None).await;
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("fork"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    assert!(
        mounts_under(a.dir.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(a.dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal() {
    require_root!();
    let a = start_agent();
    let c = a.ep.agent().await.unwrap();
    let spec = spec_with(&["sh", "-c", "tty; stty size"], |s| {
        s["process"]["terminal"] = json!(true);
    });
    let so = a.ep.stdio("tty", "", StdioKind::Stdout).await.unwrap();
    let mut req = req(&a, "tty", &spec, false);
    req.stdio = Some({
        let mut s = Stdio::new();
        s.stdout = true;
        s
    })
    .into();
    c.create_container(ctx(), &req).await.unwrap();
    let mut rs = ResizePtyRequest::new();
    rs.container_id = "tty".into();
    rs.rows = 33;
    rs.cols = 101;
    c.resize_pty(ctx(), &rs).await.unwrap();
    let mut r = ContainerRequest::new();
    r.container_id = "tty".into();
    c.start_container(ctx(), &r).await.unwrap();
    let out = String::from_utf8_lossy(&read_all(so).await).into_owned();
    assert!(
        out.contains("/dev/pts/0") && out.contains("33 101"),
        "{out:?}"
    );
    assert_eq!(wait(&c, "tty", "").await.exit_status, 0);
    delete(&c, "tty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_errors() {
    require_root!();
    let a = start_agent();
    let c = a.ep.agent().await.unwrap();
    let spec = default_spec(&["true"]);
    let mut cases: Vec<(CreateContainerRequest, ttrpc::Code, &str)> = Vec::new();

    let mut r = req(&a, "x", &spec, false);
    r.container_id = "../etc".into();
    r.stdio = Some(Stdio::new()).into();
    cases.push((r, ttrpc::Code::INVALID_ARGUMENT, "container_id"));

    let mut r = req(&a, "x", &spec, false);
    r.stdio = Some(Stdio::new()).into();
    let mut rf = Rootfs::new();
    rf.path = format!("{}/../../etc", a.rootfs.display());
    r.rootfs = Some(rf).into();
    cases.push((r, ttrpc::Code::INVALID_ARGUMENT, "rootfs.path"));

    let bad = spec_with(&["true"], |s| {
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/../../../host", "type": "tmpfs", "source": "tmpfs"}));
    });
    let mut r = req(&a, "x", &bad, false);
    r.stdio = Some(Stdio::new()).into();
    cases.push((r, ttrpc::Code::INVALID_ARGUMENT, "destination"));

    let bad = spec_with(&["true"], |s| {
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "bogus"}));
    });
    let mut r = req(&a, "x", &bad, false);
    r.stdio = Some(Stdio::new()).into();
    cases.push((r, ttrpc::Code::INVALID_ARGUMENT, "bogus"));

    let mut r = req(&a, "x", &spec, false);
    r.stdio = Some(Stdio::new()).into();
    r.user = "mallory".into();
    cases.push((r, ttrpc::Code::INVALID_ARGUMENT, "mallory"));

    // The request policy: the guest's root or the agent's state as a root or a bind
    // source, and the agent's own namespaces, are refused naming the field.
    let mut r = req(&a, "x", &spec, false);
    r.stdio = Some(Stdio::new()).into();
    let mut rf = Rootfs::new();
    rf.path = "/".into();
    r.rootfs = Some(rf).into();
    cases.push((r, ttrpc::Code::INVALID_ARGUMENT, "rootfs.path \"/\""));
    let state = a.dir.path().join("state").display().to_string();
    let bad = spec_with(&["true"], |s| {
        s["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/agent", "type": "bind", "source": state, "options": ["rbind"]}),
        );
    });
    let mut r = req(&a, "x", &bad, false);
    r.stdio = Some(Stdio::new()).into();
    cases.push((r, ttrpc::Code::INVALID_ARGUMENT, "agent's state"));
    let bad = spec_with(&["true"], |s| {
        s["linux"]["namespaces"][0] = json!({"type": "pid", "path": "/proc/1/ns/pid"});
    });
    let mut r = req(&a, "x", &bad, false);
    r.stdio = Some(Stdio::new()).into();
    cases.push((
        r,
        ttrpc::Code::INVALID_ARGUMENT,
        "another container's namespace",
    ));

    // stdout marked but never opened
    let r = req(&a, "x", &spec, false);
    cases.push((r, ttrpc::Code::FAILED_PRECONDITION, "stdout"));

    for (req, code, needle) in cases {
        let (got, msg) = rpc_error(c.create_container(ctx(), &req).await.unwrap_err());
        assert_eq!(got, code, "{msg}");
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }

    // 100 MiB request: refused by the transport, the agent lives on.
    let mut r = req(&a, "huge", &spec, false);
    r.spec_json = vec![b' '; 100 << 20];
    assert!(c.create_container(ctx(), &r).await.is_err());

    // A command that does not exist in the image: refused at create, with its name.
    let mut r = req(&a, "nocmd", &default_spec(&["/no/such/thing"]), false);
    r.stdio = Some(Stdio::new()).into();
    let (code, msg) = rpc_error(c.create_container(ctx(), &r).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("/no/such/thing"), "{msg}");

    let mut g = GuestDetailsRequest::new();
    g.protocol_major = husk_agent_protocol::PROTOCOL_VERSION.0;
    let c2 = a.ep.agent().await.unwrap();
    let d = c2.guest_details(ctx(), &g).await.unwrap();
    assert_eq!(d.protocol_major, husk_agent_protocol::PROTOCOL_VERSION.0);

    // The entropy seed (protocol 0.5): at most 512 bytes; in host mode it is accepted
    // and left alone (the kernel is the host's).
    let mut sb = CreateSandboxRequest::new();
    sb.entropy_seed = vec![0x5a; 600];
    let (code, msg) = rpc_error(c.create_sandbox(ctx(), &sb).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("entropy_seed") && msg.contains("512"), "{msg}");
    sb.entropy_seed = vec![0x5a; 64];
    c.create_sandbox(ctx(), &sb).await.unwrap();

    assert!(
        mounts_under(a.dir.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(a.dir.path())
    );
}

/// Without a profile in the spec, a container gets the default one: AF_VSOCK sockets
/// (the way to husk-vmm's host side) and the keyring refused; a spec's own profile
/// replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_seccomp_profile() {
    require_root!();
    if std::fs::metadata("/dev/vsock").is_err() {
        eprintln!(
            "SKIPPED default_seccomp_profile: no /dev/vsock on this host (vsock sockets cannot be told apart from a refusal)"
        );
        return;
    }
    let a = start_agent();
    let probe = a.rootfs.join("bin/seccomp-probe");
    let st = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&probe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seccomp-probe.c"))
        .status()
        .expect("cc (a C compiler with a static libc)");
    assert!(st.success(), "cc seccomp-probe.c: {st}");
    let c = a.ep.agent().await.unwrap();
    let o = run(&a, &c, "def", default_spec(&["/bin/seccomp-probe"]), None).await;
    assert_eq!(o.stdout().trim(), "vsock=97 keyctl=1", "{}", o.stderr());
    let own = spec_with(&["/bin/seccomp-probe"], |s| {
        s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW"});
    });
    let o = run(&a, &c, "own", own, None).await;
    assert!(
        o.stdout().starts_with("vsock=0 "),
        "{} {}",
        o.stdout(),
        o.stderr()
    );
}
