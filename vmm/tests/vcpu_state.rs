//! Saving and restoring what KVM holds for a vCPU and its VM (issue #13), on this host's
//! /dev/kvm: a tiny real-mode guest runs a few iterations in one VM, its state and memory
//! move to a second VM, and it must carry on where it stopped. A few thousand guest
//! instructions at most, which even PVM (these machines) runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::time::Instant;

use husk_vmm::memory::create_guest_memory;
use husk_vmm::vstate::state::{StateError, VcpuState, VmState, complete_pending_io};
use husk_vmm::vstate::vm::Vm;
use kvm_bindings::kvm_msr_entry;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Whether KVM is here; a loud SKIPPED line when not (a failure with HUSK_REQUIRE_KVM=1).
fn have_kvm() -> bool {
    if std::path::Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("HUSK_REQUIRE_KVM").is_ok_and(|v| v == "1") {
        panic!("/dev/kvm is required (HUSK_REQUIRE_KVM=1) but missing");
    }
    eprintln!("SKIPPED: this host has no /dev/kvm");
    false
}

const MEM_MIB: u64 = 16;
const CODE_ADDR: u64 = 0x1000;
const COUNTER_ADDR: u64 = 0x2000;
const SUM_ADDR: u64 = 0x2002;
const OUT_PORT: u16 = 0x80;
const IN_PORT: u16 = 0x81;
/// What the guest writes to the master PIC's mask register, in KVM's VM state.
const PIC_MASK: u8 = 0xfb;

/// Real mode, at CODE_ADDR, DS = 0:
/// ```text
///       mov al, 0xfb
///       out 0x21, al                ; the master PIC's mask (KVM's PIC, no exit)
/// loop: inc bx                      ; the iteration number
///       inc word [0x2000]           ; the same, in memory
///       mov ax, bx
///       out 0x80, al                ; tell the host
///       in al, 0x81                 ; the host answers 0x10 + iteration
///       add byte [0x2002], al       ; the sum of the answers, in memory
///       jmp loop
/// ```
const GUEST: &[u8] = &[
    0xb0, PIC_MASK, // mov al, 0xfb
    0xe6, 0x21, // out 0x21, al
    0x43, // inc bx
    0xff, 0x06, 0x00, 0x20, // inc word [0x2000]
    0x89, 0xd8, // mov ax, bx
    0xe6, 0x80, // out 0x80, al
    0xe4, 0x81, // in al, 0x81
    0x00, 0x06, 0x02, 0x20, // add [0x2002], al
    0xeb, 0xef, // jmp loop (-17)
];

/// What the host answers the IN of iteration `i`.
fn answer(i: u8) -> u8 {
    0x10 + i
}

/// The sum of the answers to iterations 1..=n.
fn sum_of_answers(n: u8) -> u8 {
    (1..=n).map(answer).sum()
}

struct Guest {
    vm: Vm,
    mem: GuestMemoryMmap,
    vcpu: VcpuFd,
}

/// A VM with one vCPU, not started; its memory is `mem`.
fn new_vm(mem: GuestMemoryMmap) -> Guest {
    let vm = Vm::new(&mem).unwrap();
    let vcpu = vm.create_vcpu(0, 1).unwrap();
    Guest { vm, mem, vcpu }
}

/// A VM whose vCPU is about to run GUEST.
fn loaded_guest() -> Guest {
    let g = new_vm(create_guest_memory(MEM_MIB, false).unwrap());
    g.mem.write_slice(GUEST, GuestAddress(CODE_ADDR)).unwrap();
    let mut sregs = g.vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    g.vcpu.set_sregs(&sregs).unwrap();
    let mut r = g.vcpu.get_regs().unwrap();
    r.rip = CODE_ADDR;
    r.rflags = 2;
    r.rbx = 0;
    g.vcpu.set_regs(&r).unwrap();
    g
}

#[derive(Debug, PartialEq)]
enum Exit {
    Out(u8),
    /// The IN was answered (KVM applies the answer on the next KVM_RUN).
    In,
}

/// Runs the vCPU to its next port exit; an IN is answered with `in_value`.
fn step(vcpu: &mut VcpuFd, in_value: u8) -> Exit {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(OUT_PORT, data)) => return Exit::Out(data[0]),
            Ok(VcpuExit::IoIn(IN_PORT, data)) => {
                data[0] = in_value;
                return Exit::In;
            }
            Ok(VcpuExit::Intr) => {}
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Ok(other) => panic!("unexpected vCPU exit {other:?}"),
            Err(e) => panic!("KVM_RUN failed: {e}"),
        }
    }
}

/// Iterations `range` of the guest: each an OUT of its number, then its IN answered.
fn run_iterations(vcpu: &mut VcpuFd, range: std::ops::RangeInclusive<u8>) {
    for i in range {
        assert_eq!(step(vcpu, 0), Exit::Out(i), "iteration {i}'s OUT");
        assert_eq!(step(vcpu, answer(i)), Exit::In, "iteration {i}'s IN");
    }
}

