//! Container images: an OCI image layout (`oci:DIR[:TAG]`), an archive of one
//! (`oci-archive:FILE[:TAG]`), or a plain root folder (`--rootfs DIR`), turned into an
//! erofs image the VM gets read-only on virtio-blk (the agent adds a tmpfs overlay).
//!
//! Layouts are unpacked by umoci (layers in order, whiteouts applied, blobs verified)
//! and converted with mkfs.erofs once; the result is cached by manifest digest under
//! `<state_dir>/images/` (`<hex>.erofs` and `<hex>.json`, the image's config). Runs that
//! need the same uncached image at once convert it once: the others wait on
//! `<hex>.lock` (an advisory `flock`) and then use the result.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0:?}: expected oci:DIR[:TAG] or oci-archive:FILE[:TAG] (or --rootfs DIR)")]
    Reference(String),
    #[error("image {path}: {what}")]
    Layout { path: PathBuf, what: String },
    #[error("image {path}: tag {tag:?} not found (tags: {tags})")]
    NoTag {
        path: PathBuf,
        tag: String,
        tags: String,
    },
    #[error("{tool} failed on {path}: {msg}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        msg: String,
    },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

/// What the user named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    OciDir { dir: PathBuf, tag: Option<String> },
    OciArchive { file: PathBuf, tag: Option<String> },
    Rootfs(PathBuf),
}

fn split_tag(s: &str) -> (PathBuf, Option<String>) {
    // A tag follows the last ':' unless that part looks like a path.
    match s.rsplit_once(':') {
        Some((p, t)) if !t.is_empty() && !t.contains('/') && !p.is_empty() => {
            (PathBuf::from(p), Some(t.to_string()))
        }
        _ => (PathBuf::from(s), None),
    }
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest);
            return Ok(ImageRef::OciDir { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = split_tag(rest);
            return Ok(ImageRef::OciArchive { file, tag });
        }
        Err(ImageError::Reference(s.to_string()))
    }
}

/// The parts of an image's config a run uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl ImageConfig {
    /// The parts of an image config document (its `config` object) a run uses.
    pub fn from_json(v: &Value) -> ImageConfig {
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let c = &v["config"];
        ImageConfig {
            entrypoint: strs(&c["Entrypoint"]),
            cmd: strs(&c["Cmd"]),
            env: strs(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
            user: c["User"].as_str().unwrap_or("").to_string(),
        }
    }

    fn to_json(&self) -> Value {
        serde_json::json!({"config": {
            "Entrypoint": self.entrypoint, "Cmd": self.cmd, "Env": self.env,
            "WorkingDir": self.working_dir, "User": self.user,
        }})
    }
}

/// An image ready to attach.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub erofs: PathBuf,
    pub config: ImageConfig,
    /// The manifest digest (or "rootfs" for a folder).
    pub digest: String,
    /// Whether this run converted it (false: from the cache).
    pub converted: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |err| ImageError::Io {
        path: path.to_path_buf(),
        err,
    }
}

fn read_json(path: &Path, layout: &Path) -> Result<Value, ImageError> {
    let text = std::fs::read(path).map_err(|e| ImageError::Layout {
        path: layout.to_path_buf(),
        what: format!(
            "{}: {e}",
            path.strip_prefix(layout).unwrap_or(path).display()
        ),
    })?;
    serde_json::from_slice(&text).map_err(|e| ImageError::Layout {
        path: layout.to_path_buf(),
        what: format!(
            "{}: not valid JSON: {e}",
            path.strip_prefix(layout).unwrap_or(path).display()
        ),
    })
}

/// `sha256:<64 hex>` → the blob's path (refusing anything else: digests come from
/// files the user handed us and must not name paths).
fn blob(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(ImageError::Layout {
            path: layout.to_path_buf(),
            what: format!("digest {digest:?} is not sha256:<64 lowercase hex>"),
        });
    }
    Ok(layout.join("blobs/sha256").join(hex))
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What points at a manifest or an index: its digest and size (umoci checks both).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Descriptor {
    digest: String,
    size: u64,
}

impl Descriptor {
    fn of(v: &Value) -> Option<Descriptor> {
        Some(Descriptor {
            digest: v["digest"].as_str()?.to_string(),
            size: v["size"].as_u64()?,
        })
    }
}

