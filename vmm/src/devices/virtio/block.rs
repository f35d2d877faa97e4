//! virtio-blk (virtio 1.2, 5.2) on a raw image file: read, write, flush, get-id;
//! read-only when configured (writes fail with IOERR and VIRTIO_BLK_F_RO is offered).
//!
//! A request is a readable 16-byte header (type, reserved, sector), data buffers, and a
//! final writable status byte. Sector ranges past the end of the image, requests larger
//! than [`MAX_REQUEST_BYTES`] and malformed chains get IOERR, never a panic.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::queue_worker::{QueueWorker, ServeChain};
use super::worker::Worker;
use super::{
    ActivateContext, ActivateError, Counter, TYPE_BLOCK, VIRTIO_F_VERSION_1, VirtioDevice,
    read_config_bytes,
};

pub const SECTOR_SIZE: u64 = 512;
/// Largest data part of one request: bounds the VMM's bounce buffer.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
const QUEUE_SIZE: u16 = 256;
/// Most data segments per request we tell the driver about (VIRTIO_BLK_F_SEG_MAX).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

// Feature bits (5.2.3).
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

// Request types and status values (5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Length of the id GET_ID returns.
const ID_BYTES: usize = 20;

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    kind: u32,
    reserved: u32,
    sector: u64,
}

// SAFETY: plain old data with no padding (4 + 4 + 8 bytes); any bytes are a valid value.
unsafe impl ByteValued for RequestHeader {}

/// Why the disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open the disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
struct Metrics {
    reads: Counter,
    writes: Counter,
    flushes: Counter,
    read_bytes: Counter,
    write_bytes: Counter,
    errors: Counter,
}

/// The device.
#[derive(Debug)]
pub struct Block {
    disk: Arc<File>,
    capacity_bytes: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    metrics: Arc<Metrics>,
    worker: Option<Worker>,
}

impl Block {
    /// Opens `path` (read-only when `read_only`); `index` names the disk in its id.
    pub fn open(path: &Path, read_only: bool, index: usize) -> Result<Block, BlockError> {
        let err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let disk = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        let capacity_bytes = disk.metadata().map_err(err)?.len();
        let mut id = [0u8; ID_BYTES];
        let text = format!("husk{index}");
        id[..text.len().min(ID_BYTES)]
            .copy_from_slice(&text.as_bytes()[..text.len().min(ID_BYTES)]);
        Ok(Block {
            disk: Arc::new(disk),
            capacity_bytes,
            read_only,
            id,
            metrics: Arc::default(),
            worker: None,
        })
    }

    fn config(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        // capacity (in sectors), size_max (unused), seg_max.
        c[..8].copy_from_slice(&(self.capacity_bytes / SECTOR_SIZE).to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c
    }
}

/// Serves requests on the image.
struct Server {
    disk: Arc<File>,
    capacity_bytes: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    metrics: Arc<Metrics>,
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
                let ok = self.read_only || self.disk.sync_data().is_ok();
                (if ok { S_OK } else { S_IOERR }, 0)
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

    /// The byte offset of `len` bytes at `sector`, if the range is inside the image.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len as u64)?;
        (end <= self.capacity_bytes && len <= MAX_REQUEST_BYTES).then_some(offset)
    }