fn pic_mask(s: &VmState) -> u8 {
    // SAFETY: the master PIC's chip_id (KVM_IRQCHIP_PIC_MASTER) says the union holds
    // the PIC's state, and every bit pattern is a valid kvm_pic_state.
    unsafe { s.pic_master.chip.pic.imr }
}

fn read_u16(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

fn read_u8(mem: &GuestMemoryMmap, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

/// A guest stopped in iteration 5's IN (answered, not yet applied), its I/O completed,
/// and its state saved.
fn saved_guest() -> (Guest, VcpuState, VmState) {
    let mut g = loaded_guest();
    run_iterations(&mut g.vcpu, 1..=5);
    complete_pending_io(&mut g.vcpu).unwrap();
    let msrs = Vm::msrs_to_save().unwrap();
    let vcpu_state = VcpuState::save(&g.vcpu, &msrs).unwrap();
    let vm_state = g.vm.save_state().unwrap();
    (g, vcpu_state, vm_state)
}

/// A copy of `from`'s memory, region by region.
fn copy_memory(from: &GuestMemoryMmap) -> GuestMemoryMmap {
    let to = create_guest_memory(MEM_MIB, false).unwrap();
    for r in from.iter() {
        let mut buf = vec![0u8; usize::try_from(r.len()).unwrap()];
        from.read_slice(&mut buf, r.start_addr()).unwrap();
        to.write_slice(&buf, r.start_addr()).unwrap();
    }
    to
}

#[test]
fn restored_vcpu_continues_where_the_saved_one_stopped() {
    if !have_kvm() {
        return;
    }
    let start = Instant::now();
    let (g, vcpu_state, vm_state) = saved_guest();
    eprintln!(
        "saved after 5 iterations: rip {:#x}, rax {:#x}, {} MSRs, TSC {:?} kHz",
        vcpu_state.regs.rip,
        vcpu_state.regs.rax,
        vcpu_state.msrs.len(),
        vcpu_state.tsc_khz
    );
    // The IN's answer reached AL: complete_pending_io applied it.
    assert_eq!(vcpu_state.regs.rax & 0xff, u64::from(answer(5)));
    assert_eq!(read_u16(&g.mem, COUNTER_ADDR), 5);
    assert_eq!(read_u8(&g.mem, SUM_ADDR), sum_of_answers(4));

    assert_eq!(pic_mask(&vm_state), PIC_MASK);

    let mut g2 = new_vm(copy_memory(&g.mem));
    drop(g); // the first VM is gone before the second runs
    assert_ne!(pic_mask(&g2.vm.save_state().unwrap()), PIC_MASK);
    g2.vm.restore_state(&vm_state).unwrap();
    vcpu_state.restore(&g2.vcpu).unwrap();
    let restored = g2.vm.save_state().unwrap();
    assert_eq!(pic_mask(&restored), PIC_MASK);
    // kvmclock carries on from the saved value (a fresh VM's starts at about 0, and
    // this one was created after the first VM's clock was read).
    assert!(
        restored.clock.clock >= vm_state.clock.clock,
        "clock went back: {} < {}",
        restored.clock.clock,
        vm_state.clock.clock
    );
    assert_eq!(step(&mut g2.vcpu, 0), Exit::Out(6));
    assert_eq!(read_u16(&g2.mem, COUNTER_ADDR), 6);
    assert_eq!(read_u8(&g2.mem, SUM_ADDR), sum_of_answers(5));
    assert_eq!(step(&mut g2.vcpu, answer(6)), Exit::In);
    run_iterations(&mut g2.vcpu, 7..=8);
    assert_eq!(step(&mut g2.vcpu, 0), Exit::Out(9));
    assert_eq!(read_u16(&g2.mem, COUNTER_ADDR), 9);
    assert_eq!(read_u8(&g2.mem, SUM_ADDR), sum_of_answers(8));
    eprintln!("took {:?}", start.elapsed());
}

#[test]
fn state_round_trips_through_json() {
    if !have_kvm() {
        return;
    }
    let (_g, vcpu_state, vm_state) = saved_guest();
    let json = serde_json::to_vec(&vcpu_state).unwrap();
    let back: VcpuState = serde_json::from_slice(&json).unwrap();
    assert_eq!(back.regs, vcpu_state.regs);
    assert_eq!(back.sregs, vcpu_state.sregs);
    assert_eq!(back.lapic, vcpu_state.lapic);
    assert_eq!(back.xsave.region, vcpu_state.xsave.region);
    assert_eq!(back.xcrs, vcpu_state.xcrs);
    assert_eq!(back.debugregs, vcpu_state.debugregs);
    assert_eq!(back.msrs, vcpu_state.msrs);
    assert_eq!(back.events, vcpu_state.events);
    assert_eq!(back.mp_state, vcpu_state.mp_state);
    assert_eq!(back.tsc_khz, vcpu_state.tsc_khz);
    // And the clone (written by hand) is the same state.
    assert_eq!(
        serde_json::to_vec(&vcpu_state.clone()).unwrap(),
        serde_json::to_vec(&back).unwrap()
    );

    let json = serde_json::to_vec(&vm_state).unwrap();
    let back: VmState = serde_json::from_slice(&json).unwrap();
    // kvm_irqchip has no PartialEq (a union inside): compare the serialised bytes.
    assert_eq!(serde_json::to_vec(&back).unwrap(), json);
    assert_eq!(back.pit, vm_state.pit);
    assert_eq!(back.clock, vm_state.clock);
    assert_eq!(back.ioapic.chip_id, vm_state.ioapic.chip_id);
}

#[test]
fn restoring_an_msr_kvm_does_not_know_fails_naming_it() {
    if !have_kvm() {
        return;
    }
    let (g, mut vcpu_state, _) = saved_guest();
    vcpu_state.msrs.push(kvm_msr_entry {
        index: 0xdead_beef,
        data: 1,
        ..Default::default()
    });
    let g2 = new_vm(copy_memory(&g.mem));
    let err = vcpu_state.restore(&g2.vcpu).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::MsrNotSet {
                index: 0xdead_beef,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("0xdeadbeef"), "{err}");
    eprintln!("restore refused: {err}");
}

#[test]
fn saving_an_msr_kvm_does_not_know_fails_naming_it() {
    if !have_kvm() {
        return;
    }
    let g = loaded_guest();
    let mut msrs = Vm::msrs_to_save().unwrap();
    msrs.insert(1, 0xdead_beef);
    let err = VcpuState::save(&g.vcpu, &msrs).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::MsrNotRead {
                index: 0xdead_beef,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("0xdeadbeef"), "{err}");
}

#[test]
fn msrs_to_save_is_bounded_and_ends_with_the_tsc_deadline() {
    if !have_kvm() {
        return;
    }
    let msrs = Vm::msrs_to_save().unwrap();
    eprintln!("{} MSRs to save: {:x?}", msrs.len(), msrs);
    assert!(!msrs.is_empty() && msrs.len() <= 512, "{}", msrs.len());
    let mut sorted = msrs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), msrs.len(), "an MSR twice");
    // EFER and the SYSCALL MSRs are always there on x86_64 hosts.
    assert!(msrs.contains(&0xc000_0082), "LSTAR missing");
    if let Some(pos) = msrs.iter().position(|&i| i == 0x6e0) {
        assert_eq!(pos, msrs.len() - 1, "IA32_TSC_DEADLINE not last");
    }
}

