//! The containers and processes inside one sandbox, over its agent: create, start,
//! exec, kill, wait, delete, stats, pause, resume, update, pids, resize, close stdin
//! ([`process`], [`container`]), and the event pump ([`events`]: the agent's NextEvent
//! turned into exits and OOM kills, in an order the shim can publish).
//!
//! A container is named by its own id (several per pod); a process by its container
//! and exec id ("" for the container's init). The Pod owns each process's stdio copies
//! (crate::stdio) from its creation until [`Pod::drain_io`] or [`Pod::delete`].

pub mod container;
pub mod events;
pub mod process;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use husk_agent_protocol::agent_ttrpc::AgentClient;
use husk_agent_protocol::client::Endpoint;

use crate::error::Error;
use crate::stdio::pump::Pumps;

pub use events::PodEvent;
pub use husk_agent_protocol::agent::Rootfs;
pub use process::Exit;

/// A process of the pod: (container id, exec id; "" for the container's init).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub container: String,
    pub exec: String,
}

impl ProcessKey {
    /// The process `exec` of `container` ("" for its init).
    pub fn new(container: &str, exec: &str) -> ProcessKey {
        ProcessKey {
            container: container.to_string(),
            exec: exec.to_string(),
        }
    }

    /// Whether this is a container's init process.
    pub fn is_init(&self) -> bool {
        self.exec.is_empty()
    }
}

/// The containers of one sandbox, through its agent. Cheap to share (`Arc` inside);
/// every method takes `&self`.
#[derive(Clone)]
pub struct Pod {
    endpoint: Endpoint,
    agent: AgentClient,
    /// Each process's stdio copies, from its creation until drained or deleted.
    io: Arc<Mutex<HashMap<ProcessKey, Pumps>>>,
    /// The processes created and not yet reported exited (for the event order).
    live: Arc<Mutex<events::Live>>,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Pod {
    /// The pod served by the agent at `endpoint`, through the client `agent`.
    pub fn new(endpoint: Endpoint, agent: AgentClient) -> Pod {
        Pod {
            endpoint,
            agent,
            io: Arc::default(),
            live: Arc::default(),
        }
    }

    /// Connects to the agent at `endpoint` (a sandbox another process booted: `husk
    /// exec` into a detached run).
    pub async fn connect(endpoint: Endpoint) -> Result<Pod, Error> {
        let agent = endpoint.agent().await?;
        Ok(Pod::new(endpoint, agent))
    }

    /// The pod of a booted sandbox.
    pub fn of(sandbox: &crate::sandbox::Sandbox) -> Pod {
        Pod::new(sandbox.endpoint.clone(), sandbox.agent.clone())
    }

    /// The agent client (for calls the Pod does not wrap).
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    fn io(&self) -> std::sync::MutexGuard<'_, HashMap<ProcessKey, Pumps>> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> std::sync::MutexGuard<'_, events::Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A context for a call of at most `secs` seconds.
fn ctx(secs: i64) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(secs * 1_000_000_000)
}

/// A context without a deadline (WaitProcess, NextEvent last as long as they must).
fn ctx_unbounded() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}