    fn read(&self, h: &RequestHeader, w: &mut virtio_queue::Writer<'_>, len: usize) -> (u8, usize) {
        let Some(offset) = self.range(h.sector, len) else {
            return (S_IOERR, 0);
        };
        let mut buf = vec![0u8; len];
        if self.disk.read_exact_at(&mut buf, offset).is_err() || w.write_all(&buf).is_err() {
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
        if r.read_exact(&mut buf).is_err() || self.disk.write_all_at(&buf, offset).is_err() {
            return (S_IOERR, 0);
        }
        self.metrics.writes.inc();
        self.metrics.write_bytes.add(len as u64);
        (S_OK, 0)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn name(&self) -> &'static str {
        "block"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | ro
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let server = Server {
            disk: self.disk.clone(),
            capacity_bytes: self.capacity_bytes,
            read_only: self.read_only,
            id: self.id,
            metrics: self.metrics.clone(),
        };
        self.worker = Some(QueueWorker::new(ctx, server)?.spawn("virtio-blk")?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn metrics(&self) -> serde_json::Value {
        let m = &self.metrics;
        serde_json::json!({
            "reads": m.reads.get(), "writes": m.writes.get(), "flushes": m.flushes.get(),
            "read_bytes": m.read_bytes.get(), "write_bytes": m.write_bytes.get(),
            "errors": m.errors.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{TestQueue, W};

    const HDR: u64 = 0x10_000;
    const DATA: u64 = 0x20_000;
    const STATUS: u64 = 0x30_000;

    fn disk(read_only: bool) -> (tempfile::NamedTempFile, Block) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(f.path(), content).unwrap();
        let b = Block::open(f.path(), read_only, 0).unwrap();
        (f, b)
    }

    fn server(b: &Block) -> Server {
        Server {
            disk: b.disk.clone(),
            capacity_bytes: b.capacity_bytes,
            read_only: b.read_only,
            id: b.id,
            metrics: b.metrics.clone(),
        }
    }

    fn handler(tq: &TestQueue, b: &Block) -> QueueWorker<Server> {
        QueueWorker {
            mem: tq.mem.clone(),
            queue: tq.queue(),
            evt: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            interrupt: tq.interrupt.clone(),
            server: server(b),
        }
    }

    fn header(tq: &TestQueue, kind: u32, sector: u64) {
        let h = RequestHeader {
            kind,
            reserved: 0,
            sector,
        };
        tq.write(HDR, h.as_slice());
    }

    #[test]
    fn reads_and_writes_sectors() {
        let (f, b) = disk(false);
        assert_eq!(b.config()[..8], 16u64.to_le_bytes());
        let tq = TestQueue::new();
        header(&tq, T_IN, 1);
        tq.add_chain(0, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]);
        let mut h = handler(&tq, &b);
        h.process();
        assert_eq!(tq.used(0), Some(513));
        assert_eq!(tq.read(STATUS, 1), [S_OK]);
        let expect: Vec<u8> = (512..1024u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(tq.read(DATA, 512), expect);

        header(&tq, T_OUT, 2);
        tq.write(DATA, &[0xab; 512]);
        tq.add_chain(3, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]);
        h.process();
        assert_eq!(tq.used(1), Some(1));
        assert_eq!(tq.read(STATUS, 1), [S_OK]);
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&on_disk[1024..1536], &[0xab; 512][..]);
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let (f, b) = disk(true);
        assert_ne!(b.features() & VIRTIO_BLK_F_RO, 0);
        let tq = TestQueue::new();
        header(&tq, T_OUT, 0);
        tq.add_chain(0, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]);
        handler(&tq, &b).process();
        assert_eq!(tq.read(STATUS, 1), [S_IOERR]);
        assert_eq!(std::fs::read(f.path()).unwrap()[0], 0);
    }

    #[test]
    fn get_id_flush_and_unknown_types() {
        let (_f, b) = disk(false);
        let tq = TestQueue::new();
        let mut h = handler(&tq, &b);
        header(&tq, T_GET_ID, 0);
        tq.add_chain(0, &[(HDR, 16, 0), (DATA, 20, W), (STATUS, 1, W)]);
        h.process();
        assert_eq!(&tq.read(DATA, 5), b"husk0");
        header(&tq, T_FLUSH, 0);
        tq.add_chain(3, &[(HDR, 16, 0), (STATUS, 1, W)]);
        h.process();
        assert_eq!(tq.read(STATUS, 1), [S_OK]);
        header(&tq, 77, 0);
        tq.add_chain(5, &[(HDR, 16, 0), (STATUS, 1, W)]);
        h.process();
        assert_eq!(tq.read(STATUS, 1), [S_UNSUPP]);
    }

    #[test]
    fn hostile_requests_fail_cleanly() {
        let (_f, b) = disk(false);
        let tq = TestQueue::new();
        let mut h = handler(&tq, &b);
        // Past the end of the disk; sector overflow.
        header(&tq, T_IN, 16);
        tq.add_chain(0, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]);
        h.process();
        assert_eq!(tq.read(STATUS, 1), [S_IOERR]);
        header(&tq, T_IN, u64::MAX);
        tq.add_chain(3, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]);
        h.process();
        assert_eq!(tq.read(STATUS, 1), [S_IOERR]);
        // No status byte at all; a short header; a buffer outside guest memory.
        tq.add_chain(6, &[(HDR, 16, 0)]);
        tq.add_chain(7, &[(HDR, 4, 0), (STATUS, 1, W)]);
        tq.add_chain(
            9,
            &[(HDR, 16, 0), (0xffff_0000_0000, 512, W), (STATUS, 1, W)],
        );
        h.process();
        assert_eq!(tq.used(2), Some(0));
        assert_eq!(tq.used(3), Some(1));
        assert_eq!(tq.read(STATUS, 1), [S_IOERR]);
        assert_eq!(tq.used(4), Some(0));
        assert!(h.server.metrics.errors.get() >= 5);
        // A request larger than the bounce buffer may be, even on a huge disk.
        let big = Server {
            capacity_bytes: u64::MAX,
            ..server(&b)
        };
        assert_eq!(big.range(0, MAX_REQUEST_BYTES), Some(0));
        assert_eq!(big.range(0, MAX_REQUEST_BYTES + 1), None);
    }

    /// Random request headers and chain shapes: every request is answered or dropped,
    /// the disk is never written past its end, and nothing panics.
    #[test]
    fn random_requests_never_panic() {
        let (f, b) = disk(false);
        let mut rng = crate::devices::virtio::test_utils::XorShift(0x2545_f491_4f6c_dd1d);
        let mut next = || rng.next_u64();
        // A fresh queue every 5 requests: the test queues hold 16 descriptors.
        for _ in 0..600 {
            let tq = TestQueue::new();
            let mut h = handler(&tq, &b);
            for i in 0..5u16 {
                let kind = [T_IN, T_OUT, T_FLUSH, T_GET_ID, 3, 77, u32::MAX][(next() % 7) as usize];
                let sector = match next() % 3 {
                    0 => next() % 20,
                    1 => next(),
                    _ => u64::MAX - next() % 4,
                };
                header(&tq, kind, sector);
                let dlen = [0u32, 1, 511, 512, 4096, 8192, 1 << 20][(next() % 7) as usize];
                let w = |f: u64| if f.is_multiple_of(2) { W } else { 0 };
                let hdr_len = [16u32, 4, 0, 17][(next() % 4) as usize];
                let mut chain = vec![(HDR, hdr_len, w(next() % 5))];
                if next() % 4 != 0 {
                    chain.push((DATA, dlen, w(next())));
                }
                if next() % 4 != 0 {
                    chain.push((STATUS, 1, W));
                }
                tq.add_chain(i * 3, &chain);
                h.process();
                // Every request is returned to the driver, answered or not.
                assert!(tq.used(i).is_some());
            }
        }
        assert_eq!(
            std::fs::metadata(f.path()).unwrap().len(),
            8192,
            "the image grew"
        );
    }
}
