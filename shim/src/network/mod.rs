//! Container networks: CNI networks joined to a VM through a tap.
//!
//! For each VM (`husk run`): a network namespace of its own ([`netns`]), mounted under
//! `<run_dir>/.networks/<name>.ns`; CNI ADD into it ([`cni`]: the network's plugins,
//! `CNI_IFNAME=eth0`); a tap in the namespace joined to eth0 by tc redirects ([`tap`]),
//! handed to husk-vmm as an inherited fd; the guest NIC takes eth0's MAC and MTU and the
//! agent gives it the CNI result's addresses and routes ([`GuestNetwork`]); the
//! container's /etc/hosts, resolv.conf and hostname are made here too ([`files`]).
//! At the end: CNI DEL with the saved result, the namespace unmounted and removed. The
//! record `<run_dir>/.networks/<name>.json` (written before ADD) lets the next `husk`
//! call undo the network of a `husk` that was killed ([`reap_orphans`]).
//!
//! [`tap::join`] works on any namespace, so the containerd shim can reuse it for CRI
//! pods, whose namespace containerd made and ran CNI in ([`pod`]); [`portfwd`] makes
//! Kubernetes' port-forward (localhost in that namespace) reach the pod's VM.

pub mod cni;
pub mod files;
pub mod netns;
pub mod pod;
pub mod portfwd;
pub mod ports;
pub mod tap;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::NetworkSettings;
use cni::{CniError, CniResult, Invocation, NetworkList};
use netns::{Netns, NetnsError};
use ports::PortMapping;
use tap::TapError;

/// The interface CNI makes in the namespace (and the guest's NIC's name).
pub const IFNAME: &str = "eth0";
/// The tap in the namespace.
pub const TAP_NAME: &str = "tap0";
/// The folder under the run folder holding namespaces and records (crate::layout).
pub const DIR_NAME: &str = crate::layout::NETWORKS_DIR;

/// Why a network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("unknown network {name:?}: the known ones are {known} (and none){invalid}")]
    Unknown {
        name: String,
        known: String,
        invalid: String,
    },
    #[error("network {network}: {message}")]
    Result { network: String, message: String },
    #[error("{path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl NetworkError {
    /// The library's kind of this failure (crate::error).
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            NetworkError::Unknown { .. } => ErrorKind::NotFound,
            // A missing plugin folder or a plugin's own refusal: the host's setup.
            NetworkError::Cni(_) | NetworkError::Result { .. } => ErrorKind::FailedPrecondition,
            NetworkError::Netns(_) | NetworkError::Tap(_) | NetworkError::State { .. } => {
                ErrorKind::Internal
            }
        }
    }
}

/// The networks husk knows: the default (from the configuration) and the files in the
/// configuration folder.
pub fn networks(settings: &NetworkSettings) -> cni::Loaded {
    let default = cni::default_list(&settings.default, &settings.bridge, &settings.subnet);
    cni::load(&settings.config_dir, default)
}

/// The network named `name`.
pub fn find(settings: &NetworkSettings, name: &str) -> Result<NetworkList, NetworkError> {
    let loaded = networks(settings);
    if let Some(n) = loaded.networks.iter().find(|n| n.name == name) {
        return Ok(n.clone());
    }
    let known: Vec<&str> = loaded.networks.iter().map(|n| n.name.as_str()).collect();
    let invalid = if loaded.invalid.is_empty() {
        String::new()
    } else {
        format!(
            "; files not used: {}",
            loaded
                .invalid
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    Err(NetworkError::Unknown {
        name: name.to_string(),
        known: known.join(", "),
        invalid,
    })
}

/// What is recorded before CNI ADD, to undo it later (also from another process).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub container: String,
    pub network: String,
    /// The network's configuration list as used (DEL needs the same).
    pub config: Value,
    pub netns: PathBuf,
    pub ifname: String,
    pub plugin_dir: PathBuf,
    pub ports: Vec<PortMapping>,
    /// The final ADD result, once there is one.
    pub result: Option<Value>,
}

/// What the agent is to configure in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestNetwork {
    pub ifname: String,
    pub mac: String,
    pub mtu: u32,
    /// CIDRs.
    pub addresses: Vec<String>,
    /// (destination CIDR, gateway or "").
    pub routes: Vec<(String, String)>,
    /// The container's addresses (for /etc/hosts).
    pub ips: Vec<IpAddr>,
    /// DNS from the CNI result (most plugins give none).
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
}

