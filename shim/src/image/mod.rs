//! Container images: an OCI image layout (`oci:DIR[:TAG]`), an archive of one
//! (`oci-archive:FILE[:TAG]`), or a plain root folder (`--rootfs DIR`), turned into an
//! erofs image the VM gets read-only on virtio-blk (the agent adds a tmpfs overlay).
//!
//! Image content is not trusted (docs/security.md, "Untrusted images"):
//! - [`archive`]: an oci-archive is extracted in-process, its layout's files only;
//! - [`layout`]: index.json and blobs are opened without following symlinks, only as
//!   regular files, with bounded reads, each manifest, index and config checked
//!   against its digest;
//! - [`layers`]: each layer's digest and size checked, and what the layers unpack to
//!   bounded ([`Limits`]), before anything is unpacked;
//! - [`convert`]: umoci unpacks (into a 0700 scratch folder) and mkfs.erofs converts,
//!   both killed when husk dies;
//! - [`cache`]: the result is cached by manifest digest under `<state_dir>/images/`,
//!   each entry carrying its erofs file's digest, checked on use. Runs that need the
//!   same uncached image at once convert it once: the others wait on `<hex>.lock` (an
//!   advisory `flock`) and then use the result.

mod archive;
mod cache;
mod convert;
mod layers;
mod layout;
pub(crate) mod platform;

use std::path::{Path, PathBuf};

use serde_json::Value;

use cache::Lookup;
pub use convert::mkfs_erofs;
use layout::{Descriptor, Layout};

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
    #[error("image {path}: {what} {digest}: the content's digest is sha256:{actual}")]
    Digest {
        path: PathBuf,
        what: String,
        digest: String,
        actual: String,
    },
    #[error("image {path}: {what}: over the limit of {limit} bytes ({setting})")]
    TooLarge {
        path: PathBuf,
        what: String,
        limit: u64,
        setting: &'static str,
    },
    #[error("image {path}: entry {entry:?}: {what}")]
    Archive {
        path: PathBuf,
        entry: String,
        what: String,
    },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

/// What the user named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    OciDir {
        dir: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        file: PathBuf,
        tag: Option<String>,
    },
    /// `[REGISTRY/]NAME[:TAG][@DIGEST]`: pulled into `<state_dir>` (registry/).
    Registry(crate::registry::Reference),
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
        if s.starts_with(['/', '.']) {
            return Err(ImageError::Reference(s.to_string()));
        }
        crate::registry::Reference::parse(s)
            .map(ImageRef::Registry)
            .map_err(|e| ImageError::Registry(e.into()))
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

/// Bounds on what an image may make husk read and write (`[image]` in the
/// configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most an image's layers may unpack to, all together (tar stream bytes, and
    /// the file sizes the tar headers declare plus 512 bytes a header).
    pub max_unpacked_bytes: u64,
    /// The most an image's layer blobs may take, all together (compressed, as stored;
    /// also the most an oci-archive's blobs may take).
    pub max_layer_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked_bytes: 16 << 30,
            max_layer_bytes: 8 << 30,
        }
    }
}

