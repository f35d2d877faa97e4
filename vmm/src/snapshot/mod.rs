//! VM snapshots (docs/snapshots.md): a paused VM saved to a folder, and a new husk-vmm
//! restored from it.
//!
//! The folder holds two files:
//! - `state`: a header (magic `HUSKSNAP`, format version, body length, SHA-256 of the
//!   body) and a JSON body: husk-vmm's version, the host's CPUID fingerprint, the VM's
//!   shape (vCPUs, memory, devices in bus order), the irqchip/PIT/clock state, every
//!   vCPU's state, and every device's transport, queues and own state;
//! - `memory`: guest RAM, sparse ([`memory`]).
//!
//! `state` is written last, so a folder with a valid `state` is a whole snapshot. A
//! restore refuses, naming the reason, a state file that is not one, of another format
//! version or husk-vmm version, taken on a host with other CPUID, or that does not
//! match the configuration it is restored with.

pub mod memory;
pub mod take;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::devices::virtio::transport::mmio::TransportSnapshot;
use crate::vstate::state::{VcpuState, VmState};

/// The state file's first bytes.
pub const MAGIC: &[u8; 8] = b"HUSKSNAP";
/// Bumped whenever the body's meaning changes.
pub const FORMAT_VERSION: u32 = 1;
/// The state file's name in a snapshot folder.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot folder.
pub const MEMORY_FILE: &str = "memory";
/// Largest state body read (vCPU state is ~20 KiB each as JSON).
pub const MAX_STATE_BYTES: u64 = 16 << 20;
const HEADER_LEN: usize = 8 + 4 + 8 + 32;

/// Why a snapshot could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot write the snapshot's {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the snapshot's {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a husk-vmm snapshot state file: {why}")]
    NotAState { path: PathBuf, why: String },
    #[error("{path} is snapshot format version {have}; this husk-vmm reads version {want}")]
    FormatVersion { path: PathBuf, have: u32, want: u32 },
    #[error("{path} is damaged: its checksum does not match its contents")]
    Checksum { path: PathBuf },
    #[error("{path} was taken by husk-vmm {have}; this is husk-vmm {want}")]
    VmmVersion {
        path: PathBuf,
        have: String,
        want: String,
    },
    #[error(
        "{path} was taken on a host with other CPU features (CPUID {have}, this host {want}); restore it on the host that made it, or boot"
    )]
    Cpuid {
        path: PathBuf,
        have: String,
        want: String,
    },
    #[error("the snapshot does not fit the configuration: {0}")]
    Mismatch(String),
    #[error(
        "the snapshot folder {0} already holds a snapshot (or part of one); use an empty folder"
    )]
    NotEmpty(PathBuf),
    #[error("cannot pause the vCPUs")]
    Vcpus(#[from] crate::vstate::vcpu::VcpuError),
    #[error("cannot pause or save a device")]
    Device(#[from] crate::devices::virtio::state::DeviceStateError),
    #[error("cannot save or restore the VM's state")]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error("cannot save or restore a vCPU's state")]
    VcpuState(#[from] crate::vstate::state::StateError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryFileError),
    #[error("the snapshot's state cannot be encoded")]
    Encode(#[source] serde_json::Error),
    #[error("the VM is gone")]
    Gone,
}

/// The VM's shape: what a restore's configuration must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub vcpus: u8,
    pub memory_bytes: u64,
    /// Device names in bus order.
    pub devices: Vec<String>,
}

/// The state file's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub vmm_version: String,
    pub host_cpuid: String,
    pub shape: Shape,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: Vec<TransportSnapshot>,
    /// Milliseconds since the Unix epoch when it was taken (for `ls`-like listings).
    pub taken_at_ms: u64,
}

/// This husk-vmm's version, as recorded in snapshots.
pub fn vmm_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// A fingerprint of the CPUID KVM offers on this host: a snapshot restores only where
/// the guest sees the same CPU.
pub fn cpuid_fingerprint(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> String {
    let mut h = Sha256::new();
    for e in entries {
        for v in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
            h.update(v.to_le_bytes());
        }
    }
    hex(&h.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the state file into `dir` (which holds nothing named so yet).
pub fn write_state(dir: &Path, state: &State) -> Result<(), SnapshotError> {
    let path = dir.join(STATE_FILE);
    let body = serde_json::to_vec(state).map_err(SnapshotError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    let werr = |source| SnapshotError::Write {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(werr)?;
    f.write_all(&out).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    Ok(())
}

/// Refuses a snapshot taken on a host whose KVM offers other CPUID than `host_cpuid`.
pub fn check_host(state: &State, dir: &Path, host_cpuid: &str) -> Result<(), SnapshotError> {
    if state.host_cpuid != host_cpuid {
        return Err(SnapshotError::Cpuid {
            path: dir.join(STATE_FILE),
            have: state.host_cpuid.clone(),
            want: host_cpuid.to_string(),
        });
    }
    Ok(())
}

/// Reads and checks the state file in `dir`: magic, format version, length, checksum,
/// husk-vmm version, counts. The host's CPUID is checked by [`check_host`] once the VM
/// exists.
pub fn read_state(dir: &Path) -> Result<State, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let rerr = |source| SnapshotError::Read {
        path: path.clone(),
        source,
    };
    let not = |why: &str| SnapshotError::NotAState {
        path: path.clone(),
        why: why.to_string(),
    };
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(rerr)?;
    if !f.metadata().map_err(rerr)?.is_file() {
        return Err(not("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_STATE_BYTES + HEADER_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(rerr)?;
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(not("no HUSKSNAP header"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(SnapshotError::FormatVersion {
            path,
            have: version,
            want: FORMAT_VERSION,
        });
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or_default());
    if len > MAX_STATE_BYTES || bytes.len() as u64 != HEADER_LEN as u64 + len {
        return Err(not(&format!(
            "its header gives a body of {len} bytes; the file has {}",
            bytes.len().saturating_sub(HEADER_LEN)
        )));
    }
    let body = &bytes[HEADER_LEN..];
    if Sha256::digest(body)[..] != bytes[20..52] {
        return Err(SnapshotError::Checksum { path });
    }
    let state: State = serde_json::from_slice(body).map_err(|e| not(&format!("bad body: {e}")))?;
    if state.vmm_version != vmm_version() {
        return Err(SnapshotError::VmmVersion {
            path,
            have: state.vmm_version,
            want: vmm_version(),
        });
    }
    if state.vcpus.len() != usize::from(state.shape.vcpus)
        || state.devices.len() != state.shape.devices.len()
    {
        return Err(not("its vCPU or device count disagrees with its shape"));
    }
    Ok(state)
}

#[cfg(test)]
mod tests;
