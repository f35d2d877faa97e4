//! virtio-vsock (virtio 1.2, 5.10), "hybrid": the guest's AF_VSOCK streams meet host
//! AF_UNIX sockets, as in Firecracker (see [`muxer`] for the two directions).
//!
//! Three queues: RX (device → guest), TX (guest → device), event (only a transport reset,
//! sent when the device serves again after a snapshot's pause, or in a restored VM:
//! connections are not saved, and the guest drops its own). Both packet
//! layouts are accepted: header and data in one descriptor (Linux ≥ 6.2) or split
//! (virtio-vsock's `VsockPacket` parses either).

pub mod conn;
pub mod host;
pub mod muxer;
pub mod packet;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::state::{DeviceStateError, QueueSnapshot};
use super::worker::WorkerSlot;
use super::{
    ActivateContext, ActivateError, Counter, TYPE_VSOCK, VIRTIO_F_VERSION_1, VirtioDevice,
    read_config_bytes,
};
use muxer::Muxer;

const QUEUE_SIZE: u16 = 256;

/// Why the vsock device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("the vsock socket {0} is in use by another process")]
    InUse(PathBuf),
    #[error("cannot create the vsock socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Counters for the metrics API.
#[derive(Debug, Default, serde::Serialize)]
pub struct Metrics {
    pub tx_packets: Counter,
    pub rx_packets: Counter,
    pub tx_bytes: Counter,
    pub rx_bytes: Counter,
    pub conns_opened: Counter,
    pub conns_closed: Counter,
    /// Connections refused: the limit reached, or the host listener absent or full.
    pub conns_refused: Counter,
    /// Connections ended by a timeout (handshake, or close not answered by the guest).
    pub conns_timed_out: Counter,
    /// Times the listener paused because accept() ran out of descriptors or memory.
    pub accept_backoffs: Counter,
    pub rst_sent: Counter,
    pub bad_packets: Counter,
}

/// The device. Owns its listening socket, which it removes when dropped.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    metrics: Arc<Metrics>,
    /// Most connections at once, within this process's file limit.
    max_conns: usize,
    worker: WorkerSlot<Muxer>,
}

impl Vsock {
    /// Listens on `uds` for host-initiated connections. A stale socket file (nobody
    /// listening) is replaced; a live one is an error.
    pub fn new(cid: u32, uds: &Path) -> Result<Vsock, VsockError> {
        if uds.exists() {
            if UnixStream::connect(uds).is_ok() {
                return Err(VsockError::InUse(uds.to_path_buf()));
            }
            let _ = std::fs::remove_file(uds);
        }
        let bind_err = |source| VsockError::Bind {
            path: uds.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(uds).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Vsock {
            cid: u64::from(cid),
            uds: uds.to_path_buf(),
            listener,
            metrics: Arc::default(),
            max_conns: host::connection_limit(muxer::MAX_CONNS),
            worker: WorkerSlot::new("virtio-vsock"),
        })
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.worker.stop();
        let _ = std::fs::remove_file(&self.uds);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn name(&self) -> &'static str {
        "vsock"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let m = self.muxer(ctx)?;
        self.worker.start(m).map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        // Dropping the muxer closes every connection.
        self.worker.stop();
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::to_value(&*self.metrics).unwrap_or_default()
    }

    fn pause(&mut self) -> Result<Vec<(usize, QueueSnapshot)>, DeviceStateError> {
        let m = self.worker.pause(self.name())?;
        m.forget_connections();
        Ok(m.queues()
            .into_iter()
            .map(|(i, q)| (i, QueueSnapshot::of(q)))
            .collect())
    }

    fn resume(&mut self) -> Result<(), ActivateError> {
        if let Some(m) = self.worker.paused() {
            m.send_transport_reset();
        }
        self.worker.resume().map_err(ActivateError::Worker)
    }

    fn restore(
        &mut self,
        _state: &serde_json::Value,
        ctx: ActivateContext,
    ) -> Result<(), ActivateError> {
        let mut m = self.muxer(ctx)?;
        m.send_transport_reset();
        self.worker.start(m).map_err(ActivateError::Worker)
    }
}

impl Vsock {
    fn muxer(&mut self, ctx: ActivateContext) -> Result<Muxer, ActivateError> {
        let got = ctx.queues.len();
        let mut queues = ctx.queues.into_iter();
        let (Some(rxq), Some(txq), Some(evq)) = (queues.next(), queues.next(), queues.next())
        else {
            return Err(ActivateError::QueueCount { need: 3, got });
        };
        if ctx.queue_evts.len() != 3 {
            return Err(ActivateError::QueueCount {
                need: 3,
                got: ctx.queue_evts.len(),
            });
        }
        let listener = self.listener.try_clone().map_err(ActivateError::Worker)?;
        let mut m = Muxer::new(
            ctx.mem,
            rxq,
            txq,
            ctx.queue_evts,
            ctx.interrupt,
            self.cid,
            self.uds.clone(),
            listener,
            self.metrics.clone(),
            self.max_conns,
        );
        m.evq = Some(evq);
        Ok(m)
    }
}
