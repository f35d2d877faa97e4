//! VM templates (issue #13; docs/snapshots.md): a VM booted once to agent-ready with a
//! given shape, saved by husk-vmm's `snapshot`, and restored for each later VM of that
//! shape instead of booting a kernel.
//!
//! A template lives in `<state_dir>/templates/<id>/` (`state`, `memory`, `key.json`).
//! Its id is a hash of everything that shapes the saved VM: husk-vmm, the kernel and
//! initramfs (path, size, modification time, inode), vCPUs, memory, the kernel command
//! line and the device layout (disks and whether each is read-only; NICs and their MTUs;
//! the share's tag; rng, balloon and vsock always). A change to any of these gives another id, so a stale template is
//! never used; `husk template rm` removes old ones.
//!
//! Every VM shape can use one. A shape with the virtio-fs share (volumes, pods) is
//! built with a throwaway virtiofsd that the guest never hears from: the template is
//! saved before anything is mounted, and each clone hands the saved queues to its own
//! virtiofsd, with its memory copied into shared memory that virtiofsd maps
//! (docs/snapshots.md, "virtio-fs and templates"). Each clone gets its own disks, taps, sockets and
//! console from its configuration; its own hostname, clock and entropy from the
//! CreateSandbox request the runtime sends after restoring (crate::sandbox); and its
//! NICs their own MAC addresses from UpdateInterface (agent protocol 0.6: the template
//! VM's NIC `i` has [`nic_mac`]`(i)`, which the clone's agent replaces).

mod build;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::sandbox::SandboxSpec;

pub use build::build;

/// Why a template could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template folder {path}: {err}")]
    Dir { path: PathBuf, err: std::io::Error },
    #[error("cannot identify {path} for the template key: {err}")]
    Identify { path: PathBuf, err: std::io::Error },
    #[error("building the template: {0}")]
    Build(String),
    /// The guest image's agent is too old for templates of this shape: remembered
    /// ([`refusal`]), so that later runs boot without building again.
    #[error(
        "the guest image's agent speaks protocol 0.{have}; templates of this VM need 0.{need} (rebuild the guest image: make guest-image)"
    )]
    AgentTooOld { have: u64, need: u32 },
    #[error("no template {0} (see husk template ls)")]
    NotFound(String),
}

/// The templates folder under the state folder.
pub fn templates_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("templates")
}

/// The MAC address of the template VM's NIC `index`: locally administered, unicast
/// (`02:68:75:73:6b:` "husk", then the index). A clone's agent gives the NIC the
/// clone's own address (crate::sandbox::Sandbox::configure_network).
pub fn nic_mac(index: usize) -> String {
    format!("02:68:75:73:6b:{:02x}", index & 0xff)
}

/// The oldest agent protocol minor a clone of `spec`'s template may speak: 0.5 reseeds
/// the guest's CRNG from the host's entropy; 0.6 gives a NIC the clone's MAC.
pub fn min_agent_minor(spec: &SandboxSpec) -> u32 {
    if spec.nics.is_empty() { 5 } else { 6 }
}

/// A file's identity for the key: path, size, modification time, inode.
fn identity(path: &Path) -> Result<serde_json::Value, TemplateError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|err| TemplateError::Identify {
        path: path.to_path_buf(),
        err,
    })?;
    Ok(serde_json::json!({
        "path": path,
        "size": m.len(),
        "mtime_ns": m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        "inode": m.ino(),
    }))
}

/// The key of the template `spec` would be restored from, and its id (32 hex digits).
pub fn key(spec: &SandboxSpec) -> Result<(String, serde_json::Value), TemplateError> {
    let config = spec.vm_config();
    let key = serde_json::json!({
        "husk_vmm": identity(&spec.vmm)?,
        "kernel": identity(&spec.kernel)?,
        "initramfs": identity(&spec.initramfs)?,
        "vcpus": config.vcpus,
        "memory_mib": config.memory_mib,
        "cmdline": config.cmdline,
        "disks": config.block.iter().map(|b| b.read_only).collect::<Vec<_>>(),
        // The guest's driver takes a NIC's MTU as its maximum when it probes.
        "nics": config.net.iter().map(|n| n.mtu).collect::<Vec<_>>(),
        "rng": config.rng,
        "balloon": config.balloon.is_some(),
        "vsock": config.vsock.is_some(),
        // The guest knows a share by the tag it read when it probed.
        "fs": config.fs.iter().map(|f| f.tag.as_str()).collect::<Vec<_>>(),
    });
    let digest = Sha256::digest(key.to_string().as_bytes());
    let id = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Ok((id, key))
}

/// Where a build refused for its agent's protocol is remembered: a file beside the
/// templates (a dot name: not a template), named by the key, so a new guest image (a
/// new key) builds again.
fn refusal(state_dir: &Path, id: &str) -> PathBuf {
    templates_dir(state_dir).join(format!(".refused-{id}"))
}