/// Finds the entry for `tag` (default "latest", or the only one) in a layout's
/// index.json; a layout with a single untagged entry is that entry.
fn find_manifest(layout: &Path, tag: Option<&str>) -> Result<(String, Descriptor), ImageError> {
    if !layout.join("oci-layout").is_file() {
        return Err(ImageError::Layout {
            path: layout.to_path_buf(),
            what: "not an OCI image layout (no oci-layout file)".into(),
        });
    }
    let index = read_json(&layout.join("index.json"), layout)?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let named: Vec<(String, &Value)> = manifests
        .iter()
        .filter_map(|m| Some((m["annotations"][REF_NAME].as_str()?.to_string(), m)))
        .collect();
    let entry = |t: &str, m: &Value| {
        Descriptor::of(m).ok_or_else(|| ImageError::Layout {
            path: layout.to_path_buf(),
            what: format!("index.json: the entry of tag {t:?} lacks a digest or a size"),
        })
    };
    let want = tag.unwrap_or("latest");
    if let Some((t, m)) = named.iter().find(|(t, _)| t == want) {
        return Ok((t.clone(), entry(t, m)?));
    }
    if tag.is_none() {
        if let [(t, m)] = &named[..] {
            return Ok((t.clone(), entry(t, m)?));
        }
        if let ([], [only]) = (&named[..], &manifests[..])
            && let Some(d) = Descriptor::of(only)
        {
            return Ok((d.digest.clone(), d));
        }
    }
    Err(ImageError::NoTag {
        path: layout.to_path_buf(),
        tag: want.to_string(),
        tags: if named.is_empty() {
            "none".into()
        } else {
            named
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

/// This host's architecture as OCI platforms name it (guests run the host's).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Follows image indexes (multi-platform images; the nested index of `docker save` and
/// `ctr export` layouts) from `desc` down to the image manifest for linux on this
/// host's architecture. Returns it with its parsed JSON.
fn resolve_manifest(layout: &Path, desc: Descriptor) -> Result<(Descriptor, Value), ImageError> {
    let bad = |what: String| ImageError::Layout {
        path: layout.to_path_buf(),
        what,
    };
    let mut desc = desc;
    for _ in 0..4 {
        let doc = read_json(&blob(layout, &desc.digest)?, layout)?;
        let Some(list) = doc["manifests"].as_array() else {
            if doc["config"]["digest"].is_string() {
                return Ok((desc, doc));
            }
            return Err(bad(format!(
                "{}: neither an image manifest (no config) nor an index (no manifests)",
                desc.digest
            )));
        };
        let arch = oci_arch();
        let platform = |m: &Value| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap_or("?"),
                p["architecture"].as_str().unwrap_or("?")
            );
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            s
        };
        // Attestations (buildkit) are manifests too, marked as such.
        let images: Vec<&Value> = list
            .iter()
            .filter(|m| m["annotations"]["vnd.docker.reference.type"].is_null())
            .collect();
        let chosen = images
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
            .or_else(|| match &images[..] {
                [only] if only["platform"].is_null() => Some(only),
                _ => None,
            });
        let Some(next) = chosen.and_then(|m| Descriptor::of(m)) else {
            let have: Vec<String> = images.iter().map(|m| platform(m)).collect();
            return Err(bad(format!(
                "no image for linux/{arch} in index {} (it has: {})",
                desc.digest,
                if have.is_empty() {
                    "nothing".into()
                } else {
                    have.join(", ")
                }
            )));
        };
        desc = next;
    }
    Err(bad(format!(
        "{}: image indexes nested more than 4 deep",
        desc.digest
    )))
}

/// The image manifest that `tag` names in the OCI layout `layout` (index.json, then
/// nested indexes down to this host's platform): (tag, manifest digest, manifest).
/// Public for the fuzz targets (fuzz/src/image.rs).
#[doc(hidden)]
pub fn resolve_layout(
    layout: &Path,
    tag: Option<&str>,
) -> Result<(String, String, Value), ImageError> {
    let (tag, top) = find_manifest(layout, tag)?;
    let (desc, manifest) = resolve_manifest(layout, top)?;
    Ok((tag, desc.digest, manifest))
}

/// A layout of our own in `dir` for umoci: the image's blobs (a symlink, nothing is
/// copied or written there) and an index naming only `manifest`, as tag "husk". So a
/// multi-platform or untagged image unpacks as the one manifest chosen here. Returns
/// umoci's `--image` argument.
fn layout_view(layout: &Path, manifest: &Descriptor, dir: &Path) -> Result<String, ImageError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let blobs =
        std::fs::canonicalize(layout.join("blobs")).map_err(io_err(&layout.join("blobs")))?;
    std::os::unix::fs::symlink(&blobs, dir.join("blobs")).map_err(io_err(&dir.join("blobs")))?;
    let write = |name: &str, v: Value| {
        let p = dir.join(name);
        std::fs::write(&p, v.to_string()).map_err(io_err(&p))
    };
    write(
        "oci-layout",
        serde_json::json!({"imageLayoutVersion": "1.0.0"}),
    )?;
    write(
        "index.json",
        serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest.digest,
                "size": manifest.size,
                "annotations": {REF_NAME: "husk"},
            }],
        }),
    )?;
    Ok(format!("{}:husk", dir.display()))
}