/// Prepares `r` for a run under the default [`Limits`]; see [`prepare_with`].
pub fn prepare(
    r: &ImageRef,
    state_dir: &Path,
    work_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<Prepared, ImageError> {
    prepare_with(r, state_dir, work_dir, &Limits::default(), progress)
}

/// Prepares `r` for a run: from the cache, or checked, unpacked and converted
/// (`progress` is told about the long steps). A `--rootfs` folder becomes
/// `<work_dir>/rootfs.erofs`.
pub fn prepare_with(
    r: &ImageRef,
    state_dir: &Path,
    work_dir: &Path,
    limits: &Limits,
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
            mkfs_erofs(dir, &out)?;
            Ok(Prepared {
                erofs: out,
                config: ImageConfig::default(),
                digest: "rootfs".into(),
                converted: true,
            })
        }
        ImageRef::OciArchive { file, tag } => {
            let tmp = convert::scratch(state_dir)?;
            if !file.is_file() {
                return Err(ImageError::Io {
                    path: file.clone(),
                    err: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            progress(&format!("extracting {}", file.display()));
            let dir = tmp.path().join("layout");
            archive::extract(file, &dir, limits)?;
            prepare_layout(&dir, tag.as_deref(), state_dir, limits, progress)
                .map_err(|e| e.at(file))
        }
        ImageRef::OciDir { dir, tag } => {
            prepare_layout(dir, tag.as_deref(), state_dir, limits, progress)
        }
        ImageRef::Registry(r) => prepare_pulled(r, state_dir, limits, progress),
    }
}

impl ImageError {
    /// The same error naming `path` as the image (an archive, not the scratch folder
    /// it was extracted to).
    fn at(self, file: &Path) -> ImageError {
        let path = file.to_path_buf();
        match self {
            ImageError::Layout { what, .. } => ImageError::Layout { path, what },
            ImageError::NoTag { tag, tags, .. } => ImageError::NoTag { path, tag, tags },
            ImageError::Digest {
                what,
                digest,
                actual,
                ..
            } => ImageError::Digest {
                path,
                what,
                digest,
                actual,
            },
            ImageError::TooLarge {
                what,
                limit,
                setting,
                ..
            } => ImageError::TooLarge {
                path,
                what,
                limit,
                setting,
            },
            other => other,
        }
    }
}

fn prepare_layout(
    dir: &Path,
    tag: Option<&str>,
    state_dir: &Path,
    limits: &Limits,
    progress: &dyn Fn(&str),
) -> Result<Prepared, ImageError> {
    let layout = Layout::open(dir)?;
    let (tag, top) = layout.find_manifest(tag)?;
    let name = format!("{}:{tag}", dir.display());
    prepare_manifest(&layout, top, &name, state_dir, limits, progress)
}

/// A pulled registry image: its record names the manifest, read from the store's
/// blobs (`<state_dir>/blobs`, husk's own) and checked like any layout's. Errors name
/// the reference as the image.
fn prepare_pulled(
    r: &crate::registry::Reference,
    state_dir: &Path,
    limits: &Limits,
    progress: &dyn Fn(&str),
) -> Result<Prepared, ImageError> {
    // Held until the conversion is done: `rmi` cannot take the blobs meanwhile.
    let (rec, _lock) = crate::registry::local(state_dir, r)?;
    let manifest = Descriptor {
        digest: rec.manifest.clone(),
        size: rec.manifest_size,
    };
    let name = Path::new(&rec.reference);
    Layout::open_store(state_dir)
        .and_then(|store| {
            prepare_manifest(
                &store,
                manifest,
                &rec.reference,
                state_dir,
                limits,
                progress,
            )
        })
        .map_err(|e| e.at(name))
}

/// From `top` (an image manifest, or an index resolved to this host's platform) to the
/// erofs image: from the cache, or checked, unpacked and converted. `name` names the
/// image in progress lines.
fn prepare_manifest(
    layout: &Layout,
    top: Descriptor,
    name: &str,
    state_dir: &Path,
    limits: &Limits,
    progress: &dyn Fn(&str),
) -> Result<Prepared, ImageError> {
    let dir = &layout.path;
    let (desc, manifest) = layout.resolve_manifest(top)?;
    let digest = desc.digest.clone();
    let hex = layout::blob_hex(dir, &digest)?;
    let cache = state_dir.join("images");
    let entry = cache::Entry::new(&cache, hex);
    if let Lookup::Hit(p) = entry.lookup(&digest) {
        return Ok(p);
    }
    std::fs::create_dir_all(&cache).map_err(|err| ImageError::Io {
        path: cache.clone(),
        err,
    })?;
    // One conversion per image at a time; whoever waited finds it done.
    let _lock = entry.lock(progress)?;
    match entry.lookup(&digest) {
        Lookup::Hit(p) => return Ok(p),
        Lookup::Missing => {}
        Lookup::Damaged(why) => {
            tracing::warn!(image = %digest, %why, "cache entry damaged; converting again");
            progress(&format!(
                "the cached image is damaged ({why}); converting it again"
            ));
        }
    }
    entry.clear();
    let config_desc = Descriptor::of(&manifest["config"]).ok_or_else(|| ImageError::Layout {
        path: dir.clone(),
        what: format!("manifest {digest}: the config lacks a digest or a size"),
    })?;
    let config = ImageConfig::from_json(&layout.read_json(
        &config_desc,
        "config",
        layout::MAX_CONFIG_BYTES,
    )?);
    progress(&format!("checking {name}"));
    let mut blobs = vec![config_desc.digest.clone()];
    blobs.extend(layers::check(layout, &manifest, limits)?);
    let tmp = convert::scratch(state_dir)?;
    let rootfs = tmp.path().join("rootfs");
    progress(&format!("unpacking {name}"));
    convert::unpack(layout, &desc, &blobs, &tmp.path().join("view"), &rootfs)?;
    progress("converting to erofs");
    entry.store(&rootfs, &config, &digest)
}
/// The image manifest that `tag` names in the OCI layout `layout` (index.json, then
/// nested indexes down to this host's platform), read with the same checks as a run:
/// (tag, manifest digest, manifest). Public for the fuzz targets (fuzz/src/image.rs).
#[doc(hidden)]
pub fn resolve_layout(
    layout: &Path,
    tag: Option<&str>,
) -> Result<(String, String, Value), ImageError> {
    let l = Layout::open(layout)?;
    let (tag, top) = l.find_manifest(tag)?;
    let (desc, manifest) = l.resolve_manifest(top)?;
    Ok((tag, desc.digest, manifest))
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
        assert!(matches!(
            ImageRef::parse("busybox:latest").unwrap(),
            ImageRef::Registry(r) if r.to_string() == "docker.io/library/busybox:latest"
        ));
        assert!(ImageRef::parse("./layout").is_err());
        assert!(ImageRef::parse("Bad_Name").is_err());
    }
}
