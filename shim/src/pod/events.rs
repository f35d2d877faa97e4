//! The event pump: the agent's NextEvent (a long poll, one caller at a time, in order)
//! turned into [`PodEvent`]s on a channel, for the shim to publish as TaskExit and
//! TaskOOM.
//!
//! Order (containerd's, which the shim must keep): an exec's exit comes before its
//! container's init's. The guest may report them the other way round (the init dies and
//! the kernel kills the rest of its pid namespace), so an init's exit is held while
//! execs of its container are still live, until their exits came or [`HOLD`] passed.
//! If the agent goes (the VM died), every live process gets an exit of 255, execs
//! first.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use husk_agent_protocol::agent::{Empty, Event, event};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::process::time_of;
use super::{Pod, ProcessKey, ctx_unbounded};

/// The longest an init's exit waits for its execs' exits.
pub const HOLD: Duration = Duration::from_secs(2);
/// The exit status of the processes of a VM that died.
pub const VM_DIED_STATUS: i32 = 255;

/// Something that happened to a process of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEvent {
    /// A process exited.
    Exit {
        process: ProcessKey,
        /// Its pid in the guest (0 when unknown: the VM died).
        pid: u32,
        status: i32,
        at: SystemTime,
    },
    /// The OOM killer killed a process of this container.
    Oom { container: String },
}

/// The processes that were created and whose exit has not been delivered, and the init
/// exits held back for them.
#[derive(Debug, Default)]
pub(crate) struct Live {
    procs: BTreeSet<ProcessKey>,
    held: HashMap<String, (PodEvent, Instant)>,
}

impl Live {
    /// A process was created.
    pub(crate) fn add(&mut self, key: ProcessKey) {
        self.procs.insert(key);
    }

    /// A process that failed to start.
    pub(crate) fn remove(&mut self, key: &ProcessKey) {
        self.procs.remove(key);
    }

    /// A container was deleted: its processes are no longer awaited.
    pub(crate) fn remove_container(&mut self, id: &str) {
        self.procs.retain(|k| k.container != id);
        self.held.remove(id);
    }

    fn live_execs(&self, container: &str) -> bool {
        self.procs
            .iter()
            .any(|k| k.container == container && !k.is_init())
    }

    /// An event from the agent: what to deliver now, in order.
    pub(crate) fn on_event(&mut self, ev: PodEvent, now: Instant) -> Vec<PodEvent> {
        let PodEvent::Exit { process, .. } = &ev else {
            return vec![ev];
        };
        let process = process.clone();
        self.procs.remove(&process);
        if process.is_init() {
            if self.live_execs(&process.container) {
                self.held.insert(process.container.clone(), (ev, now));
                return Vec::new();
            }
            return vec![ev];
        }
        let mut out = vec![ev];
        if !self.live_execs(&process.container)
            && let Some((init, _)) = self.held.remove(&process.container)
        {
            out.push(init);
        }
        out
    }

    /// Held init exits older than `hold`: delivered now (an exec whose exit never
    /// came must not hold its container forever).
    pub(crate) fn expire(&mut self, now: Instant, hold: Duration) -> Vec<PodEvent> {
        let due: Vec<String> = self
            .held
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= hold)
            .map(|(c, _)| c.clone())
            .collect();
        let mut out = Vec::new();
        for c in due {
            if let Some((ev, _)) = self.held.remove(&c) {
                self.procs.retain(|k| k.container != c);
                out.push(ev);
            }
        }
        out
    }

    /// The VM is gone: every live process exits with [`VM_DIED_STATUS`] (execs before
    /// inits), then the held init exits.
    pub(crate) fn vm_died(&mut self, at: SystemTime) -> Vec<PodEvent> {
        let procs = std::mem::take(&mut self.procs);
        let (inits, execs): (Vec<_>, Vec<_>) = procs.into_iter().partition(ProcessKey::is_init);
        let mut out: Vec<PodEvent> = execs
            .into_iter()
            .chain(inits)
            .map(|process| PodEvent::Exit {
                process,
                pid: 0,
                status: VM_DIED_STATUS,
                at,
            })
            .collect();
        let mut held: Vec<_> = self.held.drain().collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(held.into_iter().map(|(_, (ev, _))| ev));
        out
    }
}

/// An agent event as a [`PodEvent`] (`None` for kinds this host does not know).
fn convert(ev: &Event) -> Option<PodEvent> {
    match ev.kind.enum_value() {
        Ok(event::Kind::EXIT) => Some(PodEvent::Exit {
            process: ProcessKey::new(&ev.container_id, &ev.exec_id),
            pid: ev.pid,
            status: ev.exit_status,
            at: time_of(ev.at_unix_ns),
        }),
        Ok(event::Kind::OOM) => Some(PodEvent::Oom {
            container: ev.container_id.clone(),
        }),
        _ => None,
    }
}