impl GuestNetwork {
    /// From a CNI result: the addresses of the container's interface; its routes with
    /// the gateway of their family where they name none; a default route via the
    /// gateway when the result has none.
    pub fn from_result(
        r: &CniResult,
        ifname: &str,
        netns: &str,
        link: &tap::LinkInfo,
    ) -> Result<GuestNetwork, String> {
        let idx = r.container_interface(ifname, netns);
        let ips = r.addresses(idx);
        if ips.is_empty() {
            return Err("the CNI result has no address for the container".into());
        }
        let mut g = GuestNetwork {
            ifname: ifname.to_string(),
            mac: link.mac.clone(),
            mtu: link.mtu,
            ..GuestNetwork::default()
        };
        let mut gw4 = None;
        let mut gw6 = None;
        for ip in &ips {
            let (addr, _) = cni::parse_cidr(&ip.address)?;
            g.addresses.push(ip.address.clone());
            g.ips.push(addr);
            if let Some(gw) = ip.gateway.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) {
                match gw {
                    IpAddr::V4(_) => gw4 = gw4.or(Some(gw)),
                    IpAddr::V6(_) => gw6 = gw6.or(Some(gw)),
                }
            }
        }
        for rt in &r.routes {
            let (dst, _) = cni::parse_cidr(&rt.dst)?;
            let gw = match rt.gw.as_deref() {
                Some(gw) => gw.to_string(),
                None => match dst {
                    IpAddr::V4(_) => gw4.map(|g| g.to_string()).unwrap_or_default(),
                    IpAddr::V6(_) => gw6.map(|g| g.to_string()).unwrap_or_default(),
                },
            };
            g.routes.push((rt.dst.clone(), gw));
        }
        for (gw, default) in [(gw4, "0.0.0.0/0"), (gw6, "::/0")] {
            if let Some(gw) = gw
                && !g.routes.iter().any(|(d, _)| d == default)
            {
                g.routes.push((default.to_string(), gw.to_string()));
            }
        }
        g.nameservers = r
            .dns
            .nameservers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        g.search = r.dns.search.clone();
        Ok(g)
    }
}

/// A container attached to a network: its namespace, the tap, what the guest gets.
#[derive(Debug)]
pub struct Attached {
    record_path: PathBuf,
    record: Record,
    tap: Option<OwnedFd>,
    pub guest: GuestNetwork,
    /// How long CNI ADD took, and the tap with its redirect.
    pub add_time: Duration,
    pub tap_time: Duration,
}

fn dir(run_dir: &Path) -> PathBuf {
    crate::layout::networks_dir(run_dir)
}

/// An exclusive lock (flock) on the run folder itself while namespaces, records and
/// plugins are handled: concurrent ADDs of the first containers would race to make the
/// bridge and the iptables chains, and the networks folder is removed once empty (so a
/// host without containers has nothing under the run folder).
struct Lock(std::fs::File);

