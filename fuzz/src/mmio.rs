//! Fuzz body for the virtio-mmio transport's register state machine, shared by the
//! cargo-fuzz target and the corpus replay test (vmm/tests/fuzz_corpus.rs).
//!
//! The input is a sequence of 7-byte register accesses on a transport in front of a
//! probe device with two queues: `op` (bit 0: write; bits 1-2: width 1, 2, 4 or 8
//! bytes), a 16-bit offset (modulo 0x140: the registers and the start of the config
//! space), a 32-bit value. The probe checks what the transport promises a device: it
//! is activated only with features it offered (VERSION_1 among them), only with queues
//! that are valid in guest memory, never twice without a reset in between.

// Test harness code (compiled into tests and fuzz targets): a set-up that fails is a
// failed test, so expect() is the point.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use husk_vmm::devices::bus::BusDevice;
use husk_vmm::devices::virtio::transport::mmio::MmioTransport;
use husk_vmm::devices::virtio::{
    ActivateContext, ActivateError, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, read_config_bytes,
};

/// Features the probe offers besides VERSION_1.
const PROBE_FEATURES: u64 = 1 | 1 << 5 | 1 << 40;

struct Probe {
    mem: GuestMemoryMmap,
    active: Arc<AtomicBool>,
    config: [u8; 8],
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        99
    }
    fn name(&self) -> &'static str {
        "probe"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![16, 256]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | PROBE_FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|a| usize::try_from(a).ok());
            if let Some(slot) = at.and_then(|a| self.config.get_mut(a)) {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        assert!(
            !self.active.swap(true, Ordering::SeqCst),
            "activated twice without a reset"
        );
        assert_eq!(
            ctx.acked_features & !self.features(),
            0,
            "activated with features not offered"
        );
        assert_ne!(
            ctx.acked_features & VIRTIO_F_VERSION_1,
            0,
            "without VERSION_1"
        );
        assert_eq!(ctx.queues.len(), ctx.queue_evts.len());
        for (i, q) in ctx.queues.iter().enumerate() {
            assert!(
                !q.ready() || q.is_valid(&self.mem),
                "activated with queue {i} ready but invalid"
            );
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.active.store(false, Ordering::SeqCst);
    }
    fn metrics(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Runs the input's register accesses.
pub fn virtio_mmio(data: &[u8]) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2_0000)]).expect("guest memory");
    let evt = || EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let probe = Probe {
        mem: mem.clone(),
        active: Arc::default(),
        config: [0; 8],
    };
    let irq = Arc::new(Interrupt::new(evt()));
    let mut t = MmioTransport::new(Box::new(probe), mem, irq, vec![evt(), evt()])
        .expect("a transport for the probe");
    for op in data.chunks(7) {
        let mut b = [0u8; 7];
        b[..op.len()].copy_from_slice(op);
        let width = [1usize, 2, 4, 8][usize::from(b[0] >> 1 & 3)];
        let offset = u64::from(u16::from_le_bytes([b[1], b[2]]) % 0x140);
        let value = u32::from_le_bytes([b[3], b[4], b[5], b[6]]);
        if b[0] & 1 != 0 {
            let bytes = u64::from(value).to_le_bytes();
            let _ = t.write(offset, &bytes[..width]);
        } else {
            let mut out = [0u8; 8];
            t.read(offset, &mut out[..width]);
        }
    }
}
