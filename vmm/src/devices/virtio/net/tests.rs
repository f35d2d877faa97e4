//! Tests of the net device on the mock queue rig, with a datagram socketpair standing in
//! for the tap (it keeps frame boundaries, as a tap does), so that they need no root.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, Tap, VNET_HDR_LEN};
use super::worker::{MAX_TX_BYTES, NetWorker, TOKEN_TAP};
use super::*;
use crate::devices::virtio::test_utils::{SIZE, TestQueue, W, XorShift};
use crate::devices::virtio::worker::EventHandler;

const RXQ: usize = 0;
const TXQ: usize = 1;

struct Rig {
    tq: TestQueue,
    w: NetWorker,
    /// The network's end of the "tap".
    peer: UnixDatagram,
    epoll: Epoll,
}

fn rig(mergeable: bool) -> Rig {
    let tq = TestQueue::with_queues(2);
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let tap = Tap::from_fd_for_test(OwnedFd::from(ours));
    let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut w = NetWorker::new(
        tq.mem.clone(),
        tq.queue_n(RXQ),
        tq.queue_n(TXQ),
        evt(),
        evt(),
        tap,
        tq.interrupt.clone(),
        Arc::default(),
        mergeable,
    );
    let epoll = Epoll::new().unwrap();
    w.init(&epoll).unwrap();
    Rig { tq, w, peer, epoll }
}

impl Rig {
    fn rx(&mut self) {
        self.w.process_rx(&self.epoll);
    }

    /// Whether epoll reports the tap readable right now.
    fn tap_reported(&self) -> bool {
        let mut evs = [EpollEvent::default(); 8];
        let n = self.epoll.wait(0, &mut evs).unwrap();
        evs[..n].iter().any(|e| e.data() == TOKEN_TAP)
    }
}

