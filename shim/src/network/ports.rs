//! Published ports (`-p [IP:]HOST:CONTAINER[/tcp|udp]`), as the CNI portmap plugin takes
//! them (`runtimeConfig.portMappings`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One published port: `hostIP:hostPort` on the host forwards to `containerPort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Empty: every host address.
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Why a `-p` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("-p {value:?}: {why} (expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp])")]
pub struct PublishError {
    pub value: String,
    pub why: String,
}

fn port(what: &str, s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{what} {s:?} is not a port number (1-65535)")),
        Ok(p) => Ok(p),
    }
}

/// Parses one `-p` value: `HOST:CONTAINER`, `IP:HOST:CONTAINER` or `[IPv6]:HOST:CONTAINER`,
/// each with an optional `/tcp` (the default) or `/udp`. A host port is required (no
/// random port is picked).
pub fn parse_publish(value: &str) -> Result<PortMapping, PublishError> {
    let err = |why: String| PublishError {
        value: value.to_string(),
        why,
    };
    let (spec, protocol) = match value.rsplit_once('/') {
        Some((s, p)) => match p.to_ascii_lowercase().as_str() {
            "tcp" | "udp" => (s, p.to_ascii_lowercase()),
            _ => return Err(err(format!("protocol {p:?} is not tcp or udp"))),
        },
        None => (value, "tcp".to_string()),
    };
    // The address part, if any: everything before the last two colon-separated fields.
    let (host_ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        let (ip, rest) = r
            .split_once("]:")
            .ok_or_else(|| err("an IPv6 address in brackets must be followed by :PORT".into()))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| err(format!("{ip:?} is not an IP address")))?;
        (ip.to_string(), rest)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            2 => (String::new(), spec),
            3 => {
                let ip: IpAddr = parts[0]
                    .parse()
                    .map_err(|_| err(format!("{:?} is not an IP address", parts[0])))?;
                (ip.to_string(), &spec[parts[0].len() + 1..])
            }
            1 => return Err(err("a host port is needed".into())),
            _ => return Err(err("too many ':'".into())),
        }
    };
    let (h, c) = rest
        .split_once(':')
        .ok_or_else(|| err("a host port is needed".into()))?;
    if h.is_empty() {
        return Err(err(
            "a host port is needed (no random port is picked)".into()
        ));
    }
    Ok(PortMapping {
        host_port: port("host port", h).map_err(err)?,
        container_port: port("container port", c).map_err(err)?,
        protocol,
        host_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(h: u16, c: u16, proto: &str, ip: &str) -> PortMapping {
        PortMapping {
            host_port: h,
            container_port: c,
            protocol: proto.into(),
            host_ip: ip.into(),
        }
    }

    #[test]
    fn publish_forms() {
        assert_eq!(parse_publish("8080:80").unwrap(), pm(8080, 80, "tcp", ""));
        assert_eq!(
            parse_publish("127.0.0.1:8080:80/udp").unwrap(),
            pm(8080, 80, "udp", "127.0.0.1")
        );
        assert_eq!(
            parse_publish("[::1]:53:53/UDP").unwrap(),
            pm(53, 53, "udp", "::1")
        );
        assert_eq!(
            parse_publish("1:65535/tcp").unwrap(),
            pm(1, 65535, "tcp", "")
        );
        let j = serde_json::to_value(parse_publish("10.0.0.1:8080:80").unwrap()).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "10.0.0.1"})
        );
        let j = serde_json::to_value(parse_publish("8080:80").unwrap()).unwrap();
        assert!(j.get("hostIP").is_none(), "{j}");
    }

    #[test]
    fn bad_publish_values_name_the_flag_and_value() {
        for (v, why) in [
            ("80", "a host port is needed"),
            (":80", "a host port is needed"),
            ("8080:80/sctp", "protocol"),
            ("0:80", "not a port number"),
            ("8080:70000", "not a port number"),
            ("x:80", "not a port number"),
            ("1.2.3:8080:80", "not an IP address"),
            ("a:b:c:d", "too many"),
            ("[::1:80:80", "brackets"),
            ("", "a host port is needed"),
        ] {
            let e = parse_publish(v).unwrap_err().to_string();
            assert!(e.starts_with(&format!("-p {v:?}: ")), "{e}");
            assert!(e.contains(why), "{v}: {e}");
        }
    }
}
