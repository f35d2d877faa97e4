//! The state file: written, read back, and every kind of damage refused by name.

use super::*;
use crate::vstate::state::{VcpuState, VmState};

fn state() -> State {
    let vcpu = VcpuState {
        regs: Default::default(),
        sregs: Default::default(),
        xsave: Default::default(),
        xcrs: Default::default(),
        debugregs: Default::default(),
        lapic: Default::default(),
        msrs: vec![kvm_bindings::kvm_msr_entry {
            index: 0x10,
            data: 42,
            ..Default::default()
        }],
        events: Default::default(),
        mp_state: Default::default(),
        tsc_khz: Some(2_000_000),
    };
    State {
        vmm_version: vmm_version(),
        host_cpuid: "abc".into(),
        shape: Shape {
            vcpus: 1,
            memory_bytes: 256 << 20,
            devices: vec!["block".into()],
        },
        vm: VmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
            pit: Default::default(),
            clock: Default::default(),
        },
        vcpus: vec![vcpu],
        devices: vec![TransportSnapshot {
            device_type: 2,
            device: "block".into(),
            status: 15,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 1 << 32,
            queue_sel: 0,
            config_generation: 0,
            interrupt_status: 0,
            activated: true,
            queues: vec![Default::default()],
            device_state: serde_json::Value::Null,
        }],
        taken_at_ms: 1,
    }
}

fn written() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    write_state(dir.path(), &state()).unwrap();
    let bytes = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
    (dir, bytes)
}

fn rewrite(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join(STATE_FILE), bytes).unwrap();
}

#[test]
fn state_round_trips() {
    let (dir, bytes) = written();
    assert_eq!(&bytes[..8], MAGIC);
    let back = read_state(dir.path()).unwrap();
    assert_eq!(back.shape, state().shape);
    assert_eq!(back.devices, state().devices);
    assert_eq!(back.vcpus[0].msrs[0].data, 42);
    assert_eq!(back.vcpus[0].tsc_khz, Some(2_000_000));
    check_host(&back, dir.path(), "abc").unwrap();
    let e = check_host(&back, dir.path(), "other").unwrap_err();
    assert!(e.to_string().contains("other CPU features"), "{e}");
    // Never overwritten.
    assert!(write_state(dir.path(), &state()).is_err());
}

#[test]
fn damage_is_refused_by_name() {
    let (dir, bytes) = written();
    let d = dir.path();
    let msg = |d: &Path| read_state(d).unwrap_err().to_string();

    let mut b = bytes.clone();
    let last = b.len() - 5;
    b[last] ^= 0x20;
    rewrite(d, &b);
    assert!(msg(d).contains("checksum"), "{}", msg(d));

    rewrite(d, &bytes[..bytes.len() - 1]);
    assert!(msg(d).contains("header gives a body of"), "{}", msg(d));

    let mut b = bytes.clone();
    b[8] = 9;
    rewrite(d, &b);
    assert!(msg(d).contains("format version 9"), "{}", msg(d));

    rewrite(
        d,
        b"not a snapshot at all, just text that is long enough to be read",
    );
    assert!(msg(d).contains("no HUSKSNAP header"), "{}", msg(d));

    rewrite(d, b"");
    assert!(msg(d).contains("no HUSKSNAP header"), "{}", msg(d));

    // Another husk-vmm's snapshot.
    std::fs::remove_file(d.join(STATE_FILE)).unwrap();
    let mut s = state();
    s.vmm_version = "0.0.0-other".into();
    write_state(d, &s).unwrap();
    assert!(
        msg(d).contains("taken by husk-vmm 0.0.0-other"),
        "{}",
        msg(d)
    );

    // Counts that disagree with the shape.
    std::fs::remove_file(d.join(STATE_FILE)).unwrap();
    let mut s = state();
    s.vcpus.clear();
    write_state(d, &s).unwrap();
    assert!(msg(d).contains("count disagrees"), "{}", msg(d));

    // Not a regular file; a symlink is not followed.
    std::fs::remove_file(d.join(STATE_FILE)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join(STATE_FILE)).unwrap();
    assert!(msg(d).contains("cannot read"), "{}", msg(d));
    std::fs::remove_file(d.join(STATE_FILE)).unwrap();
    std::fs::create_dir(d.join(STATE_FILE)).unwrap();
    assert!(read_state(d).is_err());
}

#[test]
fn cpuid_fingerprint_depends_on_every_field() {
    let e = kvm_bindings::kvm_cpuid_entry2 {
        function: 1,
        eax: 2,
        ..Default::default()
    };
    let a = cpuid_fingerprint(&[e]);
    let b = cpuid_fingerprint(&[kvm_bindings::kvm_cpuid_entry2 { ecx: 1, ..e }]);
    assert_ne!(a, b);
    assert_eq!(a, cpuid_fingerprint(&[e]));
    assert_eq!(a.len(), 32);
}

/// A small deterministic generator for the mutation tests.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_state_files_are_errors_not_panics() {
    // Random byte flips, truncations and insertions in a valid file, with its checksum
    // recomputed half the time (so that the body's parser and checks are reached).
    let (dir, bytes) = written();
    let d = dir.path();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..2000 {
        let mut b = bytes.clone();
        for _ in 0..(1 + rng.next() % 8) {
            let i = (rng.next() as usize) % b.len();
            match rng.next() % 3 {
                0 => b[i] = rng.next() as u8,
                1 => b.truncate(i.max(1)),
                _ => b.insert(i, b"{}[]\",:0-e9 "[(rng.next() % 12) as usize]),
            }
        }
        if round % 2 == 0 && b.len() > 52 {
            let body_len = (b.len() - 52) as u64;
            b[12..20].copy_from_slice(&body_len.to_le_bytes());
            let sum = Sha256::digest(&b[52..]);
            b[20..52].copy_from_slice(&sum);
        }
        rewrite(d, &b);
        if let Ok(s) = read_state(d) {
            // Whatever parses is consistent with itself.
            assert_eq!(s.vcpus.len(), usize::from(s.shape.vcpus));
            assert_eq!(s.devices.len(), s.shape.devices.len());
        }
    }
}
