//! stdio endpoints: where a container process's stdin comes from and where its stdout
//! and stderr go, on the host. The [`crate::pod::Pod`] takes one [`ProcessStdio`] per
//! process and joins it to the agent's vsock streams (one per stdin/stdout/stderr,
//! docs/agent.md) through [`pump`].
//!
//! Endpoints: this process's own stdin/stdout/stderr (the CLI's terminal or pipes; the
//! terminal's raw mode and size stay with the CLI, crate::tty), files (the logs of
//! `husk run -d`), FIFOs (containerd's), and none. containerd hands the shim its
//! endpoints as strings ([`ProcessStdio::from_containerd`]): a FIFO path, a
//! `file:///path` or a `binary:///path?args` logger ([`logger`]).

pub mod logger;
pub mod pump;

use std::path::PathBuf;

use crate::error::Error;

/// Where a process's stdin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// This process's stdin (`husk run -i`): copied until EOF, then the stream is
    /// half-closed, which closes the process's stdin.
    Stdin,
    /// A FIFO (containerd's), read as containerd's own shims read it: opened when a
    /// writer comes (never holding the caller), copied until that writer closes it
    /// (EOF) or [`crate::pod::Pod::close_stdin`] (containerd's CloseIO).
    Fifo(PathBuf),
}

/// Where a process's stdout or stderr goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// This process's stdout; with `sanitize`, stripped of control sequences (the
    /// process has no terminal and ours is one: crate::sanitize).
    Stdout { sanitize: bool },
    /// This process's stderr, the same way.
    Stderr { sanitize: bool },
    /// A file, created or truncated when the process is created (a detached run's
    /// log; containerd's `file://`).
    File(PathBuf),
    /// A FIFO (containerd's), opened read-write so that opening never waits for the
    /// reader.
    Fifo(PathBuf),
    /// A logging binary (containerd's `binary://`, [`logger`]): one runs per process
    /// for its stdout and stderr.
    Binary {
        path: PathBuf,
        args: Vec<(String, String)>,
    },
}

/// The stdio of one process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessStdio {
    /// None: the process's stdin is empty (/dev/null).
    pub stdin: Option<Input>,
    /// None: its stdout is discarded.
    pub stdout: Option<Output>,
    /// None: discarded (and with a terminal there is none: stderr is the terminal).
    pub stderr: Option<Output>,
    /// The process has a terminal (a pty in the guest; its output comes on stdout).
    pub terminal: bool,
    /// The containerd namespace (a `binary://` logger's `CONTAINER_NAMESPACE`).
    pub namespace: Option<String>,
}

impl ProcessStdio {
    /// The stdio containerd asks for in Create and Exec: each empty (none), a FIFO
    /// path, `file:///path` or `binary:///path?key=value&...`.
    pub fn from_containerd(
        stdin: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> Result<ProcessStdio, Error> {
        let stdin = match parse_uri("stdin", stdin)? {
            None => None,
            Some(Output::Fifo(p)) => Some(Input::Fifo(p)),
            Some(_) => {
                return Err(Error::invalid(format!(
                    "stdin {stdin:?}: only a FIFO path can be stdin"
                )));
            }
        };
        let stderr = if terminal {
            None
        } else {
            parse_uri("stderr", stderr)?
        };
        Ok(ProcessStdio {
            stdin,
            stdout: parse_uri("stdout", stdout)?,
            stderr,
            terminal,
            namespace: None,
        })
    }
}

/// One of containerd's stdio strings.
fn parse_uri(what: &str, s: &str) -> Result<Option<Output>, Error> {
    if s.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| Error::invalid(format!("{what} {s:?}: {why}"));
    let Some((scheme, rest)) = s.split_once("://") else {
        if s.starts_with('/') {
            return Ok(Some(Output::Fifo(PathBuf::from(s))));
        }
        return Err(bad("expected an absolute FIFO path, file:// or binary://"));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(bad("the path must be absolute"));
    }
    match scheme {
        "fifo" => Ok(Some(Output::Fifo(PathBuf::from(path)))),
        "file" => Ok(Some(Output::File(PathBuf::from(path)))),
        "binary" => {
            let args = query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            Ok(Some(Output::Binary {
                path: PathBuf::from(path),
                args,
            }))
        }
        _ => Err(bad("unknown scheme (fifo, file and binary are known)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn containerd_fifos() {
        let s = ProcessStdio::from_containerd(
            "/run/containerd/fifo/1/c-stdin",
            "/run/containerd/fifo/1/c-stdout",
            "/run/containerd/fifo/1/c-stderr",
            false,
        )
        .unwrap();
        assert_eq!(
            s.stdin,
            Some(Input::Fifo("/run/containerd/fifo/1/c-stdin".into()))
        );
        assert_eq!(
            s.stdout,
            Some(Output::Fifo("/run/containerd/fifo/1/c-stdout".into()))
        );
        assert_eq!(
            s.stderr,
            Some(Output::Fifo("/run/containerd/fifo/1/c-stderr".into()))
        );
        assert!(!s.terminal);
    }

    #[test]
    fn empty_means_none_and_a_terminal_has_no_stderr() {
        let s = ProcessStdio::from_containerd("", "/f/out", "/f/err", true).unwrap();
        assert_eq!(s.stdin, None);
        assert_eq!(s.stdout, Some(Output::Fifo("/f/out".into())));
        assert_eq!(s.stderr, None);
        assert!(s.terminal);
        assert_eq!(
            ProcessStdio::from_containerd("", "", "", false).unwrap(),
            ProcessStdio::default()
        );
    }

    #[test]
    fn file_and_binary_uris() {
        let s = ProcessStdio::from_containerd(
            "",
            "file:///var/log/c.log",
            "binary:///usr/bin/logger?id=abc&ns=k8s.io",
            false,
        )
        .unwrap();
        assert_eq!(s.stdout, Some(Output::File("/var/log/c.log".into())));
        assert_eq!(
            s.stderr,
            Some(Output::Binary {
                path: "/usr/bin/logger".into(),
                args: vec![("id".into(), "abc".into()), ("ns".into(), "k8s.io".into())],
            })
        );
        let s = ProcessStdio::from_containerd("fifo:///a/in", "", "", false).unwrap();
        assert_eq!(s.stdin, Some(Input::Fifo("/a/in".into())));
    }

    #[test]
    fn bad_uris_are_invalid_arguments() {
        for (i, o, e) in [
            ("relative/fifo", "", ""),
            ("", "http://x/y", ""),
            ("", "file://relative", ""),
            ("file:///in", "", ""),
        ] {
            let err = ProcessStdio::from_containerd(i, o, e, false).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{i} {o} {e}: {err}");
        }
    }
}
