//! The balloon's queues (virtio 1.2, 5.5.6): inflate and deflate chains are returned,
//! and free page reports (5.5.6.7) give guest RAM back to the host.
//!
//! A free page report is a chain of device-writable descriptors (Linux adds the
//! reported scatterlist with `virtqueue_add_inbuf`), each one guest-physical range of
//! free pages. Every range is checked before anything is released: non-empty, page
//! aligned, and entirely inside one guest RAM region (no overflow, nothing in the MMIO
//! gap or across two regions). A bad range is counted and skipped; the chain is always
//! returned, with a used length of 0.
//!
//! Releasing depends on the backing (see memory.rs): private anonymous memory is
//! dropped with `MADV_DONTNEED` (the guest later reads zeros, and a 2 MiB aligned range
//! frees a whole transparent huge page); a shared memfd needs `MADV_REMOVE`, which
//! punches a hole in the file (`MADV_DONTNEED` would only unmap shmem pages, not free
//! them). Both go through `madvise`, already in the seccomp allowlist, so no `fallocate`
//! is needed. A private file mapping (a VM restored from a snapshot, docs/snapshots.md)
//! is released with `MADV_DONTNEED` too: the VM's private copies are dropped and the
//! range reads the snapshot file's pages again, shared with other clones. The guest
//! does not rely on a reported page's contents: Linux reports free pages only when it
//! neither poisons nor zeroes them on free (without VIRTIO_BALLOON_F_PAGE_POISON, which
//! we do not offer, it turns reporting off under either).

use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use super::metrics::Metrics;
use crate::devices::virtio::queue_worker::ServeChain;

/// The unit of a report: ranges must start and end on a 4 KiB page.
pub const PAGE_SIZE: u64 = 4096;

/// Why a reported range was not released.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("empty range at {addr:#x}")]
    Empty { addr: u64 },
    #[error("range {addr:#x}+{len:#x} is not page-aligned")]
    Unaligned { addr: u64, len: u64 },
    #[error("range {addr:#x}+{len:#x} is not inside one guest RAM region")]
    OutsideMemory { addr: u64, len: u64 },
    #[error("cannot release {addr:#x}+{len:#x}")]
    Release {
        addr: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
}

impl ReportError {
    /// Whether the guest is at fault (a hostile or broken range), not the host.
    pub fn is_guest_fault(&self) -> bool {
        !matches!(self, ReportError::Release { .. })
    }
}

/// Gives the guest RAM `[addr, addr + len)` back to the host; the guest reads zeros
/// there afterwards. `addr` and `len` come from the guest and may be anything.
pub fn release(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), ReportError> {
    if len == 0 {
        return Err(ReportError::Empty { addr });
    }
    if !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(ReportError::Unaligned { addr, len });
    }
    let outside = || ReportError::OutsideMemory { addr, len };
    let region = mem.find_region(GuestAddress(addr)).ok_or_else(outside)?;
    // find_region returned the region holding `addr`, so this cannot underflow.
    let offset = addr
        .checked_sub(region.start_addr().raw_value())
        .ok_or_else(outside)?;
    let end = offset.checked_add(len).ok_or_else(outside)?;
    if end > region.len() {
        return Err(outside());
    }
    let host = region
        .get_host_address(MemoryRegionAddress(offset))
        .map_err(|_| outside())?;
    let host_len = usize::try_from(len).map_err(|_| outside())?;
    let advice = if region.flags() & libc::MAP_SHARED != 0 {
        libc::MADV_REMOVE
    } else {
        // Anonymous: zero pages; a private file mapping: the file's pages again.
        libc::MADV_DONTNEED
    };
    // SAFETY: `[host, host + host_len)` lies inside one live mapping of guest RAM,
    // owned by `mem` which outlives the call (checked above against the region's
    // bounds). MADV_DONTNEED / MADV_REMOVE only replace the contents with zero pages;
    // the mapping stays valid, and Rust holds no references into guest memory (vm-memory
    // accesses it through volatile copies), so nothing relies on the old contents.
    let ret = unsafe { libc::madvise(host.cast(), host_len, advice) };
    if ret != 0 {
        return Err(ReportError::Release {
            addr,
            len,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// What a queue is for; the reporting queue's index depends on the features (see
/// [`super::queue_roles`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Inflate,
    Deflate,
    Reporting,
}

/// Serves one of the balloon's queues.
#[derive(Debug)]
pub struct Server {
    pub role: Role,
    pub metrics: Arc<Metrics>,
}

impl ServeChain for Server {
    fn serve(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        match self.role {
            // husk never sets num_pages, so a driver has nothing to inflate or deflate;
            // such chains are returned untouched.
            Role::Inflate => self.metrics.inflate_chains.inc(),
            Role::Deflate => self.metrics.deflate_chains.inc(),
            Role::Reporting => self.report(mem, chain),
        }
        0
    }
}

impl Server {
    /// Releases every range of a free page report. The descriptor iterator follows
    /// indirect tables and stops after the queue size, so a looping chain ends.
    fn report(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) {
        self.metrics.reports.inc();
        for desc in chain {
            let (addr, len) = (desc.addr().raw_value(), u64::from(desc.len()));
            if !desc.is_write_only() {
                tracing::debug!(addr, len, "free page report range is not device-writable");
                self.metrics.bad_ranges.inc();
                continue;
            }
            match release(mem, addr, len) {
                Ok(()) => {
                    self.metrics.reported_ranges.inc();
                    self.metrics.reported_bytes.add(len);
                }
                Err(e) if e.is_guest_fault() => {
                    tracing::debug!(error = %e, "bad free page report range");
                    self.metrics.bad_ranges.inc();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release reported free pages");
                    self.metrics.release_errors.inc();
                }
            }
        }
    }
}
