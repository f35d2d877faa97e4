//! containerd's task events, published in the order they were queued.
//!
//! Every event goes through one queue and one task that publishes them one after the
//! other (containerd-shim's RemotePublisher, over ttrpc to containerd's address), so the
//! order the Task service and the exit handler queue them in (under the task table's
//! lock, crate::shimv2::state) is the order containerd sees.

use std::time::SystemTime;

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;
use tokio::sync::mpsc;
use tracing::warn;

use super::state::StdioStrings;

/// One event, as the shim knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    Create {
        id: String,
        bundle: String,
        stdio: StdioStrings,
        pid: u32,
    },
    Start {
        id: String,
        pid: u32,
    },
    ExecAdded {
        id: String,
        exec: String,
    },
    ExecStarted {
        id: String,
        exec: String,
        pid: u32,
    },
    Oom {
        id: String,
    },
    Exit {
        id: String,
        exec: String,
        pid: u32,
        status: u32,
        at: SystemTime,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
    Delete {
        id: String,
        exec: String,
        pid: u32,
        status: u32,
        at: Option<SystemTime>,
    },
}

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    ts
}

impl TaskEvent {
    /// Its topic (containerd's /tasks/...).
    pub fn topic(&self) -> &'static str {
        match self {
            TaskEvent::Create { .. } => topics::TASK_CREATE_EVENT_TOPIC,
            TaskEvent::Start { .. } => topics::TASK_START_EVENT_TOPIC,
            TaskEvent::ExecAdded { .. } => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskEvent::ExecStarted { .. } => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskEvent::Oom { .. } => topics::TASK_OOM_EVENT_TOPIC,
            TaskEvent::Exit { .. } => topics::TASK_EXIT_EVENT_TOPIC,
            TaskEvent::Paused { .. } => topics::TASK_PAUSED_EVENT_TOPIC,
            TaskEvent::Resumed { .. } => topics::TASK_RESUMED_EVENT_TOPIC,
            TaskEvent::Delete { .. } => topics::TASK_DELETE_EVENT_TOPIC,
        }
    }

    /// Its protobuf message.
    pub fn message(&self) -> Box<dyn MessageDyn> {
        match self.clone() {
            TaskEvent::Create {
                id,
                bundle,
                stdio,
                pid,
            } => {
                let mut io = TaskIO::new();
                io.stdin = stdio.stdin;
                io.stdout = stdio.stdout;
                io.stderr = stdio.stderr;
                io.terminal = stdio.terminal;
                let mut e = TaskCreate::new();
                e.container_id = id;
                e.bundle = bundle;
                e.io = Some(io).into();
                e.pid = pid;
                Box::new(e)
            }
            TaskEvent::Start { id, pid } => {
                let mut e = TaskStart::new();
                e.container_id = id;
                e.pid = pid;
                Box::new(e)
            }
            TaskEvent::ExecAdded { id, exec } => {
                let mut e = TaskExecAdded::new();
                e.container_id = id;
                e.exec_id = exec;
                Box::new(e)
            }
            TaskEvent::ExecStarted { id, exec, pid } => {
                let mut e = TaskExecStarted::new();
                e.container_id = id;
                e.exec_id = exec;
                e.pid = pid;
                Box::new(e)
            }
            TaskEvent::Oom { id } => {
                let mut e = TaskOOM::new();
                e.container_id = id;
                Box::new(e)
            }
            TaskEvent::Exit {
                id,
                exec,
                pid,
                status,
                at,
            } => {
                let mut e = TaskExit::new();
                // containerd's `id` is the process: the exec id, or the container's
                // own id for its init (as runc's shim sends it).
                e.id = if exec.is_empty() { id.clone() } else { exec };
                e.container_id = id;
                e.pid = pid;
                e.exit_status = status;
                e.exited_at = Some(timestamp(at)).into();
                Box::new(e)
            }
            TaskEvent::Paused { id } => {
                let mut e = TaskPaused::new();
                e.container_id = id;
                Box::new(e)
            }
            TaskEvent::Resumed { id } => {
                let mut e = TaskResumed::new();
                e.container_id = id;
                Box::new(e)
            }
            TaskEvent::Delete {
                id,
                exec,
                pid,
                status,
                at,
            } => {
                let mut e = TaskDelete::new();
                e.container_id = id;
                e.id = exec;
                e.pid = pid;
                e.exit_status = status;
                e.exited_at = at.map(timestamp).into();
                Box::new(e)
            }
        }
    }
}

/// The queue of events to publish. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<TaskEvent>,
    /// Events queued and not yet published (or given up).
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// The receiving end of [`Events`]: for [`Events::publish_all`] (or a test).
#[derive(Debug)]
pub struct Queue {
    pub rx: mpsc::UnboundedReceiver<TaskEvent>,
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Events {
    /// A queue and its receiving end.
    pub fn channel() -> (Events, Queue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = std::sync::Arc::default();
        (
            Events {
                tx,
                pending: std::sync::Arc::clone(&pending),
            },
            Queue { rx, pending },
        )
    }

    /// Queues `ev` (never waits; published in queueing order).
    pub fn send(&self, ev: TaskEvent) {
        use std::sync::atomic::Ordering;
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(ev).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            warn!("event publisher gone");
        }
    }

    /// Waits until every queued event was published, at most `bound` (the shim is
    /// about to exit: the last TaskExit and TaskDelete must reach containerd).
    pub async fn flushed(&self, bound: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        while self.pending.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Publishes everything from `queue` in order, to containerd in `namespace`.
    pub async fn publish_all(publisher: RemotePublisher, namespace: String, queue: Queue) {
        let Queue { mut rx, pending } = queue;
        while let Some(ev) = rx.recv().await {
            let topic = ev.topic();
            let ctx = containerd_shim::Context::default();
            if let Err(e) = publisher
                .publish(ctx, topic, &namespace, ev.message())
                .await
            {
                warn!(topic, error = %e, "publish event");
            }
            pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    #[test]
    fn exit_of_init_and_exec() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500);
        let ev = TaskEvent::Exit {
            id: "c".into(),
            exec: String::new(),
            pid: 9,
            status: 137,
            at,
        };
        assert_eq!(ev.topic(), "/tasks/exit");
        let bytes = ev.message().write_to_bytes_dyn().unwrap();
        let e = TaskExit::parse_from_bytes(&bytes).unwrap();
        assert_eq!((e.container_id.as_str(), e.id.as_str()), ("c", "c"));
        assert_eq!((e.pid, e.exit_status), (9, 137));
        assert_eq!((e.exited_at.seconds, e.exited_at.nanos), (1, 500_000_000));
        let ev = TaskEvent::Exit {
            id: "c".into(),
            exec: "e".into(),
            pid: 9,
            status: 0,
            at,
        };
        let bytes = ev.message().write_to_bytes_dyn().unwrap();
        assert_eq!(TaskExit::parse_from_bytes(&bytes).unwrap().id, "e");
    }

    #[test]
    fn queue_keeps_order() {
        let (ev, mut q) = Events::channel();
        ev.send(TaskEvent::Start {
            id: "c".into(),
            pid: 1,
        });
        ev.send(TaskEvent::Oom { id: "c".into() });
        assert_eq!(q.rx.try_recv().unwrap().topic(), "/tasks/start");
        assert_eq!(q.rx.try_recv().unwrap().topic(), "/tasks/oom");
    }
}
