//! A network someone else made, for a pod: the namespace containerd's CNI set up for
//! a CRI pod (or any namespace a container's spec names). Its interface is joined to a
//! tap for the VM's NIC (the tc redirect of `husk run`'s networks, crate::network::tap)
//! and its addresses and routes are read back for the agent to give the guest NIC.
//! Once the VM runs, [`PodNetwork::start_port_forward`] makes localhost TCP in the
//! namespace (Kubernetes' port-forward) reach the guest (crate::network::portfwd).
//! The namespace stays as its owner made it; [`PodNetwork::detach`] takes only the
//! redirect and the port-forward out (the tap goes with its last fd).

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use serde_json::Value;

use super::netns::Netns;
use super::portfwd::{Opener, PortForward};
use super::tap::{self, Joined, TapError};
use super::{GuestNetwork, NetworkError, TAP_NAME};

/// A pod's namespace joined to a tap.
#[derive(Debug)]
pub struct PodNetwork {
    ns: Netns,
    ifname: String,
    joined: Joined,
    /// Kubernetes' port-forward into the VM, once started.
    forward: Option<PortForward>,
    /// What the agent is to configure in the guest.
    pub guest: GuestNetwork,
}

fn bad(ns: &Netns, ifname: &str, message: String) -> NetworkError {
    NetworkError::Tap(TapError::Link {
        ifname: ifname.to_string(),
        netns: ns.path().display().to_string(),
        message,
    })
}

/// `ip -j ARGS` inside the namespace, parsed.
fn ip_json(ns: &Netns, args: &[&str]) -> Result<Value, NetworkError> {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    let out = tap::run(ns, "ip", &a)?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        bad(
            ns,
            args.last().copied().unwrap_or(""),
            format!("ip -j: {e}"),
        )
    })
}

/// The interface of the namespace the pod uses: `eth0` (CNI's default name) when it
/// has one, else the only interface that is not loopback.
fn pick_interface(ns: &Netns) -> Result<String, NetworkError> {
    let links = ip_json(ns, &["link", "show"])?;
    let names: Vec<String> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["link_type"].as_str() != Some("loopback"))
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .filter(|n| n != TAP_NAME)
        .collect();
    if names.iter().any(|n| n == super::IFNAME) {
        return Ok(super::IFNAME.to_string());
    }
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(bad(ns, "", "no interface besides loopback".into())),
        many => Err(bad(
            ns,
            "",
            format!(
                "several interfaces and none named {}: {}",
                super::IFNAME,
                many.join(", ")
            ),
        )),
    }
}

/// The guest's view of `ifname`: its global addresses and its routes that the kernel
/// did not make for an address.
pub fn guest_view(
    addrs: &Value,
    routes: &[Value],
    ifname: &str,
    link: &tap::LinkInfo,
) -> GuestNetwork {
    let mut g = GuestNetwork {
        ifname: ifname.to_string(),
        mac: link.mac.clone(),
        mtu: link.mtu,
        ..GuestNetwork::default()
    };
    for a in addrs
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
    {
        if a["scope"].as_str() != Some("global") {
            continue;
        }
        if let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64())
            && let Ok(ip) = local.parse()
        {
            g.addresses.push(format!("{local}/{len}"));
            g.ips.push(ip);
        }
    }
    for r in routes {
        if r["protocol"].as_str() == Some("kernel") {
            continue;
        }
        let Some(dst) = r["dst"].as_str() else {
            continue;
        };
        let v6 = r["gateway"].as_str().is_some_and(|gw| gw.contains(':')) || dst.contains(':');
        let dst = match dst {
            "default" if v6 => "::/0".to_string(),
            "default" => "0.0.0.0/0".to_string(),
            d if d.contains('/') => d.to_string(),
            d if v6 => format!("{d}/128"),
            d => format!("{d}/32"),
        };
        let gw = r["gateway"].as_str().unwrap_or("").to_string();
        g.routes.push((dst, gw));
    }
    g
}

/// Refuses the shim's own network namespace (the host's): joining it would redirect
/// the host's interface into the VM.
fn refuse_own_namespace(path: &Path) -> Result<(), NetworkError> {
    use std::os::unix::fs::MetadataExt;
    let stat = |p: &Path| {
        std::fs::metadata(p).map_err(|source| NetworkError::State {
            path: p.to_path_buf(),
            source,
        })
    };
    let (own, target) = (stat(Path::new("/proc/self/ns/net"))?, stat(path)?);
    if own.dev() == target.dev() && own.ino() == target.ino() {
        return Err(NetworkError::Result {
            network: path.display().to_string(),
            message:
                "this is the host's own network namespace; a pod's VM cannot take its interface"
                    .into(),
        });
    }
    Ok(())
}