/// A TSC frequency the host cannot run at is an error naming both frequencies, not a
/// guest whose clock silently runs off. (KVM without hardware TSC scaling, PVM here,
/// refuses a rate below the host's and accepts a higher one by catching up.)
#[test]
fn a_tsc_frequency_kvm_refuses_is_an_error() {
    if !have_kvm() {
        return;
    }
    let (g, vcpu_state, vm_state) = saved_guest();
    let Some(host_khz) = vcpu_state.tsc_khz else {
        eprintln!("SKIPPED: KVM does not tell this host's TSC frequency");
        return;
    };
    let mut slower = vcpu_state.clone();
    slower.tsc_khz = Some(host_khz / 2);
    let g2 = new_vm(copy_memory(&g.mem));
    g2.vm.restore_state(&vm_state).unwrap();
    match slower.restore(&g2.vcpu) {
        Ok(()) => eprintln!("this host scales the TSC to {} kHz", host_khz / 2),
        Err(e @ StateError::TscScaling { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("{} kHz", host_khz / 2)), "{text}");
            assert!(text.contains(&host_khz.to_string()), "{text}");
            eprintln!("refused as it should be: {text}");
        }
        Err(other) => panic!("not the TSC error: {other:?}"),
    }
}

/// XSAVE state a 4 KiB kvm_xsave cannot hold (AMX tile data) is refused before anything
/// is written, not cut short.
#[test]
fn xsave_state_beyond_the_legacy_area_is_refused() {
    if !have_kvm() {
        return;
    }
    let (g, mut vcpu_state, _) = saved_guest();
    // XSTATE_BV (bytes 512..520): set XTILEDATA (bit 18).
    vcpu_state.xsave.region[128] |= 1 << 18;
    let g2 = new_vm(copy_memory(&g.mem));
    let before = g2.vcpu.get_regs().unwrap();
    let err = vcpu_state.restore(&g2.vcpu).unwrap_err();
    assert!(
        matches!(err, StateError::XsaveTooLarge { components } if components == 1 << 18),
        "{err:?}"
    );
    assert_eq!(
        g2.vcpu.get_regs().unwrap(),
        before,
        "registers written anyway"
    );
}