/// The template folder for `spec`, when one has been built.
pub fn find(state_dir: &Path, spec: &SandboxSpec) -> Result<Option<PathBuf>, TemplateError> {
    let (id, _) = key(spec)?;
    Ok(built(state_dir, &id))
}

/// The folder of template `id`, when it is whole.
fn built(state_dir: &Path, id: &str) -> Option<PathBuf> {
    let dir = templates_dir(state_dir).join(id);
    let whole = ["state", "memory", "key.json"]
        .iter()
        .all(|f| dir.join(f).is_file());
    whole.then_some(dir)
}

/// The VM `husk run --network none` makes without volumes, for building its template
/// ahead of use (`husk template build`): `vcpus` and `memory_mib` default to the
/// configuration's, `scratch` is the writable disk of `--storage disk`. Its key is the
/// one `husk run` computes for the same shape (the disks' paths do not count).
pub fn run_shape(
    config: &crate::config::Config,
    vcpus: Option<u32>,
    memory_mib: Option<u32>,
    scratch: bool,
) -> Result<SandboxSpec, TemplateError> {
    let build = |e: &dyn std::fmt::Display| TemplateError::Build(e.to_string());
    crate::preflight::check(config).map_err(|e| build(&e))?;
    let guest = crate::guest::GuestImage::locate(&config.state_dir, config.vm.kernel.as_deref())
        .map_err(|e| build(&e))?;
    let vmm = crate::guest::vmm_binary().map_err(|e| build(&e))?;
    let mut disks = vec![crate::sandbox::Disk {
        path: PathBuf::from("rootfs.erofs"),
        read_only: true,
    }];
    if scratch {
        disks.push(crate::sandbox::Disk {
            path: PathBuf::from("scratch.img"),
            read_only: false,
        });
    }
    let dir = crate::layout::SandboxDir::new(config.run_dir.join("template-builds"));
    Ok(SandboxSpec {
        vcpus: vcpus.unwrap_or(config.vm.vcpus),
        memory_mib: memory_mib.unwrap_or(config.vm.memory_mib),
        disks,
        ..SandboxSpec::new("template", dir, vmm, &guest)
    })
}

/// The template for `spec`: found, or built now (with progress). `None`, with the
/// reason logged, when `spec` cannot use one or the build failed (the caller boots).
pub async fn ensure(
    state_dir: &Path,
    run_dir: &Path,
    spec: &SandboxSpec,
    progress: &(dyn Fn(&str) + Sync),
) -> Option<PathBuf> {
    // The key once (it reads the files' metadata): the lookup, the refusal, the build's
    // outcome all use it.
    let id = match key(spec) {
        Ok((id, _)) => id,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up the VM template");
            return None;
        }
    };
    if let Some(dir) = built(state_dir, &id) {
        return Some(dir);
    }
    // A guest image whose agent was found too old for this shape: boot, quietly.
    if let Ok(why) = std::fs::read_to_string(refusal(state_dir, &id)) {
        tracing::debug!(why, "booting: this guest image cannot make templates");
        return None;
    }
    progress("building a VM template for this VM shape (once; later VMs restore it)");
    match build(state_dir, run_dir, spec).await {
        Ok(dir) => Some(dir),
        Err(e) => {
            eprintln!("husk: warning: no VM template ({e}); booting");
            if matches!(e, TemplateError::AgentTooOld { .. }) {
                let _ = std::fs::write(refusal(state_dir, &id), e.to_string());
            }
            None
        }
    }
}

/// Forgets every refused build (`husk template rm --all`): the next run of each
/// shape tries again.
pub fn forget_refusals(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(templates_dir(state_dir)) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".refused-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A built template, for `husk template ls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    pub id: String,
    pub dir: PathBuf,
    /// The memory file's bytes on disk (it is sparse).
    pub disk_bytes: u64,
    pub key: serde_json::Value,
}

/// Every built template.
pub fn list(state_dir: &Path) -> Result<Vec<Info>, TemplateError> {
    use std::os::unix::fs::MetadataExt;
    let root = templates_dir(state_dir);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(TemplateError::Dir { path: root, err }),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let dir = e.path();
        let key = std::fs::read(dir.join("key.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let disk_bytes = ["state", "memory", "key.json"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.blocks() * 512)
            .sum();
        out.push(Info {
            id: name,
            dir,
            disk_bytes,
            key,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Removes the template `id` (a whole id as `ls` prints it).
pub fn remove(state_dir: &Path, id: &str) -> Result<(), TemplateError> {
    let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let dir = templates_dir(state_dir).join(id);
    if !valid || !dir.is_dir() {
        return Err(TemplateError::NotFound(id.to_string()));
    }
    std::fs::remove_dir_all(&dir).map_err(|err| TemplateError::Dir { path: dir, err })
}

/// Removes a template that failed to restore, so that the next VM of its shape builds
/// a new one rather than failing again.
pub fn discard(dir: &Path) {
    tracing::warn!(dir = %dir.display(), "discarding a VM template that did not restore");
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests;
