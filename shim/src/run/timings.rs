//! How long each phase of a run took.

use std::time::Duration;

/// Phase times of a run, for `--timings` and the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub image: Duration,
    /// Making the scratch disk (sparse file + mkfs.ext4).
    pub scratch: Duration,
    pub vm_start: Duration,
    pub agent_ready: Duration,
    pub guest_uptime: Duration,
    pub container_start: Duration,
    pub run: Duration,
    pub stop: Duration,
    /// CNI ADD (with the namespace), the tap and its redirect, the guest's interface
    /// and routes (agent), CNI DEL with the namespace's removal.
    pub cni_add: Duration,
    pub tap: Duration,
    pub guest_net: Duration,
    pub cni_del: Duration,
    /// Building the VM template (first use of a VM shape).
    pub template_build: Duration,
    /// The VM was restored from a template.
    pub restored: bool,
}

impl Timings {
    pub fn line(&self) -> String {
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        let (vm, ready) = if self.restored {
            (
                format!(
                    "VM restored from a template (template build {})",
                    s(self.template_build)
                ),
                "restore + agent ready",
            )
        } else {
            ("VM booted".to_string(), "kernel boot + agent ready")
        };
        format!(
            "image {}, scratch disk {}, {vm}, VM start {}, {ready} {} (guest uptime {}), container start {}, run {}, stop {}, CNI ADD {}, tap {}, guest network {}, CNI DEL {}",
            s(self.image),
            s(self.scratch),
            s(self.vm_start),
            s(self.agent_ready),
            s(self.guest_uptime),
            s(self.container_start),
            s(self.run),
            s(self.stop),
            s(self.cni_add),
            s(self.tap),
            s(self.guest_net),
            s(self.cni_del)
        )
    }
}
