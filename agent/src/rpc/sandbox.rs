//! CreateSandbox (entropy seed, hostname, clock, shares, the name files containers get
//! at /etc/hosts, /etc/resolv.conf and /etc/hostname) and DestroySandbox (stop
//! everything, power off).

use std::sync::Arc;

use husk_agent_protocol::agent::{CreateSandboxRequest, Empty};
use husk_agent_protocol::validate;
use tokio::sync::Notify;

use super::Service;

/// Asks the agent's main loop to stop (and, as PID 1, to power the VM off).
#[derive(Debug, Clone, Default)]
pub struct Shutdown(pub Arc<Notify>);

fn invalid(msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, msg))
}

pub fn create(svc: &Service, req: &CreateSandboxRequest) -> ttrpc::Result<Empty> {
    if !req.sandbox_id.is_empty() {
        validate::id("sandbox_id", &req.sandbox_id).map_err(|e| invalid(e.to_string()))?;
    }
    validate::etc_files(req).map_err(|e| invalid(e.to_string()))?;
    validate::entropy_seed(req).map_err(|e| invalid(e.to_string()))?;
    // First, so that whatever follows draws from this clone's own random stream. In
    // host mode the kernel is the host's: the seed is not ours to give.
    if svc.pid1 {
        crate::entropy::seed_kernel(&req.entropy_seed);
    }
    if !req.hostname.is_empty() {
        let ok = req.hostname.len() <= 64
            && req
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            return Err(invalid(format!(
                "hostname {:?}: at most 64 of [A-Za-z0-9.-]",
                req.hostname
            )));
        }
        if svc.pid1 {
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| invalid(format!("hostname: {e}")))?;
        }
    }
    mount_shares(svc, &req.shares)?;
    svc.rt
        .etc_files
        .write([&req.etc_hosts, &req.etc_resolv_conf, &req.etc_hostname])
        .map_err(|e| {
            tracing::warn!(error = %e, "sandbox name files");
            ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INTERNAL,
                crate::error_chain(&e),
            ))
        })?;
    if req.host_time_unix_ns > 0 && svc.pid1 {
        let ts = nix::sys::time::TimeSpec::new(
            req.host_time_unix_ns / 1_000_000_000,
            req.host_time_unix_ns % 1_000_000_000,
        );
        if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
            tracing::warn!(error = %e, "could not set the clock");
        }
    }
    Ok(Empty::new())
}

/// Where a share is mounted: `<SHARES_DIR>/<tag>` (outside the agent's state folder,
/// so containers may bind from it).
pub const SHARES_DIR: &str = "/run/husk-shares";

/// Mounts each virtio-fs tag at `SHARES_DIR/<tag>` (once: a second CreateSandbox finds
/// it mounted). Only as PID 1: in host mode there is no virtio-fs.
fn mount_shares(svc: &Service, tags: &[String]) -> ttrpc::Result<()> {
    use nix::mount::{MsFlags, mount};
    for (i, tag) in tags.iter().enumerate() {
        validate::id("shares", tag).map_err(|e| invalid(format!("shares[{i}]: {e}")))?;
        if !svc.pid1 {
            return Err(invalid(format!(
                "shares[{i}] {tag:?}: virtio-fs shares exist only in a guest"
            )));
        }
        let dir = std::path::Path::new(SHARES_DIR).join(tag);
        if is_mount_point(&dir) {
            continue;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| invalid(format!("shares[{i}]: {}: {e}", dir.display())))?;
        mount(
            Some(tag.as_str()),
            &dir,
            Some("virtiofs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| {
            invalid(format!(
                "shares[{i}] {tag:?}: mount virtiofs at {}: {e}",
                dir.display()
            ))
        })?;
        tracing::info!(tag = %tag, dir = %dir.display(), "share mounted");
    }
    Ok(())
}

fn is_mount_point(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

pub async fn destroy(svc: &Service) -> ttrpc::Result<Empty> {
    svc.rt.delete_all().await;
    // Answer first; the main loop stops (and powers off) right after.
    let s = svc.shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        s.0.notify_one();
    });
    Ok(Empty::new())
}
