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
    /// Read the whole file into memory of the VM's own first: private anonymous
    /// memory, or a shared memfd when a vhost-user backend (virtiofsd) must map it.
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
            let guest_err = |why: String| MemoryFileError::Guest { addr: addr.0, why };
            match region.file_offset() {
                // Shared memory (a memfd): read(2) of a hole reads zeroes without
                // allocating a page, where a read through the mapping would fault one
                // in, making the whole guest memory resident. Not a private mapping
                // (a mapped restore): its file lacks the pages the guest wrote since.
                Some(fo) if region.flags() & libc::MAP_SHARED != 0 => fo
                    .file()
                    .read_exact_at(&mut buf[..n], fo.start() + done)
                    .map_err(|e| guest_err(e.to_string()))?,
                _ => mem
                    .read_slice(&mut buf[..n], addr)
                    .map_err(|e| guest_err(e.to_string()))?,
            }
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

/// Guest memory of `size` bytes from the file at `path`, as `mode` says; `shared`
/// (with [`MemoryMode::Copy`] only) copies into a shared memfd that other processes can
/// map (crate::memory).
pub fn restore(
    path: &Path,
    size: u64,
    mode: MemoryMode,
    shared: bool,
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
        MemoryMode::Map if shared => Err(map_err(
            "a mapped restore's memory is private to this VM; shared memory (virtio-fs) needs a copy".into(),
        )),
        MemoryMode::Map => {
            let mut regions = Vec::new();
            for (offset, addr, len) in file_layout(size) {
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
            }
            GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))
        }
        MemoryMode::Copy => {
            let mib = size >> 20;
            let mem = crate::memory::create_guest_memory(mib, shared)
                .map_err(|e| map_err(e.to_string()))?;
            copy_in(&file, path, size, &mem)?;
            Ok(mem)
        }
    }
}

/// Where guest memory of `size` bytes lies in its memory file: (file offset, guest
/// address, length) per RAM range, the ranges one after another as [`save`] writes a
/// VM's regions (which are these ranges).
fn file_layout(size: u64) -> Vec<(u64, GuestAddress, u64)> {
    let mut offset = 0u64;
    ram_ranges(size)
        .into_iter()
        .map(|(addr, len)| {
            let at = offset;
            offset += len;
            (at, addr, len)
        })
        .collect()
}

