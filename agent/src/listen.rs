//! Where the agent serves its API: `vsock:PORT` in a VM (port 1024 by default), or
//! `unix:PATH` on a plain Linux host, so that container creation can be tested without
//! a VM.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use husk_agent_protocol::AGENT_PORT;

/// Longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// A listen address, as given to `--listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// AF_VSOCK, any CID, this port.
    Vsock(u32),
    /// AF_UNIX at this path.
    Unix(PathBuf),
}

impl Default for ListenAddr {
    fn default() -> Self {
        ListenAddr::Vsock(AGENT_PORT)
    }
}

/// Why a listen address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    #[error("listen address {0:?}: expected vsock:PORT or unix:PATH")]
    Scheme(String),
    #[error("listen address {0:?}: the port must be a number from 1 to 4294967294")]
    Port(String),
    #[error("listen address {0:?}: the path must be absolute")]
    RelativePath(String),
    #[error(
        "listen address {addr:?}: the path is {len} bytes, a unix socket holds {MAX_UNIX_PATH}"
    )]
    PathTooLong { addr: String, len: usize },
}

impl FromStr for ListenAddr {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(port) = s.strip_prefix("vsock:") {
            // VMADDR_PORT_ANY (u32::MAX) and 0 are not ports one can serve on.
            match port.parse::<u32>() {
                Ok(p) if p != 0 && p != u32::MAX => Ok(ListenAddr::Vsock(p)),
                _ => Err(ListenError::Port(s.to_string())),
            }
        } else if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(ListenError::RelativePath(s.to_string()));
            }
            if path.len() > MAX_UNIX_PATH {
                return Err(ListenError::PathTooLong {
                    addr: s.to_string(),
                    len: path.len(),
                });
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else {
            Err(ListenError::Scheme(s.to_string()))
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Vsock(p) => write!(f, "vsock:{p}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_forms() {
        for s in ["vsock:1024", "unix:/run/husk/agent.sock"] {
            assert_eq!(s.parse::<ListenAddr>().unwrap().to_string(), s);
        }
        assert_eq!(ListenAddr::default(), ListenAddr::Vsock(1024));
    }

    #[test]
    fn refuses_bad_addresses() {
        assert!(matches!(
            "tcp:1".parse::<ListenAddr>(),
            Err(ListenError::Scheme(_))
        ));
        for bad in [
            "vsock:",
            "vsock:0",
            "vsock:-1",
            "vsock:4294967295",
            "vsock:x",
        ] {
            assert!(
                matches!(bad.parse::<ListenAddr>(), Err(ListenError::Port(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "unix:rel/path".parse::<ListenAddr>(),
            Err(ListenError::RelativePath(_))
        ));
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(matches!(
            long.parse::<ListenAddr>(),
            Err(ListenError::PathTooLong { len: 201, .. })
        ));
    }
}