fn run_tool(tool: &'static str, args: &[&std::ffi::OsStr], path: &Path) -> Result<(), ImageError> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Tool {
            tool,
            path: path.to_path_buf(),
            msg: format!("cannot run it: {e} (make setup installs it)"),
        })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ImageError::Tool {
            tool,
            path: path.to_path_buf(),
            msg,
        });
    }
    Ok(())
}

/// Makes an erofs image of `root` at `out` (atomically: a temporary name beside `out`,
/// then rename; the caller makes sure nobody else writes `out` at once). A folder on a
/// filesystem without xattr listing (virtio-fs, some FUSE) is converted without xattrs,
/// after a warning.
pub fn mkfs_erofs(root: &Path, out: &Path) -> Result<(), ImageError> {
    let tmp = out.with_extension("erofs.tmp");
    let mut r = run_tool("mkfs.erofs", &[tmp.as_os_str(), root.as_os_str()], root);
    if let Err(ImageError::Tool { msg, .. }) = &r
        && msg.contains("Operation not supported")
    {
        eprintln!(
            "husk: {}: extended attributes cannot be read there; converting without them",
            root.display()
        );
        let _ = std::fs::remove_file(&tmp);
        r = run_tool(
            "mkfs.erofs",
            &[
                "-x".as_ref(),
                "-1".as_ref(),
                tmp.as_os_str(),
                root.as_os_str(),
            ],
            root,
        );
    }
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return r;
    }
    std::fs::rename(&tmp, out).map_err(io_err(out))
}

/// A scratch folder `<state_dir>/tmp/image-<pid>-XXXXXX`, removed on drop. Those left
/// by husk processes that died on the way (killed while unpacking) are removed first.
fn scratch(state_dir: &Path) -> Result<tempfile::TempDir, ImageError> {
    let base = state_dir.join("tmp");
    std::fs::create_dir_all(&base).map_err(io_err(&base))?;
    remove_dead_scratch(&base);
    tempfile::Builder::new()
        .prefix(&format!("image-{}-", std::process::id()))
        .tempdir_in(&base)
        .map_err(io_err(&base))
}

