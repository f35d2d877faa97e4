//! A container's writable layer on disk: a sparse ext4 image per container, attached to
//! its VM as a read-write virtio-blk disk, which the agent mounts as the overlay's upper
//! layer (instead of a tmpfs in guest RAM; docs/cli.md, "Storage"). The image lives on
//! disk under the state folder (`<state_dir>/scratch/<container>.img`; the run folder is
//! a tmpfs) and goes with its container: `husk rm`, `--rm`, and [`reap_orphans`] for the
//! images whose container folder is gone (a killed `husk`, a reboot).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The scratch disk's size unless told otherwise: sparse, so it costs only what is
/// written.
pub const DEFAULT_SIZE: u64 = 10 << 30;
/// Smallest scratch disk: ext4 with its journal needs a few MiB of its own.
pub const MIN_SIZE: u64 = 64 << 20;
/// The folder under the state folder that holds the images (crate::layout).
pub const DIR_NAME: &str = crate::layout::SCRATCH_DIR;
/// The filesystem made on it (the agent accepts only this for an upper layer).
pub const FSTYPE: &str = "ext4";

/// Where a container's writable layer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// A sparse ext4 image of this many bytes on the host.
    Disk { size: u64 },
    /// A tmpfs in guest RAM (throwaway runs).
    Tmpfs,
}

impl Storage {
    /// `--storage KIND` with the size for `disk`.
    pub fn parse(kind: &str, size: u64) -> Result<Storage, String> {
        match kind {
            "disk" => Ok(Storage::Disk { size }),
            "tmpfs" => Ok(Storage::Tmpfs),
            other => Err(format!("--storage {other:?}: expected disk or tmpfs")),
        }
    }
}

/// Why the scratch disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("scratch disk {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("scratch disk {path}: mkfs.ext4 failed ({status}): {stderr}")]
    Mkfs {
        path: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Parses a size as docker does (`--storage-size 20g`): a number with an optional b,
/// k, m, g or t suffix (bytes without one), at least [`MIN_SIZE`]. Returns bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("ib").map(|x| x.to_string()).unwrap_or(t);
    let (num, shift): (&str, u32) = match t.char_indices().last() {
        Some((i, 'b')) => (&t[..i], 0),
        Some((i, 'k')) => (&t[..i], 10),
        Some((i, 'm')) => (&t[..i], 20),
        Some((i, 'g')) => (&t[..i], 30),
        Some((i, 't')) => (&t[..i], 40),
        _ => (&t[..], 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 512m or 20g"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))?;
    if bytes < MIN_SIZE {
        return Err(format!(
            "{s}: at least {}m is needed (ext4 and its journal)",
            MIN_SIZE >> 20
        ));
    }
    Ok(bytes)
}

/// The scratch image of container `name`.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    crate::layout::scratch_image(state_dir, name)
}

/// Creates `path`: a sparse file of `size` bytes holding an empty ext4 (inode tables and
/// journal left to lazy initialisation, so the file stays sparse and this takes a
/// fraction of a second). Returns how long it took. The caller owns the name (its
/// container folder exists), so a leftover of an earlier container of that name that
/// [`reap_orphans`] has not yet seen is replaced.
pub fn create(path: &Path, size: u64) -> Result<Duration, ScratchError> {
    let t0 = Instant::now();
    let path = path.to_path_buf();
    let io = |what| {
        let path = path.clone();
        move |err| ScratchError::Io { path, what, err }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create its folder"))?;
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("remove a leftover")(e));
        }
        _ => {}
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io("create"))?;
    f.set_len(size).map_err(io("set its size"))?;
    drop(f);
    // -m 0: no blocks reserved for root (a container's root user would get them anyway,
    // and df should show what there is); nodiscard: the file is sparse already.
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            "-L",
            "husk-scratch",
        ])
        .arg(&path)
        .output()
        .map_err(io("run mkfs.ext4 (is e2fsprogs installed?)"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&path);
        return Err(ScratchError::Mkfs {
            path,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let took = t0.elapsed();
    tracing::debug!(path = %path.display(), size, ms = took.as_millis(), "scratch disk made");
    Ok(took)
}

/// Removes the scratch images under `state_dir` whose container has no folder in
/// `run_dir` any more (its `husk` was killed before removing it, or the host rebooted and
/// the run folder, a tmpfs, went). Returns how many went. A container makes its folder
/// before its image, so a run being set up is never mistaken for an orphan.
pub fn reap_orphans(state_dir: &Path, run_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(crate::layout::scratch_dir(state_dir)) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(name) = file.to_str().and_then(crate::layout::scratch_owner) else {
            continue;
        };
        if !run_dir.join(name).is_dir() && std::fs::remove_file(e.path()).is_ok() {
            tracing::info!(path = %e.path().display(), "removed the scratch disk of a container that is gone");
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("10g").unwrap(), 10 << 30);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert_eq!(parse_size("67108864").unwrap(), 64 << 20);
        assert!(parse_size("1m").unwrap_err().contains("at least 64m"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1g").is_err());
        assert!(
            parse_size("99999999999t")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn storage_kinds() {
        assert_eq!(
            Storage::parse("disk", 1 << 30).unwrap(),
            Storage::Disk { size: 1 << 30 }
        );
        assert_eq!(Storage::parse("tmpfs", 0).unwrap(), Storage::Tmpfs);
        assert!(
            Storage::parse("ram", 0)
                .unwrap_err()
                .contains("disk or tmpfs")
        );
    }

    #[test]
    fn scratch_image_is_sparse_ext4() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("SKIPPED scratch_image_is_sparse_ext4: no mkfs.ext4 (e2fsprogs)");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let path = self::path(d.path(), "c1");
        let took = create(&path, DEFAULT_SIZE).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.len(), DEFAULT_SIZE);
        // Sparse: what is allocated is a small fraction of 10 GiB.
        assert!(
            m.blocks() * 512 < 256 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        // The ext4 superblock magic (0xEF53 at byte 1024 + 56).
        let mut sb = [0u8; 2];
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&path).unwrap();
        f.seek(SeekFrom::Start(1024 + 56)).unwrap();
        f.read_exact(&mut sb).unwrap();
        assert_eq!(u16::from_le_bytes(sb), 0xEF53);
        eprintln!("mkfs of a 10 GiB scratch disk: {took:?}");
    }

    #[test]
    fn orphans_are_reaped_and_live_ones_kept() {
        let state = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(state.path().join(DIR_NAME)).unwrap();
        std::fs::create_dir(run.path().join("alive")).unwrap();
        for n in ["alive", "gone"] {
            std::fs::write(path(state.path(), n), b"x").unwrap();
        }
        std::fs::write(state.path().join(DIR_NAME).join("other.txt"), b"x").unwrap();
        assert_eq!(reap_orphans(state.path(), run.path()), 1);
        assert!(path(state.path(), "alive").exists());
        assert!(!path(state.path(), "gone").exists());
        assert!(state.path().join(DIR_NAME).join("other.txt").exists());
        // No scratch folder at all: nothing to do.
        assert_eq!(reap_orphans(run.path(), run.path()), 0);
    }
}
