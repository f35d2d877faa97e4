//! A device's worker thread: an epoll loop over the device's file descriptors (queue
//! eventfds, host sockets), plus a stop eventfd so that a reset or the VMM's exit can
//! end it.

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

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

/// A running worker thread; stopped (and joined) on [`Worker::stop`] or drop.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `handler` on a thread named `name`.
    pub fn spawn(name: &str, mut handler: impl EventHandler + 'static) -> io::Result<Worker> {
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
                            return;
                        }
                    };
                    for ev in &events[..n] {
                        if ev.data() == STOP_TOKEN {
                            return;
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

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
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
        w.stop();
        evt.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
