//! Reading an OCI image layout (image-spec `image-layout.md`) whose content is not
//! trusted: the files are opened below the layout folder without following a symlink
//! (`blobs`, `blobs/sha256` and every file husk reads must be what they claim: folders
//! and regular files), a FIFO or device is refused before it is opened for reading,
//! every read is bounded, and each blob husk parses (manifests, indexes, the config)
//! must match the digest and size that name it (image-spec `descriptor.md`).

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{FcntlArg, OFlag, fcntl, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{ImageError, platform};

/// The most husk reads of `oci-layout`, `index.json`, a manifest or an image index.
pub(super) const MAX_INDEX_BYTES: u64 = 4 << 20;
/// The most husk reads of an image's config.
pub(super) const MAX_CONFIG_BYTES: u64 = 16 << 20;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What points at a blob: its digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Descriptor {
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn of(v: &Value) -> Option<Descriptor> {
        Some(Descriptor {
            digest: v["digest"].as_str()?.to_string(),
            size: v["size"].as_u64()?,
        })
    }
}

/// `sha256:<64 hex>` → `<64 hex>`, refusing anything else: digests come from files
/// the image provides and must not name paths.
pub(super) fn blob_hex<'a>(layout: &Path, digest: &'a str) -> Result<&'a str, ImageError> {
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
    Ok(hex)
}

/// The lowercase hex sha256 of `bytes`.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex_of(&Sha256::digest(bytes))
}

pub(super) fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file type's name for errors.
pub(super) fn file_kind(st: &FileStat) -> &'static str {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a folder",
        libc::S_IFLNK => "a symlink",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        _ => "of unknown type",
    }
}

/// Why a file in the layout could not be opened.
#[derive(Debug)]
pub(super) enum OpenError {
    Missing,
    /// Not a regular file: what it is instead.
    Kind(&'static str),
    Sys(Errno),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Missing => write!(f, "missing"),
            OpenError::Kind(k) => write!(f, "is {k}, not a regular file"),
            OpenError::Sys(e) => write!(f, "{e}"),
        }
    }
}

/// Opens `name` in `dir` for reading when it is a regular file: its type is checked
/// before opening (a FIFO would block, a device could be anything), it is opened with
/// O_NOFOLLOW|O_NONBLOCK, and checked again on the descriptor (the same inode, still
/// regular). Returns the file and its size.
pub(super) fn open_regular(dir: &OwnedFd, name: &str) -> Result<(File, u64), OpenError> {
    let before = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| match e {
        Errno::ENOENT => OpenError::Missing,
        e => OpenError::Sys(e),
    })?;
    if before.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(OpenError::Kind(file_kind(&before)));
    }
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::ELOOP => OpenError::Kind("a symlink"),
        Errno::ENOENT => OpenError::Missing,
        e => OpenError::Sys(e),
    })?;
    let st = fstat(&fd).map_err(OpenError::Sys)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG
        || (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino)
    {
        return Err(OpenError::Kind(file_kind(&st)));
    }
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_RDONLY)).map_err(OpenError::Sys)?;
    Ok((File::from(fd), u64::try_from(st.st_size).unwrap_or(0)))
}

/// Opens the folder `name` in `dir` without following a symlink.
fn open_dir(dir: &OwnedFd, name: &str) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Reads at most `limit` bytes of `file` (of `size` bytes by fstat); more is an error
/// (also when the file grows while being read).
fn read_bounded(
    mut file: File,
    size: u64,
    limit: u64,
    path: &Path,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    let too_large = || ImageError::TooLarge {
        path: path.to_path_buf(),
        what: what.to_string(),
        limit,
        setting: "husk's fixed limit for this kind of document",
    };
    if size > limit {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ImageError::Layout {
            path: path.to_path_buf(),
            what: format!("{what}: {e}"),
        })?;
    if buf.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(buf)
}

/// An OCI image layout opened for reading.
#[derive(Debug)]
pub(super) struct Layout {
    pub path: PathBuf,
    dir: OwnedFd,
    /// `blobs/sha256`, opened without following symlinks.
    blobs: OwnedFd,
}

impl Layout {
    /// Opens the layout at `path` (which may itself be a symlink: the user named it)
    /// and checks that it is one: an `oci-layout` file and a `blobs/sha256` folder.
    pub fn open(path: &Path) -> Result<Layout, ImageError> {
        Layout::open_with(path, true)
    }

    /// Opens husk's own blob store of pulled images (`<state_dir>`, whose
    /// `blobs/sha256` holds blobs verified as they were pulled): a layout without
    /// `oci-layout` or index.json, whose manifests are named by the store's records.
    /// Read as any layout: no symlink followed below `path`, bounded reads, digests
    /// and sizes checked again.
    pub fn open_store(path: &Path) -> Result<Layout, ImageError> {
        Layout::open_with(path, false)
    }

