//! Waiting for the agent of a VM restored from a template (crate::template). Its agent
//! announced itself once, when the template booted; a clone resumes behind that point,
//! so the host connects to it directly (the vsock device reset the guest's old
//! connections) and then greets it like a booted one.

use std::process::Child;
use std::time::{Duration, Instant};

use husk_agent_protocol::PROTOCOL_VERSION;
use husk_agent_protocol::agent::GuestDetailsRequest;
use husk_agent_protocol::agent_ttrpc::AgentClient;
use husk_agent_protocol::client::Endpoint;

use super::{BootTimes, SandboxError, SandboxSpec, console_tail, ctx, describe_exit, greet};

/// How long a restored VM's agent may take to answer: a restore takes milliseconds to a
/// few seconds; much longer means the template is bad, and the VM boots instead.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// More for a VM whose memory is copied (one with the virtio-fs share): per MiB of
/// guest memory, about 4× what the emulated lab took to copy (6.8 s for 256 MiB).
const COPY_TIMEOUT_PER_MIB: Duration = Duration::from_millis(100);

/// [`RESTORE_TIMEOUT`], plus the memory copy's time for a VM with the share.
fn restore_timeout(spec: &SandboxSpec) -> Duration {
    if spec.has_share() {
        RESTORE_TIMEOUT + COPY_TIMEOUT_PER_MIB * spec.memory_mib
    } else {
        RESTORE_TIMEOUT
    }
}

/// Connects to the restored VM's agent and greets it.
pub(super) async fn wait_agent(
    child: &mut Child,
    spec: &SandboxSpec,
    endpoint: &Endpoint,
    t0: Instant,
    times: &mut BootTimes,
) -> Result<(AgentClient, (u32, u32)), SandboxError> {
    let dir = spec.dir.path();
    let timeout = restore_timeout(spec);
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    let need = crate::template::min_agent_minor(spec);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(SandboxError::NotRestored(format!(
                "{}{}",
                describe_exit(st),
                console_tail(dir)
            )));
        }
        if Instant::now() > deadline {
            return Err(SandboxError::NotRestored(format!(
                "the agent did not answer within {timeout:?} (last: {last}){}",
                console_tail(dir)
            )));
        }
        match tokio::time::timeout(Duration::from_secs(5), hello(endpoint)).await {
            // Before 0.5 the agent drops the entropy seed: every clone would share the
            // template's random state; before 0.6 its NICs keep the template's MAC.
            Ok(Ok((_, minor))) if minor < need => {
                let why = if need >= 6 {
                    "entropy seed, NIC addresses"
                } else {
                    "entropy seed"
                };
                return Err(SandboxError::NotRestored(format!(
                    "its agent speaks protocol 0.{minor}; this restored VM needs 0.{need} ({why})"
                )));
            }
            Ok(Ok((agent, minor))) => {
                times.agent_ready = t0.elapsed();
                // CreateSandbox is the restored VM's first real work (it mounts the
                // share: the first request its virtio-fs device serves). No container
                // exists yet, so a failure here discards the template and boots.
                greet(&agent, spec, minor, "(restored from a template)")
                    .await
                    .map_err(|e| {
                        SandboxError::NotRestored(format!(
                            "its agent failed CreateSandbox: {e}{}",
                            console_tail(dir)
                        ))
                    })?;
                times.connected = t0.elapsed();
                tracing::debug!(
                    ms = t0.elapsed().as_millis() as u64,
                    "restored VM's agent ready"
                );
                return Ok((agent, (PROTOCOL_VERSION.0, minor)));
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = "no answer within 5 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One attempt: connect and ask the agent's protocol.
async fn hello(endpoint: &Endpoint) -> Result<(AgentClient, u32), String> {
    let agent = endpoint.agent().await.map_err(|e| e.to_string())?;
    let mut g = GuestDetailsRequest::new();
    g.protocol_major = PROTOCOL_VERSION.0;
    g.protocol_minor = PROTOCOL_VERSION.1;
    let d = agent
        .guest_details(ctx(5), &g)
        .await
        .map_err(|e| e.to_string())?;
    if d.protocol_major != PROTOCOL_VERSION.0 {
        return Err(format!(
            "the agent speaks protocol {}, this host {}",
            d.protocol_major, PROTOCOL_VERSION.0
        ));
    }
    Ok((agent, d.protocol_minor))
}
