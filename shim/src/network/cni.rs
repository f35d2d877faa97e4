//! CNI (the Container Network Interface, spec 0.4.0 and 1.0.0): network configuration
//! lists, running their plugins (ADD, DEL), and the results they return.
//!
//! A plugin is an executable in the plugin folder (`/usr/lib/cni` from Debian's
//! containernetworking-plugins) named by each list entry's `type`. It gets `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` in its environment and its
//! configuration on stdin: the entry plus the list's `name` and `cniVersion`, the result
//! of the plugin before it (`prevResult`) and, for plugins that declare the
//! `portMappings` capability, `runtimeConfig.portMappings`. ADD runs the plugins in
//! order; DEL in reverse with the final ADD result as `prevResult`.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ports::PortMapping;

/// CNI versions whose configurations and results husk reads.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// How long one plugin may run (iptables in an emulated machine is slow).
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Most bytes read from a plugin's stdout or stderr.
const MAX_OUTPUT: u64 = 1 << 20;

/// Why a network configuration or a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the CNI plugin folder {0} does not exist: install Debian's containernetworking-plugins \
         (apt-get install containernetworking-plugins), set network.plugin_dir, or use --network none"
    )]
    NoPluginDir(PathBuf),
    #[error(
        "CNI plugin {plugin:?} (network {network}) is not in {dir}: install it \
         (containernetworking-plugins), or use --network none"
    )]
    NoPlugin {
        plugin: String,
        network: String,
        dir: PathBuf,
    },
    #[error("CNI plugin {plugin} ({command}, network {network}) failed: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        network: String,
        message: String,
    },
    #[error("CNI plugin {plugin} ({command}, network {network}): cannot run it: {source}")]
    Exec {
        plugin: String,
        command: &'static str,
        network: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} (network {network}) returned a result husk cannot use: {message}")]
    BadResult {
        plugin: String,
        network: String,
        message: String,
    },
}

/// A network: a configuration list, where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    /// The whole list as JSON (what is handed to the plugins, entry by entry).
    pub config: Value,
    /// The file it was read from; `None` for husk's built-in default network.
    pub source: Option<PathBuf>,
}

impl NetworkList {
    /// The plugin types, in order.
    pub fn plugin_types(&self) -> Vec<String> {
        self.config["plugins"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["type"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The subnets of the first plugin's IPAM (`ipam.subnet` or `ipam.ranges`), for
    /// `husk network ls`.
    pub fn subnets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.config["plugins"].as_array().into_iter().flatten() {
            let ipam = &p["ipam"];
            if let Some(s) = ipam["subnet"].as_str() {
                out.push(s.to_string());
            }
            for set in ipam["ranges"].as_array().into_iter().flatten() {
                for r in set.as_array().into_iter().flatten() {
                    if let Some(s) = r["subnet"].as_str() {
                        out.push(s.to_string());
                    }
                }
            }
        }
        out
    }
}

/// Parses `a.b.c.d/n` or `x::y/n`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR such as 10.88.0.0/16"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{s:?}: {len:?} is not a prefix length"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("{s:?}: a prefix length of at most {max}"));
    }
    Ok((ip, len))
}

fn valid_network_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !n.starts_with('.')
}

