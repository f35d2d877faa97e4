//! vCPU threads: each runs KVM_RUN in a loop, hands I/O exits to the buses, and reports
//! why it stopped. Stopping and pausing raise a flag and kick every thread out of
//! KVM_RUN with a signal (KVM_RUN returns EINTR) until each has seen it. A paused thread
//! saves its vCPU's state when asked (for a snapshot): a vCPU is only touched by the
//! thread that owns it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::devices::ExitReason;
use crate::devices::bus::Bus;
use crate::vstate::state::{VcpuState, complete_pending_io};

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// What the threads watch between two KVM_RUNs.
#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
    paused: Mutex<Paused>,
    /// Signalled on resume, stop, a save request and each save done.
    resumed: Condvar,
    parked: AtomicUsize,
}

#[derive(Debug, Default)]
struct Paused {
    on: bool,
    /// A save was asked for: each parked thread fills its slot.
    save: Option<SaveRequest>,
}

#[derive(Debug)]
struct SaveRequest {
    msrs: Arc<Vec<u32>>,
    saved: Vec<Option<Result<VcpuState, String>>>,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, Paused> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks the calling vCPU thread while the VM is paused, saving its state when asked.
    fn park_while_paused(&self, index: usize, vcpu: &mut VcpuFd) {
        let mut p = self.lock();
        if !p.on {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        while p.on && !self.stop.load(Ordering::SeqCst) {
            if let Some(req) = p.save.as_mut()
                && req.saved.get(index).is_some_and(Option::is_none)
            {
                let r = save_vcpu(vcpu, &req.msrs);
                req.saved[index] = Some(r);
                self.resumed.notify_all();
                continue;
            }
            p = self.resumed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Finishes an exit KVM is still waiting on (an I/O read's result is applied on the
/// next KVM_RUN), then reads the vCPU's state.
fn save_vcpu(vcpu: &mut VcpuFd, msrs: &[u32]) -> Result<VcpuState, String> {
    complete_pending_io(vcpu).map_err(|e| e.to_string())?;
    VcpuState::save(vcpu, msrs).map_err(|e| e.to_string())
}

/// Running vCPU threads.
#[derive(Debug)]
pub struct VcpuSet {
    threads: Mutex<Vec<JoinHandle<()>>>,
    count: usize,
    ctl: Arc<Control>,
}

/// Why the vCPU threads could not start.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    #[error("cannot start a vCPU thread")]
    Spawn(#[source] std::io::Error),
    #[error("the vCPUs did not stop within {0:?}")]
    PauseTimeout(Duration),
    #[error("the vCPUs must be paused to save their state")]
    NotPaused,
    #[error("the vCPU threads did not save their state within {0:?}")]
    SaveTimeout(Duration),
    #[error("cannot save vCPU {index}: {why}")]
    Save { index: usize, why: String },
}

impl VcpuSet {
    /// Starts one thread per vCPU. The first reason any of them stops for is sent on
    /// `exits` (later ones too; the receiver takes the first).
    pub fn start(
        vcpus: Vec<VcpuFd>,
        buses: Buses,
        exits: Sender<ExitReason>,
    ) -> Result<VcpuSet, VcpuError> {
        // The handler does nothing: its only effect is that KVM_RUN returns EINTR.
        register_signal_handler(kick_signal(), noop_handler).map_err(VcpuError::Signal)?;
        let ctl = Arc::new(Control::default());
        let count = vcpus.len();
        let mut threads = Vec::new();
        for (i, vcpu) in vcpus.into_iter().enumerate() {
            let buses = buses.clone();
            let exits = exits.clone();
            let ctl = ctl.clone();
            let t = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || {
                    let reason = run_loop(i, vcpu, &buses, &ctl);
                    if let Some(r) = reason {
                        tracing::debug!(vcpu = i, reason = ?r, "vcpu stopped");
                        let _ = exits.send(r);
                    }
                })
                .map_err(VcpuError::Spawn)?;
            threads.push(t);
        }
        Ok(VcpuSet {
            threads: Mutex::new(threads),
            count,
            ctl,
        })
    }

    fn kick_all(&self) {
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        for t in threads.iter().filter(|t| !t.is_finished()) {
            let _ = t.kill(kick_signal());
        }
    }

    /// Pauses the guest: returns once every vCPU thread is parked outside KVM_RUN.
    pub fn pause(&self) -> Result<(), VcpuError> {
        self.ctl.lock().on = true;
        let limit = Duration::from_secs(5);
        let start = Instant::now();
        // A thread may be between two KVM_RUNs when the signal lands: kick until parked.
        while self.ctl.parked.load(Ordering::SeqCst) < self.count {
            if start.elapsed() > limit {
                return Err(VcpuError::PauseTimeout(limit));
            }
            self.kick_all();
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.ctl.lock().on = false;
        self.ctl.resumed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.ctl.lock().on
    }

    /// The state of every vCPU, in index order, saved by their threads; the VM must be
    /// paused ([`pause`](VcpuSet::pause) returned). `msrs` are the MSRs to read.
    pub fn save_states(&self, msrs: Vec<u32>) -> Result<Vec<VcpuState>, VcpuError> {
        let limit = Duration::from_secs(10);
        let start = Instant::now();
        let mut p = self.ctl.lock();
        if !p.on || self.ctl.parked.load(Ordering::SeqCst) < self.count {
            return Err(VcpuError::NotPaused);
        }
        p.save = Some(SaveRequest {
            msrs: Arc::new(msrs),
            saved: (0..self.count).map(|_| None).collect(),
        });
        self.ctl.resumed.notify_all();
        loop {
            let done = p
                .save
                .as_ref()
                .is_some_and(|r| r.saved.iter().all(Option::is_some));
            if done {
                break;
            }
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                p.save = None;
                return Err(VcpuError::SaveTimeout(limit));
            }
            p = self
                .ctl
                .resumed
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let req = p.save.take();
        drop(p);
        req.map(|r| r.saved)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, s)| match s {
                Some(Ok(s)) => Ok(s),
                Some(Err(why)) => Err(VcpuError::Save { index, why }),
                None => Err(VcpuError::SaveTimeout(limit)),
            })
            .collect()
    }

    /// Stops every vCPU thread and waits for them.
    pub fn stop(&self) {
        self.ctl.stop.store(true, Ordering::SeqCst);
        {
            // Taking the lock orders this wake-up after any thread's check of `stop`.
            let _guard = self.ctl.lock();
            self.ctl.resumed.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            while !t.is_finished() {
                let _ = t.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = t.join();
        }
    }
}

/// The buses a vCPU's exits go to.
#[derive(Debug, Clone)]
pub struct Buses {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
}

/// Runs one vCPU until the guest or the host stops it; `None` when told to stop.
fn run_loop(index: usize, mut vcpu: VcpuFd, buses: &Buses, ctl: &Control) -> Option<ExitReason> {
    loop {
        ctl.park_while_paused(index, &mut vcpu);
        if ctl.stop.load(Ordering::SeqCst) {
            return None;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if let Some(r) = buses.pio.write(port.into(), data) {
                    return Some(r);
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => buses.pio.read(port.into(), data),
            Ok(VcpuExit::MmioRead(addr, data)) => buses.mmio.read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let Some(r) = buses.mmio.write(addr, data) {
                    return Some(r);
                }
            }
            // With the in-kernel irqchip KVM handles HLT itself; an exit means the
            // guest halted with nothing left to wake it.
            Ok(VcpuExit::Hlt) => return Some(ExitReason::Crash("vCPU halted for good".into())),
            Ok(VcpuExit::Shutdown) => {
                return Some(ExitReason::Crash("triple fault (KVM_EXIT_SHUTDOWN)".into()));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Some(ExitReason::Crash(format!(
                    "KVM failed to enter the guest: hardware reason {reason:#x} on cpu {cpu}"
                )));
            }
            Ok(VcpuExit::InternalError) => {
                return Some(ExitReason::Crash("KVM internal error".into()));
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return Some(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::Poweroff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::Crash("guest crash event".into()),
                    other => ExitReason::Crash(format!("unknown system event {other}")),
                });
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                return Some(ExitReason::Crash(format!("unexpected vCPU exit {other:?}")));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Some(ExitReason::HostError(format!("KVM_RUN failed: {e}"))),
        }
    }
}
