//! A pod's network and the host namespaces a VM cannot give.
//!
//! The pod's network namespace is the one its first container's spec names
//! (`linux.namespaces[type=network].path`: the namespace containerd's CNI set up for a
//! CRI pod, or `ctr run --with-ns network:PATH`); crate::network::pod joins it to the
//! VM's tap. A spec without a network, pid or ipc namespace entry asks for the host's
//! (Kubernetes' hostNetwork, hostPID, hostIPC; `ctr run --net-host`): a container in a
//! VM cannot share the host's, so Create refuses it by name instead of giving it the
//! guest's silently.

use std::path::PathBuf;

use serde_json::Value;

use crate::error::ErrorKind;

use super::ShimError;

fn namespaces(spec: &Value) -> impl Iterator<Item = &Value> {
    spec.pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The network namespace `spec` names, if any.
pub fn netns_path(spec: &Value) -> Option<PathBuf> {
    namespaces(spec)
        .find(|n| n["type"].as_str() == Some("network"))
        .and_then(|n| n["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The annotation that asks for port-forward into the VM outside CRI (`true`).
pub const PORT_FORWARD_ANNOTATION: &str = "io.husk.port-forward";

/// Whether the pod's namespace gets port-forward into the VM: a CRI sandbox (its
/// namespace is CNI's, made for this pod alone), or a spec annotated
/// `io.husk.port-forward=true`. The forward redirects every local TCP connection to
/// 127.0.0.1 in that namespace into the VM, so a namespace shared with host processes
/// (`ctr run --with-ns network:PATH`) does not get it unasked.
pub fn wants_port_forward(spec: &Value) -> bool {
    let a = &spec["annotations"];
    a["io.kubernetes.cri.container-type"].as_str() == Some("sandbox")
        || a[PORT_FORWARD_ANNOTATION].as_str() == Some("true")
}

/// Refuses a spec that asks for the host's network, pid or ipc namespace.
pub fn refuse_host_namespaces(spec: &Value) -> Result<(), ShimError> {
    let (types, k8s): (Vec<&str>, Vec<&str>) = [
        ("network", "hostNetwork"),
        ("pid", "hostPID"),
        ("ipc", "hostIPC"),
    ]
    .into_iter()
    .filter(|(typ, _)| !namespaces(spec).any(|n| n["type"].as_str() == Some(*typ)))
    .unzip();
    if types.is_empty() {
        return Ok(());
    }
    Err(ShimError::Kind(
        ErrorKind::InvalidArgument,
        format!(
            "the container asks for the host's {} namespace{} (linux.namespaces has no such entry: Kubernetes' {}), which a container in a VM cannot share",
            types.join(", "),
            if types.len() > 1 { "s" } else { "" },
            k8s.join("/"),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn port_forward_for_cri_sandboxes_or_when_asked() {
        let sandbox = json!({"annotations": {"io.kubernetes.cri.container-type": "sandbox"}});
        assert!(wants_port_forward(&sandbox));
        assert!(wants_port_forward(
            &json!({"annotations": {PORT_FORWARD_ANNOTATION: "true"}})
        ));
        assert!(!wants_port_forward(&json!({"annotations": {}})));
        assert!(!wants_port_forward(&json!({})));
        assert!(!wants_port_forward(
            &json!({"annotations": {"io.kubernetes.cri.container-type": "container"}})
        ));
    }

    #[test]
    fn network_path_and_host_namespaces() {
        let pod = json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network", "path": "/var/run/netns/cni-1234"},
        ]}});
        assert_eq!(
            netns_path(&pod),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        assert!(refuse_host_namespaces(&pod).is_ok());
        let own = json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "network"},
        ]}});
        assert_eq!(netns_path(&own), None);
        assert!(refuse_host_namespaces(&own).is_ok());
        let host_net = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}]}});
        let e = refuse_host_namespaces(&host_net).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("host's network namespace"), "{e}");
        assert!(e.to_string().contains("hostNetwork"), "{e}");
        let none = json!({"process": {}});
        let e = refuse_host_namespaces(&none).unwrap_err();
        assert!(
            e.to_string().contains("network, pid, ipc namespaces"),
            "{e}"
        );
    }
}
