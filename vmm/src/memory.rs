//! Guest RAM, split around the MMIO gap below 4 GiB: `[0, min(size, gap start))` and,
//! for larger guests, the rest from 4 GiB up.
//!
//! Two backings, as in Firecracker and Cloud Hypervisor:
//! - private anonymous memory (the default), advised for transparent huge pages: each
//!   first touch of a 2 MiB page costs one stage-2 fault instead of 512, which is most
//!   of the kernel's boot time in nested setups such as the lab;
//! - a shared memfd (`shared`), which vhost-user backends (virtiofsd) can map. Huge pages
//!   are advised there too, and used where the host allows them for shmem
//!   (/sys/kernel/mm/transparent_hugepage/shmem_enabled).

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::boot::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Why guest memory could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create failed")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size the guest memory file to {size} bytes")]
    Truncate {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("guest memory of {0} MiB is too large for this host's address space")]
    TooLarge(u64),
    #[error("cannot map guest memory")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
}

/// The RAM ranges (guest address, size) of a guest with `size` bytes of RAM.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Creates `mib` MiB of guest RAM: private anonymous memory, or a shared memfd.
pub fn create_guest_memory(mib: u64, shared: bool) -> Result<GuestMemoryMmap, MemoryError> {
    let size = mib.checked_mul(1 << 20).ok_or(MemoryError::TooLarge(mib))?;
    let mem = if shared {
        let file = memfd("husk-guest-ram")?;
        file.set_len(size)
            .map_err(|source| MemoryError::Truncate { size, source })?;
        let mut offset = 0u64;
        let mut regions = Vec::new();
        for (addr, len) in ram_ranges(size) {
            let len_usize = usize::try_from(len).map_err(|_| MemoryError::TooLarge(mib))?;
            let f = file.try_clone().map_err(MemoryError::Memfd)?;
            regions.push((addr, len_usize, Some(FileOffset::new(f, offset))));
            offset += len;
        }
        GuestMemoryMmap::from_ranges_with_files(regions).map_err(MemoryError::Mmap)?
    } else {
        let ranges = ram_ranges(size)
            .into_iter()
            .map(|(a, l)| {
                Ok((
                    a,
                    usize::try_from(l).map_err(|_| MemoryError::TooLarge(mib))?,
                ))
            })
            .collect::<Result<Vec<_>, MemoryError>>()?;
        GuestMemoryMmap::from_ranges(&ranges).map_err(MemoryError::Mmap)?
    };
    for r in mem.iter() {
        advise_huge_pages(r.as_ptr(), r.len());
    }
    Ok(mem)
}

/// Asks for transparent huge pages on a mapping; where the host refuses, 4 KiB pages
/// are used, so failure is only logged.
fn advise_huge_pages(addr: *mut u8, len: u64) {
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    // SAFETY: the range is exactly one live mapping owned by the guest memory object;
    // MADV_HUGEPAGE changes only how the kernel backs it, not its contents or validity.
    let ret = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
    if ret != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "MADV_HUGEPAGE refused");
    }
}

fn memfd(name: &str) -> Result<File, MemoryError> {
    let cname =
        std::ffi::CString::new(name).map_err(|e| MemoryError::Memfd(std::io::Error::other(e)))?;
    // SAFETY: `cname` is a valid NUL-terminated string; memfd_create has no other inputs
    // and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn small_guest_is_one_region_below_the_gap() {
        for shared in [false, true] {
            let m = create_guest_memory(16, shared).unwrap();
            assert_eq!(m.num_regions(), 1);
            m.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
            assert_eq!(
                m.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
                0xdead_beef
            );
            assert!(m.write_obj(1u8, GuestAddress(16 << 20)).is_err());
            // Only the shared backing has a file that another process could map.
            let has_file = m.iter().all(|r| r.file_offset().is_some());
            assert_eq!(has_file, shared);
        }
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
        // Mapping is lazy: 4 GiB of address space costs nothing until touched.
        let m = create_guest_memory(4096, true).unwrap();
        assert_eq!(m.num_regions(), 2);
        let sizes: u64 = m.iter().map(|r| r.len()).sum();
        assert_eq!(sizes, 4 << 30);
        assert!(m.write_obj(1u8, GuestAddress(MMIO_GAP_START)).is_err());
        m.write_obj(1u8, GuestAddress(MMIO_GAP_END)).unwrap();
    }
}
