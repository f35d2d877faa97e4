//! The local store of pulled images, under `<state_dir>`:
//!
//! - `blobs/sha256/<hex>`: manifests, indexes, configs and layers by digest, shared by
//!   every reference. A blob is written to a unique temporary file beside its final name,
//!   checked against its digest as it streams in, fsynced and renamed: a blob file that
//!   exists is complete and verified.
//! - `refs/<sha256 of the reference>/index.json`: one record per pulled reference, an
//!   OCI image index naming what the reference resolved to, annotated with the
//!   reference, the platform manifest chosen (digest and size; for a Docker manifest,
//!   its rewrite with OCI media types, and the one pulled) and the pull time. The
//!   erofs conversion (image/mod.rs) reads that manifest, its config and layers from
//!   `blobs/` as from any layout (no symlink followed, digests and sizes checked,
//!   limits applied), and its cache (keyed by manifest digest) is shared with `oci:`
//!   images.
//! - `refs.lock`: pulls and runs hold it shared, `rmi` exclusively (so a blob being
//!   pulled or unpacked is never collected).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::reference::{Reference, is_sha256_digest};

/// A manifest or index larger than this is refused (containerd's limit too).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// An image config larger than this is refused.
pub const MAX_CONFIG: u64 = 16 << 20;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const A_REFERENCE: &str = "dev.husk.reference";
const A_MANIFEST: &str = "dev.husk.manifest";
const A_MANIFEST_SIZE: &str = "dev.husk.manifest.size";
const A_ORIGINAL: &str = "dev.husk.original";
const A_PULLED: &str = "dev.husk.pulled";

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {digest}: the content's digest is {actual}")]
    Digest { digest: String, actual: String },
    #[error("blob {digest}: more than {limit} bytes")]
    TooLarge { digest: String, limit: u64 },
    #[error("{path}: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("digest {0:?} is not sha256:<64 lowercase hex>")]
    BadDigest(String),
    #[error("no such image: {0} (husk pull {0})")]
    NotFound(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `sha256:<hex>` of a finished hash.
fn digest_string(hash: &[u8]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    digest_string(&Sha256::digest(bytes))
}

/// What a pulled reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The reference as normalised (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The record's folder (`refs/<sha256 of the reference>`).
    pub dir: PathBuf,
    /// What the reference named: a manifest or an index.
    pub digest: String,
    /// The image manifest for this host's platform (the same as `digest` unless that
    /// is an index).
    pub manifest: String,
    /// The size of `manifest`, in bytes.
    pub manifest_size: u64,
    /// When `manifest` is a Docker manifest rewritten with OCI media types
    /// (registry/docker.rs): the manifest as pulled.
    pub original: Option<String>,
    /// Seconds since the epoch.
    pub pulled: u64,
}

/// The store in a state folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A blob being written: to a temporary file, hashed on the way.
#[derive(Debug)]
pub struct BlobWriter {
    digest: String,
    limit: u64,
    written: u64,
    hasher: Sha256,
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl BlobWriter {
    /// Adds bytes; refuses more than the limit (the descriptor's size, or a cap).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.written += bytes.len() as u64;
        if self.written > self.limit {
            return Err(StoreError::TooLarge {
                digest: self.digest.clone(),
                limit: self.limit,
            });
        }
        self.hasher.update(bytes);
        let path = self.tmp.path().to_path_buf();
        self.tmp.write_all(bytes).map_err(io(&path))
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks the digest; on a match makes the blob durable under its name. On a
    /// mismatch (or any error) the temporary file is removed, so nothing of it stays.
    pub fn finish(self) -> Result<PathBuf, StoreError> {
        let actual = digest_string(&self.hasher.finalize());
        if actual != self.digest {
            return Err(StoreError::Digest {
                digest: self.digest,
                actual,
            });
        }
        let tmp_path = self.tmp.path().to_path_buf();
        self.tmp.as_file().sync_all().map_err(io(&tmp_path))?;
        self.tmp
            .persist(&self.dest)
            .map_err(|e| io(&self.dest)(e.error))?;
        if let Some(dir) = self.dest.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(self.dest)
    }
}

/// Reads at most `limit` bytes of `path` (more is an error naming it).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, StoreError> {
    let f = File::open(path).map_err(io(path))?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf).map_err(io(path))?;
    if buf.len() as u64 > limit {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            what: format!("larger than {limit} bytes"),
        });
    }
    Ok(buf)
}

fn read_json(path: &Path, limit: u64) -> Result<Value, StoreError> {
    let bytes = read_bounded(path, limit)?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        what: format!("not valid JSON: {e}"),
    })
}

/// Writes `bytes` to `path` atomically (a temporary file beside it, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