/// A vnet header (flags=1: NEEDS_CSUM, to see it pass) and `n` bytes of frame.
fn frame(n: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = 1;
    f.extend((0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

#[test]
fn tx_frame_reaches_the_tap_with_its_header() {
    let mut r = rig(true);
    let f = frame(100, 7);
    r.tq.write(0x10_000, &f[..VNET_HDR_LEN]);
    r.tq.write(0x20_000, &f[VNET_HDR_LEN..]);
    r.tq.add_chain_n(
        TXQ,
        0,
        &[(0x10_000, VNET_HDR_LEN as u32, 0), (0x20_000, 100, 0)],
    );
    r.w.process_tx();
    let mut got = vec![0u8; 4096];
    let n = r.peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(r.tq.used_n(TXQ, 0), Some(0));
    assert_eq!(r.w.metrics.tx_packets.get(), 1);
    assert_eq!(r.w.metrics.tx_bytes.get(), 100);
    assert_ne!(r.tq.interrupt.status(), 0);
}

#[test]
fn rx_frame_fills_one_buffer() {
    let mut r = rig(false);
    r.tq.add_chain_n(RXQ, 0, &[(0x20_000, 2000, W)]);
    let f = frame(500, 3);
    r.peer.send(&f).unwrap();
    r.rx();
    assert_eq!(r.tq.used_elem_n(RXQ, 0), Some((0, f.len() as u32)));
    let got = r.tq.read(0x20_000, f.len());
    // num_buffers is 1; the rest is the tap's header and frame.
    assert_eq!(&got[10..12], &1u16.to_le_bytes());
    assert_eq!(&got[..10], &f[..10]);
    assert_eq!(&got[12..], &f[12..]);
    assert_eq!(r.w.metrics.rx_packets.get(), 1);
    assert_eq!(r.w.metrics.rx_bytes.get(), 500);
    assert!(r.w.tap_armed() && !r.w.holds_frame());
}

#[test]
fn rx_frame_merges_buffers() {
    let mut r = rig(true);
    for i in 0..3u16 {
        r.tq.add_chain_n(RXQ, i, &[(0x20_000 + u64::from(i) * 0x1000, 256, W)]);
    }
    let f = frame(600, 9); // 612 bytes: 256 + 256 + 100
    r.peer.send(&f).unwrap();
    r.rx();
    assert_eq!(r.tq.used_elem_n(RXQ, 0), Some((0, 256)));
    assert_eq!(r.tq.used_elem_n(RXQ, 1), Some((1, 256)));
    assert_eq!(r.tq.used_elem_n(RXQ, 2), Some((2, 100)));
    let mut got = r.tq.read(0x20_000, 256);
    got.extend(r.tq.read(0x21_000, 256));
    got.extend(r.tq.read(0x22_000, 100));
    assert_eq!(&got[10..12], &3u16.to_le_bytes());
    assert_eq!(&got[12..], &f[12..]);
    // A small frame next uses one buffer, num_buffers 1.
    r.tq.add_chain_n(RXQ, 3, &[(0x30_000, 1500, W)]);
    r.peer.send(&frame(20, 1)).unwrap();
    r.rx();
    assert_eq!(r.tq.used_elem_n(RXQ, 3), Some((3, 32)));
    assert_eq!(&r.tq.read(0x30_000 + 10, 2), &1u16.to_le_bytes());
}

#[test]
fn without_buffers_the_tap_is_left_alone() {
    let mut r = rig(true);
    for i in 0..3u8 {
        r.peer.send(&frame(100 + usize::from(i), i)).unwrap();
    }
    r.rx();
    // One frame held; the tap out of the epoll set although two more wait in it.
    assert!(r.w.holds_frame());
    assert!(!r.w.tap_armed());
    assert!(!r.tap_reported());
    r.rx();
    assert!(r.w.holds_frame());
    // Buffers arrive (the RX kick): all three frames, in order.
    for i in 0..3u16 {
        r.tq.add_chain_n(RXQ, i, &[(0x20_000 + u64::from(i) * 0x1000, 2048, W)]);
    }
    r.rx();
    for i in 0..3u16 {
        assert_eq!(
            r.tq.used_elem_n(RXQ, i),
            Some((u32::from(i), 112 + u32::from(i)))
        );
        let got =
            r.tq.read(0x20_000 + u64::from(i) * 0x1000, 112 + usize::from(i));
        assert_eq!(&got[12..], &frame(100 + usize::from(i), i as u8)[12..]);
    }
    assert!(!r.w.holds_frame() && r.w.tap_armed());
    assert_eq!(r.w.metrics.rx_packets.get(), 3);
}

#[test]
fn frames_too_large_for_the_buffers_are_dropped() {
    // One chain per frame: a 100-byte buffer cannot take 512 bytes; it stays for the
    // next, smaller frame.
    let mut r = rig(false);
    r.tq.add_chain_n(RXQ, 0, &[(0x20_000, 100, W)]);
    r.peer.send(&frame(500, 0)).unwrap();
    r.peer.send(&frame(50, 0)).unwrap();
    r.rx();
    assert_eq!(r.w.metrics.rx_dropped.get(), 1);
    assert_eq!(r.tq.used_elem_n(RXQ, 0), Some((0, 62)));
    assert!(r.tq.used_n(RXQ, 1).is_none());

    // Merged: a ring full of 16-byte buffers (256 bytes) never holds 612.
    let mut r = rig(true);
    for i in 0..SIZE {
        r.tq.add_chain_n(RXQ, i, &[(0x20_000 + u64::from(i) * 0x100, 16, W)]);
    }
    r.peer.send(&frame(600, 0)).unwrap();
    r.peer.send(&frame(8, 0)).unwrap();
    r.rx();
    assert_eq!(r.w.metrics.rx_dropped.get(), 1);
    // The 20-byte frame takes two of the parked buffers.
    assert_eq!(r.tq.used_elem_n(RXQ, 0), Some((0, 16)));
    assert_eq!(r.tq.used_elem_n(RXQ, 1), Some((1, 4)));
    assert!(r.w.tap_armed() && !r.w.holds_frame());
}

#[test]
fn hostile_rx_chains_are_returned_and_counted() {
    let mut r = rig(true);
    // Read-only; outside guest memory; zero length; huge length; one writable and one
    // read-only descriptor; smaller than a vnet header.
    r.tq.add_chain_n(RXQ, 0, &[(0x20_000, 2048, 0)]);
    r.tq.add_chain_n(RXQ, 1, &[(0xffff_f000_0000, 2048, W)]);
    r.tq.add_chain_n(RXQ, 2, &[(0x20_000, 0, W)]);
    r.tq.add_chain_n(RXQ, 3, &[(0x20_000, u32::MAX, W)]);
    r.tq.add_chain_n(RXQ, 4, &[(0x20_000, 1024, W), (0x21_000, 1024, 0)]);
    r.tq.add_chain_n(RXQ, 6, &[(0x20_000, 4, W)]);
    // Then a looping chain: 64 bytes seen SIZE times, bounded.
    r.tq.add_looping_chain_n(RXQ, 7, 0x30_000, W);
    r.peer.send(&frame(100, 0)).unwrap();
    r.rx();
    for i in 0..6 {
        assert_eq!(r.tq.used_n(RXQ, i), Some(0), "chain {i}");
    }
    assert_eq!(r.w.metrics.rx_bad_chains.get(), 6);
    assert_eq!(r.tq.used_elem_n(RXQ, 6), Some((7, 112)));
    assert_eq!(r.w.metrics.rx_packets.get(), 1);
}

#[test]
fn hostile_tx_chains_are_returned_and_counted() {
    let mut r = rig(true);
    r.tq.write(0x10_000, &frame(64, 0));
    // Writable; outside memory; zero length; only a header; too large (in memory).
    r.tq.add_chain_n(TXQ, 0, &[(0x10_000, 76, W)]);
    r.tq.add_chain_n(TXQ, 1, &[(0xffff_f000_0000, 76, 0)]);
    r.tq.add_chain_n(TXQ, 2, &[(0x10_000, 0, 0)]);
    r.tq.add_chain_n(TXQ, 3, &[(0x10_000, 12, 0)]);
    r.tq.add_chain_n(TXQ, 4, &[(0x10_000, MAX_TX_BYTES as u32 + 1, 0)]);
    r.tq.add_chain_n(TXQ, 5, &[(0x10_000, u32::MAX, 0)]);
    // A loop: 64 bytes read SIZE times, sent as one bounded frame.
    r.tq.add_looping_chain_n(TXQ, 6, 0x10_000, 0);
    r.w.process_tx();
    for i in 0..7 {
        assert_eq!(r.tq.used_n(TXQ, i), Some(0), "chain {i}");
    }
    assert_eq!(r.w.metrics.tx_bad_chains.get(), 4);
    assert_eq!(r.w.metrics.tx_dropped.get(), 2);
    let mut got = vec![0u8; 4096];
    assert_eq!(r.peer.recv(&mut got).unwrap(), 64 * usize::from(SIZE));
    assert!(r.peer.recv(&mut got).is_err(), "only the loop was sent");
}

/// An avail index more than a ring ahead (found by the virtio_net fuzz target): neither
/// direction spins; the frame waits for a sane ring.
#[test]
fn an_avail_index_a_ring_ahead_is_not_spun_on() {
    let mut r = rig(false);
    r.tq.set_avail_idx_n(TXQ, SIZE + 1);
    r.w.process_tx();
    assert_eq!(r.tq.used_n(TXQ, 0), None);
    r.tq.set_avail_idx_n(RXQ, u16::MAX);
    r.peer.send(&frame(64, 1)).unwrap();
    r.rx();
    assert!(r.w.holds_frame());
    assert_eq!(r.tq.used_n(RXQ, 0), None);
}

#[test]
fn a_refusing_tap_costs_the_frame_not_the_chain() {
    let mut r = rig(true);
    drop(std::mem::replace(
        &mut r.peer,
        UnixDatagram::unbound().unwrap(),
    ));
    r.tq.write(0x10_000, &frame(64, 0));
    r.tq.add_chain_n(TXQ, 0, &[(0x10_000, 76, 0)]);
    r.w.process_tx();
    assert_eq!(r.tq.used_n(TXQ, 0), Some(0));
    assert_eq!(r.w.metrics.tx_dropped.get(), 1);
}

/// Random chains on both queues and random frames: every TX chain is returned, what
/// the worker parks stays within the ring, and nothing panics.
#[test]
fn random_traffic_never_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let mut r = rig(round % 2 == 0);
        for _ in 0..3 {
            let mut next = || rng.next_u64();
            let addr = |v: u64| match v % 4 {
                0 => 0x20_000 + (v >> 8) % 0x10_000,
                1 => 0x3f_ff00,
                2 => 0xffff_ffff_0000,
                _ => 0x10_000,
            };
            let len = |v: u64| [0u32, 1, 11, 12, 64, 1514, 65_536, u32::MAX][(v % 8) as usize];
            let flags = |v: u64| if v.is_multiple_of(3) { 0 } else { W };
            for q in [RXQ, TXQ] {
                let n = (next() % 3 + 1) as usize;
                let chain: Vec<_> = (0..n)
                    .map(|_| (addr(next()), len(next()), flags(next())))
                    .collect();
                // Table slots: each round uses fresh ones so chains never overlap.
                let first = (next() % 4) as u16 * 4;
                if next() % 7 == 0 {
                    r.tq.add_looping_chain_n(q, first, addr(next()), flags(next()));
                } else {
                    r.tq.add_chain_n(q, first, &chain);
                }
            }
            for _ in 0..(next() % 3) {
                let size = [0usize, 1, 11, 60, 1500, 9000][(next() % 6) as usize];
                let _ = r.peer.send(&frame(size, next() as u8));
            }
            r.w.process_tx();
            r.rx();
        }
        // Every TX chain posted was used.
        let mut tx_used = 0;
        while r.tq.used_n(TXQ, tx_used).is_some() {
            tx_used += 1;
        }
        assert_eq!(tx_used, 3);
    }
}

#[test]
fn features_and_config_space() {
    let (ours, _peer) = UnixDatagram::pair().unwrap();
    let tap = Tap::from_fd_for_test(OwnedFd::from(ours));
    let mac = [0x02, 1, 2, 3, 4, 5];
    let dev = Net::with_tap(tap, mac, Some(9000));
    let f = dev.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_F_RING_EVENT_IDX,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    let mut c = [0u8; 12];
    dev.read_config(0, &mut c);
    assert_eq!(&c[..6], &mac);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1, "one queue pair");
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 9000);
    let mut tail = [9u8; 4];
    dev.read_config(10, &mut tail);
    assert_eq!(tail, [0x28, 0x23, 0, 0]);
    let (ours, _peer) = UnixDatagram::pair().unwrap();
    let no_mtu = Net::with_tap(Tap::from_fd_for_test(OwnedFd::from(ours)), mac, None);
    assert_eq!(no_mtu.features() & VIRTIO_NET_F_MTU, 0);
    assert_eq!(no_mtu.metrics()["rx_packets"], 0);
}

#[test]
fn offloads_follow_the_acked_features() {
    assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_TSO4), 0, "TSO needs CSUM");
    assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_CSUM), TUN_F_CSUM);
    assert_eq!(
        tap_offloads(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    );
    // Host-side offloads say nothing about what the guest accepts.
    assert_eq!(tap_offloads(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4), 0);
}

#[test]
fn random_macs_are_local_unicast() {
    for _ in 0..50 {
        let m = random_mac();
        assert_eq!(m[0] & 0x03, 0x02, "{m:x?}");
    }
}