/// Checks a configuration list (from `file`, which errors name) and returns it.
pub fn parse_list(
    file: &str,
    text: &str,
    source: Option<PathBuf>,
) -> Result<NetworkList, CniError> {
    let invalid = |field: &str, message: String| CniError::Invalid {
        file: file.to_string(),
        field: field.to_string(),
        message,
    };
    let mut v: Value = serde_json::from_str(text).map_err(|e| invalid("(json)", e.to_string()))?;
    if !v.is_object() {
        return Err(invalid("(json)", "not a JSON object".into()));
    }
    // A single plugin's configuration (a .conf file): a list of one.
    if v.get("plugins").is_none() && v.get("type").is_some() {
        let mut plugin = v.clone();
        if let Some(o) = plugin.as_object_mut() {
            o.remove("name");
            o.remove("cniVersion");
        }
        v = json!({"cniVersion": v["cniVersion"], "name": v["name"], "plugins": [plugin]});
    }
    let name = v["name"]
        .as_str()
        .ok_or_else(|| invalid("name", "missing (a string)".into()))?
        .to_string();
    if !valid_network_name(&name) {
        return Err(invalid(
            "name",
            format!("{name:?}: letters, digits, '_', '.', '-' (not first), at most 128"),
        ));
    }
    let version = v["cniVersion"]
        .as_str()
        .ok_or_else(|| invalid("cniVersion", "missing (a string such as \"1.0.0\")".into()))?
        .to_string();
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(invalid(
            "cniVersion",
            format!(
                "{version:?} is not one of {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let plugins = v["plugins"].as_array().ok_or_else(|| {
        invalid(
            "plugins",
            "missing (a list of plugin configurations)".into(),
        )
    })?;
    if plugins.is_empty() {
        return Err(invalid("plugins", "empty".into()));
    }
    for (i, p) in plugins.iter().enumerate() {
        let field = format!("plugins[{i}].type");
        let t = p
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&field, "missing (the plugin's name, such as bridge)".into()))?;
        // A file name in the plugin folder, nothing else.
        if t.is_empty()
            || t.starts_with('.')
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(invalid(&field, format!("{t:?} is not a plugin name")));
        }
        if let Some(c) = p.get("capabilities")
            && !c.is_object()
        {
            return Err(invalid(
                &format!("plugins[{i}].capabilities"),
                "not an object".into(),
            ));
        }
    }
    Ok(NetworkList {
        name,
        cni_version: version,
        config: v,
        source,
    })
}

/// husk's default network: a bridge with host-local addresses from `subnet`, NAT to the
/// outside (ipMasq), published ports (portmap) and the firewall plugin's forwarding rules.
pub fn default_list(name: &str, bridge: &str, subnet: &str) -> NetworkList {
    let config = json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall"}
        ]
    });
    NetworkList {
        name: name.to_string(),
        cni_version: "1.0.0".into(),
        config,
        source: None,
    }
}

/// What loading the configuration folder found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid networks, by name (the default first, unless a file replaced it).
    pub networks: Vec<NetworkList>,
    /// Files that could not be used, each with why.
    pub invalid: Vec<CniError>,
}

/// The default network plus every `*.conflist` / `*.conf` / `*.json` in `dir` (sorted by
/// file name; a missing folder is no error). A file whose network is named like the
/// default replaces it; a later file with a name seen before is refused.
pub fn load(dir: &Path, default: NetworkList) -> Loaded {
    let mut out = Loaded {
        networks: vec![default],
        invalid: Vec::new(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let mut from_files: Vec<String> = Vec::new();
    for f in files {
        let file = f.display().to_string();
        let text = match read_bounded(&f) {
            Ok(t) => t,
            Err(source) => {
                out.invalid.push(CniError::Read { file, source });
                continue;
            }
        };
        match parse_list(&file, &text, Some(f.clone())) {
            Ok(n) => {
                if from_files.contains(&n.name) {
                    out.invalid.push(CniError::Invalid {
                        file,
                        field: "name".into(),
                        message: format!("{:?}: another file defines this network", n.name),
                    });
                    continue;
                }
                from_files.push(n.name.clone());
                out.networks.retain(|x| x.name != n.name);
                out.networks.push(n);
            }
            Err(e) => out.invalid.push(e),
        }
    }
    out
}

fn read_bounded(f: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(f)?
        .take(MAX_OUTPUT)
        .read_to_string(&mut s)?;
    Ok(s)
}

/// A CNI result (0.3.x, 0.4.0 and 1.0.0 have the same shape; 0.4.0's `ips[].version`
/// is ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR: the address and its prefix length.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

impl CniResult {
    /// Parses and checks a result (addresses are CIDRs, gateways and routes parse).
    pub fn parse(v: &Value) -> Result<CniResult, String> {
        if v.get("ip4").is_some() || v.get("ip6").is_some() {
            return Err("a CNI 0.2.0 result (ip4/ip6): use cniVersion 0.4.0 or 1.0.0".into());
        }
        let r: CniResult = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        for (i, ip) in r.ips.iter().enumerate() {
            parse_cidr(&ip.address).map_err(|e| format!("ips[{i}].address: {e}"))?;
            if let Some(g) = &ip.gateway {
                g.parse::<IpAddr>()
                    .map_err(|_| format!("ips[{i}].gateway: {g:?} is not an IP address"))?;
            }
            if let Some(n) = ip.interface
                && n >= r.interfaces.len()
            {
                return Err(format!(
                    "ips[{i}].interface: {n} is not an interface of the result"
                ));
            }
        }
        for (i, rt) in r.routes.iter().enumerate() {
            parse_cidr(&rt.dst).map_err(|e| format!("routes[{i}].dst: {e}"))?;
            if let Some(g) = &rt.gw {
                g.parse::<IpAddr>()
                    .map_err(|_| format!("routes[{i}].gw: {g:?} is not an IP address"))?;
            }
        }
        Ok(r)
    }

    /// The container's interface named `ifname` (in `netns` when the result says where).
    pub fn container_interface(&self, ifname: &str, netns: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| s == netns))
            .or_else(|| {
                self.interfaces
                    .iter()
                    .position(|i| i.name == ifname && i.sandbox.is_some())
            })
    }

    /// The addresses (CIDR) of interface `index`, or every address when the result does
    /// not tie them to interfaces.
    pub fn addresses(&self, index: Option<usize>) -> Vec<&IpConfig> {
        self.ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == index)
            .collect()
    }
}

