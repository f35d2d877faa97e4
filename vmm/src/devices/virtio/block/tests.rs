//! virtio-blk on the mock queue: reads, writes, flush, get-id, read-only, and hostile
//! chains (zero and huge lengths, loops, outside memory, wrong direction).

use vm_memory::ByteValued;

use super::request::*;
use super::*;
use crate::devices::virtio::test_utils::{TestQueue, W};

const HDR: u64 = 0x10_000;
const DATA: u64 = 0x20_000;
const STATUS: u64 = 0x30_000;

fn disk(read_only: bool) -> (tempfile::NamedTempFile, Block) {
    let f = tempfile::NamedTempFile::new().unwrap();
    let content: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(f.path(), content).unwrap();
    let b = Block::open(f.path(), read_only, 0).unwrap();
    (f, b)
}

fn handler(tq: &TestQueue, b: &Block) -> QueueWorker<Server> {
    QueueWorker {
        mem: tq.mem.clone(),
        queue: tq.queue(),
        evt: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        interrupt: tq.interrupt.clone(),
        server: b.server(),
    }
}

fn header(tq: &TestQueue, kind: u32, sector: u64) {
    let h = RequestHeader {
        kind,
        reserved: 0,
        sector,
    };
    tq.write(HDR, h.as_slice());
}

#[test]
fn reads_and_writes_sectors() {
    let (f, b) = disk(false);
    assert_eq!(b.config()[..8], 16u64.to_le_bytes());
    let tq = TestQueue::new();
    header(&tq, T_IN, 1);
    tq.add_chain(0, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]);
    let mut h = handler(&tq, &b);
    h.process();
    assert_eq!(tq.used(0), Some(513));
    assert_eq!(tq.read(STATUS, 1), [S_OK]);
    let expect: Vec<u8> = (512..1024u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(tq.read(DATA, 512), expect);

    header(&tq, T_OUT, 2);
    tq.write(DATA, &[0xab; 512]);
    tq.add_chain(3, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]);
    h.process();
    assert_eq!(tq.used(1), Some(1));
    assert_eq!(tq.read(STATUS, 1), [S_OK]);
    let on_disk = std::fs::read(f.path()).unwrap();
    assert_eq!(&on_disk[1024..1536], &[0xab; 512][..]);
}

#[test]
fn read_only_disks_refuse_writes() {
    let (f, b) = disk(true);
    assert_ne!(b.features() & VIRTIO_BLK_F_RO, 0);
    let tq = TestQueue::new();
    header(&tq, T_OUT, 0);
    tq.add_chain(0, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]);
    handler(&tq, &b).process();
    assert_eq!(tq.read(STATUS, 1), [S_IOERR]);
    assert_eq!(std::fs::read(f.path()).unwrap()[0], 0);
}

#[test]
fn get_id_flush_and_unknown_types() {
    let (_f, b) = disk(false);
    let tq = TestQueue::new();
    let mut h = handler(&tq, &b);
    header(&tq, T_GET_ID, 0);
    tq.add_chain(0, &[(HDR, 16, 0), (DATA, 20, W), (STATUS, 1, W)]);
    h.process();
    assert_eq!(&tq.read(DATA, 5), b"husk0");
    header(&tq, T_FLUSH, 0);
    tq.add_chain(3, &[(HDR, 16, 0), (STATUS, 1, W)]);
    h.process();
    assert_eq!(tq.read(STATUS, 1), [S_OK]);
    header(&tq, 77, 0);
    tq.add_chain(5, &[(HDR, 16, 0), (STATUS, 1, W)]);
    h.process();
    assert_eq!(tq.read(STATUS, 1), [S_UNSUPP]);
}