    fn open_with(path: &Path, oci_layout: bool) -> Result<Layout, ImageError> {
        let bad = |what: String| ImageError::Layout {
            path: path.to_path_buf(),
            what,
        };
        let dir = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| bad(format!("cannot open the folder: {e}")))?;
        if oci_layout {
            match open_regular(&dir, "oci-layout") {
                Ok((f, size)) => {
                    read_bounded(f, size, MAX_INDEX_BYTES, path, "oci-layout")?;
                }
                Err(OpenError::Missing) => {
                    return Err(bad("not an OCI image layout (no oci-layout file)".into()));
                }
                Err(e) => return Err(bad(format!("oci-layout {e}"))),
            }
        }
        let not_dir = |name: &str, e: Errno| match e {
            Errno::ELOOP | Errno::ENOTDIR => bad(format!("{name} is not a folder (a symlink?)")),
            e => bad(format!("{name}: {e}")),
        };
        let top = open_dir(&dir, "blobs").map_err(|e| not_dir("blobs", e))?;
        let blobs = open_dir(&top, "sha256").map_err(|e| not_dir("blobs/sha256", e))?;
        Ok(Layout {
            path: path.to_path_buf(),
            dir,
            blobs,
        })
    }

    fn bad(&self, what: String) -> ImageError {
        ImageError::Layout {
            path: self.path.clone(),
            what,
        }
    }

    /// The layout's index.json, parsed (at most 4 MiB, a regular file).
    pub fn index(&self) -> Result<Value, ImageError> {
        let (f, size) = open_regular(&self.dir, "index.json")
            .map_err(|e| self.bad(format!("index.json {e}")))?;
        let bytes = read_bounded(f, size, MAX_INDEX_BYTES, &self.path, "index.json")?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.bad(format!("index.json: not valid JSON: {e}")))
    }

    /// Opens the blob `digest` (`what` names it in errors). Returns it with its size.
    pub fn open_blob(&self, digest: &str, what: &str) -> Result<(File, u64), ImageError> {
        let hex = blob_hex(&self.path, digest)?;
        open_regular(&self.blobs, hex).map_err(|e| self.bad(format!("{what} {digest}: blob {e}")))
    }

    /// The path of the blob `digest`, for tools that read the layout after husk
    /// checked it (umoci, which verifies digests itself).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = blob_hex(&self.path, digest)?;
        let root = std::fs::canonicalize(&self.path).map_err(|err| ImageError::Io {
            path: self.path.clone(),
            err,
        })?;
        Ok(root.join("blobs/sha256").join(hex))
    }

    /// Reads the blob `desc` points at (at most `limit` bytes) and checks its size and
    /// sha256 against `desc`.
    pub fn read_blob(
        &self,
        desc: &Descriptor,
        what: &str,
        limit: u64,
    ) -> Result<Vec<u8>, ImageError> {
        let (f, size) = self.open_blob(&desc.digest, what)?;
        let label = format!("{what} {}", desc.digest);
        let bytes = read_bounded(f, size, limit, &self.path, &label)?;
        if bytes.len() as u64 != desc.size {
            return Err(self.bad(format!(
                "{label}: the blob has {} bytes, its descriptor says {}",
                bytes.len(),
                desc.size
            )));
        }
        let actual = sha256_hex(&bytes);
        if Some(actual.as_str()) != desc.digest.strip_prefix("sha256:") {
            return Err(ImageError::Digest {
                path: self.path.clone(),
                what: what.to_string(),
                digest: desc.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// [`Layout::read_blob`], parsed as JSON.
    pub fn read_json(
        &self,
        desc: &Descriptor,
        what: &str,
        limit: u64,
    ) -> Result<Value, ImageError> {
        let bytes = self.read_blob(desc, what, limit)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.bad(format!("{what} {}: not valid JSON: {e}", desc.digest)))
    }

    /// Finds the entry for `tag` (default "latest", or the only one) in index.json;
    /// a layout with a single untagged entry is that entry.
    pub fn find_manifest(&self, tag: Option<&str>) -> Result<(String, Descriptor), ImageError> {
        let index = self.index()?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let named: Vec<(String, &Value)> = manifests
            .iter()
            .filter_map(|m| Some((m["annotations"][REF_NAME].as_str()?.to_string(), m)))
            .collect();
        let entry = |t: &str, m: &Value| {
            Descriptor::of(m).ok_or_else(|| {
                self.bad(format!(
                    "index.json: the entry of tag {t:?} lacks a digest or a size"
                ))
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
            path: self.path.clone(),
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

    /// Follows image indexes (multi-platform images; the nested index of `docker save`
    /// and `ctr export` layouts) from `desc` down to the image manifest for linux on
    /// this host's architecture. Returns it with its parsed JSON.
    pub fn resolve_manifest(&self, desc: Descriptor) -> Result<(Descriptor, Value), ImageError> {
        let mut desc = desc;
        for _ in 0..4 {
            let doc = self.read_json(&desc, "manifest", MAX_INDEX_BYTES)?;
            let Some(list) = doc["manifests"].as_array() else {
                if doc["config"]["digest"].is_string() {
                    return Ok((desc, doc));
                }
                return Err(self.bad(format!(
                    "{}: neither an image manifest (no config) nor an index (no manifests)",
                    desc.digest
                )));
            };
            let (digest, size) = platform::choose(list).map_err(|have| {
                self.bad(format!(
                    "no image for linux/{} in index {} (it has: {have})",
                    platform::oci_arch(),
                    desc.digest
                ))
            })?;
            desc = Descriptor { digest, size };
        }
        Err(self.bad(format!(
            "{}: image indexes nested more than 4 deep",
            desc.digest
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_cannot_name_paths() {
        let l = Path::new("/l");
        assert!(blob_hex(l, "sha256:../../../etc/passwd").is_err());
        assert!(blob_hex(l, &format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(blob_hex(l, &format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(blob_hex(l, &format!("sha256:{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn only_regular_files_are_opened() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.path().join("link")).unwrap();
        nix::unistd::mkfifo(&d.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let dir = nix::fcntl::open(
            d.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        assert_eq!(open_regular(&dir, "file").unwrap().1, 1);
        let kind = |n| match open_regular(&dir, n) {
            Err(OpenError::Kind(k)) => k,
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(kind("link"), "a symlink");
        assert_eq!(kind("fifo"), "a FIFO");
        assert!(matches!(
            open_regular(&dir, "none"),
            Err(OpenError::Missing)
        ));
    }
}
