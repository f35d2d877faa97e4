//! KVM state: the VM (memory slots, irqchip, PIT) and its vCPUs (one thread each), and
//! saving and restoring what KVM holds for them (snapshots).

pub mod state;
pub mod vcpu;
pub mod vm;