/// The entries of `dir` (none when it does not exist yet).
fn entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>, StoreError> {
    match std::fs::read_dir(dir) {
        Ok(e) => Ok(e.flatten().collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(dir)(e)),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            root: state_dir.to_path_buf(),
        }
    }

    fn blobs(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn refs(&self) -> PathBuf {
        self.root.join("refs")
    }

    /// The lock of the store: shared for pulls and runs, exclusive for removals.
    pub fn lock(&self, exclusive: bool) -> Result<Flock<File>, StoreError> {
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let path = self.root.join("refs.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        Flock::lock(f, arg).map_err(|(_, e)| io(&path)(e.into()))
    }

    /// The blob's file (whether or not it exists); refuses anything but sha256 digests,
    /// which come from registries and must not name paths.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        if !is_sha256_digest(digest) {
            return Err(StoreError::BadDigest(digest.to_string()));
        }
        Ok(self.blobs().join(&digest["sha256:".len()..]))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Starts writing blob `digest` of at most `limit` bytes.
    pub fn writer(&self, digest: &str, limit: u64) -> Result<BlobWriter, StoreError> {
        let dest = self.blob_path(digest)?;
        let dir = self.blobs();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(io(&dir))?;
        Ok(BlobWriter {
            digest: digest.to_string(),
            limit,
            written: 0,
            hasher: Sha256::new(),
            tmp,
            dest,
        })
    }

    /// Stores bytes held in memory (manifests) as blob `digest`.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if self.has_blob(digest) {
            return Ok(());
        }
        let mut w = self.writer(digest, bytes.len() as u64)?;
        w.write(bytes)?;
        w.finish().map(|_| ())
    }

    /// Reads a JSON blob (a manifest, an index, a config) of at most `limit` bytes.
    pub fn read_json(&self, digest: &str, limit: u64) -> Result<Value, StoreError> {
        read_json(&self.blob_path(digest)?, limit)
    }

    fn record_dir(&self, reference: &str) -> PathBuf {
        let h = sha256_digest(reference.as_bytes());
        self.refs().join(&h["sha256:".len()..])
    }

    /// Records that `r` resolved to `top` (its media type, digest and size), whose image
    /// for this host is `manifest` (its digest and size; rewritten from `original`).
    pub fn record(
        &self,
        r: &Reference,
        top: (&str, &str, u64),
        manifest: (&str, u64),
        original: Option<&str>,
    ) -> Result<Record, StoreError> {
        let reference = r.to_string();
        let dir = self.record_dir(&reference);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let (manifest, manifest_size) = manifest;
        let pulled = now();
        let (media_type, digest, size) = top;
        let mut index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": media_type, "digest": digest, "size": size,
                "annotations": {
                    REF_NAME: r.tag.as_deref().unwrap_or("latest"),
                    A_REFERENCE: reference,
                    A_MANIFEST: manifest,
                    A_MANIFEST_SIZE: manifest_size.to_string(),
                    A_PULLED: pulled.to_string(),
                },
            }],
        });
        if let Some(o) = original {
            index["manifests"][0]["annotations"][A_ORIGINAL] = o.into();
        }
        write_atomic(&dir.join("index.json"), index.to_string().as_bytes())?;
        Ok(Record {
            reference,
            dir,
            digest: digest.to_string(),
            manifest: manifest.to_string(),
            manifest_size,
            original: original.map(str::to_string),
            pulled,
        })
    }

    fn read_record(&self, dir: &Path) -> Result<Record, StoreError> {
        let path = dir.join("index.json");
        let v = read_json(&path, MAX_MANIFEST)?;
        let m = &v["manifests"][0];
        let a = &m["annotations"];
        let field = |k: &str| -> Result<String, StoreError> {
            a[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| StoreError::Corrupt {
                    path: path.clone(),
                    what: format!("annotation {k} missing"),
                })
        };
        let digest =
            m["digest"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| StoreError::Corrupt {
                    path: path.clone(),
                    what: "manifests[0].digest missing".into(),
                })?;
        let manifest = field(A_MANIFEST)?;
        // Records written before the size was recorded: the blob's (verified when it
        // was stored; checked against the digest again when read).
        let manifest_size = match a[A_MANIFEST_SIZE].as_str() {
            Some(n) => n.parse().map_err(|_| StoreError::Corrupt {
                path: path.clone(),
                what: format!("annotation {A_MANIFEST_SIZE} is not a number"),
            })?,
            None => self
                .blob_path(&manifest)
                .and_then(|p| std::fs::metadata(&p).map_err(io(&p)))
                .map_or(0, |m| m.len()),
        };
        Ok(Record {
            reference: field(A_REFERENCE)?,
            dir: dir.to_path_buf(),
            digest,
            manifest,
            manifest_size,
            original: a[A_ORIGINAL].as_str().map(str::to_string),
            pulled: field(A_PULLED)?.parse().unwrap_or(0),
        })
    }

    /// The record of `r`, if it was pulled and all of its blobs are here.
    pub fn lookup(&self, r: &Reference) -> Result<Option<Record>, StoreError> {
        let dir = self.record_dir(&r.to_string());
        if !dir.join("index.json").is_file() {
            return Ok(None);
        }
        let rec = self.read_record(&dir)?;
        let complete = self
            .reachable(&rec)
            .is_ok_and(|blobs| blobs.iter().all(|d| self.has_blob(d)));
        Ok(complete.then_some(rec))
    }

    /// Every record, sorted by reference.
    pub fn list(&self) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        for e in entries(&self.refs())? {
            if e.path().join("index.json").is_file() {
                out.push(self.read_record(&e.path())?);
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// The image manifest of a record: (its JSON, config digest, layer descriptors).
    pub fn manifest(&self, rec: &Record) -> Result<Value, StoreError> {
        self.read_json(&rec.manifest, MAX_MANIFEST)
    }

    /// The digests a record keeps alive: what it names, the manifest chosen from an
    /// index (and the one it was rewritten from), the config and the layers.
    fn reachable(&self, rec: &Record) -> Result<Vec<String>, StoreError> {
        let mut out = vec![rec.digest.clone(), rec.manifest.clone()];
        out.extend(rec.original.clone());
        let m = self.manifest(rec)?;
        if let Some(c) = m["config"]["digest"].as_str() {
            out.push(c.to_string());
        }
        for l in m["layers"].as_array().into_iter().flatten() {
            if let Some(d) = l["digest"].as_str() {
                out.push(d.to_string());
            }
        }
        Ok(out)
    }

    /// Removes the record of `r`, then every blob no record reaches and the erofs cache
    /// entries of manifests that went. Returns the blobs removed.
    pub fn remove(&self, r: &Reference) -> Result<Vec<String>, StoreError> {
        let _lock = self.lock(true)?;
        let dir = self.record_dir(&r.to_string());
        if !dir.join("index.json").is_file() {
            return Err(StoreError::NotFound(r.to_string()));
        }
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        self.collect()
    }

    /// Removes unreachable blobs (and leftover temporary files of killed pulls).
    fn collect(&self) -> Result<Vec<String>, StoreError> {
        let mut keep = std::collections::HashSet::new();
        for rec in self.list()? {
            // A record whose manifest is unreadable keeps what it names directly.
            keep.insert(rec.digest.clone());
            keep.insert(rec.manifest.clone());
            keep.extend(rec.original.clone());
            keep.extend(self.reachable(&rec).unwrap_or_default());
        }
        let mut removed = Vec::new();
        for e in entries(&self.blobs())? {
            let name = e.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            if keep.contains(&digest) {
                continue;
            }
            std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
            if is_sha256_digest(&digest) {
                for ext in ["erofs", "json", "lock"] {
                    let _ = std::fs::remove_file(self.root.join(format!("images/{name}.{ext}")));
                }
                removed.push(digest);
            }
        }
        tracing::info!(removed = removed.len(), "removed unreferenced blobs");
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_atomic() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        let good = sha256_digest(b"hello");
        s.put(&good, b"hello").unwrap();
        assert!(s.has_blob(&good));
        let bad = sha256_digest(b"other");
        let mut w = s.writer(&bad, 100).unwrap();
        w.write(b"not other").unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains(&bad), "{e}");
        let mut w = s.writer(&bad, 3).unwrap();
        assert!(matches!(w.write(b"four"), Err(StoreError::TooLarge { .. })));
        drop(w);
        // Nothing but the good blob is left (no temporary files).
        let names: Vec<_> = std::fs::read_dir(d.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(&good[7..])]);
        assert!(s.blob_path("sha256:../../etc").is_err());
    }

    #[test]
    fn records_without_the_manifest_size_use_the_blob_size() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        let digest = sha256_digest(manifest);
        s.put(&digest, manifest).unwrap();
        let r = Reference::parse("127.0.0.1:5000/app:v1").unwrap();
        let n = manifest.len() as u64;
        let top = (super::super::docker::OCI_MANIFEST, digest.as_str(), n);
        let rec = s.record(&r, top, (&digest, n), None).unwrap();
        assert_eq!(s.lookup(&r).unwrap(), Some(rec.clone()));
        // As the first registry records were written.
        let index = rec.dir.join("index.json");
        let mut v = read_json(&index, MAX_MANIFEST).unwrap();
        v["manifests"][0]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(A_MANIFEST_SIZE);
        std::fs::write(&index, v.to_string()).unwrap();
        assert_eq!(s.lookup(&r).unwrap(), Some(rec));
    }
}
