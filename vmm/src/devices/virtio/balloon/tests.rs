//! virtio-balloon on the mock queue: reported ranges are released (read back as zeros),
//! hostile ranges are counted and skipped, inflate and deflate chains are returned, the
//! reporting queue is numbered from the negotiated features, and the config space.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::Metrics;
use super::*;
use crate::devices::virtio::test_utils::{TestQueue, W, XorShift};

/// Free pages the tests report: 2 MiB at 2 MiB, inside the mock's 4 MiB.
const FREE: u64 = 0x20_0000;
const FREE_LEN: u32 = 0x10_0000;
/// Mock guest memory size.
const MEM_END: u64 = 0x40_0000;

fn worker(tq: &TestQueue, q: usize, role: Role) -> QueueWorker<Server> {
    QueueWorker {
        mem: tq.mem.clone(),
        queue: tq.queue_n(q),
        evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        interrupt: tq.interrupt.clone(),
        server: Server {
            role,
            metrics: Arc::default(),
        },
    }
}

fn metrics(w: &QueueWorker<Server>) -> &Metrics {
    &w.server.metrics
}

#[test]
fn reported_ranges_are_released() {
    let tq = TestQueue::new();
    tq.write(FREE - 4096, &[0x5a; 4096]);
    tq.write(FREE, &vec![0xa5; FREE_LEN as usize]);
    tq.write(FREE + u64::from(FREE_LEN), &[0x5a; 4096]);
    tq.add_chain(
        0,
        &[(FREE, FREE_LEN / 2, W), (FREE + 0x8_0000, FREE_LEN / 2, W)],
    );
    let mut w = worker(&tq, 0, Role::Reporting);
    w.process();
    assert_eq!(tq.used(0), Some(0));
    assert_ne!(tq.interrupt.status(), 0);
    assert_eq!(
        tq.read(FREE, FREE_LEN as usize),
        vec![0u8; FREE_LEN as usize]
    );
    // The pages on either side are untouched.
    assert_eq!(tq.read(FREE - 4096, 4096), vec![0x5a; 4096]);
    assert_eq!(tq.read(FREE + u64::from(FREE_LEN), 4096), vec![0x5a; 4096]);
    let m = metrics(&w);
    assert_eq!(m.reports.get(), 1);
    assert_eq!(m.reported_ranges.get(), 2);
    assert_eq!(m.reported_bytes.get(), u64::from(FREE_LEN));
    assert_eq!(m.bad_ranges.get(), 0);
}

#[test]
fn shared_memory_is_released_too() {
    // The memfd backing (vhost-user): MADV_REMOVE frees the file's pages.
    for shared in [false, true] {
        let mem = crate::memory::create_guest_memory(8, shared).unwrap();
        mem.write_slice(&[0xa5; 0x20_0000], GuestAddress(FREE))
            .unwrap();
        let file_blocks = |m: &GuestMemoryMmap| {
            m.iter().next().unwrap().file_offset().map(|f| {
                use std::os::unix::fs::MetadataExt;
                f.file().metadata().unwrap().blocks()
            })
        };
        let before = file_blocks(&mem);
        release(&mem, FREE, 0x20_0000).unwrap();
        // Measured before reading back: a read fault on a shmem hole allocates a page.
        if let (Some(b), Some(a)) = (before, file_blocks(&mem)) {
            // 2 MiB is 4096 blocks of 512 bytes.
            assert!(a + 4096 <= b, "memfd blocks {b} -> {a}");
        }
        let mut back = vec![1u8; 0x20_0000];
        mem.read_slice(&mut back, GuestAddress(FREE)).unwrap();
        assert!(back.iter().all(|b| *b == 0), "shared={shared}");
    }
}