/// Removes the scratch folders in `base` whose owner process no longer exists.
fn remove_dead_scratch(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("image-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| p > 0 && !crate::sandbox::alive(p)) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Prepares `r` for a run: from the cache, or unpacked and converted (`progress` is
/// told about the long steps). A `--rootfs` folder becomes `<work_dir>/rootfs.erofs`.
pub fn prepare(
    r: &ImageRef,
    state_dir: &Path,
    work_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<Prepared, ImageError> {
    match r {
        ImageRef::Rootfs(dir) => {
            if !dir.is_dir() {
                return Err(ImageError::Io {
                    path: dir.clone(),
                    err: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
                });
            }
            // In the run's own folder: removed with it, also by the clean-up of a run
            // whose husk was killed.
            let out = work_dir.join("rootfs.erofs");
            progress(&format!("converting {} to erofs", dir.display()));
            mkfs_erofs(dir, &out).inspect_err(|_| {
                let _ = std::fs::remove_file(&out);
            })?;
            Ok(Prepared {
                erofs: out,
                config: ImageConfig::default(),
                digest: "rootfs".into(),
                converted: true,
            })
        }
        ImageRef::OciArchive { file, tag } => {
            let tmp = scratch(state_dir)?;
            if !file.is_file() {
                return Err(ImageError::Io {
                    path: file.clone(),
                    err: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            progress(&format!("extracting {}", file.display()));
            run_tool(
                "tar",
                &[
                    "-xf".as_ref(),
                    file.as_os_str(),
                    "-C".as_ref(),
                    tmp.path().as_os_str(),
                ],
                file,
            )?;
            let r = prepare_layout(tmp.path(), tag.as_deref(), state_dir, progress);
            r.map_err(|e| match e {
                ImageError::Layout { what, .. } => ImageError::Layout {
                    path: file.clone(),
                    what,
                },
                ImageError::NoTag { tag, tags, .. } => ImageError::NoTag {
                    path: file.clone(),
                    tag,
                    tags,
                },
                other => other,
            })
        }
        ImageRef::OciDir { dir, tag } => prepare_layout(dir, tag.as_deref(), state_dir, progress),
    }
}

/// The cache entry, when both of its files are there (the config is written last).
fn cached(
    erofs: &Path,
    cfg_path: &Path,
    cache: &Path,
    digest: &str,
) -> Result<Option<Prepared>, ImageError> {
    if !(erofs.is_file() && cfg_path.is_file()) {
        return Ok(None);
    }
    let cfg = read_json(cfg_path, cache)?;
    Ok(Some(Prepared {
        erofs: erofs.to_path_buf(),
        config: ImageConfig::from_json(&cfg),
        digest: digest.to_string(),
        converted: false,
    }))
}

/// Takes the exclusive lock of a cache entry, telling `progress` when another process
/// holds it (the lock goes with the returned handle, also when a process dies).
fn lock_entry(path: &Path, progress: &dyn Fn(&str)) -> Result<Flock<std::fs::File>, ImageError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => return Ok(l),
        Err((f, Errno::EWOULDBLOCK)) => f,
        Err((_, e)) => return Err(io_err(path)(e.into())),
    };
    progress("waiting for another husk converting this image");
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io_err(path)(e.into()))
}

fn prepare_layout(
    layout: &Path,
    tag: Option<&str>,
    state_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<Prepared, ImageError> {
    let (tag, top) = find_manifest(layout, tag)?;
    let (desc, manifest) = resolve_manifest(layout, top)?;
    let digest = desc.digest.clone();
    let hex = blob(layout, &digest)?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cache = state_dir.join("images");
    let (erofs, cfg_path) = (
        cache.join(format!("{hex}.erofs")),
        cache.join(format!("{hex}.json")),
    );
    if let Some(p) = cached(&erofs, &cfg_path, &cache, &digest)? {
        return Ok(p);
    }
    std::fs::create_dir_all(&cache).map_err(io_err(&cache))?;
    // One conversion per image at a time; whoever waited finds it done.
    let _lock = lock_entry(&cache.join(format!("{hex}.lock")), progress)?;
    if let Some(p) = cached(&erofs, &cfg_path, &cache, &digest)? {
        return Ok(p);
    }
    let cfg_digest = manifest["config"]["digest"].as_str().unwrap_or("");
    let config = ImageConfig::from_json(&read_json(&blob(layout, cfg_digest)?, layout)?);
    let tmp = scratch(state_dir)?;
    let rootfs = tmp.path().join("rootfs");
    progress(&format!("unpacking {}:{tag}", layout.display()));
    let image_arg = layout_view(layout, &desc, &tmp.path().join("layout"))?;
    run_tool(
        "umoci",
        &[
            "raw".as_ref(),
            "unpack".as_ref(),
            "--image".as_ref(),
            image_arg.as_ref(),
            rootfs.as_os_str(),
        ],
        layout,
    )?;
    progress("converting to erofs");
    mkfs_erofs(&rootfs, &erofs)?;
    let cfg_tmp = cfg_path.with_extension("json.tmp");
    std::fs::write(
        &cfg_tmp,
        serde_json::to_vec_pretty(&config.to_json()).unwrap_or_default(),
    )
    .map_err(io_err(&cfg_tmp))?;
    std::fs::rename(&cfg_tmp, &cfg_path).map_err(io_err(&cfg_path))?;
    Ok(Prepared {
        erofs,
        config,
        digest,
        converted: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            ImageRef::parse("oci:/img:v1").unwrap(),
            ImageRef::OciDir {
                dir: "/img".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:/img").unwrap(),
            ImageRef::OciDir {
                dir: "/img".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("oci-archive:a.tar:latest").unwrap(),
            ImageRef::OciArchive {
                file: "a.tar".into(),
                tag: Some("latest".into())
            }
        );
        assert!(ImageRef::parse("docker.io/busybox").is_err());
        assert!(ImageRef::parse("busybox:latest").is_err());
    }

    #[test]
    fn digests_cannot_name_paths() {
        let l = Path::new("/l");
        assert!(blob(l, "sha256:../../../etc/passwd").is_err());
        assert!(blob(l, &format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(blob(l, &format!("sha256:{}", "a".repeat(64))).is_ok());
    }
}
