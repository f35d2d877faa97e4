//! Test helpers: split virtqueues in guest memory built with virtio-queue's
//! `MockSplitQueue`, fed raw (possibly hostile) descriptor chains.

use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;

/// Flag of a device-writable descriptor.
pub const W: u16 = VRING_DESC_F_WRITE as u16;
/// Size of each test queue.
pub const SIZE: u16 = 16;
/// Queue `i` lives at `i * QUEUE_STRIDE`; data buffers go at 0x10000 and above.
const QUEUE_STRIDE: u64 = 0x1000;

/// 4 MiB of guest memory with `n` queues at its start.
pub struct TestQueue {
    pub mem: &'static GuestMemoryMmap,
    pub interrupt: Arc<Interrupt>,
    mocks: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
}

impl std::fmt::Debug for TestQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestQueue")
    }
}

impl Default for TestQueue {
    fn default() -> Self {
        TestQueue::new()
    }
}

impl TestQueue {
    /// One queue.
    pub fn new() -> TestQueue {
        TestQueue::with_queues(1)
    }

    pub fn with_queues(n: usize) -> TestQueue {
        // Leaked so that the mocks may borrow it for the whole test.
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
        ));
        let mocks = (0..n)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(i as u64 * QUEUE_STRIDE), SIZE))
            .collect();
        TestQueue {
            mem,
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            mocks,
        }
    }

    /// Queue 0, as the driver set it up.
    pub fn queue(&self) -> Queue {
        self.queue_n(0)
    }

    pub fn queue_n(&self, q: usize) -> Queue {
        self.mocks[q].create_queue().unwrap()
    }

    /// Adds a chain of `(addr, len, flags)` descriptors to queue 0 at table index
    /// `first` onwards.
    pub fn add_chain(&self, first: u16, descs: &[(u64, u32, u16)]) {
        self.add_chain_n(0, first, descs);
    }

    pub fn add_chain_n(&self, q: usize, first: u16, descs: &[(u64, u32, u16)]) {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, (addr, len, flags))| {
                let last = i + 1 == descs.len();
                let flags = if last {
                    *flags
                } else {
                    *flags | VRING_DESC_F_NEXT as u16
                };
                let next = if last { 0 } else { first + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(*addr, *len, flags, next))
            })
            .collect();
        self.mocks[q].add_desc_chains(&raw, first).unwrap();
    }

    /// Adds a one-descriptor chain to queue 0 whose `next` points back at itself.
    pub fn add_looping_chain(&self, index: u16, addr: u64) {
        self.add_looping_chain_n(0, index, addr, W);
    }

    /// Adds a one-descriptor chain (64 bytes at `addr`, `flags`) to queue `q` whose
    /// `next` points back at itself.
    pub fn add_looping_chain_n(&self, q: usize, index: u16, addr: u64, flags: u16) {
        let d = SplitDescriptor::new(addr, 64, flags | VRING_DESC_F_NEXT as u16, index);
        self.mocks[q]
            .add_desc_chains(&[RawDescriptor::from(d)], index)
            .unwrap();
    }

    /// Sets queue `q`'s avail index, as a broken or hostile driver may.
    pub fn set_avail_idx_n(&self, q: usize, idx: u16) {
        let avail = self.mocks[q].avail_addr();
        self.mem.write_obj(idx, avail.unchecked_add(2)).unwrap();
    }

    /// The length the device reported for queue 0's `n`th used element, once there.
    pub fn used(&self, n: u16) -> Option<u32> {
        self.used_n(0, n)
    }

    pub fn used_n(&self, q: usize, n: u16) -> Option<u32> {
        let used = self.mocks[q].used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        if n >= idx {
            return None;
        }
        let elem = used.unchecked_add(4 + 8 * u64::from(n % SIZE));
        Some(self.mem.read_obj::<u32>(elem.unchecked_add(4)).unwrap())
    }

    /// Queue `q`'s `n`th used element as (head index, length), once there.
    pub fn used_elem_n(&self, q: usize, n: u16) -> Option<(u32, u32)> {
        let len = self.used_n(q, n)?;
        let elem = self.mocks[q]
            .used_addr()
            .unchecked_add(4 + 8 * u64::from(n % SIZE));
        Some((self.mem.read_obj::<u32>(elem).unwrap(), len))
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}

/// A small deterministic pseudo-random generator (xorshift64) for randomized tests.
#[derive(Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
