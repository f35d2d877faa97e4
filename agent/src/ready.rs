//! Readiness: once serving, the agent connects to the host's vsock port 1025 and sends
//! one JSON line (its protocol version and the guest's details), then closes. The host
//! listens on `<vsock uds>_1025` before the VM starts: no polling.

use husk_agent_protocol::{PROTOCOL_VERSION, READY_PORT};
use tokio::io::AsyncWriteExt as _;
use tokio_vsock::{VMADDR_CID_HOST, VsockAddr, VsockStream};

/// The readiness line.
pub fn line() -> String {
    let d = crate::rpc::guest_details_now();
    let v = serde_json::json!({
        "husk_agent": d.agent_version,
        "protocol": [PROTOCOL_VERSION.0, PROTOCOL_VERSION.1],
        "kernel": d.kernel_release,
        "cpus": d.cpus,
        "memory_bytes": d.memory_bytes,
        "uptime_ms": d.uptime_ms,
    });
    format!("{v}\n")
}

/// Tells the host the agent is ready.
pub async fn announce() -> std::io::Result<()> {
    let mut s = VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, READY_PORT)).await?;
    s.write_all(line().as_bytes()).await?;
    s.shutdown(std::net::Shutdown::Write)
}
