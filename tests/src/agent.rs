//! Driving a husk-agent from tests: create/start/wait/delete with the stdio streams
//! collected. The same helpers serve an agent on this host (unix socket) and one in a
//! VM (hybrid vsock): only the [`Endpoint`] and the [`Rootfs`] differ.

#![allow(clippy::expect_used)] // test helpers: a panic is the failing test's message

use husk_agent_protocol::agent::*;
use husk_agent_protocol::agent_ttrpc::AgentClient;
use husk_agent_protocol::client::{Endpoint, StdioKind};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A generous per-call deadline (the lab is slow).
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(120_000_000_000)
}

/// What a container printed and how it ended.
#[derive(Debug)]
pub struct Out {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: WaitProcessResponse,
}

impl Out {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A rootfs from a directory (with a tmpfs overlay).
pub fn dir_rootfs(path: &str) -> Rootfs {
    let mut r = Rootfs::new();
    r.path = path.into();
    r.overlay = true;
    r
}

/// A rootfs from a block device in the guest (with a tmpfs overlay).
pub fn block_rootfs(device: &str, fstype: &str) -> Rootfs {
    let mut r = Rootfs::new();
    r.block_device = device.into();
    r.fstype = fstype.into();
    r.overlay = true;
    r
}

pub fn stdio(stdin: bool, stdout: bool, stderr: bool) -> Stdio {
    let mut s = Stdio::new();
    s.stdin = stdin;
    s.stdout = stdout;
    s.stderr = stderr;
    s
}

pub fn create_req(rootfs: &Rootfs, id: &str, spec: &Value, io: Stdio) -> CreateContainerRequest {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.into();
    req.spec_json = spec.to_string().into_bytes();
    req.rootfs = Some(rootfs.clone()).into();
    req.stdio = Some(io).into();
    req
}

pub async fn read_all(mut s: tokio::net::UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v).await;
    v
}

/// Creates and starts a container, feeds `stdin` (then closes it), collects stdout
/// and stderr, waits, deletes.
pub async fn run(
    ep: &Endpoint,
    c: &AgentClient,
    rootfs: &Rootfs,
    id: &str,
    spec: Value,
    stdin: Option<&[u8]>,
) -> Out {
    let so = ep
        .stdio(id, "", StdioKind::Stdout)
        .await
        .expect("stdout stream");
    let se = ep
        .stdio(id, "", StdioKind::Stderr)
        .await
        .expect("stderr stream");
    let si = match stdin {
        Some(_) => Some(
            ep.stdio(id, "", StdioKind::Stdin)
                .await
                .expect("stdin stream"),
        ),
        None => None,
    };
    c.create_container(
        ctx(),
        &create_req(rootfs, id, &spec, stdio(stdin.is_some(), true, true)),
    )
    .await
    .expect("create");
    start(c, id).await;
    if let (Some(mut si), Some(data)) = (si, stdin) {
        let data = data.to_vec();
        tokio::spawn(async move {
            let _ = si.write_all(&data).await;
            let _ = si.shutdown().await;
            let _ = read_all(si).await;
        });
    }
    let (stdout, stderr) = tokio::join!(read_all(so), read_all(se));
    let exit = wait(c, id, "").await;
    delete(c, id).await;
    Out {
        stdout,
        stderr,
        exit,
    }
}

pub async fn start(c: &AgentClient, id: &str) -> u32 {
    let mut r = ContainerRequest::new();
    r.container_id = id.into();
    c.start_container(ctx(), &r).await.expect("start").pid
}

/// Creates and starts a container without stdio.
pub async fn start_detached(c: &AgentClient, rootfs: &Rootfs, id: &str, spec: &Value) -> u32 {
    c.create_container(ctx(), &create_req(rootfs, id, spec, Stdio::new()))
        .await
        .expect("create");
    start(c, id).await
}

pub async fn wait(c: &AgentClient, id: &str, exec: &str) -> WaitProcessResponse {
    let mut w = ProcessRequest::new();
    w.container_id = id.into();
    w.exec_id = exec.into();
    c.wait_process(ctx(), &w).await.expect("wait")
}

pub async fn signal(c: &AgentClient, id: &str, sig: u32) {
    let mut s = SignalProcessRequest::new();
    s.container_id = id.into();
    s.signal = sig;
    c.signal_process(ctx(), &s).await.expect("signal");
}

pub async fn delete(c: &AgentClient, id: &str) {
    let mut d = DeleteContainerRequest::new();
    d.container_id = id.into();
    d.force = true;
    c.delete_container(ctx(), &d).await.expect("delete");
}

/// The status code and message of a failed call.
pub fn rpc_error(e: ttrpc::Error) -> (ttrpc::Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a status, got {other:?}"),
    }
}

/// md5 of bytes, by the system's md5sum (what busybox prints in the container).
pub fn md5(data: &[u8]) -> String {
    use std::io::Write;
    let mut p = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = p.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Runs `tests/images/busybox-rootfs` into `dir`.
pub fn busybox_rootfs(dir: &std::path::Path) {
    let st = std::process::Command::new(crate::repo_root().join("tests/images/busybox-rootfs"))
        .arg(dir)
        .status()
        .expect("busybox-rootfs");
    assert!(st.success(), "busybox-rootfs failed");
}

/// Stops a husk-agent a test started on this host: SIGTERM (it deletes its containers
/// and removes its sockets), then SIGKILL after 20 s; reaped either way.
pub fn stop(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on a pid this test spawned and has not reaped yet (so it
        // cannot have been reused); no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
