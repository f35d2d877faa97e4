//! virtio-blk counters.

use serde::Serialize;

use crate::devices::virtio::Counter;

/// The disk's counters, as the metrics API shows them.
#[derive(Debug, Default, Serialize)]
pub struct Metrics {
    pub reads: Counter,
    pub writes: Counter,
    pub flushes: Counter,
    pub read_bytes: Counter,
    pub write_bytes: Counter,
    /// Requests answered IOERR, for any reason (the guest's bad ones included).
    pub errors: Counter,
    /// Reads, writes and flushes the host's file refused (a full disk, an I/O error):
    /// the guest gets IOERR.
    pub host_errors: Counter,
}
