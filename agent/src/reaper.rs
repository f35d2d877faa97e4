//! Reaping: the agent is PID 1 in the guest (and a child subreaper on a plain host), so
//! every orphan ends up as its child. One task collects every exit with `waitpid(-1)`
//! on SIGCHLD and hands each status to whoever watches that pid. Nothing else in the
//! agent may wait for children (no `tokio::process`): it would steal statuses.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Exits nobody watched yet are kept (a watcher may come just after the exit), up to
/// this many; the oldest go first. Orphans re-parented to PID 1 land here too.
const MAX_UNCLAIMED: usize = 1024;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal's number.
    pub status: i32,
    pub at_unix_ns: i64,
}

/// A watch that resolves once the pid exits.
pub type ExitWatch = watch::Receiver<Option<Exit>>;

#[derive(Default)]
struct State {
    watchers: HashMap<i32, watch::Sender<Option<Exit>>>,
    unclaimed: HashMap<i32, Exit>,
    unclaimed_order: VecDeque<i32>,
}

/// The shared reaper. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// Watches `pid`. If it already exited (and was not claimed), the watch is resolved.
    pub fn watch(&self, pid: i32) -> ExitWatch {
        let mut st = self.lock();
        if let Some(exit) = st.unclaimed.remove(&pid) {
            st.unclaimed_order.retain(|p| *p != pid);
            let (_tx, rx) = watch::channel(Some(exit));
            return rx;
        }
        if let Some(tx) = st.watchers.get(&pid) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        st.watchers.insert(pid, tx);
        rx
    }

    fn record(&self, pid: i32, status: i32) {
        let exit = Exit {
            status,
            at_unix_ns: now_ns(),
        };
        let mut st = self.lock();
        if let Some(tx) = st.watchers.remove(&pid) {
            tracing::debug!(pid, status, "process exited");
            let _ = tx.send(Some(exit));
            return;
        }
        tracing::debug!(pid, status, "unwatched process exited");
        if st.unclaimed_order.len() >= MAX_UNCLAIMED
            && let Some(old) = st.unclaimed_order.pop_front()
        {
            st.unclaimed.remove(&old);
        }
        st.unclaimed.insert(pid, exit);
        st.unclaimed_order.push_back(pid);
    }

    /// Reaps every child that has exited, without blocking.
    pub fn reap_now(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.record(pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.record(pid.as_raw(), 128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            }
        }
    }

    /// Runs the reaping loop until the runtime stops. Call from inside a tokio runtime.
    pub fn spawn(&self) -> std::io::Result<()> {
        let mut sig = signal(SignalKind::child())?;
        let me = self.clone();
        tokio::spawn(async move {
            // Children may have exited before the handler was installed.
            me.reap_now();
            while sig.recv().await.is_some() {
                me.reap_now();
            }
        });
        Ok(())
    }
}

/// Waits until the watched process exits.
pub async fn wait(mut w: ExitWatch) -> Option<Exit> {
    loop {
        if let Some(e) = *w.borrow_and_update() {
            return Some(e);
        }
        if w.changed().await.is_err() {
            return *w.borrow();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_before_the_watch_is_kept() {
        let r = Reaper::default();
        r.record(42, 3);
        let w = r.watch(42);
        assert_eq!(w.borrow().map(|e| e.status), Some(3));
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let r = Reaper::default();
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            r.record(pid, 0);
        }
        let st = r.lock();
        assert_eq!(st.unclaimed.len(), MAX_UNCLAIMED);
        assert!(!st.unclaimed.contains_key(&0));
    }

    #[tokio::test]
    async fn a_watch_resolves_on_exit() {
        let r = Reaper::default();
        let w = r.watch(7);
        r.record(7, 137);
        assert_eq!(wait(w).await.map(|e| e.status), Some(137));
    }
}