#[test]
fn a_restored_vms_private_copies_are_released() {
    // Memory mapped privately from a snapshot's memory file: a page the VM wrote is a
    // private copy; once reported it reads the file's page again.
    let dir = tempfile::tempdir().unwrap();
    let orig = crate::memory::create_guest_memory(4, false).unwrap();
    orig.write_obj(0x1111_1111u32, GuestAddress(0x2000))
        .unwrap();
    let path = dir.path().join("memory");
    crate::snapshot::memory::save(&orig, &path).unwrap();
    let mem = crate::snapshot::memory::restore(
        &path,
        4 << 20,
        crate::snapshot::memory::MemoryMode::Map,
        false,
    )
    .unwrap();
    mem.write_obj(0x2222_2222u32, GuestAddress(0x2000)).unwrap();
    super::report::release(&mem, 0x2000, 0x1000).unwrap();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
        0x1111_1111
    );
}

#[test]
fn ranges_across_the_mmio_gap_are_refused() {
    // 4 GiB and more: two regions around the gap (mapping is lazy, costs nothing).
    let mem = crate::memory::create_guest_memory(4096, false).unwrap();
    let low_end = mem.iter().next().unwrap().len();
    let hi = mem.iter().nth(1).unwrap().start_addr().0;
    let e = release(&mem, low_end - 4096, 0x2000).unwrap_err();
    assert!(matches!(e, ReportError::OutsideMemory { .. }), "{e}");
    let e = release(&mem, low_end, 4096).unwrap_err();
    assert!(matches!(e, ReportError::OutsideMemory { .. }), "{e}");
    release(&mem, low_end - 4096, 4096).unwrap();
    release(&mem, hi, 4096).unwrap();
}

#[test]
fn hostile_ranges_are_counted_and_skipped() {
    let tq = TestQueue::new();
    tq.write(FREE, &[0xa5; 4096]);
    let bad: &[(u64, u32, u16)] = &[
        (MEM_END, 4096, W),            // past the end of memory
        (MEM_END - 4096, 0x2000, W),   // straddles the end
        (u64::MAX - 0xfff, 0x1000, W), // address + length overflows
        (0xffff_f000_0000, 0x1000, W), // far outside
        (FREE, 0, W),                  // empty
        (FREE + 0x800, 4096, W),       // unaligned address
        (FREE, 100, W),                // unaligned length
        (FREE, 4096, 0),               // read-only: reports are device-writable
    ];
    for (i, d) in bad.iter().enumerate() {
        tq.add_chain(i as u16, &[*d]);
    }
    let mut w = worker(&tq, 0, Role::Reporting);
    w.process();
    for i in 0..bad.len() as u16 {
        assert_eq!(tq.used(i), Some(0), "chain {i}");
    }
    let m = metrics(&w);
    assert_eq!(m.bad_ranges.get(), bad.len() as u64);
    assert_eq!(m.reported_bytes.get(), 0);
    assert_eq!(m.release_errors.get(), 0);
    // Nothing was released.
    assert_eq!(tq.read(FREE, 4096), vec![0xa5; 4096]);
}

#[test]
fn bad_ranges_do_not_stop_good_ones_in_a_chain() {
    let tq = TestQueue::new();
    tq.write(FREE, &[0xa5; 0x2000]);
    tq.add_chain(
        0,
        &[
            (MEM_END, 4096, W),
            (FREE, 0x1000, W),
            (FREE + 0x1000, 0x1000, 0),
        ],
    );
    let mut w = worker(&tq, 0, Role::Reporting);
    w.process();
    assert_eq!(tq.used(0), Some(0));
    assert_eq!(tq.read(FREE, 0x1000), vec![0; 0x1000]);
    assert_eq!(tq.read(FREE + 0x1000, 0x1000), vec![0xa5; 0x1000]);
    assert_eq!(metrics(&w).bad_ranges.get(), 2);
    assert_eq!(metrics(&w).reported_bytes.get(), 0x1000);
}

