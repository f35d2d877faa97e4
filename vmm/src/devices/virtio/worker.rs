//! A device's worker thread: an epoll loop over the device's file descriptors (queue
//! eventfds, host sockets), plus a stop eventfd so that a reset or the VMM's exit can
//! end it.

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::state::DeviceStateError;

/// The token of the stop eventfd; handlers must not use it.
pub const STOP_TOKEN: u64 = u64::MAX;

/// What a worker runs.
pub trait EventHandler: Send {
    /// Registers the handler's first file descriptors.
    fn init(&mut self, epoll: &Epoll) -> io::Result<()>;
    /// Handles readiness of the fd registered with `token`.
    fn handle(&mut self, epoll: &Epoll, token: u64, events: EventSet);
}

/// Adds `fd` to `epoll` for `events`, with `token`.
pub fn add_fd(epoll: &Epoll, fd: &impl AsRawFd, events: EventSet, token: u64) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd.as_raw_fd(),
        EpollEvent::new(events, token),
    )
}

/// A running worker thread; stopped (and joined) on [`Worker::stop`] or drop. The
/// thread hands its handler back when it ends, so that a paused device keeps the state
/// its worker reached (queue progress) and can save it or serve again.
#[derive(Debug)]
pub struct Worker<H> {
    stop: EventFd,
    thread: Option<JoinHandle<H>>,
}

impl<H: EventHandler + 'static> Worker<H> {
    /// Starts `handler` on a thread named `name`.
    pub fn spawn(name: &str, mut handler: H) -> io::Result<Worker<H>> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        add_fd(&epoll, &stop, EventSet::IN, STOP_TOKEN)?;
        handler.init(&epoll)?;
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut events = vec![EpollEvent::default(); 64];
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::error!(worker = %thread_name, error = %e, "epoll failed");
                            return handler;
                        }
                    };
                    for ev in &events[..n] {
                        if ev.data() == STOP_TOKEN {
                            return handler;
                        }
                        handler.handle(&epoll, ev.data(), ev.event_set());
                    }
                }
            })?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread, waits for it and returns its handler (`None` when it was
    /// stopped before, or the thread panicked).
    pub fn stop(&mut self) -> Option<H> {
        self.stop_thread()
    }
}

impl<H> Worker<H> {
    fn stop_thread(&mut self) -> Option<H> {
        let t = self.thread.take()?;
        let _ = self.stop.write(1);
        t.join().ok()
    }
}

impl<H> Drop for Worker<H> {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// A device's worker: not started, running, or paused with the state it reached.
#[derive(Debug)]
pub struct WorkerSlot<H> {
    name: &'static str,
    state: SlotState<H>,
}

#[derive(Debug)]
enum SlotState<H> {
    Idle,
    Running(Worker<H>),
    Paused(H),
}

impl<H: EventHandler + 'static> WorkerSlot<H> {
    /// A slot whose threads are named `name`.
    pub fn new(name: &'static str) -> WorkerSlot<H> {
        WorkerSlot {
            name,
            state: SlotState::Idle,
        }
    }

    /// Runs `handler` (a running or paused one is dropped first).
    pub fn start(&mut self, handler: H) -> io::Result<()> {
        self.stop();
        self.state = SlotState::Running(Worker::spawn(self.name, handler)?);
        Ok(())
    }

    /// Stops the worker and drops its state (a reset).
    pub fn stop(&mut self) {
        self.state = SlotState::Idle;
    }

    /// Stops the worker, keeping its handler; returns it. Pausing a paused slot returns
    /// the same handler. `device` names the device in the error when the worker had
    /// died or never ran.
    pub fn pause(&mut self, device: &'static str) -> Result<&mut H, DeviceStateError> {
        if let SlotState::Running(w) = &mut self.state {
            let h = w.stop();
            self.state = match h {
                Some(h) => SlotState::Paused(h),
                None => SlotState::Idle,
            };
        }
        match &mut self.state {
            SlotState::Paused(h) => Ok(h),
            _ => Err(DeviceStateError::WorkerGone(device)),
        }
    }

    /// The paused handler, to change before [`resume`](WorkerSlot::resume).
    pub fn paused(&mut self) -> Option<&mut H> {
        match &mut self.state {
            SlotState::Paused(h) => Some(h),
            _ => None,
        }
    }

    /// Runs a paused handler again; does nothing otherwise.
    pub fn resume(&mut self) -> io::Result<()> {
        if let SlotState::Paused(_) = self.state {
            let SlotState::Paused(h) = std::mem::replace(&mut self.state, SlotState::Idle) else {
                return Ok(());
            };
            self.state = SlotState::Running(Worker::spawn(self.name, h)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(EventFd, Arc<AtomicUsize>);
    impl EventHandler for Count {
        fn init(&mut self, epoll: &Epoll) -> io::Result<()> {
            add_fd(epoll, &self.0, EventSet::IN, 1)
        }
        fn handle(&mut self, _: &Epoll, token: u64, _: EventSet) {
            assert_eq!(token, 1);
            let _ = self.0.read();
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn handles_events_until_stopped() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        let mut w = Worker::spawn("test", Count(evt.try_clone().unwrap(), n.clone())).unwrap();
        evt.write(1).unwrap();
        for _ in 0..200 {
            if n.load(Ordering::SeqCst) == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let handler = w.stop().unwrap();
        assert!(Arc::ptr_eq(&handler.1, &n));
        evt.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn slot_pauses_and_resumes_with_its_state() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        let mut slot = WorkerSlot::new("test");
        assert!(slot.pause("dev").is_err());
        slot.start(Count(evt.try_clone().unwrap(), n.clone()))
            .unwrap();
        let h = slot.pause("dev").unwrap();
        assert!(Arc::ptr_eq(&h.1, &n));
        // Paused: events wait.
        evt.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(n.load(Ordering::SeqCst), 0);
        slot.resume().unwrap();
        for _ in 0..200 {
            if n.load(Ordering::SeqCst) == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
        slot.stop();
        assert!(slot.pause("dev").is_err());
    }
}
