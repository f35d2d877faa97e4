//! Tiny hand-written guests run directly on this host's /dev/kvm: a few instructions
//! each, which even PVM (these machines) or nested emulation runs. They check the vCPU
//! loop, the port-I/O and MMIO buses, the serial console, the i8042 reset and crash
//! reporting without booting a kernel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::io::Write;
use std::sync::{Arc, Mutex};

use husk_vmm::boot::regs;
use husk_vmm::devices::ExitReason;
use husk_vmm::devices::serial::SerialOut;
use husk_vmm::devices::virtio::rng::Rng;
use husk_vmm::machine::Machine;
use vm_memory::{Bytes, GuestAddress};

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A machine with a captured console, or `None` (and a loud SKIPPED line) without KVM.
fn machine(vcpus: u8) -> Option<(Machine, Console)> {
    if !std::path::Path::new("/dev/kvm").exists() {
        if std::env::var("HUSK_REQUIRE_KVM").is_ok_and(|v| v == "1") {
            panic!("/dev/kvm is required (HUSK_REQUIRE_KVM=1) but missing");
        }
        eprintln!("SKIPPED: this host has no /dev/kvm");
        return None;
    }
    let console = Console::default();
    let m = Machine::bare(16, false, vcpus, SerialOut::new(Box::new(console.clone()))).unwrap();
    Some((m, console))
}

const CODE_ADDR: u64 = 0x1000;

/// Real mode: print "hi" on COM1, then reset through the i8042.
#[test]
fn real_mode_guest_prints_and_resets() {
    let Some((m, console)) = machine(1) else {
        return;
    };
    let code: &[u8] = &[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'h', // mov al, 'h'
        0xee, // out dx, al
        0xb0, b'i', 0xee, // mov al, 'i'; out dx, al
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al  (i8042: pulse reset)
        0xf4, // hlt (not reached)
    ];
    m.memory()
        .write_slice(code, GuestAddress(CODE_ADDR))
        .unwrap();
    let vcpu = &m.vcpus()[0];
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut r = vcpu.get_regs().unwrap();
    r.rip = CODE_ADDR;
    r.rflags = 2;
    vcpu.set_regs(&r).unwrap();
    assert_eq!(m.run().unwrap(), ExitReason::Reset);
    assert_eq!(&*console.0.lock().unwrap(), b"hi");
}

/// Long mode (our boot setup), reading the first virtio-mmio window's magic value and
/// printing its first two bytes ("vi" of "virt"), then powering off through the ACPI
/// sleep control register.
#[test]
fn long_mode_guest_reads_a_virtio_mmio_register() {
    let Some((mut m, console)) = machine(1) else {
        return;
    };
    m.add_virtio(Box::new(Rng::new())).unwrap();
    let mem = m.memory();
    // Our page tables map the first GiB; map 3-4 GiB too (PDPT[3] -> a PD at 0xc000).
    mem.write_obj(0xc000u64 | 3, GuestAddress(0xa000 + 3 * 8))
        .unwrap();
    for i in 0..512u64 {
        let addr = 0xc000_0000 + (i << 21);
        mem.write_obj(addr | 0x83, GuestAddress(0xc000 + i * 8))
            .unwrap();
    }
    let code: &[u8] = &[
        0xa1, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, // mov eax, [0xd0000000]
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0xc1, 0xe8, 0x08, // shr eax, 8
        0xee, // out dx, al
        0x66, 0xba, 0x00, 0x06, // mov dx, 0x600 (ACPI sleep control)
        0xb0, 0x34, // mov al, SLP_EN | (5 << 2)
        0xee, // out dx, al
        0xf4, // hlt (not reached)
    ];
    mem.write_slice(code, GuestAddress(CODE_ADDR)).unwrap();
    regs::setup_vcpu(&m.vcpus()[0], mem, CODE_ADDR).unwrap();
    assert_eq!(m.run().unwrap(), ExitReason::Poweroff);
    assert_eq!(&*console.0.lock().unwrap(), b"vi");
}

/// An invalid opcode with no usable IDT escalates to a triple fault: a guest crash.
#[test]
fn triple_fault_is_a_crash() {
    let Some((m, _)) = machine(1) else {
        return;
    };
    m.memory()
        .write_slice(&[0x0f, 0x0b], GuestAddress(CODE_ADDR)) // ud2
        .unwrap();
    regs::setup_vcpu(&m.vcpus()[0], m.memory(), CODE_ADDR).unwrap();
    match m.run().unwrap() {
        ExitReason::Crash(why) => assert!(why.contains("triple fault"), "{why}"),
        other => panic!("expected a crash, got {other:?}"),
    }
}