#[test]
fn looping_chain_ends() {
    let tq = TestQueue::new();
    tq.add_looping_chain(0, FREE);
    let mut w = worker(&tq, 0, Role::Reporting);
    w.process();
    assert_eq!(tq.used(0), Some(0));
    // Bounded by the queue size, whatever the iterator made of it.
    assert!(metrics(&w).bad_ranges.get() <= u64::from(crate::devices::virtio::test_utils::SIZE));
}

#[test]
fn inflate_and_deflate_chains_are_returned() {
    let tq = TestQueue::with_queues(2);
    tq.write(0x10_000, &[0x11; 16]);
    tq.add_chain_n(0, 0, &[(0x10_000, 16, 0)]);
    tq.add_chain_n(0, 1, &[(0x10_000, 0, W)]);
    tq.add_chain_n(1, 0, &[(0x10_000, 16, 0)]);
    let mut inflate = worker(&tq, 0, Role::Inflate);
    let mut deflate = worker(&tq, 1, Role::Deflate);
    inflate.process();
    deflate.process();
    assert_eq!(tq.used_n(0, 0), Some(0));
    assert_eq!(tq.used_n(0, 1), Some(0));
    assert_eq!(tq.used_n(1, 0), Some(0));
    assert_eq!(metrics(&inflate).inflate_chains.get(), 2);
    assert_eq!(metrics(&deflate).deflate_chains.get(), 1);
    // Inflating does not release the pages: husk never asked for them.
    assert_eq!(tq.read(0x10_000, 16), vec![0x11; 16]);
}

#[test]
fn queue_numbering_follows_the_features() {
    assert_eq!(
        queue_roles(VIRTIO_F_VERSION_1),
        [Role::Inflate, Role::Deflate]
    );
    assert_eq!(
        queue_roles(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING),
        [Role::Inflate, Role::Deflate, Role::Reporting]
    );
    let b = Balloon::new(true);
    assert_eq!(b.device_type(), 5);
    assert_eq!(b.queue_max_sizes().len(), 3);
    assert_eq!(
        b.features(),
        VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING
    );
    assert_eq!(
        b.features() & (VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_FREE_PAGE_HINT),
        0
    );
    let b = Balloon::new(false);
    assert_eq!(b.queue_max_sizes().len(), 2);
    assert_eq!(b.features(), VIRTIO_F_VERSION_1);
}

