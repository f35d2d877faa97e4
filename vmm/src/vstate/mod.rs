//! KVM state: the VM (memory slots, irqchip, PIT) and its vCPUs (one thread each).

pub mod vcpu;
pub mod vm;
