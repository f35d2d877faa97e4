//! The shim's table of tasks: each process (a container's init or an exec) with its
//! status, containerd's stdio strings, and its exit once known.
//!
//! The table also keeps the event order containerd expects: an exit that comes while
//! its process is being started (the agent's event can beat its own StartContainer or
//! ExecProcess answer) is held until the start has been published; an exit of a
//! process that was never started (the VM died under a created container) is recorded
//! for Wait and State but not published (containerd never sees an exit before a start).

use std::collections::BTreeMap;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::pod::ProcessKey;

/// Why the table refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("task {0} not found")]
    NotFound(String),
    #[error("task {0} already exists")]
    Exists(String),
    #[error("task {key} is {status:?}, not created")]
    NotCreated { key: String, status: Status },
}

/// A process's status (containerd's task status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: u32,
    pub at: SystemTime,
}

/// containerd's stdio strings for a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioStrings {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// One process.
#[derive(Debug)]
pub struct Proc {
    pub stdio: StdioStrings,
    /// An exec's OCI process (JSON); None for an init.
    pub process: Option<serde_json::Value>,
    /// Its pid as containerd sees it (husk-vmm's).
    pub pid: u32,
    pub status: Status,
    pub exit: Option<ExitInfo>,
    starting: bool,
    pending_exit: Option<ExitInfo>,
    exited: watch::Sender<Option<ExitInfo>>,
}

impl Proc {
    /// A created process.
    pub fn new(stdio: StdioStrings, process: Option<serde_json::Value>, pid: u32) -> Proc {
        Proc {
            stdio,
            process,
            pid,
            status: Status::Created,
            exit: None,
            starting: false,
            pending_exit: None,
            exited: watch::channel(None).0,
        }
    }
}

/// What to do with an exit the pod reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// Publish TaskExit now.
    Publish,
    /// Held until its start is published ([`Table::finish_start`] returns it).
    Held,
    /// Recorded without an event (never started), or unknown, or already stopped.
    Quiet,
}

fn name(k: &ProcessKey) -> String {
    if k.is_init() {
        k.container.clone()
    } else {
        format!("{}/{}", k.container, k.exec)
    }
}

/// Every process of the shim's pod.
#[derive(Debug, Default)]
pub struct Table {
    procs: BTreeMap<ProcessKey, Proc>,
}

impl Table {
    /// Adds a created process; an exec needs its container.
    pub fn add(&mut self, key: ProcessKey, p: Proc) -> Result<(), StateError> {
        if self.procs.contains_key(&key) {
            return Err(StateError::Exists(name(&key)));
        }
        if !key.is_init()
            && !self
                .procs
                .contains_key(&ProcessKey::new(&key.container, ""))
        {
            return Err(StateError::NotFound(key.container));
        }
        self.procs.insert(key, p);
        Ok(())
    }

    pub fn get(&self, key: &ProcessKey) -> Result<&Proc, StateError> {
        self.procs
            .get(key)
            .ok_or_else(|| StateError::NotFound(name(key)))
    }

    pub fn get_mut(&mut self, key: &ProcessKey) -> Result<&mut Proc, StateError> {
        self.procs
            .get_mut(key)
            .ok_or_else(|| StateError::NotFound(name(key)))
    }

    /// A start begins: the process must be created and not being started.
    pub fn begin_start(&mut self, key: &ProcessKey) -> Result<(), StateError> {
        let p = self.get_mut(key)?;
        if p.status != Status::Created || p.starting {
            return Err(StateError::NotCreated {
                key: name(key),
                status: p.status,
            });
        }
        p.starting = true;
        Ok(())
    }

    /// A start ended (`pid` on success, once TaskStart/TaskExecStarted is queued).
    /// Returns the exit that came meanwhile, now recorded, to publish after the start.
    pub fn finish_start(&mut self, key: &ProcessKey, pid: Option<u32>) -> Option<ExitInfo> {
        let p = self.procs.get_mut(key)?;
        p.starting = false;
        if let Some(pid) = pid {
            p.pid = pid;
            p.status = Status::Running;
        }
        let held = p.pending_exit.take()?;
        record(p, held);
        pid.map(|_| held)
    }

    /// The pod reported an exit.
    pub fn on_exit(&mut self, key: &ProcessKey, exit: ExitInfo) -> OnExit {
        let Some(p) = self.procs.get_mut(key) else {
            return OnExit::Quiet;
        };
        if p.status == Status::Stopped {
            return OnExit::Quiet;
        }
        if p.starting {
            p.pending_exit = Some(exit);
            return OnExit::Held;
        }
        let started = p.status != Status::Created;
        record(p, exit);
        if started {
            OnExit::Publish
        } else {
            OnExit::Quiet
        }
    }

