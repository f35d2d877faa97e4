//! The event queue behind the NextEvent long poll: exits and OOM kills, in order,
//! bounded (the oldest are dropped, with a warning, if nobody collects them).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use husk_agent_protocol::agent::{Event, event::Kind};
use tokio::sync::Notify;

const MAX_EVENTS: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct Events {
    queue: Arc<Mutex<VecDeque<Event>>>,
    ready: Arc<Notify>,
}

impl Events {
    pub fn push(&self, kind: Kind, container: &str, exec: &str, pid: i32, status: i32, at: i64) {
        let mut e = Event::new();
        e.kind = kind.into();
        e.container_id = container.to_string();
        e.exec_id = exec.to_string();
        e.pid = u32::try_from(pid).unwrap_or(0);
        e.exit_status = status;
        e.at_unix_ns = at;
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= MAX_EVENTS {
                tracing::warn!("event queue full: dropping the oldest event");
                q.pop_front();
            }
            q.push_back(e);
        }
        self.ready.notify_one();
    }

    /// The next event, waiting for one.
    pub async fn next(&self) -> Event {
        loop {
            let notified = self.ready.notified();
            if let Some(e) = self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            {
                return e;
            }
            notified.await;
        }
    }
}