/// Joins the pod's namespace at `path` to a tap and reads what the guest NIC gets.
pub fn attach(path: &Path) -> Result<PodNetwork, NetworkError> {
    refuse_own_namespace(path)?;
    let ns = Netns::at(path);
    let ifname = pick_interface(&ns)?;
    let addrs = ip_json(&ns, &["addr", "show", "dev", &ifname])?;
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let r = ip_json(&ns, &[family, "route", "show", "dev", &ifname])?;
        routes.extend(r.as_array().cloned().unwrap_or_default());
    }
    let joined = tap::join(&ns, &ifname, TAP_NAME)?;
    let guest = guest_view(&addrs, &routes, &ifname, &joined.link);
    if guest.addresses.is_empty() {
        tap::unjoin(&ns, &ifname, TAP_NAME);
        return Err(bad(&ns, &ifname, "no global address on it".into()));
    }
    tracing::info!(netns = %path.display(), ifname, addresses = ?guest.addresses, routes = ?guest.routes, "pod network joined to the VM's tap");
    Ok(PodNetwork {
        ns,
        ifname,
        joined,
        forward: None,
        guest,
    })
}

impl PodNetwork {
    /// The tap's fd (husk-vmm inherits it).
    pub fn tap_fd(&self) -> RawFd {
        self.joined.tap.as_raw_fd()
    }

    /// Makes TCP connections to 127.0.0.1 in the namespace (what containerd's CRI
    /// PortForward dials) reach the same port in the guest, through `open` (the pod's
    /// agent: crate::network::portfwd::agent_opener). Where that cannot be set up (no
    /// iptables, no nat or REDIRECT in the kernel) a warning is logged and the pod runs
    /// without it. Needs a tokio runtime.
    pub fn start_port_forward(&mut self, open: Opener) {
        if self.forward.is_some() {
            return;
        }
        match PortForward::start(self.ns.path(), open) {
            Ok(f) => self.forward = Some(f),
            Err(e) => {
                tracing::warn!(netns = %self.ns.path().display(), error = %e, "port-forward into the VM is not available for this pod");
            }
        }
    }

    /// Whether port-forward into the VM is set up.
    pub fn port_forward(&self) -> Option<&PortForward> {
        self.forward.as_ref()
    }

    /// Takes the port-forward and the redirect out (the namespace stays for its owner
    /// to remove).
    pub fn detach(mut self) {
        if let Some(mut f) = self.forward.take() {
            f.stop();
        }
        tap::unjoin(&self.ns, &self.ifname, &self.joined.tap_name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_and_routes_from_ip_json() {
        let addrs = json!([{"ifname": "eth0", "addr_info": [
            {"family": "inet", "local": "10.88.0.5", "prefixlen": 16, "scope": "global"},
            {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"},
            {"family": "inet6", "local": "fd00::5", "prefixlen": 64, "scope": "global"},
        ]}]);
        let routes = vec![
            json!({"dst": "default", "gateway": "10.88.0.1", "dev": "eth0"}),
            json!({"dst": "10.88.0.0/16", "dev": "eth0", "protocol": "kernel", "scope": "link"}),
            json!({"dst": "10.9.0.0/16", "gateway": "10.88.0.254", "dev": "eth0"}),
            json!({"dst": "default", "gateway": "fd00::1", "dev": "eth0"}),
            json!({"dst": "10.1.2.3", "dev": "eth0", "scope": "link"}),
        ];
        let link = tap::LinkInfo {
            mac: "0a:58:0a:58:00:05".into(),
            mtu: 1450,
        };
        let g = guest_view(&addrs, &routes, "eth0", &link);
        assert_eq!(g.addresses, ["10.88.0.5/16", "fd00::5/64"]);
        assert_eq!(
            g.routes,
            [
                ("0.0.0.0/0".to_string(), "10.88.0.1".to_string()),
                ("10.9.0.0/16".to_string(), "10.88.0.254".to_string()),
                ("::/0".to_string(), "fd00::1".to_string()),
                ("10.1.2.3/32".to_string(), String::new()),
            ]
        );
        assert_eq!((g.mac.as_str(), g.mtu), ("0a:58:0a:58:00:05", 1450));
        assert_eq!(g.ips.len(), 2);
    }
}