fn wait_used(tq: &TestQueue, q: usize, n: u16) -> Option<u32> {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Some(u) = tq.used_n(q, n) {
            return Some(u);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Activates a balloon on 3 mock queues with `acked` features; returns the notifiers.
fn activate(b: &mut Balloon, tq: &TestQueue, acked: u64) -> Vec<EventFd> {
    let evts: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let ctx = ActivateContext {
        mem: tq.mem.clone(),
        queues: (0..3).map(|i| tq.queue_n(i)).collect(),
        queue_evts: evts.iter().map(|e| e.try_clone().unwrap()).collect(),
        interrupt: tq.interrupt.clone(),
        acked_features: acked,
    };
    b.activate(ctx).unwrap();
    evts
}

#[test]
fn the_reporting_queue_is_queue_2_when_negotiated() {
    let tq = TestQueue::with_queues(3);
    tq.write(FREE, &[0xa5; 4096]);
    tq.add_chain_n(2, 0, &[(FREE, 4096, W)]);
    let mut b = Balloon::new(true);
    let acked = b.features();
    let evts = activate(&mut b, &tq, acked);
    evts[2].write(1).unwrap();
    assert_eq!(wait_used(&tq, 2, 0), Some(0));
    assert_eq!(tq.read(FREE, 4096), vec![0; 4096]);
    let m = b.metrics();
    assert_eq!(m["reports"], 1);
    assert_eq!(m["reported_bytes"], 4096);
    b.reset();
}

#[test]
fn without_the_feature_queue_2_is_not_served() {
    let tq = TestQueue::with_queues(3);
    tq.write(FREE, &[0xa5; 4096]);
    tq.add_chain_n(2, 0, &[(FREE, 4096, W)]);
    tq.add_chain_n(1, 0, &[(0x10_000, 16, 0)]);
    let mut b = Balloon::new(true);
    let evts = activate(&mut b, &tq, VIRTIO_F_VERSION_1);
    evts[2].write(1).unwrap();
    evts[1].write(1).unwrap();
    assert_eq!(wait_used(&tq, 1, 0), Some(0));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(tq.used_n(2, 0), None);
    assert_eq!(tq.read(FREE, 4096), vec![0xa5; 4096]);
    assert_eq!(b.metrics()["deflate_chains"], 1);
    b.reset();
}

#[test]
fn too_few_queues_fail_activation() {
    let tq = TestQueue::with_queues(3);
    let mut b = Balloon::new(true);
    let ctx = ActivateContext {
        mem: tq.mem.clone(),
        queues: vec![tq.queue_n(0)],
        queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
        interrupt: tq.interrupt.clone(),
        acked_features: b.features(),
    };
    assert!(matches!(
        b.activate(ctx),
        Err(ActivateError::QueueCount { need: 3, got: 1 })
    ));
}

#[test]
fn config_space() {
    let mut b = Balloon::new(true);
    let mut d = [0xffu8; 8];
    b.read_config(0, &mut d);
    assert_eq!(d, [0; 8]); // num_pages 0, actual 0
    b.write_config(4, &7u32.to_le_bytes());
    b.read_config(4, &mut d[..4]);
    assert_eq!(d[..4], 7u32.to_le_bytes());
    // num_pages is the device's: driver writes there are ignored.
    b.write_config(0, &[1, 2, 3, 4]);
    b.read_config(0, &mut d[..4]);
    assert_eq!(d[..4], [0; 4]);
    // Partial and straddling writes touch only `actual`'s bytes; wild offsets nothing.
    b.write_config(2, &[9, 9, 1, 0]);
    b.write_config(u64::MAX, &[5, 5]);
    b.write_config(100, &[5]);
    b.read_config(0, &mut d);
    assert_eq!(d, [0, 0, 0, 0, 1, 0, 0, 0]);
    b.read_config(u64::MAX, &mut d);
    assert_eq!(d, [0; 8]);
}

/// Random reports (addresses, lengths, directions, chain lengths): every chain comes
/// back, only page-aligned ranges inside memory are released, nothing panics.
#[test]
fn random_reports_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut next = || rng.next_u64();
    for _ in 0..300 {
        let tq = TestQueue::new();
        let mut w = worker(&tq, 0, Role::Reporting);
        let mut first = 0u16;
        for i in 0..4u16 {
            let n = 1 + (next() % 3) as u16;
            let chain: Vec<(u64, u32, u16)> = (0..n)
                .map(|_| {
                    let addr = match next() % 4 {
                        0 => (next() % (MEM_END / PAGE_SIZE + 4)) * PAGE_SIZE,
                        1 => next() % (MEM_END + 0x10_000),
                        2 => u64::MAX - next() % 0x10_000,
                        _ => next(),
                    };
                    // Below the queues' area would zero the rings: keep reports above.
                    let addr = if addr < 0x10_000 {
                        addr + 0x10_000
                    } else {
                        addr
                    };
                    let len = [0u32, 1, 4096, 0x20_0000, 0x40_0000, u32::MAX, 0x1234]
                        [(next() % 7) as usize];
                    let flags = if next() % 5 == 0 { 0 } else { W };
                    (addr, len, flags)
                })
                .collect();
            tq.add_chain(first, &chain);
            first += n;
            w.process();
            assert_eq!(tq.used(i), Some(0));
        }
        let m = metrics(&w);
        assert!(m.reported_bytes.get() <= 4 * 3 * MEM_END);
        assert_eq!(m.release_errors.get(), 0);
    }
}
