//! virtio-blk (virtio 1.2, 5.2) on a raw image file: read, write, flush, get-id;
//! read-only when configured (writes fail with IOERR and VIRTIO_BLK_F_RO is offered).
//!
//! A request is a readable 16-byte header (type, reserved, sector), data buffers, and a
//! final writable status byte. Sector ranges past the end of the image, requests larger
//! than [`MAX_REQUEST_BYTES`] and malformed chains get IOERR, never a panic.

mod metrics;
mod request;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::queue_worker::QueueWorker;
use super::state::{DeviceStateError, QueueSnapshot};
use super::worker::WorkerSlot;
use super::{
    ActivateContext, ActivateError, TYPE_BLOCK, VIRTIO_F_VERSION_1, VirtioDevice, read_config_bytes,
};
use metrics::Metrics;
use request::{ID_BYTES, Server};

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

/// The device.
#[derive(Debug)]
pub struct Block {
    disk: Arc<File>,
    capacity_bytes: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    metrics: Arc<Metrics>,
    worker: WorkerSlot<QueueWorker<Server>>,
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
            worker: WorkerSlot::new("virtio-blk"),
        })
    }

    /// What serves the device's queue (its worker's, the tests' and the fuzz targets').
    #[doc(hidden)]
    pub fn server(&self) -> Server {
        Server {
            disk: self.disk.clone(),
            capacity_bytes: self.capacity_bytes,
            read_only: self.read_only,
            id: self.id,
            metrics: self.metrics.clone(),
        }
    }

    fn config(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        // capacity (in sectors), size_max (unused), seg_max.
        c[..8].copy_from_slice(&(self.capacity_bytes / SECTOR_SIZE).to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c
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
        let w = QueueWorker::new(ctx, self.server())?;
        self.worker.start(w).map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn pause(&mut self) -> Result<Vec<(usize, QueueSnapshot)>, DeviceStateError> {
        let w = self.worker.pause(self.name())?;
        Ok(vec![(0, QueueSnapshot::of(&w.queue))])
    }

    fn resume(&mut self) -> Result<(), ActivateError> {
        self.worker.resume().map_err(ActivateError::Worker)
    }

    /// What the driver sees: a restored VM's disk may be another size (a clone's own
    /// root filesystem in place of its template's placeholder), which the transport
    /// then announces as a configuration change.
    fn save(&self) -> serde_json::Value {
        serde_json::json!({"capacity_bytes": self.capacity_bytes, "read_only": self.read_only})
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::to_value(&*self.metrics).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