/// Where and for whom plugins run.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub plugin_dir: &'a Path,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub ports: &'a [PortMapping],
}

/// One plugin's configuration for a call: its entry, the list's name and version,
/// `prevResult`, and the runtime configuration of the capabilities it declares.
pub fn plugin_config(
    list: &Value,
    plugin: &Value,
    prev: Option<&Value>,
    ports: &[PortMapping],
) -> Value {
    let mut c = plugin.clone();
    if let Some(o) = c.as_object_mut() {
        o.insert("name".into(), list["name"].clone());
        o.insert("cniVersion".into(), list["cniVersion"].clone());
        if let Some(p) = prev {
            o.insert("prevResult".into(), p.clone());
        }
        if plugin["capabilities"]["portMappings"].as_bool() == Some(true) {
            o.insert("runtimeConfig".into(), json!({"portMappings": ports}));
        }
    }
    c
}

/// The message of a failed plugin: its error JSON's `msg` and `details` (and code), else
/// what it printed.
pub fn error_message(code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout)
        && let Some(msg) = v["msg"].as_str()
    {
        let mut s = msg.to_string();
        if let Some(d) = v["details"].as_str().filter(|d| !d.is_empty()) {
            s += &format!(": {d}");
        }
        if let Some(c) = v["code"].as_u64() {
            s += &format!(" (CNI error code {c})");
        }
        return s;
    }
    let out = String::from_utf8_lossy(stdout);
    let err = String::from_utf8_lossy(stderr);
    let text = format!("{} {}", out.trim(), err.trim());
    let text: String = text.trim().chars().take(2000).collect();
    match code {
        Some(c) => format!("exit status {c}: {text}"),
        None => format!("killed: {text}"),
    }
}

/// Runs one plugin; its stdout on success.
fn exec(
    inv: &Invocation<'_>,
    command: &'static str,
    network: &str,
    plugin: &str,
    config: &Value,
) -> Result<Value, CniError> {
    let path = inv.plugin_dir.join(plugin);
    if !path.is_file() {
        return Err(CniError::NoPlugin {
            plugin: plugin.to_string(),
            network: network.to_string(),
            dir: inv.plugin_dir.to_path_buf(),
        });
    }
    let exec_err = |source| CniError::Exec {
        plugin: plugin.to_string(),
        command,
        network: network.to_string(),
        source,
    };
    // Plugins run iptables, ip, ...: the sbin folders must be on PATH.
    let path_env = format!(
        "{}:/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin",
        std::env::var("PATH").unwrap_or_default()
    );
    let t0 = Instant::now();
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", inv.plugin_dir)
        .env("CNI_ARGS", "")
        .env("PATH", path_env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(exec_err)?;
    let input = config.to_string();
    let mut stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(input.as_bytes());
        }
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(o) = child.stdout.take() {
            let e = child.stderr.take();
            let h = std::thread::spawn(move || {
                let mut err = Vec::new();
                if let Some(e) = e {
                    let _ = e.take(MAX_OUTPUT).read_to_end(&mut err);
                }
                err
            });
            let _ = o.take(MAX_OUTPUT).read_to_end(&mut out);
            err = h.join().unwrap_or_default();
        }
        let st = child.wait();
        let _ = tx.send((st, out, err));
    });
    let (st, out, err) = match rx.recv_timeout(PLUGIN_TIMEOUT) {
        Ok(r) => r,
        Err(_) => {
            if let Ok(p) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(CniError::Plugin {
                plugin: plugin.to_string(),
                command,
                network: network.to_string(),
                message: format!("no answer within {PLUGIN_TIMEOUT:?} (killed)"),
            });
        }
    };
    let _ = writer.join();
    let st = st.map_err(exec_err)?;
    tracing::debug!(
        plugin,
        command,
        network,
        container = inv.container_id,
        ms = t0.elapsed().as_millis() as u64,
        ok = st.success(),
        "CNI plugin ran"
    );
    if !st.success() {
        return Err(CniError::Plugin {
            plugin: plugin.to_string(),
            command,
            network: network.to_string(),
            message: error_message(st.code(), &out, &err),
        });
    }
    if command == "DEL" || out.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out).map_err(|e| CniError::BadResult {
        plugin: plugin.to_string(),
        network: network.to_string(),
        message: format!("not JSON: {e}"),
    })
}

