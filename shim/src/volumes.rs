//! Volumes as docker takes them: `-v HOST:GUEST[:ro|rw]`, `--mount
//! type=bind|tmpfs,...`, `--tmpfs PATH[:OPTIONS]`. Bind volumes reach the guest over
//! virtio-fs (crate::share: one sandboxed virtiofsd per VM that sees only them); tmpfs
//! ones are mounted by the container's runtime in the guest.

use std::path::{Component, Path, PathBuf};

/// One mount a container asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// A host file or folder at `target` in the container.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    /// A tmpfs at `target`; `options` as mount(8) takes them (`size=64m,mode=1777`).
    Tmpfs {
        target: String,
        options: Vec<String>,
    },
}

/// Why a volume was refused. Messages name the flag and what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("{flag} {value:?}: {why}")]
    Bad {
        flag: &'static str,
        value: String,
        why: String,
    },
    #[error("{flag} {value:?}: the host path {path} does not exist")]
    NoSource {
        flag: &'static str,
        value: String,
        path: PathBuf,
    },
}

fn bad(flag: &'static str, value: &str, why: impl Into<String>) -> VolumeError {
    VolumeError::Bad {
        flag,
        value: value.to_string(),
        why: why.into(),
    }
}

/// A container path: absolute, no `..`, not `/`.
fn check_target(flag: &'static str, value: &str, t: &str) -> Result<String, VolumeError> {
    let p = Path::new(t);
    if !p.is_absolute() {
        return Err(bad(
            flag,
            value,
            format!("the container path {t:?} must be absolute"),
        ));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(bad(
            flag,
            value,
            format!("the container path {t:?} contains `..`"),
        ));
    }
    if p == Path::new("/") {
        return Err(bad(
            flag,
            value,
            "a volume cannot replace the container's root",
        ));
    }
    Ok(t.to_string())
}

/// The host path, made absolute and resolved; it must exist (as with `--mount`; docker's
/// `-v` would create a missing folder, which hides typos).
fn check_source(flag: &'static str, value: &str, s: &str) -> Result<PathBuf, VolumeError> {
    if s.is_empty() {
        return Err(bad(flag, value, "no host path"));
    }
    let p = Path::new(s);
    if !p.is_absolute() && !s.starts_with('.') {
        // docker: a bare name is a named volume, which husk does not have.
        return Err(bad(
            flag,
            value,
            format!(
                "{s:?} is not a path (named volumes are not supported; use ./{s} or an absolute path)"
            ),
        ));
    }
    std::fs::canonicalize(p).map_err(|_| VolumeError::NoSource {
        flag,
        value: value.to_string(),
        path: p.to_path_buf(),
    })
}

/// `-v HOST:GUEST[:ro|rw]`.
pub fn parse_v(value: &str) -> Result<Volume, VolumeError> {
    let parts: Vec<&str> = value.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, None),
        [s, d, m] => (*s, *d, Some(*m)),
        [_] => {
            return Err(bad(
                "-v",
                value,
                "expected HOST:CONTAINER[:ro] (anonymous volumes are not supported)",
            ));
        }
        _ => return Err(bad("-v", value, "expected HOST:CONTAINER[:ro]")),
    };
    let mut read_only = false;
    for opt in mode.map(|m| m.split(',')).into_iter().flatten() {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            // Labels and propagation mean nothing across the VM boundary.
            "z" | "Z" | "rprivate" | "private" | "rslave" | "slave" => {}
            other => {
                return Err(bad(
                    "-v",
                    value,
                    format!("unknown option {other:?} (ro or rw)"),
                ));
            }
        }
    }
    Ok(Volume::Bind {
        source: check_source("-v", value, src)?,
        target: check_target("-v", value, dst)?,
        read_only,
    })
}

/// `--mount type=bind|tmpfs,source=…,target=…,readonly,tmpfs-size=…,tmpfs-mode=…`.
pub fn parse_mount(value: &str) -> Result<Volume, VolumeError> {
    let (mut typ, mut src, mut dst, mut ro) = ("volume", None, None, false);
    let mut tmpfs_opts = Vec::new();
    for kv in value.split(',') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "type" => typ = v,
            "source" | "src" => src = Some(v),
            "target" | "destination" | "dst" => dst = Some(v),
            "readonly" | "ro" => ro = matches!(v, "" | "true" | "1"),
            "tmpfs-size" => tmpfs_opts.push(format!("size={v}")),
            "tmpfs-mode" => tmpfs_opts.push(format!("mode={v}")),
            "bind-propagation" | "consistency" => {}
            other => return Err(bad("--mount", value, format!("unknown key {other:?}"))),
        }
    }
    let dst = dst.ok_or_else(|| bad("--mount", value, "no target="))?;
    let target = check_target("--mount", value, dst)?;
    match typ {
        "bind" => Ok(Volume::Bind {
            source: check_source(
                "--mount",
                value,
                src.ok_or_else(|| bad("--mount", value, "no source="))?,
            )?,
            target,
            read_only: ro,
        }),
        "tmpfs" => {
            if src.is_some() {
                return Err(bad("--mount", value, "a tmpfs has no source"));
            }
            if ro {
                tmpfs_opts.push("ro".into());
            }
            Ok(Volume::Tmpfs {
                target,
                options: tmpfs_opts,
            })
        }
        other => Err(bad(
            "--mount",
            value,
            format!("type {other:?}: bind or tmpfs (named volumes are not supported)"),
        )),
    }
}

