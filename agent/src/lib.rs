//! husk-agent: PID 1 of the guest; serves the agent API (ttrpc) and creates the
//! containers. Also runs on a plain Linux host (`--listen unix:PATH`) for tests.
//!
//! - [`server`]: the main loop; [`rpc`]: the service; [`container`]: the runtime.
//! - [`reaper`]: every child's exit; [`stdio`]: the host's stdio streams;
//!   [`forward`]: the host's port forwards to the guest's TCP ports;
//!   [`events`]: exits and OOM kills for the NextEvent long poll.
//! - [`net`]: the guest's network interfaces and routes (rtnetlink);
//! - [`init`]: PID 1 duties; [`entropy`]: the host's entropy seed for the kernel;
//!   [`ready`]: the readiness announcement; [`listen`]: listen addresses.

pub mod container;
pub mod entropy;
pub mod events;
pub mod forward;
pub mod init;
pub mod listen;
pub mod net;
pub mod ready;
pub mod reaper;
pub mod rpc;
pub mod server;
pub mod stdio;

/// Locks `m`, also after another thread panicked while holding it: the data stays
/// usable (every critical section leaves it consistent), and PID 1 must keep going.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error and its causes (`#[source]`s), as one line: `what: why: root cause`. For
/// messages that leave the agent (ttrpc statuses), where the chain is not walked.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
