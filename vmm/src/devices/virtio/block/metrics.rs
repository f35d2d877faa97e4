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
    pub errors: Counter,
}
