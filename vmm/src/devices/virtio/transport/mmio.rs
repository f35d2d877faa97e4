//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2): one 4 KiB register window per
//! device, described to the guest in the ACPI DSDT.
//!
//! The register state machine follows 3.1.1 (device initialisation): features are
//! negotiated before FEATURES_OK, queues set up before DRIVER_OK, and the device is
//! activated at DRIVER_OK. A driver that breaks the order gets its write ignored (and
//! FEATURES_OK refused for features we did not offer), never a panic.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::ExitReason;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::state::{DeviceStateError, QueueSnapshot};
use crate::devices::virtio::{ActivateContext, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"

// Register offsets (4.2.2).
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// QueueNotify: its address is where the ioeventfds are registered.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

// Device status bits (2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
    /// Set while paused for a snapshot: the device's queue progress, by queue index.
    paused: Option<Vec<(usize, QueueSnapshot)>>,
}

/// A transport in a snapshot: its registers, its queues (with the device's progress)
/// and the device's own state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransportSnapshot {
    pub device_type: u32,
    pub device: String,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub activated: bool,
    pub queues: Vec<QueueSnapshot>,
    pub device_state: serde_json::Value,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device.name())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Why the transport could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("{name}: a queue of size {size} is invalid")]
    QueueSize {
        name: &'static str,
        size: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("{name}: {need} queue notification eventfds needed, {got} given")]
    Eventfds {
        name: &'static str,
        need: usize,
        got: usize,
    },
}

