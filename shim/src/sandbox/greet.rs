//! The first requests to a VM's agent: the host's protocol (GuestDetails), then the
//! sandbox's identity (CreateSandbox: id, hostname, the host's clock, name files,
//! shares, and since protocol 0.5 an entropy seed). A VM restored from a template gets
//! its own identity this way, as a booted one does.

use husk_agent_protocol::PROTOCOL_VERSION;
use husk_agent_protocol::agent::{CreateSandboxRequest, GuestDetailsRequest};
use husk_agent_protocol::agent_ttrpc::AgentClient;

use super::{SandboxError, SandboxSpec, ctx, now_unix_ns};

/// 64 bytes from the host's getrandom (more adds nothing to the guest's CRNG).
fn entropy_seed() -> Vec<u8> {
    use std::io::Read as _;
    let mut b = vec![0u8; 64];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if let Err(e) = read {
        tracing::warn!(error = %e, "no entropy for the guest");
        b.clear();
    }
    b
}

/// Greets the agent of `spec`'s VM, which speaks protocol 0.`minor`; `line` (its
/// readiness line, or a description) goes into errors.
pub(super) async fn greet(
    agent: &AgentClient,
    spec: &SandboxSpec,
    minor: u32,
    line: &str,
) -> Result<(), SandboxError> {
    let mut g = GuestDetailsRequest::new();
    g.protocol_major = PROTOCOL_VERSION.0;
    g.protocol_minor = PROTOCOL_VERSION.1;
    agent.guest_details(ctx(10), &g).await?;
    let line = line.to_string();
    let mut c = CreateSandboxRequest::new();
    c.sandbox_id = spec.id.clone();
    c.hostname = spec.hostname.clone();
    c.host_time_unix_ns = now_unix_ns();
    // Protocol 0.5: the guest kernel reseeds its CRNG with these, so that VMs
    // restored from one template do not share random streams (docs/snapshots.md).
    c.entropy_seed = entropy_seed();
    if !spec.nics.is_empty() && minor < 4 {
        return Err(SandboxError::BadReady(
            line,
            format!(
                "the agent speaks protocol 0.{minor}; networks need 0.4 (rebuild the guest image: make guest-image; or use --network none)"
            ),
        ));
    }
    if let Some(f) = &spec.name_files {
        c.etc_hosts = f.hosts.clone().into_bytes();
        c.etc_resolv_conf = f.resolv_conf.clone().into_bytes();
        c.etc_hostname = f.hostname.clone().into_bytes();
    }
    if spec.has_share() {
        if minor < 3 {
            return Err(SandboxError::BadReady(
                line,
                format!(
                    "the agent speaks protocol 0.{minor}; volumes need 0.3 (rebuild the guest image: make guest-image)"
                ),
            ));
        }
        c.shares = vec![crate::share::TAG.to_string()];
    }
    agent.create_sandbox(ctx(10), &c).await?;
    Ok(())
}