/// `--tmpfs PATH[:OPTIONS]`.
pub fn parse_tmpfs(value: &str) -> Result<Volume, VolumeError> {
    let (dst, opts) = value.split_once(':').unwrap_or((value, ""));
    Ok(Volume::Tmpfs {
        target: check_target("--tmpfs", value, dst)?,
        options: opts
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// The bind volumes, numbered as the share names them (`v0`, `v1`, …).
pub fn binds(vols: &[Volume]) -> Vec<(String, &Path, bool)> {
    vols.iter()
        .filter_map(|v| match v {
            Volume::Bind {
                source, read_only, ..
            } => Some((source.as_path(), *read_only)),
            Volume::Tmpfs { .. } => None,
        })
        .enumerate()
        .map(|(i, (s, ro))| (format!("v{i}"), s, ro))
        .collect()
}

/// The OCI spec mounts for `vols`: binds from the share's folder in the guest
/// (`guest_share`, where the agent mounted the virtio-fs share), tmpfs mounts as asked.
/// Two volumes at one target: an error, as with docker.
pub fn spec_mounts(
    vols: &[Volume],
    guest_share: &str,
) -> Result<Vec<serde_json::Value>, VolumeError> {
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut n = 0;
    for v in vols {
        let target = match v {
            Volume::Bind { target, .. } | Volume::Tmpfs { target, .. } => target.as_str(),
        };
        if seen.contains(&target) {
            return Err(bad(
                "-v/--mount/--tmpfs",
                target,
                "two volumes at one container path",
            ));
        }
        seen.push(target);
        match v {
            Volume::Bind { read_only, .. } => {
                let mut options = vec!["rbind".to_string(), "nosuid".into(), "nodev".into()];
                options.push(if *read_only { "ro" } else { "rw" }.into());
                out.push(serde_json::json!({
                    "destination": target,
                    "type": "bind",
                    "source": format!("{guest_share}/v{n}"),
                    "options": options,
                }));
                n += 1;
            }
            Volume::Tmpfs { options, .. } => {
                let mut o = vec!["nosuid".to_string(), "nodev".into()];
                o.extend(options.iter().cloned());
                out.push(serde_json::json!({
                    "destination": target, "type": "tmpfs", "source": "tmpfs", "options": o,
                }));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dash_v() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().display().to_string();
        let v = parse_v(&format!("{src}:/data:ro")).unwrap();
        assert_eq!(
            v,
            Volume::Bind {
                source: d.path().canonicalize().unwrap(),
                target: "/data".into(),
                read_only: true
            }
        );
        assert!(matches!(
            parse_v(&format!("{src}:/data")).unwrap(),
            Volume::Bind {
                read_only: false,
                ..
            }
        ));
        let e = parse_v("/no/such/dir:/data").unwrap_err();
        assert!(e.to_string().contains("/no/such/dir does not exist"), "{e}");
        assert!(
            parse_v(&format!("{src}:data"))
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        assert!(parse_v(&format!("{src}:/a/../b")).is_err());
        assert!(parse_v(&format!("{src}:/")).is_err());
        assert!(
            parse_v(&format!("{src}:/d:rx"))
                .unwrap_err()
                .to_string()
                .contains("\"rx\"")
        );
        assert!(
            parse_v("named:/data")
                .unwrap_err()
                .to_string()
                .contains("named volumes")
        );
        assert!(parse_v("/data").is_err());
    }

    #[test]
    fn dash_dash_mount_and_tmpfs() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().display().to_string();
        assert!(matches!(
            parse_mount(&format!("type=bind,source={src},target=/w,readonly")).unwrap(),
            Volume::Bind {
                read_only: true,
                ..
            }
        ));
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,tmpfs-size=64m").unwrap(),
            Volume::Tmpfs {
                target: "/t".into(),
                options: vec!["size=64m".into()]
            }
        );
        assert!(parse_mount("type=volume,source=x,target=/t").is_err());
        assert!(
            parse_mount("type=bind,target=/t")
                .unwrap_err()
                .to_string()
                .contains("source")
        );
        assert!(parse_mount("type=tmpfs,bogus=1,target=/t").is_err());
        assert_eq!(
            parse_tmpfs("/run:size=8m,mode=1777").unwrap(),
            Volume::Tmpfs {
                target: "/run".into(),
                options: vec!["size=8m".into(), "mode=1777".into()]
            }
        );
    }

    #[test]
    fn spec_mounts_number_the_binds() {
        let vols = vec![
            Volume::Bind {
                source: "/a".into(),
                target: "/x".into(),
                read_only: false,
            },
            Volume::Tmpfs {
                target: "/t".into(),
                options: vec![],
            },
            Volume::Bind {
                source: "/b".into(),
                target: "/y".into(),
                read_only: true,
            },
        ];
        let m = spec_mounts(&vols, "/run/husk-shares/vol").unwrap();
        assert_eq!(m[0]["source"], "/run/husk-shares/vol/v0");
        assert_eq!(m[2]["source"], "/run/husk-shares/vol/v1");
        assert!(m[2]["options"].as_array().unwrap().contains(&"ro".into()));
        assert_eq!(m[1]["type"], "tmpfs");
        let b = binds(&vols);
        assert_eq!(b[1].0, "v1");
        let mut dup = vols.clone();
        dup.push(Volume::Tmpfs {
            target: "/x".into(),
            options: vec![],
        });
        assert!(spec_mounts(&dup, "/s").is_err());
    }
}
