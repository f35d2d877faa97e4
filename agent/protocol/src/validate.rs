//! Validation of request fields, applied to every request before the agent acts.
//!
//! The host is not trusted more than it must be: ids are `[A-Za-z0-9_.-]{1,128}` (and
//! not `.` or `..`, which would name folders), paths stay inside the folder they are
//! relative to, sizes are bounded.

use std::path::{Component, Path, PathBuf};

/// Longest id accepted (container, exec, sandbox).
pub const MAX_ID_LEN: usize = 128;

/// Largest request the agent accepts, in bytes.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Why a request field was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    #[error("{field}: empty id")]
    EmptyId { field: &'static str },
    #[error("{field}: id is {len} bytes long, at most {MAX_ID_LEN} are allowed")]
    IdTooLong { field: &'static str, len: usize },
    #[error("{field}: id {id:?} has a character outside [A-Za-z0-9_.-]")]
    IdCharacter { field: &'static str, id: String },
    #[error("{field}: id {id:?} is reserved")]
    IdReserved { field: &'static str, id: String },
    #[error("{field}: path {path:?} must be relative")]
    PathAbsolute { field: &'static str, path: String },
    #[error("{field}: path {path:?} leaves the folder it is relative to")]
    PathEscapes { field: &'static str, path: String },
    #[error("{field}: {size} bytes is more than the {max} allowed")]
    TooLarge {
        field: &'static str,
        size: usize,
        max: usize,
    },
}

/// Checks an id against `[A-Za-z0-9_.-]{1,128}`, refusing `.` and `..`.
pub fn id(field: &'static str, id: &str) -> Result<(), ValidateError> {
    if id.is_empty() {
        return Err(ValidateError::EmptyId { field });
    }
    if id.len() > MAX_ID_LEN {
        return Err(ValidateError::IdTooLong {
            field,
            len: id.len(),
        });
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(ValidateError::IdCharacter {
            field,
            id: id.to_string(),
        });
    }
    if id == "." || id == ".." {
        return Err(ValidateError::IdReserved {
            field,
            id: id.to_string(),
        });
    }
    Ok(())
}

/// Joins a relative `path` under `base`, refusing absolute paths and any `..` that
/// would climb above `base`. Purely lexical: symlinks are resolved by the caller at the
/// point of use (inside the container's root), never here.
pub fn join_inside(field: &'static str, base: &Path, path: &str) -> Result<PathBuf, ValidateError> {
    let p = Path::new(path);
    let mut depth = 0usize;
    let mut out = base.to_path_buf();
    for c in p.components() {
        match c {
            Component::Normal(n) => {
                depth += 1;
                out.push(n);
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return Err(ValidateError::PathEscapes {
                        field,
                        path: path.to_string(),
                    });
                }
                depth -= 1;
                out.pop();
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ValidateError::PathAbsolute {
                    field,
                    path: path.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Checks a size against a bound.
pub fn size(field: &'static str, size: usize, max: usize) -> Result<(), ValidateError> {
    if size > max {
        return Err(ValidateError::TooLarge { field, size, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_ids_pass() {
        for ok in ["a", "abc-123_x.y", &"x".repeat(128), "..a", "a.."] {
            assert_eq!(id("container_id", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn bad_ids_are_refused_with_the_field_named() {
        assert_eq!(
            id("container_id", ""),
            Err(ValidateError::EmptyId {
                field: "container_id"
            })
        );
        let long = "x".repeat(129);
        assert!(matches!(
            id("exec_id", &long),
            Err(ValidateError::IdTooLong { len: 129, .. })
        ));
        for bad in ["a/b", "a b", "é", "a\0b", "../x"] {
            let e = id("exec_id", bad).unwrap_err();
            assert!(e.to_string().starts_with("exec_id: "), "{e}");
        }
        assert!(matches!(
            id("id", ".."),
            Err(ValidateError::IdReserved { .. })
        ));
    }

    #[test]
    fn paths_stay_inside() {
        let base = Path::new("/run/sandbox");
        assert_eq!(
            join_inside("p", base, "a/./b/../c").unwrap(),
            Path::new("/run/sandbox/a/c")
        );
        assert_eq!(join_inside("p", base, "").unwrap(), base);
        for bad in ["..", "a/../../b", "../run/sandbox/x"] {
            assert!(
                matches!(
                    join_inside("p", base, bad),
                    Err(ValidateError::PathEscapes { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            join_inside("p", base, "/etc/passwd"),
            Err(ValidateError::PathAbsolute { .. })
        ));
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(size("data", MAX_REQUEST_BYTES, MAX_REQUEST_BYTES).is_ok());
        let e = size("data", 100 << 20, MAX_REQUEST_BYTES).unwrap_err();
        assert_eq!(
            e.to_string(),
            "data: 104857600 bytes is more than the 4194304 allowed"
        );
    }
}
