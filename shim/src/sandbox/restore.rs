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

/// Connects to the restored VM's agent and greets it.
pub(super) async fn wait_agent(
    child: &mut Child,
    spec: &SandboxSpec,
    endpoint: &Endpoint,
    t0: Instant,
    times: &mut BootTimes,
) -> Result<(AgentClient, (u32, u32)), SandboxError> {
    let dir = spec.dir.path();
    let deadline = Instant::now() + RESTORE_TIMEOUT;
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
                "the agent did not answer within {RESTORE_TIMEOUT:?} (last: {last}){}",
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
                greet(&agent, spec, minor, "(restored from a template)").await?;
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
