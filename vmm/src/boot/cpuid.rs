//! The CPUID a vCPU sees: KVM_GET_SUPPORTED_CPUID, adjusted per vCPU.
//!
//! - leaf 0x1: initial APIC id, logical processor count, the hypervisor bit;
//! - leaf 0xb and 0x1f (extended topology): x2APIC id, one thread per core;
//! - leaf 0x4 (Intel cache topology): cores per package;
//! - the TSC-deadline timer bit (leaf 0x1 ECX[24]), which KVM leaves for userspace to
//!   set when it emulates that timer (KVM_CAP_TSC_DEADLINE_TIMER); without it the guest
//!   falls back to the one-shot LAPIC timer.
//!
//! Nothing here needs NRIPS, AVIC or TSC scaling (the lab's emulated SVM has none).

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

/// ECX bit 31 of leaf 1: "running on a hypervisor".
const HYPERVISOR_BIT: u32 = 1 << 31;
/// EDX bit 28 of leaf 1: HTT, "EBX[23:16] is valid".
const HTT_BIT: u32 = 1 << 28;
/// ECX bit 24 of leaf 1: TSC-deadline mode of the LAPIC timer.
const TSC_DEADLINE_BIT: u32 = 1 << 24;

/// Adjusts `cpuid` for vCPU `index` of `count`; `tsc_deadline` when KVM emulates the
/// TSC-deadline timer.
pub fn filter(cpuid: &mut CpuId, index: u8, count: u8, tsc_deadline: bool) {
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                e.ecx |= HYPERVISOR_BIT;
                if tsc_deadline {
                    e.ecx |= TSC_DEADLINE_BIT;
                }
                if count > 1 {
                    e.edx |= HTT_BIT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1.
                e.eax = (e.eax & 0x03ff_ffff) | (u32::from(count.saturating_sub(1)) << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                // Sub-leaf 0: SMT level, one thread per core; sub-leaf 1: core level.
                e.edx = u32::from(index);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Bits needed to count the cores: ceil(log2(count)).
                        e.eax = u32::from(count).next_power_of_two().trailing_zeros();
                        e.ebx = u32::from(count);
                        e.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_ids_and_topology_follow_the_vcpu() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_1234,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        filter(&mut c, 2, 4, true);
        let e = c.as_slice();
        assert_eq!(e[0].ebx, 0x0204_1234);
        assert_ne!(e[0].ecx & HYPERVISOR_BIT, 0);
        assert_ne!(e[0].ecx & TSC_DEADLINE_BIT, 0);
        assert_eq!((e[1].edx, e[1].ebx), (2, 1));
        assert_eq!((e[2].eax, e[2].ebx, e[2].edx), (2, 4, 2));
    }
}
