//! Counters of a virtio-net device, read through the VMM API's metrics (serialised as
//! they are named here).

use serde::Serialize;

use crate::devices::virtio::Counter;

/// Per-device counters; bytes are frame bytes, without the vnet header.
#[derive(Debug, Default, Serialize)]
pub struct NetMetrics {
    /// Frames given to the guest.
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    /// Frames from the tap that did not fit in what the guest posted, or were runts.
    pub rx_dropped: Counter,
    /// RX chains returned unused: read-only, outside guest memory, smaller than a header.
    pub rx_bad_chains: Counter,
    /// Frames written to the tap.
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Frames too large, or refused by the tap.
    pub tx_dropped: Counter,
    /// TX chains with writable descriptors, outside guest memory, or without a frame.
    pub tx_bad_chains: Counter,
    /// Tap reads that failed (other than "nothing to read") and tap error events.
    pub tap_errors: Counter,
}

impl NetMetrics {
    /// The counters as JSON for the metrics API.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_every_counter_by_name() {
        let m = NetMetrics::default();
        m.rx_packets.add(3);
        m.tap_errors.inc();
        let v = m.to_json();
        assert_eq!(v["rx_packets"], 3);
        assert_eq!(v["tap_errors"], 1);
        assert_eq!(v.as_object().unwrap().len(), 9);
    }
}