impl MmioTransport {
    /// `queue_evts` has one eventfd per queue (already registered as ioeventfds).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queue_evts: Vec<EventFd>,
    ) -> Result<MmioTransport, MmioError> {
        let name = device.name();
        let sizes = device.queue_max_sizes();
        if queue_evts.len() != sizes.len() {
            return Err(MmioError::Eventfds {
                name,
                need: sizes.len(),
                got: queue_evts.len(),
            });
        }
        let queues = sizes
            .iter()
            .map(|s| {
                Queue::new(*s).map_err(|source| MmioError::QueueSize {
                    name,
                    size: *s,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queue_evts,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
            paused: None,
        })
    }

    /// Pauses the device (its worker joined, its queue progress kept) for a snapshot.
    pub fn pause(&mut self) -> Result<(), DeviceStateError> {
        if self.paused.is_some() {
            return Ok(());
        }
        let progress = if self.activated {
            self.device.pause()?
        } else {
            Vec::new()
        };
        self.paused = Some(progress);
        Ok(())
    }

    /// Lets a paused device serve again.
    pub fn resume(&mut self) -> Result<(), crate::devices::virtio::ActivateError> {
        if self.paused.take().is_some() && self.activated {
            self.device.resume()?;
        }
        Ok(())
    }

    /// The transport's state; `None` unless paused (the queues' progress is only final
    /// then).
    pub fn save(&self) -> Option<TransportSnapshot> {
        let progress = self.paused.as_ref()?;
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let saved = QueueSnapshot::of(q);
                match progress.iter().find(|(k, _)| *k == i) {
                    Some((_, p)) => QueueSnapshot {
                        next_avail: p.next_avail,
                        next_used: p.next_used,
                        event_idx_enabled: p.event_idx_enabled,
                        ..saved
                    },
                    None => saved,
                }
            })
            .collect();
        Some(TransportSnapshot {
            device_type: self.device.device_type(),
            device: self.device.name().to_string(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
            queues,
            device_state: self.device.save(),
        })
    }

    /// Puts a fresh transport (nothing activated yet) in the state `s` saved, and starts
    /// the device on the restored queues when it was active. Every value is checked:
    /// the device kind and queue count against this VM's, the queues by virtio-queue
    /// and against guest memory.
    pub fn restore(&mut self, s: &TransportSnapshot) -> Result<(), DeviceStateError> {
        let name = self.device.name();
        if s.device_type != self.device.device_type() {
            return Err(DeviceStateError::BadState {
                device: name,
                why: format!(
                    "the snapshot has a {} device (type {}) here",
                    s.device, s.device_type
                ),
            });
        }
        let offered = self.device.features();
        if s.driver_features & !offered != 0 {
            return Err(DeviceStateError::BadState {
                device: name,
                why: format!(
                    "the saved driver features {:#x} include some this device does not offer ({offered:#x})",
                    s.driver_features
                ),
            });
        }
        if s.queues.len() != self.queues.len() {
            return Err(DeviceStateError::QueueCount {
                device: name,
                saved: s.queues.len(),
                have: self.queues.len(),
            });
        }
        let queues = s
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                if q.max_size != self.queues[i].max_size() {
                    return Err(DeviceStateError::BadState {
                        device: name,
                        why: format!(
                            "queue {i} has max size {}, this device's is {}",
                            q.max_size,
                            self.queues[i].max_size()
                        ),
                    });
                }
                q.to_queue(name, i)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(i) = queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            return Err(DeviceStateError::BadState {
                device: name,
                why: format!("queue {i} lies outside guest memory"),
            });
        }
        self.queues = queues;
        self.status = s.status;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        // Before the device starts: what it raises from now on adds to these bits.
        self.interrupt.restore(s.interrupt_status);
        if s.activated {
            let ctx = self
                .context()
                .map_err(|why| DeviceStateError::BadState { device: name, why })?;
            self.device
                .restore(&s.device_state, ctx)
                .map_err(|e| DeviceStateError::BadState {
                    device: name,
                    why: format!("cannot start it again: {e}"),
                })?;
            self.activated = true;
            // A request the guest queued and notified just before the snapshot may not
            // have been served: its notification went to the template's eventfd. Every
            // ready queue is looked at once (a device finding nothing does nothing).
            for (q, evt) in self.queues.iter().zip(&self.queue_evts) {
                if q.ready() {
                    let _ = evt.write(1);
                }
            }
        }
        // This VM's device differs from the saved one in what the driver reads from
        // its configuration space (a clone's own, larger disk): tell the driver.
        let now = self.device.save();
        if now != s.device_state {
            tracing::info!(device = name, saved = %s.device_state, now = %now, "configuration changed");
            self.config_generation = self.config_generation.wrapping_add(1);
            self.interrupt.signal_config_change();
        }
        Ok(())
    }

    /// The device's metrics.
    pub fn metrics(&self) -> serde_json::Value {
        self.device.metrics()
    }

    pub fn device_name(&self) -> &'static str {
        self.device.name()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, on a queue
    /// that is not ready.
    fn queue_writable(&mut self) -> Option<&mut Queue> {
        if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.selected_queue().filter(|q| !q.ready())
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Bits may only be added, one step at a time (3.1.1).
        if v & self.status != self.status {
            return;
        }
        let added = v & !self.status;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                tracing::warn!(
                    device = self.device.name(),
                    driver_features = self.driver_features,
                    offered,
                    "driver asked for features not offered (or not VERSION_1)"
                );
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        if added & STATUS_DRIVER_OK != 0 && self.status & STATUS_FEATURES_OK != 0 {
            self.status = v;
            self.activate();
            return;
        }
        self.status = v;
    }

    fn activate(&mut self) {
        let bad = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem));
        if let Some(i) = bad {
            tracing::warn!(
                device = self.device.name(),
                queue = i,
                "invalid queue set up"
            );
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        let ctx = match self.context() {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(device = self.device.name(), why, "cannot activate");
                self.status |= STATUS_NEEDS_RESET;
                return;
            }
        };
        match self.device.activate(ctx) {
            Ok(()) => {
                self.activated = true;
                tracing::debug!(device = self.device.name(), "activated");
            }
            Err(e) => {
                tracing::warn!(device = self.device.name(), error = %e, "activation failed");
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    /// What the device gets to serve its queues: its own copies of them (the transport
    /// keeps answering register reads from these), the notification eventfds, the
    /// interrupt and the accepted features.
    fn context(&self) -> Result<ActivateContext, String> {
        let queues = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("invalid queue state: {e}"))?;
        let queue_evts = self
            .queue_evts
            .iter()
            .map(|e| e.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot clone eventfds: {e}"))?;
        Ok(ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        })
    }

    fn read_u32(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // No shared memory regions: length all ones (4.2.2).
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_u32(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                // Only while negotiating (after DRIVER, before FEATURES_OK).
                if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.queue_writable() {
                    // set_size ignores sizes that are zero, too large or not a power of
                    // two; is_valid() then refuses the queue at DRIVER_OK.
                    q.set_size(v.min(u32::from(u16::MAX)) as u16);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.queue_writable() {
                    q.set_ready(v == 1);
                } else if v == 0
                    && self.status & STATUS_DRIVER_OK == 0
                    && let Some(q) = self.selected_queue()
                {
                    q.set_ready(false);
                }
            }
            REG_QUEUE_NOTIFY => {
                // Normally KVM's ioeventfd catches this write; if it reaches us, pass it on.
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            REG_QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            REG_QUEUE_DRIVER_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            REG_QUEUE_DRIVER_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            REG_QUEUE_DEVICE_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => {
                tracing::debug!(
                    device = self.device.name(),
                    offset,
                    v,
                    "write to unknown register"
                );
            }
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.queue_writable() {
            f(q);
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32 bits wide and read as a whole (4.2.2.2).
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return None;
        }
        if let Ok(b) = <[u8; 4]>::try_from(data)
            && offset.is_multiple_of(4)
        {
            self.write_u32(offset, u32::from_le_bytes(b));
        }
        None
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
