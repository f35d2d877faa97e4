//! The unprivileged uid/gid of each jailed husk-vmm: one per live VM, from a range
//! (`jail.uid_base`, `jail.uid_count`; docs/configuration.md).
//!
//! A uid is held by an exclusive `flock` on `<run_dir>/.jail/<uid>.lock`, kept by the
//! process that owns the VM for as long as the VM lives. A lock is released by the
//! kernel when its holder dies, even by SIGKILL, so a killed `husk` never leaks a uid;
//! no daemon or shared counter is needed. The search starts at a hash of the VM's
//! folder, so concurrent starts rarely probe the same uids, and walks the range.
//! Releasing removes the lock file; a left-over file (its holder was killed) is free
//! for the next claim and removed by [`reap`].

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why no uid could be claimed.
#[derive(Debug, thiserror::Error)]
pub enum IdsError {
    #[error("jail uid lock {path}")]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("all {count} jail uids from {base} are in use (raise jail.uid_count)")]
    Exhausted { base: u32, count: u32 },
}

/// A uid (and the gid of the same number) held for one VM; released on drop.
#[derive(Debug)]
pub struct Claim {
    pub uid: u32,
    path: PathBuf,
    _lock: File,
}

/// Where the locks live (crate::layout).
pub fn lock_dir(run_dir: &Path) -> PathBuf {
    crate::layout::jail_locks_dir(run_dir)
}

/// FNV-1a of `key`: where the search starts.
fn start_index(key: &str, count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(h % u64::from(count.max(1))).unwrap_or(0)
}

/// The uids tried for `key`, in order.
pub fn candidates(key: &str, base: u32, count: u32) -> impl Iterator<Item = u32> {
    let start = start_index(key, count);
    (0..count).map(move |i| base + (start + i) % count)
}

/// Takes the lock of `path` without waiting; `None` when another process holds it.
fn try_lock(path: &Path) -> Result<Option<File>, IdsError> {
    let io = |err| IdsError::Io {
        path: path.to_path_buf(),
        err,
    };
    loop {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(io(err));
        }
        // A holder that released it unlinked the file between our open and our lock:
        // the lock is then on a file nobody else will find. Take the new one instead.
        let held = f.metadata().map_err(io)?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(Some(f)),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        }
    }
}

/// Claims a free uid in `[base, base + count)` for the VM whose folder is `key`.
pub fn claim(run_dir: &Path, key: &str, base: u32, count: u32) -> Result<Claim, IdsError> {
    let dir = lock_dir(run_dir);
    let mut tries = 0;
    'search: loop {
        std::fs::create_dir_all(&dir).map_err(|err| IdsError::Io {
            path: dir.clone(),
            err,
        })?;
        for uid in candidates(key, base, count) {
            let path = dir.join(format!("{uid}.lock"));
            match try_lock(&path) {
                Ok(Some(lock)) => {
                    tracing::debug!(uid, vm = key, "jail uid claimed");
                    return Ok(Claim {
                        uid,
                        path,
                        _lock: lock,
                    });
                }
                Ok(None) => {}
                // The last holder removed the emptied folder (Drop): make it again.
                Err(IdsError::Io { err, .. })
                    if err.kind() == std::io::ErrorKind::NotFound && tries < 10 =>
                {
                    tries += 1;
                    continue 'search;
                }
                Err(e) => return Err(e),
            }
        }
        return Err(IdsError::Exhausted { base, count });
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Unlink while holding the lock: a waiter that opened the old file sees the
        // inode change and retries (try_lock).
        let _ = std::fs::remove_file(&self.path);
        // The folder too once empty (nothing of the jail stays in the run folder);
        // a claimer that loses this race makes it again.
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Removes the lock files nobody holds (left by a killed `husk`); returns how many.
pub fn reap(run_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(lock_dir(run_dir)) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "lock") {
            continue;
        }
        if let Ok(Some(lock)) = try_lock(&path) {
            let _ = std::fs::remove_file(&path);
            drop(lock);
            n += 1;
        }
    }
    let _ = std::fs::remove_dir(lock_dir(run_dir));
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_the_range_once() {
        let mut all: Vec<u32> = candidates("/run/husk/web/vm", 100_000, 50).collect();
        assert_eq!(all.len(), 50);
        all.sort_unstable();
        assert_eq!(all, (100_000..100_050).collect::<Vec<_>>());
        // The start depends on the key (a hash), so two VMs rarely collide first.
        let a = candidates("/run/husk/a/vm", 100_000, 65_536).next();
        let b = candidates("/run/husk/b/vm", 100_000, 65_536).next();
        assert_ne!(a, b);
    }

    #[test]
    fn live_claims_are_distinct_and_released() {
        let run = tempfile::tempdir().unwrap();
        let a = claim(run.path(), "same", 1000, 2).unwrap();
        let b = claim(run.path(), "same", 1000, 2).unwrap();
        assert_ne!(a.uid, b.uid, "two live VMs got the same uid");
        let e = claim(run.path(), "same", 1000, 2).unwrap_err();
        assert!(
            matches!(
                e,
                IdsError::Exhausted {
                    base: 1000,
                    count: 2
                }
            ),
            "{e}"
        );
        let freed = a.uid;
        drop(a);
        assert!(!lock_dir(run.path()).join(format!("{freed}.lock")).exists());
        let c = claim(run.path(), "same", 1000, 2).unwrap();
        assert_eq!(c.uid, freed);
        drop((b, c));
        assert!(
            !lock_dir(run.path()).exists(),
            "the emptied lock folder stays"
        );
    }

    #[test]
    fn reap_removes_only_unheld_locks() {
        let run = tempfile::tempdir().unwrap();
        let held = claim(run.path(), "x", 2000, 4).unwrap();
        // A lock file left by a killed holder.
        std::fs::write(lock_dir(run.path()).join("2003.lock"), "").unwrap();
        let left = if held.uid == 2003 { 0 } else { 1 };
        assert_eq!(reap(run.path()), left);
        assert!(
            lock_dir(run.path())
                .join(format!("{}.lock", held.uid))
                .exists()
        );
    }
}
