//! What ADD returns: a CNI result.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::parse_cidr;

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
