//! One virtio-blk request (virtio 1.2, 5.2.6): a readable 16-byte header (type,
//! reserved, sector), data buffers, and a final writable status byte. Sector ranges
//! past the end of the image, requests larger than [`MAX_REQUEST_BYTES`] and malformed
//! chains get IOERR, never a panic.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::metrics::Metrics;
use super::{MAX_REQUEST_BYTES, SECTOR_SIZE};
use crate::devices::virtio::queue_worker::ServeChain;

// Request types and status values (5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
/// Length of the id GET_ID returns.
pub const ID_BYTES: usize = 20;

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct RequestHeader {
    pub kind: u32,
    pub reserved: u32,
    pub sector: u64,
}

// SAFETY: plain old data with no padding (4 + 4 + 8 bytes); any bytes are a valid value.
unsafe impl ByteValued for RequestHeader {}

/// Serves requests on the image.
#[derive(Debug)]
pub struct Server {
    pub disk: Arc<File>,
    pub capacity_bytes: u64,
    pub read_only: bool,
    pub id: [u8; ID_BYTES],
    pub metrics: Arc<Metrics>,
}

impl ServeChain for Server {
    fn serve(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        self.request(mem, chain)
    }
}

impl Server {
    /// Serves one request; returns the bytes written into the driver's buffers.
    fn request(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let (mut reader, mut writer) = match (chain.clone().reader(mem), chain.writer(mem)) {
            (Ok(r), Ok(w)) => (r, w),
            _ => {
                self.metrics.errors.inc();
                return 0;
            }
        };
        // The status byte is the last writable byte.
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            self.metrics.errors.inc();
            return 0;
        };
        let mut status_w = match writer.split_at(data_len) {
            Ok(s) => s,
            Err(_) => {
                self.metrics.errors.inc();
                return 0;
            }
        };
        let header: RequestHeader = match reader.read_obj() {
            Ok(h) => h,
            Err(_) => {
                self.metrics.errors.inc();
                let _ = status_w.write_all(&[S_IOERR]);
                return 1;
            }
        };
        let (status, data_written) = match header.kind {
            T_IN => self.read(&header, &mut writer, data_len),
            T_OUT => self.write(&header, &mut reader),
            T_FLUSH => {
                self.metrics.flushes.inc();
                if self.read_only {
                    (S_OK, 0)
                } else if let Err(e) = self.disk.sync_data() {
                    self.host_error("flush", &e);
                    (S_IOERR, 0)
                } else {
                    (S_OK, 0)
                }
            }
            T_GET_ID => {
                let n = data_len.min(ID_BYTES);
                match writer.write_all(&self.id[..n]) {
                    Ok(()) => (S_OK, n),
                    Err(_) => (S_IOERR, 0),
                }
            }
            _ => (S_UNSUPP, 0),
        };
        if status == S_IOERR {
            self.metrics.errors.inc();
        }
        let _ = status_w.write_all(&[status]);
        (data_written + 1) as u32
    }

    /// Counts a failure of the host's file and logs it: the 1st, 2nd, 4th, 8th... only,
    /// so that a guest retrying forever cannot flood the log.
    fn host_error(&self, op: &'static str, err: &std::io::Error) {
        self.metrics.host_errors.inc();
        let n = self.metrics.host_errors.get();
        if n.is_power_of_two() {
            let disk = String::from_utf8_lossy(&self.id);
            let disk = disk.trim_end_matches('\0');
            tracing::warn!(disk, op, error = %err, failures = n, "the disk's image refused a {op}: the guest gets an I/O error");
        }
    }

    /// The byte offset of `len` bytes at `sector`, if the range is inside the image.
    pub(super) fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len as u64)?;
        (end <= self.capacity_bytes && len <= MAX_REQUEST_BYTES).then_some(offset)
    }

    fn read(&self, h: &RequestHeader, w: &mut virtio_queue::Writer<'_>, len: usize) -> (u8, usize) {
        let Some(offset) = self.range(h.sector, len) else {
            return (S_IOERR, 0);
        };
        let mut buf = vec![0u8; len];
        if let Err(e) = self.disk.read_exact_at(&mut buf, offset) {
            self.host_error("read", &e);
            return (S_IOERR, 0);
        }
        if w.write_all(&buf).is_err() {
            return (S_IOERR, 0);
        }
        self.metrics.reads.inc();
        self.metrics.read_bytes.add(len as u64);
        (S_OK, len)
    }

    fn write(&self, h: &RequestHeader, r: &mut virtio_queue::Reader<'_>) -> (u8, usize) {
        let len = r.available_bytes();
        if self.read_only {
            return (S_IOERR, 0);
        }
        let Some(offset) = self.range(h.sector, len) else {
            return (S_IOERR, 0);
        };
        let mut buf = vec![0u8; len];
        if r.read_exact(&mut buf).is_err() {
            return (S_IOERR, 0);
        }
        if let Err(e) = self.disk.write_all_at(&buf, offset) {
            self.host_error("write", &e);
            return (S_IOERR, 0);
        }
        self.metrics.writes.inc();
        self.metrics.write_bytes.add(len as u64);
        (S_OK, 0)
    }
}
