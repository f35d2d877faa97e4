//! Network configuration lists: parsing one, the default network, loading a folder.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{CniError, MAX_OUTPUT, SUPPORTED_VERSIONS};

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
