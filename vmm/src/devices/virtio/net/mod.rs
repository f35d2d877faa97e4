//! virtio-net (virtio 1.2, 5.1) on a host tap: one RX and one TX queue, no control
//! queue. See [`tap`] for the host end and [`worker`] for how frames move.
//!
//! Offered: VERSION_1, CSUM and HOST_TSO4/6 (the guest may send partial checksums and
//! GSO frames: the tap takes them with their vnet header), GUEST_CSUM and GUEST_TSO4/6
//! (the tap is told with TUNSETOFFLOAD, at activation, to send them only when the driver
//! accepted them), MRG_RXBUF, MAC, STATUS (link always up), MTU when configured, and
//! RING_EVENT_IDX.

pub mod metrics;
pub mod tap;
pub mod worker;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use virtio_queue::QueueT;

use super::state::{DeviceStateError, QueueSnapshot};
use super::worker::WorkerSlot;
use super::{
    ActivateContext, ActivateError, TYPE_NET, VIRTIO_F_VERSION_1, VirtioDevice, read_config_bytes,
};
use metrics::NetMetrics;
use tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, Tap, TapError};
use worker::NetWorker;

const QUEUE_SIZE: u16 = 256;

// Feature bits (5.1.3).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// VIRTIO_F_RING_EVENT_IDX (6).
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;

/// `status` in the configuration space (5.1.4).
const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Why the device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("net[{index}]: cannot use the tap")]
    Tap {
        index: usize,
        #[source]
        source: TapError,
    },
}

/// Where the tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Created (or attached) by name.
    Name(String),
    /// Opened by the runtime and inherited.
    Fd(i32),
}

/// The device.
#[derive(Debug)]
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    mtu: Option<u16>,
    metrics: Arc<NetMetrics>,
    worker: WorkerSlot<NetWorker>,
}

/// A random locally administered unicast MAC address (IEEE 802: bit 1 of the first octet
/// set, bit 0 clear).
pub fn random_mac() -> [u8; 6] {
    // RandomState's keys are random per process (from the OS): no unsafe, no file.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    let r = h.finish().to_le_bytes();
    [(r[0] & 0xfc) | 0x02, r[1], r[2], r[3], r[4], r[5]]
}

impl Net {
    /// Opens the tap of `net[index]` (before the seccomp filter: TUNSETIFF and
    /// TUNSETVNETHDRSZ are not in it).
    pub fn new(
        index: usize,
        source: &TapSource,
        mac: [u8; 6],
        mtu: Option<u16>,
    ) -> Result<Net, NetError> {
        let tap = match source {
            TapSource::Name(n) => Tap::open(n),
            TapSource::Fd(fd) => Tap::from_inherited_fd(*fd),
        }
        .map_err(|source| NetError::Tap { index, source })?;
        tracing::debug!(tap = tap.name(), ?mac, ?mtu, "net device");
        Ok(Net::with_tap(tap, mac, mtu))
    }

    /// A device on an open tap.
    pub fn with_tap(tap: Tap, mac: [u8; 6], mtu: Option<u16>) -> Net {
        Net {
            tap,
            mac,
            mtu,
            metrics: Arc::default(),
            worker: WorkerSlot::new("virtio-net"),
        }
    }

    /// The configuration space (5.1.4): mac, status, max_virtqueue_pairs, mtu.
    fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        c
    }
}

/// The tap offloads that the driver's features allow (TUN_F_TSO* need TUN_F_CSUM).
pub fn tap_offloads(acked: u64) -> u32 {
    if acked & VIRTIO_NET_F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = TUN_F_CSUM;
    if acked & VIRTIO_NET_F_GUEST_TSO4 != 0 {
        f |= TUN_F_TSO4;
    }
    if acked & VIRTIO_NET_F_GUEST_TSO6 != 0 {
        f |= TUN_F_TSO6;
    }
    f
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn name(&self) -> &'static str {
        "net"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }
    fn features(&self) -> u64 {
        let mtu = if self.mtu.is_some() {
            VIRTIO_NET_F_MTU
        } else {
            0
        };
        VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | mtu
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let mut queues = ctx.queues.into_iter();
        let mut evts = ctx.queue_evts.into_iter();
        let (Some(mut rxq), Some(mut txq), Some(rx_evt), Some(tx_evt)) =
            (queues.next(), queues.next(), evts.next(), evts.next())
        else {
            return Err(ActivateError::QueueCount { need: 2, got });
        };
        let acked = ctx.acked_features;
        let event_idx = acked & VIRTIO_F_RING_EVENT_IDX != 0;
        rxq.set_event_idx(event_idx);
        txq.set_event_idx(event_idx);
        let offloads = tap_offloads(acked);
        // Without it the tap sends plain frames, which every driver takes: not fatal.
        if let Err(e) = self.tap.set_offload(offloads) {
            tracing::warn!(tap = self.tap.name(), offloads, error = %e, "TUNSETOFFLOAD failed");
        }
        let tap = self.tap.try_clone().map_err(ActivateError::Worker)?;
        let mergeable = acked & VIRTIO_NET_F_MRG_RXBUF != 0;
        tracing::debug!(
            tap = self.tap.name(),
            acked,
            offloads,
            mergeable,
            event_idx,
            "net activated"
        );
        let w = NetWorker::new(
            ctx.mem,
            rxq,
            txq,
            rx_evt,
            tx_evt,
            tap,
            ctx.interrupt,
            self.metrics.clone(),
            mergeable,
        );
        self.worker.start(w).map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn pause(&mut self) -> Result<Vec<(usize, QueueSnapshot)>, DeviceStateError> {
        let w = self.worker.pause(self.name())?;
        w.quiesce();
        let [rx, tx] = w.queues();
        Ok(vec![(0, QueueSnapshot::of(rx)), (1, QueueSnapshot::of(tx))])
    }

    fn resume(&mut self) -> Result<(), ActivateError> {
        self.worker.resume().map_err(ActivateError::Worker)
    }

    /// What the driver reads from the configuration space: a clone's NIC has its own
    /// MAC (the transport then raises a configuration change; the guest's agent gives
    /// the interface that address, docs/snapshots.md).
    fn save(&self) -> serde_json::Value {
        serde_json::json!({"mac": self.mac, "mtu": self.mtu})
    }

    fn metrics(&self) -> serde_json::Value {
        self.metrics.to_json()
    }
}

#[cfg(test)]
mod tests;
