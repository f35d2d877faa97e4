//! Guest memory in a snapshot: one file holding the RAM regions one after another (as
//! [`crate::memory::ram_ranges`] lays them out), sparse: pages that are all zero are
//! holes. Restored either mapped copy-on-write from the file (clones of one template
//! share its pages through the page cache) or copied into private anonymous memory.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::memory::ram_ranges;

/// How a restore gets its guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryMode {
    /// MAP_PRIVATE of the memory file: pages are read on first touch and copied on
    /// first write; clones of one template share the unwritten ones.
    #[default]
    Map,
    /// Read the whole file into private anonymous memory first.
    Copy,
}

impl std::str::FromStr for MemoryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<MemoryMode, String> {
        match s {
            "map" => Ok(MemoryMode::Map),
            "copy" => Ok(MemoryMode::Copy),
            _ => Err(format!("unknown memory mode {s:?}: want map or copy")),
        }
    }
}

/// Why guest memory could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("cannot write guest memory to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read guest memory from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the memory file {path} holds {have} bytes, the snapshot says {want}")]
    Size { path: PathBuf, have: u64, want: u64 },
    #[error("cannot map guest memory from {path}: {why}")]
    Map { path: PathBuf, why: String },
    #[error("guest memory unreadable at {addr:#x}: {why}")]
    Guest { addr: u64, why: String },
}

const PAGE: usize = 4096;
const CHUNK: usize = 1 << 20;

/// A page of zeroes to compare with.
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// Whether `page` (at most [`PAGE`] bytes) is all zero. A slice comparison is a
/// `memcmp`, fast in every build; a byte loop is not (a debug husk-vmm spent most of a
/// snapshot's time in one, under the lab's emulation).
fn is_zero(page: &[u8]) -> bool {
    page == &ZERO_PAGE[..page.len().min(PAGE)]
}

/// Writes all of `mem` to a new file at `path`, leaving zero pages as holes. Returns
/// the bytes of guest memory (the file's length) and how many were written as data.
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<(u64, u64), MemoryFileError> {
    let werr = |source| MemoryFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Guest RAM: readable by its owner only.
    let file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(werr)?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    let mut data = 0u64;
    for region in mem.iter() {
        let start = region.start_addr();
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from((len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
            let addr = GuestAddress(start.0 + done);
            mem.read_slice(&mut buf[..n], addr)
                .map_err(|e| MemoryFileError::Guest {
                    addr: addr.0,
                    why: e.to_string(),
                })?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if is_zero(page) {
                    continue;
                }
                file.write_all_at(page, offset + done + (i * PAGE) as u64)
                    .map_err(werr)?;
                data += page.len() as u64;
            }
            done += n as u64;
        }
        offset += len;
    }
    file.set_len(offset).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    Ok((offset, data))
}

/// Guest memory of `size` bytes from the file at `path`, as `mode` says.
pub fn restore(
    path: &Path,
    size: u64,
    mode: MemoryMode,
) -> Result<GuestMemoryMmap, MemoryFileError> {
    let rerr = |source| MemoryFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Not through a symlink, and never blocking on a FIFO.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(rerr)?;
    let meta = file.metadata().map_err(rerr)?;
    if !meta.is_file() || meta.len() != size {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            have: meta.len(),
            want: size,
        });
    }
    let map_err = |why: String| MemoryFileError::Map {
        path: path.to_path_buf(),
        why,
    };
    match mode {
        MemoryMode::Map => {
            let mut regions = Vec::new();
            let mut offset = 0u64;
            for (addr, len) in ram_ranges(size) {
                let len_usize = usize::try_from(len).map_err(|e| map_err(e.to_string()))?;
                let f = file.try_clone().map_err(rerr)?;
                let region = MmapRegionBuilder::new(len_usize)
                    .with_file_offset(FileOffset::new(f, offset))
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                    .build()
                    .map_err(|e| map_err(e.to_string()))?;
                let r = GuestRegionMmap::new(region, addr)
                    .ok_or_else(|| map_err(format!("region at {:#x} overflows", addr.0)))?;
                regions.push(r);
                offset += len;
            }
            GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))
        }
        MemoryMode::Copy => {
            let mib = size >> 20;
            let mem = crate::memory::create_guest_memory(mib, false)
                .map_err(|e| map_err(e.to_string()))?;
            let mut buf = vec![0u8; CHUNK];
            let mut offset = 0u64;
            for (addr, len) in ram_ranges(size) {
                let mut done = 0u64;
                while done < len {
                    let n = usize::try_from((len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
                    file.read_exact_at(&mut buf[..n], offset + done)
                        .map_err(rerr)?;
                    // Untouched pages of fresh anonymous memory are zero already.
                    if !buf[..n].chunks(PAGE).all(is_zero) {
                        mem.write_slice(&buf[..n], GuestAddress(addr.0 + done))
                            .map_err(|e| MemoryFileError::Guest {
                                addr: addr.0 + done,
                                why: e.to_string(),
                            })?;
                    }
                    done += n as u64;
                }
                offset += len;
            }
            Ok(mem)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_pages_are_told_apart() {
        let mut p = vec![0u8; PAGE];
        assert!(is_zero(&p));
        assert!(is_zero(&p[..100]));
        assert!(is_zero(&[]));
        p[PAGE - 1] = 1;
        assert!(!is_zero(&p));
        p[PAGE - 1] = 0;
        p[0] = 0x80;
        assert!(!is_zero(&p));
        assert!(!is_zero(&p[..1]));
    }

    #[test]
    fn memory_round_trips_sparse_in_both_modes() {
        let dir = tempfile::tempdir().unwrap();
        let mem = crate::memory::create_guest_memory(16, false).unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0xfeedu16, GuestAddress((16 << 20) - 2))
            .unwrap();
        let path = dir.path().join("memory");
        let (size, data) = save(&mem, &path).unwrap();
        assert_eq!(size, 16 << 20);
        assert_eq!(data, 2 * PAGE as u64);
        // Sparse: two pages of data (blocks of 512 bytes; the file system may round up).
        let blocks = std::fs::metadata(&path).unwrap().blocks();
        assert!(blocks * 512 < 1 << 20, "{blocks} blocks");
        assert!(save(&mem, &path).is_err(), "never overwrites");
        for mode in [MemoryMode::Map, MemoryMode::Copy] {
            let m = restore(&path, size, mode).unwrap();
            assert_eq!(
                m.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
                0x1234_5678
            );
            assert_eq!(
                m.read_obj::<u16>(GuestAddress((16 << 20) - 2)).unwrap(),
                0xfeed
            );
            // Private: a write does not reach the file.
            m.write_obj(7u32, GuestAddress(0x1000)).unwrap();
        }
        let again = restore(&path, size, MemoryMode::Map).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1234_5678
        );
        let e = restore(&path, 32 << 20, MemoryMode::Map).unwrap_err();
        assert!(e.to_string().contains("holds 16777216 bytes"), "{e}");
    }
}