#[test]
fn hostile_requests_fail_cleanly() {
    let (_f, b) = disk(false);
    let tq = TestQueue::new();
    let mut h = handler(&tq, &b);
    // Past the end of the disk; sector overflow.
    header(&tq, T_IN, 16);
    tq.add_chain(0, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]);
    h.process();
    assert_eq!(tq.read(STATUS, 1), [S_IOERR]);
    header(&tq, T_IN, u64::MAX);
    tq.add_chain(3, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]);
    h.process();
    assert_eq!(tq.read(STATUS, 1), [S_IOERR]);
    // No status byte at all; a short header; a buffer outside guest memory.
    tq.add_chain(6, &[(HDR, 16, 0)]);
    tq.add_chain(7, &[(HDR, 4, 0), (STATUS, 1, W)]);
    tq.add_chain(
        9,
        &[(HDR, 16, 0), (0xffff_0000_0000, 512, W), (STATUS, 1, W)],
    );
    h.process();
    assert_eq!(tq.used(2), Some(0));
    assert_eq!(tq.used(3), Some(1));
    assert_eq!(tq.read(STATUS, 1), [S_IOERR]);
    assert_eq!(tq.used(4), Some(0));
    assert!(h.server.metrics.errors.get() >= 5);
    // A request larger than the bounce buffer may be, even on a huge disk.
    let big = Server {
        capacity_bytes: u64::MAX,
        ..b.server()
    };
    assert_eq!(big.range(0, MAX_REQUEST_BYTES), Some(0));
    assert_eq!(big.range(0, MAX_REQUEST_BYTES + 1), None);
}

/// A host file that refuses writes (a full disk: /dev/full answers ENOSPC): the guest
/// gets IOERR, the failure is counted apart from the guest's bad requests, and the
/// device goes on serving.
#[test]
fn a_full_host_disk_fails_writes_with_ioerr() {
    let (_f, b) = disk(false);
    let full = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/full")
        .unwrap();
    let server = Server {
        disk: std::sync::Arc::new(full),
        ..b.server()
    };
    let tq = TestQueue::new();
    let mut h = handler(&tq, &b);
    h.server = server;
    for i in 0..3u16 {
        header(&tq, T_OUT, 0);
        tq.add_chain(i * 3, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]);
        h.process();
        assert_eq!(tq.used(i), Some(1));
        assert_eq!(tq.read(STATUS, 1), [S_IOERR]);
    }
    assert_eq!(h.server.metrics.host_errors.get(), 3);
    assert_eq!(h.server.metrics.writes.get(), 0);
    // Reads still work (/dev/full reads zeros).
    header(&tq, T_IN, 0);
    tq.add_chain(9, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]);
    h.process();
    assert_eq!(tq.read(STATUS, 1), [S_OK]);
}

/// Random request headers and chain shapes: every request is answered or dropped,
/// the disk is never written past its end, and nothing panics.
#[test]
fn random_requests_never_panic() {
    let (f, b) = disk(false);
    let mut rng = crate::devices::virtio::test_utils::XorShift(0x2545_f491_4f6c_dd1d);
    let mut next = || rng.next_u64();
    // A fresh queue every 5 requests: the test queues hold 16 descriptors.
    for _ in 0..600 {
        let tq = TestQueue::new();
        let mut h = handler(&tq, &b);
        for i in 0..5u16 {
            let kind = [T_IN, T_OUT, T_FLUSH, T_GET_ID, 3, 77, u32::MAX][(next() % 7) as usize];
            let sector = match next() % 3 {
                0 => next() % 20,
                1 => next(),
                _ => u64::MAX - next() % 4,
            };
            header(&tq, kind, sector);
            let dlen = [0u32, 1, 511, 512, 4096, 8192, 1 << 20][(next() % 7) as usize];
            let w = |f: u64| if f.is_multiple_of(2) { W } else { 0 };
            let hdr_len = [16u32, 4, 0, 17][(next() % 4) as usize];
            let mut chain = vec![(HDR, hdr_len, w(next() % 5))];
            if next() % 4 != 0 {
                chain.push((DATA, dlen, w(next())));
            }
            if next() % 4 != 0 {
                chain.push((STATUS, 1, W));
            }
            tq.add_chain(i * 3, &chain);
            h.process();
            // Every request is returned to the driver, answered or not.
            assert!(tq.used(i).is_some());
        }
    }
    assert_eq!(
        std::fs::metadata(f.path()).unwrap().len(),
        8192,
        "the image grew"
    );
}