impl Pod {
    /// Starts the event pump and returns its channel. Call it once per pod, before
    /// creating containers (NextEvent has one caller at a time; a second pump would
    /// take events from the first). The channel closes when the agent is gone, after
    /// the exits of 255 for the processes that were live.
    pub fn events(&self) -> mpsc::UnboundedReceiver<PodEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let pod = self.clone();
        tokio::spawn(async move { pod.pump(tx).await });
        rx
    }

    async fn pump(self, tx: mpsc::UnboundedSender<PodEvent>) {
        let agent = self.agent.clone();
        let empty = Empty::new();
        // One call in flight at all times, never dropped half-way: an event the agent
        // sent to a cancelled call would be lost.
        let mut next = Box::pin(agent.next_event(ctx_unbounded(), &empty));
        let mut tick = tokio::time::interval(HOLD / 4);
        loop {
            let out = tokio::select! {
                r = &mut next => match r {
                    Ok(ev) => {
                        next = Box::pin(agent.next_event(ctx_unbounded(), &empty));
                        debug!(cid = %ev.container_id, exec = %ev.exec_id, status = ev.exit_status, "agent event");
                        match convert(&ev) {
                            Some(pe) => self.live().on_event(pe, Instant::now()),
                            None => Vec::new(),
                        }
                    }
                    Err(ttrpc::Error::RpcStatus(s)) => {
                        warn!(code = ?s.code(), message = %s.message(), "the agent's event stream failed: no more events");
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "the agent is gone: every live process exits 255");
                        for ev in self.live().vm_died(SystemTime::now()) {
                            let _ = tx.send(ev);
                        }
                        return;
                    }
                },
                _ = tick.tick() => self.live().expire(Instant::now(), HOLD),
            };
            for ev in out {
                if tx.send(ev).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(c: &str, e: &str, status: i32) -> PodEvent {
        PodEvent::Exit {
            process: ProcessKey::new(c, e),
            pid: 1,
            status,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn an_init_exit_waits_for_its_execs() {
        let mut l = Live::default();
        let t = Instant::now();
        l.add(ProcessKey::new("c", ""));
        l.add(ProcessKey::new("c", "e1"));
        l.add(ProcessKey::new("d", ""));
        // The init first, as the guest may report it: held.
        assert!(l.on_event(exit("c", "", 137), t).is_empty());
        // Another container's exit is not held up.
        assert_eq!(l.on_event(exit("d", "", 0), t), vec![exit("d", "", 0)]);
        // The exec's exit, then the init's.
        assert_eq!(
            l.on_event(exit("c", "e1", 137), t),
            vec![exit("c", "e1", 137), exit("c", "", 137)]
        );
        let oom = PodEvent::Oom {
            container: "c".into(),
        };
        assert_eq!(l.on_event(oom.clone(), t), vec![oom]);
    }

    #[test]
    fn a_held_exit_is_delivered_after_the_hold() {
        let mut l = Live::default();
        let t = Instant::now();
        l.add(ProcessKey::new("c", ""));
        l.add(ProcessKey::new("c", "lost"));
        assert!(l.on_event(exit("c", "", 1), t).is_empty());
        assert!(l.expire(t + HOLD / 2, HOLD).is_empty());
        assert_eq!(l.expire(t + HOLD, HOLD), vec![exit("c", "", 1)]);
        assert!(l.vm_died(SystemTime::UNIX_EPOCH).is_empty());
    }

    #[test]
    fn a_dead_vm_ends_every_live_process_execs_first() {
        let mut l = Live::default();
        l.add(ProcessKey::new("a", ""));
        l.add(ProcessKey::new("a", "x"));
        l.add(ProcessKey::new("b", ""));
        let evs = l.vm_died(SystemTime::UNIX_EPOCH);
        let keys: Vec<_> = evs
            .iter()
            .map(|e| match e {
                PodEvent::Exit {
                    process, status, ..
                } => {
                    assert_eq!(*status, VM_DIED_STATUS);
                    (process.container.as_str(), process.exec.as_str())
                }
                PodEvent::Oom { .. } => panic!("no OOM"),
            })
            .collect();
        assert_eq!(keys, [("a", "x"), ("a", ""), ("b", "")]);
    }

    #[test]
    fn agent_events_convert() {
        let mut ev = Event::new();
        ev.kind = event::Kind::EXIT.into();
        ev.container_id = "c".into();
        ev.exec_id = "e".into();
        ev.pid = 7;
        ev.exit_status = 3;
        ev.at_unix_ns = 1_000_000_000;
        assert_eq!(
            convert(&ev),
            Some(PodEvent::Exit {
                process: ProcessKey::new("c", "e"),
                pid: 7,
                status: 3,
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            })
        );
        ev.kind = event::Kind::OOM.into();
        assert_eq!(
            convert(&ev),
            Some(PodEvent::Oom {
                container: "c".into()
            })
        );
        ev.kind = event::Kind::UNKNOWN.into();
        assert_eq!(convert(&ev), None);
    }
}
