//! Container creation runs in a short-lived helper: the agent re-executes itself as
//! `husk-agent runtime-helper create|exec ...`, a fresh single-threaded process, and
//! that process drives youki's libcontainer. libcontainer clones; cloning a
//! multi-threaded process (the agent runs tokio) can leave a lock held forever in the
//! child, so it never runs inside the agent itself (runc is a separate binary for the
//! same reason).
//!
//! The helper's stdin/stdout/stderr become the container process's; the helper reports
//! `{"pid": N}` or `{"error": "..."}` as one JSON line on fd 3. The container's
//! processes are re-parented to the agent (PID 1, or a child subreaper on a host),
//! which reaps them.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::reaper::Reaper;

/// The helper gets this long to create a container or an exec'd process.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// The fd the helper writes its result to.
const RESULT_FD: i32 = 3;

/// Why the helper failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("runtime helper: {0}")]
    Spawn(std::io::Error),
    #[error("runtime helper did not answer within {HELPER_TIMEOUT:?}")]
    Timeout,
    #[error("runtime helper exited without an answer")]
    NoAnswer,
    #[error("{0}")]
    Runtime(String),
}

/// The container process's stdio as the helper should pass it on.
#[derive(Debug)]
pub struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

fn stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

/// What to ask of the helper.
#[derive(Debug)]
pub enum Op<'a> {
    Create { bundle: &'a Path },
    Exec { process: &'a Path },
}

/// Runs the helper and returns the new process's pid.
pub async fn run(
    reaper: &Reaper,
    root: &Path,
    id: &str,
    op: Op<'_>,
    console_socket: Option<&Path>,
    io: ChildStdio,
) -> Result<i32, HelperError> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| HelperError::Spawn(e.into()))?;
    // Not current_exe(): as PID 1 the agent chroots out of the initramfs, and the path
    // it was started from no longer names it. /proc/self/exe always does.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("runtime-helper");
    match op {
        Op::Create { bundle } => {
            cmd.arg("create").arg(root).arg(id).arg(bundle);
        }
        Op::Exec { process } => {
            cmd.arg("exec").arg(root).arg(id).arg(process);
        }
    }
    if let Some(c) = console_socket {
        cmd.arg(c);
    }
    cmd.stdin(stdio(io.stdin))
        .stdout(stdio(io.stdout))
        .stderr(stdio(io.stderr))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let txfd = tx.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls dup2,
    // and fcntl, which are async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if txfd == RESULT_FD {
                // Already in place: only drop close-on-exec.
                if libc::fcntl(RESULT_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(txfd, RESULT_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(HelperError::Spawn)?;
    drop(tx);
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let exit = reaper.watch(pid);
    drop(child); // reaped by the reaper, never waited on here

    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(rx).map_err(HelperError::Spawn)?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(rx);
    let read = tokio::time::timeout(HELPER_TIMEOUT, reader.read_line(&mut line)).await;
    match read {
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(HelperError::Timeout);
        }
        Ok(Err(e)) => return Err(HelperError::Spawn(e)),
        Ok(Ok(_)) => {}
    }
    let _ = crate::reaper::wait(exit).await;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|_| HelperError::NoAnswer)?;
    if let Some(pid) = v.get("pid").and_then(serde_json::Value::as_i64) {
        return i32::try_from(pid).map_err(|_| HelperError::NoAnswer);
    }
    Err(HelperError::Runtime(
        v.get("error")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown error")
            .to_string(),
    ))
}

fn helper_inner(args: &[String]) -> Result<i32, String> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;

    let [op, root, id, target, rest @ ..] = args else {
        return Err("usage: runtime-helper create|exec ROOT ID BUNDLE|PROCESS [CONSOLE]".into());
    };
    let console = rest.first().map(PathBuf::from);
    let b = ContainerBuilder::new(id.clone(), SyscallType::default())
        .with_root_path(root)
        .map_err(|e| format!("state folder {root}: {e}"))?
        .with_console_socket(console);
    match op.as_str() {
        "create" => {
            let c = b
                .as_init(target)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("create container {id}: {e}"))?;
            let pid = c
                .pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| format!("create container {id}: no init process"))?;
            // runc brings up lo in every new network namespace; libcontainer does not.
            // The init waits for StartContainer, so it is up before the process runs.
            // (No logging here: this process's stderr is the container's.)
            super::netns::loopback_up_in(pid).map_err(|e| format!("create container {id}: {e}"))?;
            Ok(pid)
        }
        "exec" => {
            let pid = b
                .as_tenant()
                .with_process(Some(target))
                .with_detach(true)
                .build()
                .map_err(|e| format!("exec in container {id}: {e}"))?;
            Ok(pid.as_raw())
        }
        other => Err(format!("runtime-helper: unknown operation {other:?}")),
    }
}

/// The helper process's main: does the work, answers on fd 3, exits.
pub fn helper_main(args: &[String]) -> i32 {
    let answer = match helper_inner(args) {
        Ok(pid) => serde_json::json!({ "pid": pid }),
        Err(e) => serde_json::json!({ "error": e }),
    };
    // SAFETY: fd 3 was set up by the agent for this helper (dup2 in pre_exec) and is
    // owned by nothing else in this process.
    let mut out = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(RESULT_FD) };
    let ok = answer.get("pid").is_some();
    let _ = writeln!(out, "{answer}");
    if ok { 0 } else { 1 }
}