    /// Waits for a process's exit: a receiver that holds it once known.
    pub fn exit_watch(
        &self,
        key: &ProcessKey,
    ) -> Result<watch::Receiver<Option<ExitInfo>>, StateError> {
        Ok(self.get(key)?.exited.subscribe())
    }

    /// Removes a process (its container's execs go with an init).
    pub fn remove(&mut self, key: &ProcessKey) -> Result<Proc, StateError> {
        let p = self
            .procs
            .remove(key)
            .ok_or_else(|| StateError::NotFound(name(key)))?;
        if key.is_init() {
            self.procs.retain(|k, _| k.container != key.container);
        }
        Ok(p)
    }

    /// The execs of `container`.
    pub fn execs_of(&self, container: &str) -> Vec<ProcessKey> {
        self.procs
            .keys()
            .filter(|k| k.container == container && !k.is_init())
            .cloned()
            .collect()
    }

    /// The processes not yet stopped.
    pub fn live(&self) -> Vec<ProcessKey> {
        self.procs
            .iter()
            .filter(|(_, p)| p.status != Status::Stopped)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// How many containers (inits) the table holds.
    pub fn containers(&self) -> usize {
        self.procs.keys().filter(|k| k.is_init()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

fn record(p: &mut Proc, exit: ExitInfo) {
    p.status = Status::Stopped;
    p.exit = Some(exit);
    p.exited.send_replace(Some(exit));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: u32) -> ExitInfo {
        ExitInfo {
            status,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    fn table() -> (Table, ProcessKey) {
        let mut t = Table::default();
        let k = ProcessKey::new("c1", "");
        t.add(k.clone(), Proc::new(StdioStrings::default(), None, 7))
            .unwrap();
        (t, k)
    }

    #[test]
    fn created_started_exited() {
        let (mut t, k) = table();
        let mut w = t.exit_watch(&k).unwrap();
        t.begin_start(&k).unwrap();
        assert_eq!(t.finish_start(&k, Some(7)), None);
        assert_eq!(t.get(&k).unwrap().status, Status::Running);
        assert_eq!(t.on_exit(&k, exit(3)), OnExit::Publish);
        assert_eq!(t.get(&k).unwrap().status, Status::Stopped);
        assert_eq!(*w.borrow_and_update(), Some(exit(3)));
        // A second report (the VM died afterwards) is no second event.
        assert_eq!(t.on_exit(&k, exit(255)), OnExit::Quiet);
        assert_eq!(t.get(&k).unwrap().exit, Some(exit(3)));
    }

    #[test]
    fn exit_during_start_is_held_until_started() {
        let (mut t, k) = table();
        t.begin_start(&k).unwrap();
        assert_eq!(t.on_exit(&k, exit(0)), OnExit::Held);
        assert_eq!(t.get(&k).unwrap().status, Status::Created);
        assert_eq!(t.finish_start(&k, Some(7)), Some(exit(0)));
        assert_eq!(t.get(&k).unwrap().status, Status::Stopped);
    }

    #[test]
    fn never_started_exit_is_quiet() {
        let (mut t, k) = table();
        assert_eq!(t.on_exit(&k, exit(255)), OnExit::Quiet);
        assert_eq!(t.get(&k).unwrap().exit, Some(exit(255)));
        assert!(matches!(
            t.begin_start(&k),
            Err(StateError::NotCreated { .. })
        ));
        // A failed start with an exit meanwhile: recorded, not published.
        let (mut t, k) = table();
        t.begin_start(&k).unwrap();
        assert_eq!(t.on_exit(&k, exit(1)), OnExit::Held);
        assert_eq!(t.finish_start(&k, None), None);
        assert_eq!(t.get(&k).unwrap().status, Status::Stopped);
    }

    #[test]
    fn double_start_refused() {
        let (mut t, k) = table();
        t.begin_start(&k).unwrap();
        assert!(t.begin_start(&k).is_err());
    }

    #[test]
    fn execs_need_their_container_and_go_with_it() {
        let (mut t, k) = table();
        let e = ProcessKey::new("c1", "e1");
        assert!(
            t.add(
                ProcessKey::new("c2", "e1"),
                Proc::new(StdioStrings::default(), None, 0)
            )
            .is_err()
        );
        t.add(e.clone(), Proc::new(StdioStrings::default(), None, 0))
            .unwrap();
        assert_eq!(
            t.add(e.clone(), Proc::new(StdioStrings::default(), None, 0)),
            Err(StateError::Exists("c1/e1".into()))
        );
        assert_eq!(t.execs_of("c1"), vec![e.clone()]);
        assert_eq!(t.live().len(), 2);
        assert_eq!(t.containers(), 1);
        t.remove(&k).unwrap();
        assert!(t.is_empty());
        assert!(matches!(t.remove(&e), Err(StateError::NotFound(_))));
    }
}
