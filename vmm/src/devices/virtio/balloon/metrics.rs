//! virtio-balloon counters.

use serde::Serialize;

use crate::devices::virtio::Counter;

/// The balloon's counters, as the metrics API shows them.
#[derive(Debug, Default, Serialize)]
pub struct Metrics {
    /// Chains on the inflate queue (returned unserved: husk never asks to inflate).
    pub inflate_chains: Counter,
    /// Chains on the deflate queue (returned: nothing was ever inflated).
    pub deflate_chains: Counter,
    /// Free page reports (chains on the reporting queue).
    pub reports: Counter,
    /// Ranges released to the host.
    pub reported_ranges: Counter,
    /// Bytes released to the host.
    pub reported_bytes: Counter,
    /// Ranges refused: empty, unaligned, outside guest RAM, or not device-writable.
    pub bad_ranges: Counter,
    /// Ranges the host failed to release (madvise refused).
    pub release_errors: Counter,
}
