//! The device model's pause/save/restore seam (VM snapshots, docs/snapshots.md).
//!
//! Pausing a device joins its worker and keeps the worker's state, so that everything
//! the device did is in guest memory and its queues' progress is final. The transport
//! then saves its registers and each queue as a [`QueueSnapshot`]; the device adds its
//! own state (a JSON value; most devices have none). Restoring builds the queues back
//! from the snapshot — checked again, since a state file is input like any other — and
//! hands them to the device as an activation would.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

/// Why a device could not be paused or restored.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    #[error("{0} devices cannot be saved in a snapshot: {1}")]
    NotSupported(&'static str, &'static str),
    #[error("{0}: the device's worker had stopped (it failed earlier); its state is lost")]
    WorkerGone(&'static str),
    #[error("{device}: saved queue {index} is invalid")]
    Queue {
        device: &'static str,
        index: usize,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("{device}: the snapshot has {saved} queues, the device has {have}")]
    QueueCount {
        device: &'static str,
        saved: usize,
        have: usize,
    },
    #[error("{device} device cannot be saved now: {why}")]
    InUse { device: &'static str, why: String },
    #[error("{device}: bad device state in the snapshot: {why}")]
    BadState { device: &'static str, why: String },
}

/// One queue: what the driver set up and how far the device got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
}

impl QueueSnapshot {
    pub fn of(q: &Queue) -> QueueSnapshot {
        let s = q.state();
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
        }
    }

    /// Progress made by a device's own copy of the queue, over the transport's copy
    /// (which holds only the registers).
    pub fn with_progress(mut self, device_copy: &Queue) -> QueueSnapshot {
        self.next_avail = device_copy.next_avail();
        self.next_used = device_copy.next_used();
        self.event_idx_enabled = device_copy.event_idx_enabled();
        self
    }

    /// The queue back, checked by virtio-queue (sizes, alignment); addresses are
    /// checked against guest memory when the device is activated.
    pub fn to_queue(&self, device: &'static str, index: usize) -> Result<Queue, DeviceStateError> {
        let s = QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        Queue::try_from(s).map_err(|source| DeviceStateError::Queue {
            device,
            index,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_round_trips() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(128);
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x2000), Some(0));
        q.set_used_ring_address(Some(0x3000), Some(0));
        q.set_ready(true);
        q.set_next_avail(7);
        q.set_next_used(5);
        let s = QueueSnapshot::of(&q);
        let json = serde_json::to_string(&s).unwrap();
        let back: QueueSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let q2 = back.to_queue("test", 0).unwrap();
        assert_eq!(q2.state(), q.state());
    }

    #[test]
    fn bad_saved_queue_is_an_error() {
        let s = QueueSnapshot {
            max_size: 256,
            size: 100, // not a power of two
            ..Default::default()
        };
        let e = s.to_queue("block", 0).unwrap_err();
        assert!(e.to_string().contains("block: saved queue 0"), "{e}");
        let s = QueueSnapshot {
            max_size: 256,
            size: 128,
            desc_table: 0x1001, // misaligned
            ..Default::default()
        };
        assert!(s.to_queue("block", 1).is_err());
    }
}
