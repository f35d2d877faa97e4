//! The MMIO transport's register state machine and its snapshot state.
use super::*;
use crate::devices::virtio::{ActivateError, INT_CONFIG, read_config_bytes};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[derive(Clone, Default)]
struct Probe {
    activations: Arc<AtomicUsize>,
    resets: Arc<AtomicUsize>,
    last_features: Arc<Mutex<u64>>,
    /// next_avail of queue 0 as the device last got it.
    last_next_avail: Arc<Mutex<u16>>,
    restored_state: Arc<Mutex<serde_json::Value>>,
}

struct Dummy(Probe);

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        99
    }
    fn name(&self) -> &'static str {
        "dummy"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![16, 16]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[0xaa, 0xbb], offset, data)
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        *self.0.last_features.lock().unwrap() = ctx.acked_features;
        *self.0.last_next_avail.lock().unwrap() = ctx.queues[0].next_avail();
        self.0.activations.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn pause(&mut self) -> Result<Vec<(usize, QueueSnapshot)>, DeviceStateError> {
        // As if the worker had served 5 chains on queue 0.
        let q = QueueSnapshot {
            next_avail: 5,
            next_used: 5,
            ..Default::default()
        };
        Ok(vec![(0, q)])
    }
    fn save(&self) -> serde_json::Value {
        serde_json::json!({"dummy": 1})
    }
    fn restore(
        &mut self,
        state: &serde_json::Value,
        ctx: ActivateContext,
    ) -> Result<(), ActivateError> {
        *self.0.restored_state.lock().unwrap() = state.clone();
        self.activate(ctx)
    }
    fn reset(&mut self) {
        self.0.resets.fetch_add(1, Ordering::SeqCst);
    }
    fn metrics(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

fn transport() -> (MmioTransport, Probe) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let probe = Probe::default();
    let evts = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let t = MmioTransport::new(Box::new(Dummy(probe.clone())), mem, irq, evts).unwrap();
    (t, probe)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn setup_queue(t: &mut MmioTransport, sel: u32, base: u32) {
    w(t, REG_QUEUE_SEL, sel);
    w(t, REG_QUEUE_NUM, 16);
    w(t, REG_QUEUE_DESC_LOW, base);
    w(t, REG_QUEUE_DRIVER_LOW, base + 0x100);
    w(t, REG_QUEUE_DEVICE_LOW, base + 0x200);
    w(t, REG_QUEUE_READY, 1);
}

#[test]
fn identifies_itself() {
    let (mut t, _) = transport();
    assert_eq!(r(&mut t, REG_MAGIC), MAGIC);
    assert_eq!(r(&mut t, REG_VERSION), 2);
    assert_eq!(r(&mut t, REG_DEVICE_ID), 99);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
    w(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 16);
    w(&mut t, REG_QUEUE_SEL, 7);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
    let mut c = [0u8; 4];
    t.read(CONFIG_SPACE + 1, &mut c);
    assert_eq!(c, [0xbb, 0, 0, 0]);
}

#[test]
fn full_initialisation_activates_once() {
    let (mut t, p) = transport();
    w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
    w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
    w(&mut t, REG_DRIVER_FEATURES, 1);
    w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
    w(&mut t, REG_DRIVER_FEATURES, 1);
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    w(&mut t, REG_STATUS, s);
    assert_eq!(r(&mut t, REG_STATUS), s);
    setup_queue(&mut t, 0, 0x1000);
    setup_queue(&mut t, 1, 0x2000);
    w(&mut t, REG_STATUS, s | STATUS_DRIVER_OK);
    assert_eq!(p.activations.load(Ordering::SeqCst), 1);
    assert_eq!(*p.last_features.lock().unwrap(), VIRTIO_F_VERSION_1 | 1);
    // Queue registers are frozen now.
    w(&mut t, REG_QUEUE_SEL, 0);
    w(&mut t, REG_QUEUE_NUM, 2);
    assert_eq!(t.queues[0].size(), 16);
    // Reset stops the device and clears everything.
    w(&mut t, REG_STATUS, 0);
    assert_eq!(p.resets.load(Ordering::SeqCst), 1);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    assert!(!t.queues[0].ready());
}

/// Drives `t` as a guest driver would: features (VERSION_1), queues 0 and 1, DRIVER_OK.
fn activate(t: &mut MmioTransport) {
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
    w(t, REG_STATUS, s);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, 1);
    w(t, REG_STATUS, s | STATUS_FEATURES_OK);
    setup_queue(t, 0, 0x1000);
    setup_queue(t, 1, 0x2000);
    w(t, REG_STATUS, s | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
}

fn activated() -> (MmioTransport, Probe) {
    let (mut t, p) = transport();
    activate(&mut t);
    (t, p)
}

#[test]
fn pause_save_restore_round_trips() {
    let (mut t, _) = activated();
    assert!(t.save().is_none(), "saved only while paused");
    t.pause().unwrap();
    let snap = t.save().unwrap();
    assert!(snap.activated);
    assert_eq!(snap.queues[0].next_avail, 5);
    assert_eq!(snap.queues[0].desc_table, 0x1000);
    assert_eq!(snap.queues[1].next_avail, 0);
    assert_eq!(snap.device_state, serde_json::json!({"dummy": 1}));
    let json = serde_json::to_string(&snap).unwrap();
    let back: TransportSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);

    let (mut t2, p2) = transport();
    t2.restore(&back).unwrap();
    assert_eq!(p2.activations.load(Ordering::SeqCst), 1);
    // Each ready queue is looked at once (a request notified before the snapshot).
    assert_eq!(t2.queue_evts[0].read().unwrap(), 1);
    assert_eq!(t2.queue_evts[1].read().unwrap(), 1);
    assert_eq!(*p2.last_next_avail.lock().unwrap(), 5);
    assert_eq!(
        *p2.restored_state.lock().unwrap(),
        serde_json::json!({"dummy": 1})
    );
    assert_eq!(r(&mut t2, REG_STATUS), snap.status);
    t2.pause().unwrap();
    assert_eq!(t2.save().unwrap(), snap);
    t.resume().unwrap();
}

