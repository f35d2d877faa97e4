//! The port-forward stream protocol both sides speak (docs/agent.md, "Port forwards"):
//! the host opens a stream to the agent's forward listener and names a TCP port of the
//! guest; the agent connects to `127.0.0.1:<port>` in the guest's network namespace (the
//! pod's: its containers share it) and answers one line, then the stream carries the
//! connection's bytes both ways. Kubernetes' port-forward reaches a pod's port this way
//! (the shim's crate::network::portfwd).
//!
//! ```text
//! host:  husk-forward 0 <tcp port>\n
//! agent: OK\n                  (or: error <reason>\n, then the stream is closed)
//! ```

use std::path::{Path, PathBuf};

/// vsock port of the agent's forward listener.
pub const FORWARD_PORT: u32 = 1027;

/// Version field of the header line.
pub const HEADER_VERSION: &str = "0";

/// The header line's first word.
pub const MAGIC: &str = "husk-forward";

/// Longest header line an agent accepts (without its newline).
pub const MAX_HEADER: usize = 64;

/// Longest answer line (without its newline); an agent's error line is cut to this.
pub const MAX_ANSWER: usize = 256;

/// The header line (with its newline) asking for guest TCP port `port`.
pub fn header(port: u16) -> String {
    format!("{MAGIC} {HEADER_VERSION} {port}\n")
}

/// Why a header line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header: expected `{MAGIC} {HEADER_VERSION} PORT`, got {0:?}")]
    Format(String),
    #[error("header: unsupported version {0:?} (this agent speaks {HEADER_VERSION})")]
    Version(String),
    #[error("header: port {0:?} is not a TCP port (1 to 65535)")]
    Port(String),
}

/// Parses one header line (without its newline): the TCP port asked for.
pub fn parse_header(line: &str) -> Result<u16, HeaderError> {
    let cut = |s: &str| s.chars().take(MAX_HEADER).collect::<String>();
    let parts: Vec<&str> = line.split(' ').collect();
    let [magic, version, port] = parts[..] else {
        return Err(HeaderError::Format(cut(line)));
    };
    if magic != MAGIC {
        return Err(HeaderError::Format(cut(line)));
    }
    if version != HEADER_VERSION {
        return Err(HeaderError::Version(cut(version)));
    }
    // Digits only (no sign, no spaces); u16 bounds it to 65535.
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::Port(cut(port)));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(HeaderError::Port(cut(port))),
    }
}

/// Where an agent serving the API on the unix socket `api` takes forward streams.
pub fn unix_path(api: &Path) -> PathBuf {
    let mut s = api.as_os_str().to_owned();
    s.push(".forward");
    PathBuf::from(s)
}

/// An error answer line (with its newline), bounded to [`MAX_ANSWER`] bytes and kept
/// on one line.
pub fn error_line(reason: &str) -> String {
    let mut s = String::from("error ");
    for c in reason.chars() {
        let c = if c == '\n' || c == '\r' { ' ' } else { c };
        if s.len() + c.len_utf8() > MAX_ANSWER {
            break;
        }
        s.push(c);
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(header(8080), "husk-forward 0 8080\n");
        assert_eq!(parse_header("husk-forward 0 8080"), Ok(8080));
        assert_eq!(parse_header("husk-forward 0 1"), Ok(1));
        assert_eq!(parse_header("husk-forward 0 65535"), Ok(65535));
        for bad in [
            "0", "70000", "65536", "abc", "", "+80", "-1", "080000", " 80",
        ] {
            let line = format!("husk-forward 0 {bad}");
            assert!(parse_header(&line).is_err(), "{line:?}");
        }
        assert!(matches!(
            parse_header("husk-forward 1 80"),
            Err(HeaderError::Version(_))
        ));
        for bad in [
            "",
            "husk-forward 0",
            "husk-stdio 0 80",
            "husk-forward 0 80 x",
        ] {
            assert!(
                matches!(parse_header(bad), Err(HeaderError::Format(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn error_lines_are_one_bounded_line() {
        assert_eq!(error_line("refused"), "error refused\n");
        let long = error_line(&"é\n".repeat(1000));
        assert!(long.len() <= MAX_ANSWER + 1, "{}", long.len());
        assert_eq!(long.matches('\n').count(), 1);
        assert!(long.ends_with('\n'));
    }

    #[test]
    fn unix_paths() {
        assert_eq!(
            unix_path(Path::new("/run/a.sock")),
            PathBuf::from("/run/a.sock.forward")
        );
    }
}
