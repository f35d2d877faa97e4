//! The erofs cache: `<state_dir>/images/<hex>.erofs` (the image) and `<hex>.json`
//! (the image's config and the erofs file's own sha256 and size), keyed by the
//! manifest's digest. An entry is used only when the json names the erofs file's size
//! and sha256 and the file has them (checked on every use: a truncated or corrupted
//! image is converted again, not attached). Both files are written under unique
//! temporary names (`<hex>.erofs.XXXXXX.tmp`, O_EXCL) and renamed into place, the
//! json last, so a husk killed half-way (`kill -9` during mkfs.erofs) leaves at most
//! a temporary file, which the next conversion of that image removes. One conversion
//! per entry at a time: `<hex>.lock` (an advisory `flock`, released when its holder
//! dies).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::convert::mkfs_erofs_at;
use super::layout::{MAX_CONFIG_BYTES, hex_of};
use super::{ImageConfig, ImageError, Prepared};

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |err| ImageError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// What the cache holds for an image.
#[derive(Debug)]
pub(super) enum Lookup {
    Hit(Prepared),
    Missing,
    /// There, but not usable: why.
    Damaged(String),
}

/// One image's cache entry.
#[derive(Debug)]
pub(super) struct Entry {
    dir: PathBuf,
    hex: String,
    pub erofs: PathBuf,
    json: PathBuf,
}

/// The sha256 (hex) and length of what `r` yields.
fn hash_reader(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hex_of(&h.finalize()), n))
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

impl Entry {
    pub fn new(cache: &Path, hex: &str) -> Entry {
        Entry {
            dir: cache.to_path_buf(),
            hex: hex.to_string(),
            erofs: cache.join(format!("{hex}.erofs")),
            json: cache.join(format!("{hex}.json")),
        }
    }

    /// The entry, checked as the module header says.
    pub fn lookup(&self, digest: &str) -> Lookup {
        let f = match open_nofollow(&self.json) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Missing,
            Err(e) => return Lookup::Damaged(format!("{}: {e}", self.json.display())),
        };
        match self.check(f, digest) {
            Ok(p) => Lookup::Hit(p),
            Err(why) => Lookup::Damaged(why),
        }
    }

    fn check(&self, json: File, digest: &str) -> Result<Prepared, String> {
        let jname = self.json.display();
        if !json.metadata().map_err(|e| e.to_string())?.is_file() {
            return Err(format!("{jname} is not a regular file"));
        }
        let mut text = Vec::new();
        json.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|e| format!("{jname}: {e}"))?;
        let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{jname}: {e}"))?;
        let (Some(want), Some(size)) = (v["erofs"]["sha256"].as_str(), v["erofs"]["size"].as_u64())
        else {
            return Err(format!("{jname} does not record the image's digest"));
        };
        let ename = self.erofs.display();
        let f = open_nofollow(&self.erofs).map_err(|e| format!("{ename}: {e}"))?;
        let meta = f.metadata().map_err(|e| format!("{ename}: {e}"))?;
        if !meta.is_file() || meta.len() != size {
            return Err(format!(
                "{ename} has {} bytes, {jname} says {size}",
                meta.len()
            ));
        }
        let (got, _) = hash_reader(f).map_err(|e| format!("{ename}: {e}"))?;
        if got != want {
            return Err(format!(
                "{ename} has digest sha256:{got}, {jname} says sha256:{want}"
            ));
        }
        Ok(Prepared {
            erofs: self.erofs.clone(),
            config: ImageConfig::from_json(&v),
            digest: digest.to_string(),
            converted: false,
        })
    }

    /// Takes the entry's exclusive lock, telling `progress` when another process holds
    /// it (the lock goes with the returned handle, also when a process dies).
    pub fn lock(&self, progress: &dyn Fn(&str)) -> Result<Flock<File>, ImageError> {
        let path = self.dir.join(format!("{}.lock", self.hex));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, Errno::EWOULDBLOCK)) => f,
            Err((_, e)) => return Err(io_err(&path)(e.into())),
        };
        progress("waiting for another husk converting this image");
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io_err(&path)(e.into()))
    }

    /// Under the lock: removes the entry's files (a damaged entry) and the temporary
    /// files of conversions of this image that died half-way.
    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.json);
        let _ = std::fs::remove_file(&self.erofs);
        let Ok(list) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{}.", self.hex);
        for e in list.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                tracing::debug!(file = %e.path().display(), "removing a dead conversion's file");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// A new temporary file `<hex>.<what>.XXXXXX.tmp` in the cache folder.
    fn temp(&self, what: &str) -> Result<tempfile::NamedTempFile, ImageError> {
        tempfile::Builder::new()
            .prefix(&format!("{}.{what}.", self.hex))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))
    }

    /// Under the lock, after [`Entry::clear`]: converts `rootfs` and stores it with
    /// `config`.
    pub fn store(
        &self,
        rootfs: &Path,
        config: &ImageConfig,
        digest: &str,
    ) -> Result<Prepared, ImageError> {
        let tmp = self.temp("erofs")?;
        mkfs_erofs_at(rootfs, tmp.path())?;
        let (sha, size) = hash_reader(File::open(tmp.path()).map_err(io_err(tmp.path()))?)
            .map_err(io_err(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        tmp.persist(&self.erofs)
            .map_err(|e| io_err(&self.erofs)(e.error))?;
        let mut doc = config.to_json();
        doc["erofs"] = serde_json::json!({"sha256": sha, "size": size});
        let mut jtmp = self.temp("json")?;
        let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        jtmp.write_all(&text).map_err(io_err(jtmp.path()))?;
        jtmp.as_file().sync_all().map_err(io_err(jtmp.path()))?;
        jtmp.persist(&self.json)
            .map_err(|e| io_err(&self.json)(e.error))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        tracing::info!(erofs = %self.erofs.display(), size, sha256 = %sha, "image converted");
        Ok(Prepared {
            erofs: self.erofs.clone(),
            config: config.clone(),
            digest: digest.to_string(),
            converted: true,
        })
    }
}