impl Lock {
    fn take(run_dir: &Path) -> Result<Lock, NetworkError> {
        let f = std::fs::File::open(run_dir).map_err(|source| NetworkError::State {
            path: run_dir.to_path_buf(),
            source,
        })?;
        // SAFETY: flock on an fd this function owns; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } < 0 {
            return Err(NetworkError::State {
                path: run_dir.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Lock(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: flock on the fd this value owns.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn write_record(path: &Path, r: &Record) -> Result<(), NetworkError> {
    let tmp = path.with_extension("json.tmp");
    let state = |source| NetworkError::State {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(r).map_err(|e| state(std::io::Error::other(e)))?;
    std::fs::write(&tmp, text).map_err(state)?;
    std::fs::rename(&tmp, path).map_err(state)
}

fn invocation<'a>(r: &'a Record) -> Invocation<'a> {
    Invocation {
        plugin_dir: &r.plugin_dir,
        container_id: &r.container,
        netns: &r.netns,
        ifname: &r.ifname,
        ports: &r.ports,
    }
}

/// Undoes a recorded network: CNI DEL (with the saved result), the namespace, the
/// record. Returns the DEL errors (logged; the rest goes anyway).
fn undo(record_path: &Path, r: &Record, run_dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let list = NetworkList {
        name: r.network.clone(),
        cni_version: r.config["cniVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        config: r.config.clone(),
        source: None,
    };
    let lock = Lock::take(run_dir);
    if let Err(e) = &lock {
        errors.push(e.to_string());
    }
    let ns = Netns::at(&r.netns);
    tap::unjoin(&ns, &r.ifname, TAP_NAME);
    for e in cni::del(&list, &invocation(r), r.result.as_ref()) {
        tracing::warn!(container = %r.container, network = %r.network, error = %e, "CNI DEL");
        errors.push(e.to_string());
    }
    if let Err(e) = Netns::remove(&r.netns) {
        errors.push(e.to_string());
    }
    let _ = std::fs::remove_file(record_path);
    // The folder goes with its last network (fails while others remain).
    let _ = std::fs::remove_dir(dir(run_dir));
    drop(lock);
    errors
}

/// Attaches container `name` to `list`: namespace, CNI ADD, tap. On failure everything
/// made so far is undone.
pub fn attach(
    settings: &NetworkSettings,
    run_dir: &Path,
    name: &str,
    list: &NetworkList,
    ports: &[PortMapping],
) -> Result<Attached, NetworkError> {
    let d = dir(run_dir);
    let record_path = crate::layout::network_record(run_dir, name);
    let mut record = Record {
        container: name.to_string(),
        network: list.name.clone(),
        config: list.config.clone(),
        netns: crate::layout::network_netns(run_dir, name),
        ifname: IFNAME.to_string(),
        plugin_dir: settings.plugin_dir.clone(),
        ports: ports.to_vec(),
        result: None,
    };
    if !settings.plugin_dir.is_dir() {
        return Err(CniError::NoPluginDir(settings.plugin_dir.clone()).into());
    }
    let t0 = Instant::now();
    let lock = Lock::take(run_dir)?;
    std::fs::create_dir_all(&d).map_err(|source| NetworkError::State {
        path: d.clone(),
        source,
    })?;
    write_record(&record_path, &record)?;
    let r = (|| -> Result<Attached, NetworkError> {
        let ns = Netns::create(&record.netns)?;
        let result = cni::add(list, &invocation(&record))?;
        record.result = Some(result.clone());
        write_record(&record_path, &record)?;
        let add_time = t0.elapsed();
        let t1 = Instant::now();
        let joined = tap::join(&ns, IFNAME, TAP_NAME)?;
        let parsed = CniResult::parse(&result).map_err(|message| NetworkError::Result {
            network: list.name.clone(),
            message,
        })?;
        let guest = GuestNetwork::from_result(
            &parsed,
            IFNAME,
            &record.netns.display().to_string(),
            &joined.link,
        )
        .map_err(|message| NetworkError::Result {
            network: list.name.clone(),
            message,
        })?;
        Ok(Attached {
            record_path: record_path.clone(),
            record: record.clone(),
            tap: Some(joined.tap),
            guest,
            add_time,
            tap_time: t1.elapsed(),
        })
    })();
    drop(lock);
    match r {
        Ok(a) => {
            tracing::info!(container = name, network = %list.name, addresses = ?a.guest.addresses, add_ms = a.add_time.as_millis() as u64, tap_ms = a.tap_time.as_millis() as u64, "attached");
            Ok(a)
        }
        Err(e) => {
            undo(&record_path, &record, run_dir);
            Err(e)
        }
    }
}

impl Attached {
    /// The tap's fd, for husk-vmm to inherit.
    pub fn tap_fd(&self) -> Option<RawFd> {
        self.tap.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The network's name.
    pub fn network(&self) -> &str {
        &self.record.network
    }

    /// Detaches: closes the tap, CNI DEL, removes the namespace and the record. Returns
    /// how long it took and the DEL errors (the rest is removed anyway).
    pub fn detach(mut self, run_dir: &Path) -> (Duration, Vec<String>) {
        let t0 = Instant::now();
        self.tap.take();
        let errors = undo(&self.record_path, &self.record, run_dir);
        (t0.elapsed(), errors)
    }
}

/// Undoes the networks of containers whose `husk` is gone: a record (or a namespace
/// file) whose container has no folder under `run_dir`, or whose folder's owner process
/// is dead. Returns how many were undone.
pub fn reap_orphans(run_dir: &Path) -> usize {
    let d = dir(run_dir);
    let Ok(entries) = std::fs::read_dir(&d) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let path = e.path();
        let file = e.file_name().to_string_lossy().into_owned();
        let (name, is_record) = if let Some(n) = file.strip_suffix(".json") {
            (n.to_string(), true)
        } else if let Some(n) = file.strip_suffix(".ns") {
            (n.to_string(), false)
        } else {
            continue;
        };
        let owner = std::fs::read_to_string(crate::layout::owner_of(&run_dir.join(&name)))
            .ok()
            .and_then(|t| crate::procid::ProcId::parse(&t));
        if owner.is_some_and(|o| o.alive()) {
            continue;
        }
        if is_record {
            let record: Option<Record> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match record {
                Some(r) => {
                    let errors = undo(&path, &r, run_dir);
                    tracing::info!(container = %name, network = %r.network, ?errors, "removed the network of a container whose husk is gone");
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
            n += 1;
        } else if path.exists() && !d.join(format!("{name}.json")).exists() {
            // A namespace without its record (the record went first): just the mount.
            let _ = Netns::remove(&path);
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_network_from_results() {
        let link = tap::LinkInfo {
            mac: "0a:58:0a:58:00:05".into(),
            mtu: 1500,
        };
        let r = CniResult::parse(&serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "husk0", "mac": "aa:aa:aa:aa:aa:aa"}, {"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/ns"}],
            "ips": [{"interface": 1, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/24", "gw": "10.88.0.254"}]
        }))
        .unwrap();
        let g = GuestNetwork::from_result(&r, "eth0", "/ns", &link).unwrap();
        assert_eq!(g.addresses, ["10.88.0.5/16"]);
        assert_eq!(g.ips, ["10.88.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            g.routes,
            [
                ("0.0.0.0/0".to_string(), "10.88.0.1".to_string()),
                ("192.168.0.0/24".to_string(), "10.88.0.254".to_string())
            ]
        );
        assert_eq!((g.mac.as_str(), g.mtu), ("0a:58:0a:58:00:05", 1500));
        // No routes in the result: a default route via the gateway.
        let r = CniResult::parse(&serde_json::json!({
            "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}]
        }))
        .unwrap();
        let g = GuestNetwork::from_result(&r, "eth0", "/ns", &link).unwrap();
        assert_eq!(
            g.routes,
            [("0.0.0.0/0".to_string(), "10.1.0.1".to_string())]
        );
        let r = CniResult::parse(&serde_json::json!({"ips": []})).unwrap();
        assert!(GuestNetwork::from_result(&r, "eth0", "/ns", &link).is_err());
    }

    #[test]
    fn unknown_networks_list_the_known_ones() {
        let d = tempfile::tempdir().unwrap();
        let s = NetworkSettings {
            config_dir: d.path().to_path_buf(),
            ..NetworkSettings::default()
        };
        std::fs::write(
            d.path().join("x.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("y.conflist"), "{").unwrap();
        assert_eq!(find(&s, "other").unwrap().name, "other");
        let e = find(&s, "nope").unwrap_err().to_string();
        assert!(
            e.starts_with("unknown network \"nope\": the known ones are husk, other (and none)"),
            "{e}"
        );
        assert!(e.contains("y.conflist"), "{e}");
    }

    #[test]
    fn orphan_records_without_owner_are_removed() {
        let run = tempfile::tempdir().unwrap();
        let d = dir(run.path());
        std::fs::create_dir_all(&d).unwrap();
        // A record of a container that is gone, with a plugin folder that has no plugins:
        // DEL fails, the record and namespace file go anyway.
        let r = Record {
            container: "gone".into(),
            network: "husk".into(),
            config: cni::default_list("husk", "husk0", "10.88.0.0/16").config,
            netns: d.join("gone.ns"),
            ifname: IFNAME.into(),
            plugin_dir: run.path().join("no-plugins"),
            ports: vec![],
            result: None,
        };
        write_record(&d.join("gone.json"), &r).unwrap();
        std::fs::write(d.join("gone.ns"), "").unwrap();
        // A live one (our own process owns it).
        std::fs::create_dir_all(run.path().join("live")).unwrap();
        std::fs::write(
            run.path().join("live/owner"),
            format!("{}\n", crate::procid::ProcId::me().to_record()),
        )
        .unwrap();
        write_record(
            &d.join("live.json"),
            &Record {
                container: "live".into(),
                netns: d.join("live.ns"),
                ..r.clone()
            },
        )
        .unwrap();
        assert_eq!(reap_orphans(run.path()), 1);
        assert!(!d.join("gone.json").exists() && !d.join("gone.ns").exists());
        assert!(d.join("live.json").exists());
    }
}