/// The data extents of `file` (offset, length), as SEEK_DATA/SEEK_HOLE find them: the
/// pages [`save`] wrote. A file system without them gives the whole file.
fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let seek = |off: u64, whence| -> std::io::Result<Option<u64>> {
        let off = i64::try_from(off).map_err(std::io::Error::other)?;
        // SAFETY: lseek on an fd this function borrows; it moves only the file's
        // offset, which no one else uses during a restore.
        let r = unsafe { libc::lseek(fd, off, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // No data after `off`.
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    };
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < size {
        let data = match seek(off, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && out.is_empty() => {
                return Ok(vec![(0, size)]);
            }
            Err(e) => return Err(e),
        };
        if data >= size {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        if hole <= data {
            break;
        }
        out.push((data, hole - data));
        off = hole;
    }
    Ok(out)
}

/// Copies the memory file's data into `mem` (fresh, so zero): only its data extents,
/// each straight into guest memory: with `sendfile` into a shared memfd (a copy in
/// the kernel, no page faults in this process), else with `pread` into the mapping.
/// A page of zeroes inside an extent (a file system's larger blocks) is copied too.
fn copy_in(
    file: &File,
    path: &Path,
    size: u64,
    mem: &GuestMemoryMmap,
) -> Result<(), MemoryFileError> {
    let rerr = |source| MemoryFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let extents = data_extents(file, size).map_err(rerr)?;
    let layout = file_layout(size);
    let mut kernel_copy = true;
    for (start, len) in extents {
        for &(foff, addr, rlen) in &layout {
            // The part of the extent in this range.
            let a = start.max(foff);
            let b = (start + len).min(foff + rlen);
            if a >= b {
                continue;
            }
            let at = GuestAddress(addr.0 + (a - foff));
            let n = b - a;
            let guest_err = |why: String| MemoryFileError::Guest { addr: at.0, why };
            let region = mem
                .find_region(at)
                .ok_or_else(|| guest_err("not in guest memory".into()))?;
            let in_region = at.0 - region.start_addr().0;
            if in_region + n > region.len() {
                return Err(guest_err("crosses a memory region's end".into()));
            }
            if kernel_copy && let Some(fo) = region.file_offset() {
                match send(file, a, fo.file(), fo.start() + in_region, n) {
                    Ok(()) => continue,
                    // Not between these files here: copy through the mapping.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EINVAL)
                            || e.raw_os_error() == Some(libc::ENOSYS) =>
                    {
                        kernel_copy = false;
                    }
                    Err(e) => return Err(rerr(e)),
                }
            }
            let host = mem
                .get_host_address(at)
                .map_err(|e| guest_err(e.to_string()))?;
            let n_usize = usize::try_from(n).map_err(|e| guest_err(e.to_string()))?;
            // SAFETY: [host, host + n) lies inside one live guest memory region (checked
            // above); the guest is not running yet, so nothing else accesses it, and the
            // slice does not outlive this statement.
            let dst = unsafe { std::slice::from_raw_parts_mut(host, n_usize) };
            file.read_exact_at(dst, a).map_err(rerr)?;
        }
    }
    Ok(())
}

/// `n` bytes from `src` at `src_off` to `dst` at `dst_off`, with sendfile(2) (the
/// destination's file offset is set first: sendfile writes there).
fn send(src: &File, src_off: u64, dst: &File, dst_off: u64, n: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (mut from, to) = (
        i64::try_from(src_off).map_err(std::io::Error::other)?,
        i64::try_from(dst_off).map_err(std::io::Error::other)?,
    );
    // SAFETY: lseek on a borrowed fd; only its offset changes (used by nothing else
    // during a restore).
    if unsafe { libc::lseek(dst.as_raw_fd(), to, libc::SEEK_SET) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut left = n;
    while left > 0 {
        let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        // SAFETY: both fds are borrowed and open; `from` is a valid i64 the kernel
        // updates.
        let r = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut from, chunk) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= r as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_file_holds_the_ram_ranges_one_after_another() {
        use crate::boot::layout::{MMIO_GAP_END, MMIO_GAP_START};
        assert_eq!(file_layout(256 << 20), [(0, GuestAddress(0), 256 << 20)]);
        let size = MMIO_GAP_START + (64 << 20);
        assert_eq!(
            file_layout(size),
            [
                (0, GuestAddress(0), MMIO_GAP_START),
                (MMIO_GAP_START, GuestAddress(MMIO_GAP_END), 64 << 20),
            ]
        );
    }

    #[test]
    fn saving_shared_memory_allocates_no_page_of_it() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let mem = crate::memory::create_guest_memory(64, true).unwrap();
        mem.write_obj(0xabcdu16, GuestAddress(0x2000)).unwrap();
        let path = dir.path().join("memory");
        let (_, data) = save(&mem, &path).unwrap();
        assert_eq!(data, PAGE as u64);
        // The memfd holds the one page written (THP may round it up to 2 MiB), not
        // the 64 MiB a read through the mapping would have faulted in.
        // Bytes the memfd of `m` holds.
        let resident = |m: &GuestMemoryMmap| {
            let region = m.iter().next().unwrap();
            let fd = region.file_offset().unwrap().file().as_raw_fd();
            let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap();
            meta.blocks() * 512
        };
        assert!(
            resident(&mem) <= 4 << 20,
            "{} bytes resident",
            resident(&mem)
        );
        // A copied restore into shared memory writes only the data pages.
        let back = restore(&path, 64 << 20, MemoryMode::Copy, true).unwrap();
        assert_eq!(back.read_obj::<u16>(GuestAddress(0x2000)).unwrap(), 0xabcd);
        assert!(
            resident(&back) <= 4 << 20,
            "{} bytes resident",
            resident(&back)
        );
    }

    #[test]
    fn data_extents_are_the_pages_written() {
        let dir = tempfile::tempdir().unwrap();
        let mem = crate::memory::create_guest_memory(16, false).unwrap();
        for addr in [0x3000u64, 0x4000, 0x10_0000, (16 << 20) - PAGE as u64] {
            mem.write_obj(1u8, GuestAddress(addr)).unwrap();
        }
        let path = dir.path().join("memory");
        save(&mem, &path).unwrap();
        let f = File::open(&path).unwrap();
        let ext = data_extents(&f, 16 << 20).unwrap();
        let bytes: u64 = ext.iter().map(|(_, l)| l).sum();
        // The file system may allocate in larger blocks; never less than the data.
        assert!((3 * PAGE as u64..=3 << 20).contains(&bytes), "{ext:?}");
        assert!(
            ext[0].0 <= 0x3000 && ext[0].0 + ext[0].1 >= 0x5000,
            "{ext:?}"
        );
        let last = ext.last().unwrap();
        assert_eq!(last.0 + last.1, 16 << 20, "{ext:?}");
    }

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
        for (mode, shared) in [
            (MemoryMode::Map, false),
            (MemoryMode::Copy, false),
            (MemoryMode::Copy, true),
        ] {
            let m = restore(&path, size, mode, shared).unwrap();
            if mode == MemoryMode::Copy {
                // Only a shared copy has a file (a memfd) a backend could map.
                assert_eq!(m.iter().all(|r| r.file_offset().is_some()), shared);
            }
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
        let e = restore(&path, size, MemoryMode::Map, true).unwrap_err();
        assert!(e.to_string().contains("needs a copy"), "{e}");
        let again = restore(&path, size, MemoryMode::Map, false).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1234_5678
        );
        // A snapshot of a mapped restore saves what the guest wrote since, not the
        // file's pages under it.
        again.write_obj(0x99u32, GuestAddress(0x1000)).unwrap();
        let second = dir.path().join("memory2");
        save(&again, &second).unwrap();
        let back = restore(&second, size, MemoryMode::Copy, false).unwrap();
        assert_eq!(back.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0x99);
        let e = restore(&path, 32 << 20, MemoryMode::Map, false).unwrap_err();
        assert!(e.to_string().contains("holds 16777216 bytes"), "{e}");
    }
}
