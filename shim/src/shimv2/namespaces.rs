//! The namespaces a container joins, from the host's view to the guest's.
//!
//! containerd names a pod's namespaces by its sandbox task's pid, which is husk-vmm's
//! on the host (`/proc/<husk-vmm>/ns/pid`, as CRI writes for a shared pid namespace and
//! `ctr run --with-ns` for a pod by hand). In the guest the same namespaces are the
//! sandbox container's: those paths become `/proc/<its init's guest pid>/ns/<type>`,
//! which the agent's policy accepts (a container's namespace). A network namespace
//! path is dropped: the pod's network is the guest's (the agent drops what is left of
//! them too). Any other path is left for the agent to refuse by name.

use serde_json::Value;
use tracing::debug;

/// Rewrites `spec`'s `linux.namespaces[].path` for a container of the pod whose
/// sandbox task is husk-vmm `vmm_pid` and whose sandbox container's init is
/// `sandbox_pid` in the guest.
pub fn to_guest(spec: &mut Value, vmm_pid: u32, sandbox_pid: u32) {
    let Some(list) = spec
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    list.retain_mut(|ns| {
        let typ = ns
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some(path) = ns.get("path").and_then(Value::as_str).map(str::to_string) else {
            return true;
        };
        if typ == "network" {
            debug!(path, "the pod's network namespace is the guest's: dropped");
            return false;
        }
        if let Some(kind) = ns_of_pid(&path, vmm_pid) {
            let guest = format!("/proc/{sandbox_pid}/ns/{kind}");
            debug!(path, guest, "a namespace of the pod's sandbox");
            ns["path"] = Value::String(guest);
        }
        true
    });
}

/// The `TYPE` of `/proc/<pid>/ns/TYPE` when the path names that process.
fn ns_of_pid(path: &str, pid: u32) -> Option<&str> {
    let rest = path.strip_prefix(&format!("/proc/{pid}/ns/"))?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sandbox_namespaces_become_the_guest_sandbox_containers() {
        let mut spec = json!({"linux": {"namespaces": [
            {"type": "pid", "path": "/proc/4242/ns/pid"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "uts", "path": "/proc/4242/ns/uts"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "mount"},
            {"type": "cgroup", "path": "/proc/999/ns/cgroup"},
            {"type": "ipc2", "path": "/proc/4242/ns/x/y"},
        ]}});
        to_guest(&mut spec, 4242, 7);
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([
                {"type": "pid", "path": "/proc/7/ns/pid"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "uts", "path": "/proc/7/ns/uts"},
                {"type": "mount"},
                {"type": "cgroup", "path": "/proc/999/ns/cgroup"},
                {"type": "ipc2", "path": "/proc/4242/ns/x/y"},
            ])
        );
        let mut none = json!({"process": {}});
        to_guest(&mut none, 1, 2);
        assert_eq!(none, json!({"process": {}}));
    }
}
