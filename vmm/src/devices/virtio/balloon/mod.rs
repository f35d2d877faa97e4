//! virtio-balloon (virtio 1.2, 5.5), for free page reporting (5.5.6.7): the guest
//! tells the device which of its pages are free, and husk gives them back to the host,
//! so a guest that used memory once does not keep it resident in husk-vmm for ever.
//!
//! husk never asks the guest to inflate: `num_pages` stays 0, and inflate and deflate
//! chains are only counted and returned. Offered: VIRTIO_F_VERSION_1 and, when
//! configured, VIRTIO_BALLOON_F_FREE_PAGE_REPORTING — not STATS_VQ, FREE_PAGE_HINT or
//! PAGE_POISON (a guest that poisons free pages then disables reporting itself).
//!
//! Queues are numbered in order, skipping those whose feature was not negotiated
//! (5.5.2; Linux's `virtio_find_vqs` does the same): inflateq 0, deflateq 1, [statsq],
//! [free_page_vq], reporting_vq — so with our features the reporting queue is 2.
//! [`queue_roles`] computes this from the accepted features.

mod metrics;
mod report;

use std::io;
use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::epoll::{Epoll, EventSet};

use super::queue_worker::QueueWorker;
use super::state::{DeviceStateError, QueueSnapshot};
use super::worker::{EventHandler, WorkerSlot, add_fd};
use super::{
    ActivateContext, ActivateError, TYPE_BALLOON, VIRTIO_F_VERSION_1, VirtioDevice,
    read_config_bytes,
};
use metrics::Metrics;
use report::Server;

pub use report::{PAGE_SIZE, ReportError, Role, release};

const QUEUE_SIZE: u16 = 256;

// Feature bits (5.5.3).
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u64 = 1 << 3;
pub const VIRTIO_BALLOON_F_FREE_PAGE_REPORTING: u64 = 1 << 5;

/// Configuration space (5.5.4): num_pages, actual, free_page_hint_cmd_id, poison_val,
/// each le32.
const CONFIG_LEN: usize = 16;
const ACTUAL_OFFSET: u64 = 4;

/// The queues a driver that accepted `acked_features` uses, in index order.
pub fn queue_roles(acked_features: u64) -> Vec<Role> {
    let mut roles = vec![Role::Inflate, Role::Deflate];
    // statsq and free_page_vq would come next; they are never offered, and the
    // transport refuses features that were not offered.
    if acked_features & VIRTIO_BALLOON_F_FREE_PAGE_REPORTING != 0 {
        roles.push(Role::Reporting);
    }
    roles
}

/// The device.
#[derive(Debug)]
pub struct Balloon {
    free_page_reporting: bool,
    /// `actual` as the driver last wrote it (pages in the balloon; 0 with husk).
    actual: u32,
    metrics: Arc<Metrics>,
    worker: WorkerSlot<Queues>,
}

impl Balloon {
    pub fn new(free_page_reporting: bool) -> Balloon {
        Balloon {
            free_page_reporting,
            actual: 0,
            metrics: Arc::default(),
            worker: WorkerSlot::new("virtio-balloon"),
        }
    }

    /// What serves the queue of `role` (the fuzz targets'; the worker's are made by
    /// [`queue_workers`]).
    #[doc(hidden)]
    pub fn server(&self, role: Role) -> Server {
        Server {
            role,
            metrics: self.metrics.clone(),
        }
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        // num_pages (0: never inflate), actual; the rest belongs to features not offered.
        c[4..8].copy_from_slice(&self.actual.to_le_bytes());
        c
    }
}

/// The balloon's served queues with their index in the device, on one worker thread;
/// each queue's token is its position here.
#[derive(Debug)]
pub struct Queues(Vec<(usize, QueueWorker<Server>)>);

impl EventHandler for Queues {
    fn init(&mut self, epoll: &Epoll) -> io::Result<()> {
        for (i, (_, q)) in self.0.iter().enumerate() {
            add_fd(epoll, &q.evt, EventSet::IN, i as u64)?;
        }
        Ok(())
    }

    fn handle(&mut self, _: &Epoll, token: u64, _: EventSet) {
        let Some((_, q)) = usize::try_from(token).ok().and_then(|i| self.0.get_mut(i)) else {
            return;
        };
        let _ = q.evt.read();
        q.process();
    }
}

/// Pairs the queues the driver set up with their roles; a queue the driver left
/// unready (or one past the negotiated set) is not served.
fn queue_workers(
    ctx: ActivateContext,
    metrics: &Arc<Metrics>,
) -> Result<Vec<(usize, QueueWorker<Server>)>, ActivateError> {
    let roles = queue_roles(ctx.acked_features);
    let got = ctx.queues.len().min(ctx.queue_evts.len());
    if got < roles.len() {
        return Err(ActivateError::QueueCount {
            need: roles.len(),
            got,
        });
    }
    Ok(roles
        .into_iter()
        .zip(ctx.queues.into_iter().zip(ctx.queue_evts))
        .enumerate()
        .filter(|(_, (_, (queue, _)))| queue.ready())
        .map(|(index, (role, (queue, evt)))| {
            (
                index,
                QueueWorker {
                    mem: ctx.mem.clone(),
                    queue,
                    evt,
                    interrupt: ctx.interrupt.clone(),
                    server: Server {
                        role,
                        metrics: metrics.clone(),
                    },
                },
            )
        })
        .collect())
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }
    fn name(&self) -> &'static str {
        "balloon"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        let n = if self.free_page_reporting { 3 } else { 2 };
        vec![QUEUE_SIZE; n]
    }
    fn features(&self) -> u64 {
        let reporting = if self.free_page_reporting {
            VIRTIO_BALLOON_F_FREE_PAGE_REPORTING
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | reporting
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    /// Only `actual` is writable by the driver (5.5.4); other writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut actual = self.actual.to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                break;
            };
            if let Some(slot) = at
                .checked_sub(ACTUAL_OFFSET)
                .and_then(|k| usize::try_from(k).ok())
                .and_then(|k| actual.get_mut(k))
            {
                *slot = *b;
            }
        }
        self.actual = u32::from_le_bytes(actual);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let queues = queue_workers(ctx, &self.metrics)?;
        self.worker
            .start(Queues(queues))
            .map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn pause(&mut self) -> Result<Vec<(usize, QueueSnapshot)>, DeviceStateError> {
        let w = self.worker.pause(self.name())?;
        Ok(w.0
            .iter()
            .map(|(i, q)| (*i, QueueSnapshot::of(&q.queue)))
            .collect())
    }

    fn resume(&mut self) -> Result<(), ActivateError> {
        self.worker.resume().map_err(ActivateError::Worker)
    }

    /// `actual`, the one value the driver wrote.
    fn save(&self) -> serde_json::Value {
        serde_json::json!({ "actual": self.actual })
    }

    fn restore(
        &mut self,
        state: &serde_json::Value,
        ctx: ActivateContext,
    ) -> Result<(), ActivateError> {
        let actual = state
            .get("actual")
            .and_then(|a| a.as_u64())
            .and_then(|a| u32::try_from(a).ok())
            .ok_or_else(|| {
                ActivateError::Backend(
                    format!("balloon: bad saved state {state}: want {{\"actual\": u32}}").into(),
                )
            })?;
        self.actual = actual;
        self.activate(ctx)
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::to_value(&*self.metrics).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
