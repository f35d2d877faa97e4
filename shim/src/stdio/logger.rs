//! containerd's `binary://` loggers: a program that takes a process's output.
//!
//! As containerd's own shims run them: the binary is started with the URI's query as
//! arguments (`key value` for each `key=value`, `key` alone for a bare key), the
//! environment `CONTAINER_ID` and `CONTAINER_NAMESPACE`, the process's stdout on fd 3
//! and its stderr on fd 4 (pipes), and fd 5, a pipe it closes (or writes to) once it
//! is ready. The copies start only then (at most [`READY_TIMEOUT`]). The logger ends
//! when both pipes reach EOF (the process's output drained); it is waited for in the
//! background, never by a caller.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::unix::pipe::Sender;
use tracing::{debug, warn};

use crate::error::{Error, ErrorKind};

/// How long a logger may take to say it is ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running logger: where the process's stdout and stderr go.
#[derive(Debug)]
pub struct Logger {
    pub stdout: Sender,
    pub stderr: Sender,
}

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::msg(
        ErrorKind::InvalidArgument,
        format!("binary logger {}: {what}: {e}", path.display()),
    )
}

/// A pipe, both ends close-on-exec, moved above fd 10 (so that making them fds 3-5 in
/// the child never overwrites one of them).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let high = |fd: OwnedFd| -> std::io::Result<OwnedFd> {
        // SAFETY: F_DUPFD_CLOEXEC on an fd we own; the result is a new fd we own.
        let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `n` was just returned by fcntl and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(n) })
    };
    Ok((high(r)?, high(w)?))
}

/// The logger's arguments from the URI's query pairs.
pub fn arguments(query: &[(String, String)]) -> Vec<String> {
    let mut args = Vec::new();
    for (k, v) in query {
        args.push(k.clone());
        if !v.is_empty() {
            args.push(v.clone());
        }
    }
    args
}

/// Starts the logger `path` for container `id` of `namespace` and waits until it is
/// ready.
pub async fn start(
    path: &Path,
    query: &[(String, String)],
    id: &str,
    namespace: &str,
) -> Result<Logger, Error> {
    start_within(path, query, id, namespace, READY_TIMEOUT).await
}

async fn start_within(
    path: &Path,
    query: &[(String, String)],
    id: &str,
    namespace: &str,
    ready_timeout: Duration,
) -> Result<Logger, Error> {
    let io = |what| move |e: std::io::Error| err(path, what, e);
    let (out_r, out_w) = pipe().map_err(io("pipe"))?;
    let (err_r, err_w) = pipe().map_err(io("pipe"))?;
    let (ready_r, ready_w) = pipe().map_err(io("pipe"))?;
    let mut cmd = Command::new(path);
    cmd.args(arguments(query))
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fds: [RawFd; 3] = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    // SAFETY: dup2 in the forked child before exec: async-signal-safe, on fds that are
    // open in the child (all above 10, the targets 3-5 below), no allocation.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as libc::c_int) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io("start"))?;
    drop((out_r, err_r, ready_w));
    debug!(logger = %path.display(), pid = child.id(), cid = id, "binary logger started");
    // Ready: fd 5 closed (EOF) or written to.
    let ready = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        let mut pfd = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&ready_r),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(ready_timeout.as_millis()).unwrap_or(u16::MAX);
        let n = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms))?;
        Ok(n > 0)
    })
    .await
    .map_err(|e| err(path, "wait", e))?
    .map_err(io("wait for it to be ready"))?;
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(err(
            path,
            "not ready",
            format!("it did not close fd 5 within {ready_timeout:?}"),
        ));
    }
    if let Ok(Some(st)) = child.try_wait()
        && !st.success()
    {
        return Err(err(path, "exited", st));
    }
    let path_s = path.display().to_string();
    std::thread::Builder::new()
        .name("husk-logger-wait".into())
        .spawn(move || match child.wait() {
            Ok(st) if !st.success() => warn!(logger = path_s, %st, "binary logger failed"),
            Ok(_) => debug!(logger = path_s, "binary logger ended"),
            Err(e) => warn!(logger = path_s, error = %e, "binary logger"),
        })
        .map_err(io("a thread to wait for it"))?;
    Ok(Logger {
        stdout: Sender::from_owned_fd(out_w).map_err(io("stdout pipe"))?,
        stderr: Sender::from_owned_fd(err_w).map_err(io("stderr pipe"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn query_to_arguments() {
        let q = vec![
            ("--id".to_string(), "abc".to_string()),
            ("-v".to_string(), String::new()),
        ];
        assert_eq!(arguments(&q), ["--id", "abc", "-v"]);
    }

    /// A shell logger: ready at once, copies fd 3 and 4 into files named by its
    /// arguments, and sees its environment.
    #[tokio::test]
    async fn a_logger_gets_both_streams() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("logger");
        std::fs::write(
            &script,
            "#!/bin/sh\nexec 5>&-\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" > \"$2.env\"\ncat <&3 > \"$2.out\" &\ncat <&4 > \"$2.err\"\nwait\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let base = d.path().join("log");
        let q = vec![("--to".to_string(), base.display().to_string())];
        let mut l = start(&script, &q, "c1", "ns1").await.unwrap();
        l.stdout.write_all(b"to stdout").await.unwrap();
        l.stderr.write_all(b"to stderr").await.unwrap();
        drop(l);
        let read = |ext: &str| {
            let p = base.with_extension(ext);
            for _ in 0..200 {
                if let Ok(s) = std::fs::read_to_string(&p)
                    && !s.is_empty()
                {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            String::new()
        };
        assert_eq!(read("out"), "to stdout");
        assert_eq!(read("err"), "to stderr");
        assert_eq!(read("env"), "ns1/c1\n");
        // A logger that never says it is ready is an error, not a hang.
        let slow = d.path().join("slow");
        std::fs::write(&slow, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let e = start_within(&slow, &[], "c1", "ns1", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not ready"), "{e}");
        assert!(
            start(&d.path().join("missing"), &[], "c1", "ns1")
                .await
                .is_err()
        );
    }
}
