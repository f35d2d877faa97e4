//! Counters of one virtio-fs device, read through the VMM's metrics API.

use serde::Serialize;

use crate::devices::virtio::Counter;

/// The live counters, shared with the interrupt-forwarding worker.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// Activations that reached the backend successfully.
    pub activations: Counter,
    /// Resets by the driver.
    pub resets: Counter,
    /// vhost-user requests that failed (the device is failed from the first one).
    pub backend_errors: Counter,
    /// Used-buffer notifications forwarded from the backend to the guest.
    pub interrupts: Counter,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FsMetricsSnapshot {
    pub activations: u64,
    pub resets: u64,
    pub backend_errors: u64,
    pub interrupts: u64,
}

impl FsMetrics {
    pub fn snapshot(&self) -> FsMetricsSnapshot {
        FsMetricsSnapshot {
            activations: self.activations.get(),
            resets: self.resets.get(),
            backend_errors: self.backend_errors.get(),
            interrupts: self.interrupts.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_serialises_every_counter() {
        let m = FsMetrics::default();
        m.activations.inc();
        m.backend_errors.add(2);
        let v = serde_json::to_value(m.snapshot()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"activations": 1, "resets": 0, "backend_errors": 2, "interrupts": 0})
        );
    }
}
