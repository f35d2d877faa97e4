//! The name files a container sees: /etc/resolv.conf, /etc/hosts and /etc/hostname, made
//! on the host and handed to the agent (CreateSandbox), as docker writes them.

use std::net::IpAddr;

/// Why a name setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilesError {
    #[error("--dns {0:?}: not an IP address")]
    Dns(String),
    #[error("--add-host {0:?}: expected NAME:IP (an IPv6 address may be in brackets)")]
    AddHost(String),
    #[error("--hostname {0:?}: expected letters, digits, '-' and '.', at most 64")]
    Hostname(String),
    #[error("--dns-search {0:?}: not a domain name")]
    Search(String),
    #[error("--dns-option {0:?}: expected an option such as ndots:2")]
    Option(String),
}

/// What the user asked for the resolver (`--dns`, `--dns-search`, `--dns-option`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    pub servers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// The three files, ready for the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameFiles {
    pub hosts: String,
    pub resolv_conf: String,
    pub hostname: String,
}

/// Checks `--dns` values.
pub fn parse_dns(values: &[String]) -> Result<Vec<IpAddr>, FilesError> {
    values
        .iter()
        .map(|v| v.parse().map_err(|_| FilesError::Dns(v.clone())))
        .collect()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Checks a `--hostname` value (a label or dotted name, at most 64 bytes as Linux's
/// utsname allows).
pub fn check_hostname(h: &str) -> Result<(), FilesError> {
    if h.len() > 64 || !valid_name(h) || h.contains('_') {
        return Err(FilesError::Hostname(h.to_string()));
    }
    Ok(())
}

/// Checks `--dns-search` and `--dns-option` values.
pub fn check_dns_words(search: &[String], options: &[String]) -> Result<(), FilesError> {
    for s in search {
        if s != "." && !valid_name(s) {
            return Err(FilesError::Search(s.clone()));
        }
    }
    for o in options {
        if o.is_empty() || o.chars().any(char::is_whitespace) {
            return Err(FilesError::Option(o.clone()));
        }
    }
    Ok(())
}

/// Parses `--add-host NAME:IP` (docker's form; `NAME=IP` too).
pub fn parse_add_host(v: &str) -> Result<(String, IpAddr), FilesError> {
    let bad = || FilesError::AddHost(v.to_string());
    let (name, ip) = v
        .split_once(['=', ':'])
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(bad)?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    if !valid_name(name) {
        return Err(bad());
    }
    Ok((name.to_string(), ip))
}

/// The nameservers, search domains and options of a resolv.conf text.
fn read_resolv(text: &str) -> (Vec<IpAddr>, Vec<String>, Vec<String>) {
    let (mut ns, mut search, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("nameserver") => {
                // A scoped IPv6 address (fe80::1%eth0) stays on the host's link.
                if let Some(ip) = w.next().and_then(|a| a.parse::<IpAddr>().ok()) {
                    ns.push(ip);
                }
            }
            Some("search") | Some("domain") => {
                search = w.map(str::to_string).collect();
            }
            Some("options") => options.extend(w.map(str::to_string)),
            _ => {}
        }
    }
    (ns, search, options)
}

/// The container's resolv.conf: `--dns` servers, else the network's (from the CNI
/// result), else the host's (`host_resolv`, the text of its /etc/resolv.conf) without
/// loopback ones (127.0.0.53 and ::1 are the host's own resolvers, which the guest cannot
/// reach); search domains and options from the flags, else from the host. When no
/// server is left, the file says so in a comment (no public resolver is put in).
pub fn resolv_conf(
    host_resolv: &str,
    dns: &DnsSettings,
    network_servers: &[IpAddr],
    network_search: &[String],
) -> String {
    let (host_ns, host_search, host_options) = read_resolv(host_resolv);
    let servers: Vec<IpAddr> = if !dns.servers.is_empty() {
        dns.servers.clone()
    } else if !network_servers.is_empty() {
        network_servers.to_vec()
    } else {
        host_ns.into_iter().filter(|ip| !ip.is_loopback()).collect()
    };
    let search = if !dns.search.is_empty() {
        dns.search.iter().filter(|s| *s != ".").cloned().collect()
    } else if !network_search.is_empty() {
        network_search.to_vec()
    } else {
        host_search
    };
    let options = if dns.options.is_empty() {
        host_options
    } else {
        dns.options.clone()
    };
    let mut s = String::from("# Generated by husk.\n");
    if servers.is_empty() {
        s += "# No nameserver: the host's are loopback addresses the container cannot reach (use --dns).\n";
    }
    for ip in servers {
        s += &format!("nameserver {ip}\n");
    }
    if !search.is_empty() {
        s += &format!("search {}\n", search.join(" "));
    }
    if !options.is_empty() {
        s += &format!("options {}\n", options.join(" "));
    }
    s
}

/// The container's /etc/hosts: localhost, the `--add-host` entries, then the container's
/// addresses with its hostname (`127.0.1.1` when it has none, as Debian does).
pub fn hosts(hostname: &str, addresses: &[IpAddr], extra: &[(String, IpAddr)]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for (name, ip) in extra {
        s += &format!("{ip}\t{name}\n");
    }
    if addresses.is_empty() {
        s += &format!("127.0.1.1\t{hostname}\n");
    }
    for ip in addresses {
        s += &format!("{ip}\t{hostname}\n");
    }
    s
}

/// All three files.
pub fn name_files(
    hostname: &str,
    addresses: &[IpAddr],
    extra_hosts: &[(String, IpAddr)],
    host_resolv: &str,
    dns: &DnsSettings,
    network_servers: &[IpAddr],
    network_search: &[String],
) -> NameFiles {
    NameFiles {
        hosts: hosts(hostname, addresses, extra_hosts),
        resolv_conf: resolv_conf(host_resolv, dns, network_servers, network_search),
        hostname: format!("{hostname}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "# systemd-resolved\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\nsearch corp.example lan\noptions edns0 trust-ad\n";

    #[test]
    fn resolv_conf_skips_loopback_servers() {
        let s = resolv_conf(HOST, &DnsSettings::default(), &[], &[]);
        assert_eq!(
            s,
            "# Generated by husk.\nnameserver 192.0.2.1\nsearch corp.example lan\noptions edns0 trust-ad\n"
        );
        let only_loopback = "nameserver 127.0.0.53\noptions edns0\n";
        let s = resolv_conf(only_loopback, &DnsSettings::default(), &[], &[]);
        assert!(!s.contains("nameserver "), "{s}");
        assert!(s.contains("use --dns"), "{s}");
    }

    #[test]
    fn resolv_conf_flags_win() {
        let dns = DnsSettings {
            servers: parse_dns(&["10.1.2.3".into(), "2001:db8::1".into()]).unwrap(),
            search: vec!["example.org".into()],
            options: vec!["ndots:2".into()],
        };
        let s = resolv_conf(HOST, &dns, &["198.51.100.1".parse().unwrap()], &[]);
        assert_eq!(
            s,
            "# Generated by husk.\nnameserver 10.1.2.3\nnameserver 2001:db8::1\nsearch example.org\noptions ndots:2\n"
        );
        // The network's servers come before the host's.
        let s = resolv_conf(
            HOST,
            &DnsSettings::default(),
            &["198.51.100.1".parse().unwrap()],
            &["net.example".into()],
        );
        assert!(
            s.contains("nameserver 198.51.100.1\nsearch net.example\n"),
            "{s}"
        );
        assert_eq!(
            parse_dns(&["1.2.3".into()]).unwrap_err().to_string(),
            "--dns \"1.2.3\": not an IP address"
        );
    }

    #[test]
    fn hosts_file() {
        let extra = [
            parse_add_host("foo:10.9.9.9").unwrap(),
            parse_add_host("v6=[2001:db8::2]").unwrap(),
        ];
        let h = hosts("myhost", &["10.88.0.5".parse().unwrap()], &extra);
        assert!(
            h.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
            "{h}"
        );
        assert!(h.contains("\n10.9.9.9\tfoo\n2001:db8::2\tv6\n"), "{h}");
        assert!(h.ends_with("\n10.88.0.5\tmyhost\n"), "{h}");
        let h = hosts("solo", &[], &[]);
        assert!(h.ends_with("\n127.0.1.1\tsolo\n"), "{h}");
        for bad in ["foo", ":1.2.3.4", "foo:bar", "a b:1.2.3.4", "foo:"] {
            assert!(parse_add_host(bad).is_err(), "{bad}");
        }
        assert!(
            parse_add_host("foo:nope")
                .unwrap_err()
                .to_string()
                .starts_with("--add-host \"foo:nope\"")
        );
    }

    #[test]
    fn hostnames() {
        assert!(check_hostname("myhost").is_ok());
        assert!(check_hostname("web-1.example").is_ok());
        for bad in ["", "-x", "a b", "a_b", &"x".repeat(65)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
        assert!(check_dns_words(&["example.org".into(), ".".into()], &["ndots:1".into()]).is_ok());
        assert!(check_dns_words(&["bad domain".into()], &[]).is_err());
        assert!(check_dns_words(&[], &["".into()]).is_err());
        let f = name_files("h", &[], &[], "", &DnsSettings::default(), &[], &[]);
        assert_eq!(f.hostname, "h\n");
    }
}