fn plugins(list: &NetworkList) -> Vec<(String, Value)> {
    list.config["plugins"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["type"].as_str().unwrap_or_default().to_string(),
                        p.clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// ADD through the list; the final result (raw JSON, as DEL needs it back).
pub fn add(list: &NetworkList, inv: &Invocation<'_>) -> Result<Value, CniError> {
    if !inv.plugin_dir.is_dir() {
        return Err(CniError::NoPluginDir(inv.plugin_dir.to_path_buf()));
    }
    // Every plugin must be there before the first runs (nothing half made).
    for (t, _) in plugins(list) {
        if !inv.plugin_dir.join(&t).is_file() {
            return Err(CniError::NoPlugin {
                plugin: t,
                network: list.name.clone(),
                dir: inv.plugin_dir.to_path_buf(),
            });
        }
    }
    let mut prev: Option<Value> = None;
    for (t, p) in plugins(list) {
        let c = plugin_config(&list.config, &p, prev.as_ref(), inv.ports);
        let r = exec(inv, "ADD", &list.name, &t, &c)?;
        // A plugin that returns nothing passes the previous result on.
        if !r.is_null() {
            prev = Some(r);
        }
    }
    let result = prev.unwrap_or(Value::Null);
    CniResult::parse(&result).map_err(|message| CniError::BadResult {
        plugin: list.plugin_types().last().cloned().unwrap_or_default(),
        network: list.name.clone(),
        message,
    })?;
    Ok(result)
}

/// DEL through the list, in reverse, with the ADD result (if any) as `prevResult`. Every
/// plugin is called even when one fails; the failures are returned.
pub fn del(list: &NetworkList, inv: &Invocation<'_>, result: Option<&Value>) -> Vec<CniError> {
    let mut errors = Vec::new();
    for (t, p) in plugins(list).into_iter().rev() {
        let c = plugin_config(&list.config, &p, result.filter(|r| !r.is_null()), inv.ports);
        if let Err(e) = exec(inv, "DEL", &list.name, &t, &c) {
            errors.push(e);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_of_both_versions() {
        let v04 = json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "husk0", "mac": "5a:1f:2b:3c:4d:5e"},
                {"name": "veth1234", "mac": "6a:00:00:00:00:01"},
                {"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/run/husk/.networks/c.ns"}
            ],
            "ips": [{"version": "4", "interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let r = CniResult::parse(&v04).unwrap();
        let i = r.container_interface("eth0", "/run/husk/.networks/c.ns");
        assert_eq!(i, Some(2));
        assert_eq!(r.interfaces[2].mac, "0a:58:0a:58:00:05");
        assert_eq!(r.addresses(i)[0].address, "10.88.0.5/16");
        assert_eq!(r.addresses(i)[0].gateway.as_deref(), Some("10.88.0.1"));
        assert_eq!(
            r.routes[0],
            Route {
                dst: "0.0.0.0/0".into(),
                gw: None
            }
        );

        let v10 = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:58:00:06", "sandbox": "/x", "mtu": 1400}],
            "ips": [
                {"interface": 0, "address": "10.88.0.6/16", "gateway": "10.88.0.1"},
                {"interface": 0, "address": "fd00::6/64"}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
            "dns": {"nameservers": ["10.88.0.1"], "search": ["example"]}
        });
        let r = CniResult::parse(&v10).unwrap();
        assert_eq!(r.container_interface("eth0", "/other"), Some(0));
        assert_eq!(r.interfaces[0].mtu, Some(1400));
        assert_eq!(r.addresses(Some(0)).len(), 2);
        assert_eq!(r.dns.nameservers, ["10.88.0.1"]);
        assert_eq!(r.routes[0].gw.as_deref(), Some("10.88.0.1"));

        assert!(
            CniResult::parse(&json!({"ip4": {"ip": "10.0.0.2/24"}}))
                .unwrap_err()
                .contains("0.2.0")
        );
        let bad = json!({"ips": [{"address": "10.88.0.5"}]});
        assert!(
            CniResult::parse(&bad)
                .unwrap_err()
                .starts_with("ips[0].address")
        );
        let bad = json!({"interfaces": [], "ips": [{"address": "10.88.0.5/16", "interface": 3}]});
        assert!(CniResult::parse(&bad).unwrap_err().contains("interface"));
        let bad = json!({"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]});
        assert!(
            CniResult::parse(&bad)
                .unwrap_err()
                .starts_with("routes[0].gw")
        );
    }

    #[test]
    fn lists_are_checked_naming_file_and_field() {
        let f = "/etc/husk/net.d/10-x.conflist";
        let ok = r#"{"cniVersion": "0.4.0", "name": "x", "plugins": [{"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;
        let l = parse_list(f, ok, None).unwrap();
        assert_eq!(l.plugin_types(), ["bridge", "portmap"]);
        for (text, field, what) in [
            ("{", "(json)", "EOF"),
            ("[]", "(json)", "object"),
            (
                r#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}"#,
                "name",
                "missing",
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "a/b", "plugins": [{"type": "bridge"}]}"#,
                "name",
                "letters",
            ),
            (
                r#"{"name": "x", "plugins": [{"type": "bridge"}]}"#,
                "cniVersion",
                "missing",
            ),
            (
                r#"{"cniVersion": "0.2.0", "name": "x", "plugins": [{"type": "bridge"}]}"#,
                "cniVersion",
                "not one of",
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "x"}"#,
                "plugins",
                "missing",
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "x", "plugins": []}"#,
                "plugins",
                "empty",
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}, {}]}"#,
                "plugins[1].type",
                "missing",
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "../../bin/sh"}]}"#,
                "plugins[0].type",
                "not a plugin name",
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge", "capabilities": 1}]}"#,
                "plugins[0].capabilities",
                "object",
            ),
        ] {
            let e = parse_list(f, text, None).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{f}: {field}: ")), "{text}: {e}");
            assert!(e.contains(what), "{text}: {e}");
        }
        // A single plugin's .conf is a list of one.
        let l = parse_list(
            f,
            r#"{"cniVersion": "1.0.0", "name": "one", "type": "bridge", "bridge": "b1"}"#,
            None,
        )
        .unwrap();
        assert_eq!(l.plugin_types(), ["bridge"]);
        assert_eq!(l.config["plugins"][0]["bridge"], "b1");
        assert!(l.config["plugins"][0].get("name").is_none());
    }

    #[test]
    fn loading_a_folder() {
        let d = tempfile::tempdir().unwrap();
        let def = default_list("husk", "husk0", "10.88.0.0/16");
        assert_eq!(def.subnets(), ["10.88.0.0/16"]);
        assert_eq!(def.plugin_types(), ["bridge", "portmap", "firewall"]);
        let l = load(&d.path().join("missing"), def.clone());
        assert_eq!(l.networks.len(), 1);
        assert!(l.invalid.is_empty());
        std::fs::write(d.path().join("10-a.conflist"), r#"{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.99.0.0/24"}}]}"#).unwrap();
        std::fs::write(
            d.path().join("20-bad.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "b"}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("30-a.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("40-husk.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "husk", "plugins": [{"type": "ptp"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("README"), "not a network").unwrap();
        let l = load(d.path(), def);
        let names: Vec<&str> = l.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "husk"]);
        assert_eq!(l.networks[0].subnets(), ["10.99.0.0/24"]);
        assert_eq!(l.networks[1].plugin_types(), ["ptp"]);
        assert!(l.networks[1].source.is_some());
        let errs: Vec<String> = l.invalid.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].contains("20-bad.conflist: plugins: missing"),
            "{errs:?}"
        );
        assert!(errs[1].contains("30-a.conflist: name: "), "{errs:?}");
    }

    #[test]
    fn plugin_configs_chain_and_carry_ports() {
        let list = default_list("husk", "husk0", "10.88.0.0/16").config;
        let ports = [crate::network::ports::parse_publish("8080:80").unwrap()];
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let c = plugin_config(&list, &list["plugins"][1], Some(&prev), &ports);
        assert_eq!(c["type"], "portmap");
        assert_eq!(c["name"], "husk");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["prevResult"], prev);
        assert_eq!(c["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        let c = plugin_config(&list, &list["plugins"][0], None, &ports);
        assert!(c.get("runtimeConfig").is_none() && c.get("prevResult").is_none());
    }

    #[test]
    fn plugin_errors_show_msg_and_details() {
        let out = br#"{"cniVersion": "1.0.0", "code": 11, "msg": "failed to allocate", "details": "no IP addresses available in range set"}"#;
        assert_eq!(
            error_message(Some(1), out, b""),
            "failed to allocate: no IP addresses available in range set (CNI error code 11)"
        );
        assert_eq!(
            error_message(Some(2), b"", b"boom\n"),
            "exit status 2: boom"
        );
    }

    #[test]
    fn plugins_run_with_the_cni_environment() {
        // A fake plugin: records its environment and stdin, answers a result.
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let plugin = d.path().join("fake");
        std::fs::write(
            &plugin,
            format!(
                "#!/bin/sh\n{{ echo \"$CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS $CNI_IFNAME $CNI_PATH\"; cat; echo; }} >>{}\n\
                 [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"interfaces\":[{{\"name\":\"eth0\",\"mac\":\"0a:00:00:00:00:01\",\"sandbox\":\"/ns\"}}],\"ips\":[{{\"address\":\"10.1.0.2/24\",\"interface\":0}}]}}'\n\
                 exit 0\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.path().join("failing"),
            "#!/bin/sh\necho '{\"code\": 7, \"msg\": \"bad config\", \"details\": \"no bridge\"}'\nexit 1\n",
        )
        .unwrap();
        for p in ["fake", "failing"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d.path().join(p), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let list = parse_list("t", r#"{"cniVersion": "1.0.0", "name": "t", "plugins": [{"type": "fake"}, {"type": "fake", "capabilities": {"portMappings": true}}]}"#, None).unwrap();
        let ports = [crate::network::ports::parse_publish("1:2").unwrap()];
        let inv = Invocation {
            plugin_dir: d.path(),
            container_id: "c1",
            netns: Path::new("/ns"),
            ifname: "eth0",
            ports: &ports,
        };
        let r = add(&list, &inv).unwrap();
        assert_eq!(r["ips"][0]["address"], "10.1.0.2/24");
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("ADD c1 /ns eth0 {}", d.path().display()));
        let first: Value = serde_json::from_str(lines[1]).unwrap();
        assert!(first.get("prevResult").is_none());
        let second: Value = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(second["prevResult"]["ips"][0]["address"], "10.1.0.2/24");
        assert_eq!(
            second["runtimeConfig"]["portMappings"][0]["containerPort"],
            2
        );
        assert!(del(&list, &inv, Some(&r)).is_empty());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("DEL c1 /ns eth0"), "{text}");

        let failing = parse_list(
            "t",
            r#"{"cniVersion": "1.0.0", "name": "t", "plugins": [{"type": "failing"}]}"#,
            None,
        )
        .unwrap();
        let e = add(&failing, &inv).unwrap_err().to_string();
        assert_eq!(
            e,
            "CNI plugin failing (ADD, network t) failed: bad config: no bridge (CNI error code 7)"
        );
        let missing = parse_list("t", r#"{"cniVersion": "1.0.0", "name": "t", "plugins": [{"type": "fake"}, {"type": "nope"}]}"#, None).unwrap();
        let e = add(&missing, &inv).unwrap_err().to_string();
        assert!(
            e.contains("\"nope\"") && e.contains("containernetworking-plugins"),
            "{e}"
        );
        let nodir = Invocation {
            plugin_dir: Path::new("/no/such/cni"),
            ..inv
        };
        let e = add(&list, &nodir).unwrap_err().to_string();
        assert!(
            e.contains("/no/such/cni") && e.contains("--network none"),
            "{e}"
        );
    }
}