#[test]
fn a_device_that_differs_from_the_saved_one_raises_a_config_change() {
    let (mut t, _) = activated();
    t.pause().unwrap();
    let snap = t.save().unwrap();
    let (mut same, _) = transport();
    same.restore(&snap).unwrap();
    assert_eq!(r(&mut same, REG_CONFIG_GENERATION), snap.config_generation);
    assert_eq!(r(&mut same, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
    let other = TransportSnapshot {
        device_state: serde_json::json!({"dummy": 0}),
        ..snap.clone()
    };
    let (mut t2, _) = transport();
    t2.restore(&other).unwrap();
    assert_eq!(
        r(&mut t2, REG_CONFIG_GENERATION),
        snap.config_generation + 1
    );
    assert_ne!(r(&mut t2, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
}

#[test]
fn bad_saved_transport_is_refused() {
    let (mut t, _) = activated();
    t.pause().unwrap();
    let snap = t.save().unwrap();
    let cases: Vec<(TransportSnapshot, &str)> = vec![
        (
            TransportSnapshot {
                device_type: 2,
                ..snap.clone()
            },
            "type 2",
        ),
        (
            TransportSnapshot {
                driver_features: snap.driver_features | 1 << 5,
                ..snap.clone()
            },
            "does not offer",
        ),
        (
            TransportSnapshot {
                queues: vec![snap.queues[0]],
                ..snap.clone()
            },
            "1 queues",
        ),
        (
            TransportSnapshot {
                queues: vec![
                    QueueSnapshot {
                        desc_table: 0x7fff_0000,
                        ..snap.queues[0]
                    },
                    snap.queues[1],
                ],
                ..snap.clone()
            },
            "outside guest memory",
        ),
        (
            TransportSnapshot {
                queues: vec![
                    QueueSnapshot {
                        max_size: 1024,
                        ..snap.queues[0]
                    },
                    snap.queues[1],
                ],
                ..snap.clone()
            },
            "max size",
        ),
    ];
    for (bad, want) in cases {
        let (mut t2, p2) = transport();
        let e = t2.restore(&bad).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(p2.activations.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn features_not_offered_are_refused() {
    let (mut t, p) = transport();
    w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(&mut t, REG_DRIVER_FEATURES, 1 << 5); // not offered, and no VERSION_1
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    w(&mut t, REG_STATUS, s);
    assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    w(&mut t, REG_STATUS, s | STATUS_DRIVER_OK);
    assert_eq!(p.activations.load(Ordering::SeqCst), 0);
}

#[test]
fn hostile_register_access_is_harmless() {
    let (mut t, p) = transport();
    // Out of order: DRIVER_OK first, queue setup before FEATURES_OK.
    w(&mut t, REG_STATUS, STATUS_DRIVER_OK);
    setup_queue(&mut t, 0, 0x1000);
    assert!(!t.queues[0].ready());
    // Odd sizes and offsets, queue index out of range, notify of a missing queue.
    t.write(REG_STATUS, &[1, 2]);
    t.write(0x3, &[1, 2, 3, 4]);
    w(&mut t, REG_QUEUE_SEL, u32::MAX);
    w(&mut t, REG_QUEUE_NUM, 8);
    w(&mut t, REG_QUEUE_NOTIFY, 1000);
    let mut big = [0u8; 8];
    t.read(REG_MAGIC, &mut big);
    assert_eq!(big, [0; 8]);
    t.read(u64::MAX - 3, &mut [0u8; 4]);
    assert_eq!(p.activations.load(Ordering::SeqCst), 0);
}

#[test]
fn queue_outside_guest_memory_is_not_activated() {
    let (mut t, p) = transport();
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
    w(&mut t, REG_STATUS, s);
    w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
    w(&mut t, REG_DRIVER_FEATURES, 1);
    w(&mut t, REG_STATUS, s | STATUS_FEATURES_OK);
    setup_queue(&mut t, 0, 0x7fff_0000); // beyond the 1 MiB of guest memory
    w(
        &mut t,
        REG_STATUS,
        s | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_eq!(p.activations.load(Ordering::SeqCst), 0);
    assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
}

#[test]
fn random_saved_transports_are_errors_or_work_never_panics() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut t, _) = activated();
    t.pause().unwrap();
    let good = t.save().unwrap();
    for _ in 0..5000 {
        let mut s = good.clone();
        let pick = |v: u64, n: u64| v % n;
        match pick(next(), 6) {
            0 => s.status = next() as u32,
            1 => s.driver_features = next(),
            2 => s.interrupt_status = next() as u32,
            3 => s.queue_sel = next() as u32,
            4 => s.activated = !s.activated,
            _ => {}
        }
        for q in &mut s.queues {
            match pick(next(), 8) {
                0 => q.size = next() as u16,
                1 => q.desc_table = next() % 0x20_0000,
                2 => q.avail_ring = next(),
                3 => q.used_ring = next() % 0x20_0000,
                4 => q.next_avail = next() as u16,
                5 => q.ready = !q.ready,
                6 => q.max_size = next() as u16,
                _ => {}
            }
        }
        if pick(next(), 10) == 0 {
            s.queues.push(QueueSnapshot::default());
        }
        let (mut t2, _) = transport();
        if t2.restore(&s).is_ok() {
            // It answers register reads and takes a reset.
            let _ = r(&mut t2, REG_STATUS);
            let _ = r(&mut t2, REG_QUEUE_NUM_MAX);
            w(&mut t2, REG_STATUS, 0);
        }
    }
}

/// A NIC restored with another MAC and tap (a template's clone): the driver is told its
/// configuration changed, and reads the clone's MAC; the same MAC raises nothing.
#[test]
fn a_clone_nic_with_its_own_mac_raises_a_config_change() {
    use crate::devices::virtio::net::Net;
    use crate::devices::virtio::net::tap::Tap;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;
    let mut peers = Vec::new();
    let mut nic = |mac: [u8; 6]| {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        peers.push(peer);
        let tap = Tap::from_fd_for_test(OwnedFd::from(ours));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let evts = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let dev = Net::with_tap(tap, mac, Some(1500));
        MmioTransport::new(Box::new(dev), mem, irq, evts).unwrap()
    };
    let template = [2, 0x68, 0x75, 0x73, 0x6b, 0];
    let clone = [2, 0, 0, 0, 0, 0x77];
    let mut t = nic(template);
    activate(&mut t);
    assert!(t.activated);
    t.pause().unwrap();
    let snap = t.save().unwrap();

    let mut same = nic(template);
    same.restore(&snap).unwrap();
    assert_eq!(r(&mut same, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);

    let mut c = nic(clone);
    c.restore(&snap).unwrap();
    assert_ne!(r(&mut c, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
    let mut mac = [0u8; 6];
    c.read(CONFIG_SPACE, &mut mac);
    assert_eq!(mac, clone);
    drop(peers);
}
