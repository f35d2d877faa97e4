//! Sandbox folders whose owner is gone: the surviving husk-vmm killed (only the recorded
//! one, by pid and start time), the jail's cgroup, the share's mounts and the folder
//! removed, never a folder that still has something mounted under it.

use std::path::Path;

use crate::layout::SandboxDir;
use crate::procid::ProcId;

/// Cleans up after `husk` processes that were killed: for every container folder
/// under `run_dir` whose owner (the pid in its `owner` file) is gone, a surviving
/// husk-vmm is killed and its `vm/` folder removed; the whole folder goes too unless
/// it holds a finished detached run (`exit`, kept for `husk ps`/`logs` until
/// `husk rm`). Returns how many folders were removed.
pub fn reap_stale(run_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let c = crate::layout::ContainerDir::new(run_dir, Path::new(""), &name);
        let owner = std::fs::read_to_string(c.owner())
            .ok()
            .and_then(|t| ProcId::parse(&t));
        let Some(owner) = owner else { continue };
        if owner.alive() {
            continue;
        }
        reap_dir(&c.vm());
        if !c.exit().exists() && std::fs::remove_dir_all(&c.path).is_ok() {
            n += 1;
        }
    }
    crate::jail::ids::reap(run_dir);
    n
}

/// Removes a sandbox folder whose owner is gone (the shim's `delete` after a shim
/// died): the recorded husk-vmm (same pid and start time, through a pidfd) is killed
/// if it survived, and the folder removed. Returns whether there was a folder.
pub fn reap_dir(vm: &SandboxDir) -> bool {
    let record = std::fs::read_to_string(vm.pid()).unwrap_or_default();
    let mut lines = record.lines();
    let vmm = lines.next().and_then(ProcId::parse);
    // Its owner still runs (containerd's `delete` of a pod's first container while the
    // pod's shim serves others): not ours to reap.
    if lines
        .next()
        .and_then(ProcId::parse)
        .is_some_and(|o| o.alive())
    {
        return false;
    }
    if let Some(vmm) = vmm
        && vmm.alive()
        && is_vmm(vmm.pid)
    {
        let _ = vmm.signal(nix::sys::signal::Signal::SIGKILL);
    }
    crate::jail::reap(vm.path());
    vm.path().exists() && remove_dir(vm)
}

/// Removes a sandbox folder, after a pod's share mounts (crate::share::unmount_pod);
/// a folder that still has something mounted under it is left (removing it would
/// delete what is mounted: a container's snapshot, a volume). Returns whether it went.
pub fn remove_dir(vm: &SandboxDir) -> bool {
    crate::share::unmount_pod(vm);
    if crate::share::has_mounts_under(vm.path()) {
        tracing::warn!(dir = %vm.display(), "a sandbox folder still has mounts under it: left");
        return false;
    }
    std::fs::remove_dir_all(vm.path()).is_ok()
}

/// Whether a process with this pid exists (one we may not signal exists too).
pub(crate) fn alive(pid: i32) -> bool {
    pid > 0
        && !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

/// husk-vmm, or the keeper of a jailed one (crate::jail::child).
fn is_vmm(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| matches!(c.trim(), "husk-vmm" | "husk-jail"))
}
