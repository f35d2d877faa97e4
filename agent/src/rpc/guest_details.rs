//! GuestDetails: the protocol handshake and what the guest looks like.

use husk_agent_protocol::PROTOCOL_VERSION;
use husk_agent_protocol::agent::{GuestDetailsRequest, GuestDetailsResponse};

/// What the guest looks like now.
pub fn details() -> GuestDetailsResponse {
    let mut r = GuestDetailsResponse::new();
    r.protocol_major = PROTOCOL_VERSION.0;
    r.protocol_minor = PROTOCOL_VERSION.1;
    r.agent_version = env!("CARGO_PKG_VERSION").to_string();
    r.kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    r.cpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    if let Ok(info) = nix::sys::sysinfo::sysinfo() {
        r.memory_bytes = info.ram_total();
    }
    if let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        let ms = t.tv_sec() * 1000 + t.tv_nsec() / 1_000_000;
        r.uptime_ms = u64::try_from(ms).unwrap_or(0);
    }
    r
}

pub fn handle(req: &GuestDetailsRequest) -> ttrpc::Result<GuestDetailsResponse> {
    if req.protocol_major != PROTOCOL_VERSION.0 {
        return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::FAILED_PRECONDITION,
            format!(
                "protocol_major: the host speaks {}, this agent {}",
                req.protocol_major, PROTOCOL_VERSION.0
            ),
        )));
    }
    Ok(details())
}
