//! Validation of request fields, applied to every request before the agent acts.
//!
//! The host is not trusted more than it must be: ids are `[A-Za-z0-9_.-]{1,128}` (and
//! not `.` or `..`, which would name folders), paths stay inside the folder they are
//! relative to, sizes are bounded; network requests (UpdateInterface, UpdateRoutes)
//! are parsed into checked values ([`InterfaceConfig`], [`RouteConfig`]) whose errors
//! name the field (`routes[3].gateway`) and the value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path, PathBuf};

use crate::agent::{CreateSandboxRequest, UpdateInterfaceRequest, UpdateRoutesRequest};

/// Longest id accepted (container, exec, sandbox).
pub const MAX_ID_LEN: usize = 128;

/// Largest request the agent accepts, in bytes.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Why a request field was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    #[error("{field}: empty id")]
    EmptyId { field: &'static str },
    #[error("{field}: id is {len} bytes long, at most {MAX_ID_LEN} are allowed")]
    IdTooLong { field: &'static str, len: usize },
    #[error("{field}: id {id:?} has a character outside [A-Za-z0-9_.-]")]
    IdCharacter { field: &'static str, id: String },
    #[error("{field}: id {id:?} is reserved")]
    IdReserved { field: &'static str, id: String },
    #[error("{field}: path {path:?} must be relative")]
    PathAbsolute { field: &'static str, path: String },
    #[error("{field}: path {path:?} leaves the folder it is relative to")]
    PathEscapes { field: &'static str, path: String },
    #[error("{field}: {size} bytes is more than the {max} allowed")]
    TooLarge {
        field: &'static str,
        size: usize,
        max: usize,
    },
    #[error("{field}: {count} entries, at most {max} are allowed")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{field} {value:?}: {why}")]
    Value {
        field: String,
        value: String,
        why: &'static str,
    },
}

/// Checks an id against `[A-Za-z0-9_.-]{1,128}`, refusing `.` and `..`.
pub fn id(field: &'static str, id: &str) -> Result<(), ValidateError> {
    if id.is_empty() {
        return Err(ValidateError::EmptyId { field });
    }
    if id.len() > MAX_ID_LEN {
        return Err(ValidateError::IdTooLong {
            field,
            len: id.len(),
        });
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(ValidateError::IdCharacter {
            field,
            id: id.to_string(),
        });
    }
    if id == "." || id == ".." {
        return Err(ValidateError::IdReserved {
            field,
            id: id.to_string(),
        });
    }
    Ok(())
}

/// Joins a relative `path` under `base`, refusing absolute paths and any `..` that
/// would climb above `base`. Purely lexical: symlinks are resolved by the caller at the
/// point of use (inside the container's root), never here.
pub fn join_inside(field: &'static str, base: &Path, path: &str) -> Result<PathBuf, ValidateError> {
    let p = Path::new(path);
    let mut depth = 0usize;
    let mut out = base.to_path_buf();
    for c in p.components() {
        match c {
            Component::Normal(n) => {
                depth += 1;
                out.push(n);
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return Err(ValidateError::PathEscapes {
                        field,
                        path: path.to_string(),
                    });
                }
                depth -= 1;
                out.pop();
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ValidateError::PathAbsolute {
                    field,
                    path: path.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Checks a size against a bound.
pub fn size(field: &'static str, size: usize, max: usize) -> Result<(), ValidateError> {
    if size > max {
        return Err(ValidateError::TooLarge { field, size, max });
    }
    Ok(())
}

/// Builds the error for a refused value.
fn bad(field: &str, value: &str, why: &'static str) -> ValidateError {
    ValidateError::Value {
        field: field.to_string(),
        value: value.to_string(),
        why,
    }
}

/// Checks a network interface name as the kernel would take it (`dev_valid_name` in
/// net/core/dev.c): 1 to 15 bytes, not `.`/`..`, no `/`, `:`, whitespace or NUL.
pub fn interface_name(field: &str, name: &str) -> Result<(), ValidateError> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(bad(field, name, "an interface name has 1 to 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(bad(field, name, "not a usable interface name"));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace() || !b.is_ascii())
    {
        return Err(bad(
            field,
            name,
            "an interface name has no '/', ':', whitespace, NUL or non-ASCII byte",
        ));
    }
    Ok(())
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff` (hex digits, either case).
pub fn mac(field: &str, s: &str) -> Result<[u8; 6], ValidateError> {
    let why = "expected a MAC address aa:bb:cc:dd:ee:ff";
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next().ok_or_else(|| bad(field, s, why))?;
        if p.len() != 2 {
            return Err(bad(field, s, why));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad(field, s, why))?;
    }
    if parts.next().is_some() {
        return Err(bad(field, s, why));
    }
    Ok(out)
}

/// An address with its prefix length, as in `10.88.0.5/16` or `fd00::5/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// The prefix's network (host bits cleared).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses `ADDRESS/PREFIX` (IPv4: prefix 0 to 32; IPv6: 0 to 128). Nothing else: no
/// bare address, no netmask notation.
pub fn cidr(field: &str, s: &str) -> Result<Cidr, ValidateError> {
    let why = "expected ADDRESS/PREFIX (10.88.0.5/16, fd00::5/64)";
    let (a, p) = s.split_once('/').ok_or_else(|| bad(field, s, why))?;
    let addr: IpAddr = a.parse().map_err(|_| bad(field, s, why))?;
    if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(field, s, why));
    }
    let prefix: u8 = p.parse().map_err(|_| bad(field, s, why))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad(field, s, "prefix length past the address's bits"));
    }
    Ok(Cidr { addr, prefix })
}

/// Parses a plain IP address (IPv4 or IPv6).
pub fn ip(field: &str, s: &str) -> Result<IpAddr, ValidateError> {
    s.parse()
        .map_err(|_| bad(field, s, "expected an IPv4 or IPv6 address"))
}

/// Addresses one interface may be given.
pub const MAX_ADDRESSES: usize = 16;
/// Routes one UpdateRoutes may carry.
pub const MAX_ROUTES: usize = 256;
/// Longest interface name (IFNAMSIZ less its NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Largest of CreateSandbox's name files (hosts, resolv.conf, hostname).
pub const MAX_ETC_FILE_BYTES: usize = 64 << 10;
/// Largest CreateSandbox `entropy_seed`. A bound, like every size the host sends; more
/// would add nothing: the kernel credits at most its pool's size (256 bits since Linux
/// 5.18, 4096 before).
pub const MAX_ENTROPY_SEED_BYTES: usize = 512;
/// Smallest MTU accepted (IPv4's minimum, RFC 791); the device may refuse more.
pub const MIN_MTU: u32 = 68;

/// UpdateInterface, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub mac: [u8; 6],
    /// The MAC the NIC has now, when it is to take `mac` (protocol 0.6: a VM restored
    /// from a template); used only when no NIC has `mac`.
    pub current_mac: Option<[u8; 6]>,
    /// `None`: leave the MTU as it is.
    pub mtu: Option<u32>,
    pub addresses: Vec<Cidr>,
}

/// Checks an UpdateInterface request: the MAC (unicast, not all zeroes), the new name, the MTU (0: unchanged,
/// else 68 to 65535), at most [`MAX_ADDRESSES`] unicast addresses in CIDR form.
pub fn update_interface(req: &UpdateInterfaceRequest) -> Result<InterfaceConfig, ValidateError> {
    let unicast = |field: &str, s: &str| {
        let m = mac(field, s)?;
        // Not loopback's (all zeroes) nor a group address: no NIC is found by those,
        // and none may take one.
        if m == [0; 6] || m[0] & 1 == 1 {
            return Err(bad(field, s, "not a unicast MAC address"));
        }
        Ok(m)
    };
    let mac = unicast("mac", &req.mac)?;
    let current_mac = match req.current_mac.as_str() {
        "" => None,
        s => Some(unicast("current_mac", s)?),
    };
    interface_name("name", &req.name)?;
    let mtu = match req.mtu {
        0 => None,
        m if (MIN_MTU..=65535).contains(&m) => Some(m),
        m => {
            return Err(bad(
                "mtu",
                &m.to_string(),
                "an MTU is 68 to 65535 (0: unchanged)",
            ));
        }
    };
    if req.addresses.len() > MAX_ADDRESSES {
        return Err(ValidateError::TooMany {
            field: "addresses",
            count: req.addresses.len(),
            max: MAX_ADDRESSES,
        });
    }
    let mut addresses = Vec::with_capacity(req.addresses.len());
    for (i, a) in req.addresses.iter().enumerate() {
        let field = format!("addresses[{i}]");
        let c = cidr(&field, a)?;
        if c.addr.is_unspecified() || c.addr.is_multicast() || c.addr.is_loopback() {
            return Err(bad(&field, a, "not a unicast address for an interface"));
        }
        if let IpAddr::V4(v4) = c.addr
            && v4.is_broadcast()
        {
            return Err(bad(&field, a, "not a unicast address for an interface"));
        }
        if !addresses.contains(&c) {
            addresses.push(c);
        }
    }
    Ok(InterfaceConfig {
        name: req.name.clone(),
        mac,
        current_mac,
        mtu,
        addresses,
    })
}

/// One route of UpdateRoutes, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Its place in the request (errors name `routes[index]`).
    pub index: usize,
    pub destination: Cidr,
    /// `None`: a link-scope route (the destination is on the device's link).
    pub gateway: Option<IpAddr>,
    pub device: String,
    pub source: Option<IpAddr>,
}

/// Checks an UpdateRoutes request: at most [`MAX_ROUTES`], each with a destination
/// network in CIDR form (host bits clear), an optional gateway and source of the same
/// family, and a device name. The result is ordered link routes first (a gateway must
/// be reachable when its route is added), otherwise as sent.
pub fn update_routes(req: &UpdateRoutesRequest) -> Result<Vec<RouteConfig>, ValidateError> {
    if !req.legacy_routes.is_empty() {
        return Err(bad(
            "legacy_routes",
            &req.legacy_routes.join(","),
            "unused since protocol 0.4: send `routes`",
        ));
    }
    if req.routes.len() > MAX_ROUTES {
        return Err(ValidateError::TooMany {
            field: "routes",
            count: req.routes.len(),
            max: MAX_ROUTES,
        });
    }
    let mut out = Vec::with_capacity(req.routes.len());
    for (i, r) in req.routes.iter().enumerate() {
        let destination = cidr(&format!("routes[{i}].destination"), &r.destination)?;
        if destination.network() != destination.addr {
            return Err(bad(
                &format!("routes[{i}].destination"),
                &r.destination,
                "host bits set: give the network (10.88.0.0/16, not 10.88.0.5/16)",
            ));
        }
        if destination.addr.is_multicast() {
            return Err(bad(
                &format!("routes[{i}].destination"),
                &r.destination,
                "not a unicast destination",
            ));
        }
        let same_family = |field: String, s: &str| -> Result<Option<IpAddr>, ValidateError> {
            if s.is_empty() {
                return Ok(None);
            }
            let a = ip(&field, s)?;
            if a.is_ipv4() != destination.addr.is_ipv4() {
                return Err(bad(&field, s, "not of the destination's address family"));
            }
            if a.is_unspecified() || a.is_multicast() {
                return Err(bad(&field, s, "not a unicast address"));
            }
            Ok(Some(a))
        };
        let gateway = same_family(format!("routes[{i}].gateway"), &r.gateway)?;
        let source = same_family(format!("routes[{i}].source"), &r.source)?;
        interface_name(&format!("routes[{i}].device"), &r.device)?;
        out.push(RouteConfig {
            index: i,
            destination,
            gateway,
            device: r.device.clone(),
            source,
        });
    }
    // Stable: link routes first, each group as sent.
    out.sort_by_key(|r| r.gateway.is_some());
    Ok(out)
}

/// Checks CreateSandbox's name files (each at most [`MAX_ETC_FILE_BYTES`]).
pub fn etc_files(req: &CreateSandboxRequest) -> Result<(), ValidateError> {
    for (field, data) in [
        ("etc_hosts", &req.etc_hosts),
        ("etc_resolv_conf", &req.etc_resolv_conf),
        ("etc_hostname", &req.etc_hostname),
    ] {
        size(field, data.len(), MAX_ETC_FILE_BYTES)?;
    }
    Ok(())
}

/// Checks CreateSandbox's `entropy_seed` (at most [`MAX_ENTROPY_SEED_BYTES`]; empty:
/// none).
pub fn entropy_seed(req: &CreateSandboxRequest) -> Result<(), ValidateError> {
    size(
        "entropy_seed",
        req.entropy_seed.len(),
        MAX_ENTROPY_SEED_BYTES,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_ids_pass() {
        for ok in ["a", "abc-123_x.y", &"x".repeat(128), "..a", "a.."] {
            assert_eq!(id("container_id", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn bad_ids_are_refused_with_the_field_named() {
        assert_eq!(
            id("container_id", ""),
            Err(ValidateError::EmptyId {
                field: "container_id"
            })
        );
        let long = "x".repeat(129);
        assert!(matches!(
            id("exec_id", &long),
            Err(ValidateError::IdTooLong { len: 129, .. })
        ));
        for bad in ["a/b", "a b", "é", "a\0b", "../x"] {
            let e = id("exec_id", bad).unwrap_err();
            assert!(e.to_string().starts_with("exec_id: "), "{e}");
        }
        assert!(matches!(
            id("id", ".."),
            Err(ValidateError::IdReserved { .. })
        ));
    }

    #[test]
    fn paths_stay_inside() {
        let base = Path::new("/run/sandbox");
        assert_eq!(
            join_inside("p", base, "a/./b/../c").unwrap(),
            Path::new("/run/sandbox/a/c")
        );
        assert_eq!(join_inside("p", base, "").unwrap(), base);
        for bad in ["..", "a/../../b", "../run/sandbox/x"] {
            assert!(
                matches!(
                    join_inside("p", base, bad),
                    Err(ValidateError::PathEscapes { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            join_inside("p", base, "/etc/passwd"),
            Err(ValidateError::PathAbsolute { .. })
        ));
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(size("data", MAX_REQUEST_BYTES, MAX_REQUEST_BYTES).is_ok());
        let e = size("data", 100 << 20, MAX_REQUEST_BYTES).unwrap_err();
        assert_eq!(
            e.to_string(),
            "data: 104857600 bytes is more than the 4194304 allowed"
        );
    }

    fn iface(mac: &str, name: &str, addrs: &[&str], mtu: u32) -> UpdateInterfaceRequest {
        let mut r = UpdateInterfaceRequest::new();
        r.mac = mac.into();
        r.name = name.into();
        r.addresses = addrs.iter().map(|s| s.to_string()).collect();
        r.mtu = mtu;
        r
    }

    fn route(dst: &str, gw: &str, dev: &str, src: &str) -> crate::agent::Route {
        let mut r = crate::agent::Route::new();
        r.destination = dst.into();
        r.gateway = gw.into();
        r.device = dev.into();
        r.source = src.into();
        r
    }

    fn field_of(e: &ValidateError) -> String {
        match e {
            ValidateError::Value { field, .. } => field.clone(),
            other => other.to_string(),
        }
    }

    #[test]
    fn interfaces_are_checked() {
        let c = update_interface(&iface(
            "02:11:22:33:44:5A",
            "eth0",
            &["10.200.0.5/24", "fd00:200::5/64", "10.200.0.5/24"],
            1400,
        ))
        .unwrap();
        assert_eq!(c.mac, [2, 0x11, 0x22, 0x33, 0x44, 0x5a]);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.addresses.len(), 2, "duplicates dropped");
        assert_eq!(c.addresses[1].to_string(), "fd00:200::5/64");
        let ok = update_interface(&iface("02:11:22:33:44:55", "eth0", &[], 0)).unwrap();
        assert_eq!((ok.mtu, ok.current_mac), (None, None));
        // A clone's NIC takes its MAC (protocol 0.6).
        let mut clone = iface("02:11:22:33:44:55", "eth0", &[], 0);
        clone.current_mac = "02:68:75:73:6B:00".into();
        let c = update_interface(&clone).unwrap();
        assert_eq!(c.current_mac, Some([2, 0x68, 0x75, 0x73, 0x6b, 0]));
        for bad in [
            "02:68:75:73:6b",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "x",
        ] {
            clone.current_mac = bad.into();
            let e = update_interface(&clone).unwrap_err();
            assert_eq!(field_of(&e), "current_mac", "{bad}: {e}");
        }

        for (req, field) in [
            (iface("02:11:22:33:44", "eth0", &[], 0), "mac"),
            (iface("02:11:22:33:44:55:66", "eth0", &[], 0), "mac"),
            (iface("02:11:22:33:44:5g", "eth0", &[], 0), "mac"),
            (iface("2:11:22:33:44:55", "eth0", &[], 0), "mac"),
            (iface("", "eth0", &[], 0), "mac"),
            (iface("00:00:00:00:00:00", "eth0", &[], 0), "mac"),
            (iface("ff:ff:ff:ff:ff:ff", "eth0", &[], 0), "mac"),
            (iface("01:00:5e:00:00:01", "eth0", &[], 0), "mac"),
            (iface("02:11:22:33:44:55", "", &[], 0), "name"),
            (iface("02:11:22:33:44:55", "a/b", &[], 0), "name"),
            (iface("02:11:22:33:44:55", "eth 0", &[], 0), "name"),
            (
                iface("02:11:22:33:44:55", "sixteen-bytes-xx", &[], 0),
                "name",
            ),
            (iface("02:11:22:33:44:55", "..", &[], 0), "name"),
            (iface("02:11:22:33:44:55", "eth0", &[], 67), "mtu"),
            (iface("02:11:22:33:44:55", "eth0", &[], 65536), "mtu"),
            (
                iface("02:11:22:33:44:55", "eth0", &["10.0.0.1"], 0),
                "addresses[0]",
            ),
            (
                iface(
                    "02:11:22:33:44:55",
                    "eth0",
                    &["10.0.0.1/24", "10.0.0.300/24"],
                    0,
                ),
                "addresses[1]",
            ),
            (
                iface("02:11:22:33:44:55", "eth0", &["10.0.0.1/33"], 0),
                "addresses[0]",
            ),
            (
                iface("02:11:22:33:44:55", "eth0", &["fd00::1/129"], 0),
                "addresses[0]",
            ),
            (
                iface("02:11:22:33:44:55", "eth0", &["10.0.0.1/+8"], 0),
                "addresses[0]",
            ),
            (
                iface("02:11:22:33:44:55", "eth0", &["0.0.0.0/0"], 0),
                "addresses[0]",
            ),
            (
                iface("02:11:22:33:44:55", "eth0", &["224.0.0.1/4"], 0),
                "addresses[0]",
            ),
            (
                iface("02:11:22:33:44:55", "eth0", &["::1/128"], 0),
                "addresses[0]",
            ),
        ] {
            let e = update_interface(&req).unwrap_err();
            assert_eq!(field_of(&e), field, "{req:?}: {e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
        // NUL inside a name.
        let mut nul = iface("02:11:22:33:44:55", "eth0", &[], 0);
        nul.name = String::from_utf8(vec![b'a', 0, b'b']).unwrap();
        assert_eq!(field_of(&update_interface(&nul).unwrap_err()), "name");

        let many: Vec<String> = (0..17).map(|i| format!("10.0.0.{}/24", i + 1)).collect();
        let mut r = iface("02:11:22:33:44:55", "eth0", &[], 0);
        r.addresses = many;
        assert!(matches!(
            update_interface(&r),
            Err(ValidateError::TooMany {
                count: 17,
                max: 16,
                ..
            })
        ));
        let e = update_interface(&iface("02:11:22:33:44:55", "eth0", &["10.0.0.1/x"], 0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("addresses[0]") && e.contains("10.0.0.1/x"),
            "{e}"
        );
    }

    #[test]
    fn routes_are_checked_and_link_routes_come_first() {
        let mut req = UpdateRoutesRequest::new();
        req.routes = vec![
            route("0.0.0.0/0", "10.200.0.1", "eth0", ""),
            route("10.201.0.0/16", "", "eth0", "10.200.0.5"),
            route("::/0", "fd00:200::1", "eth0", ""),
            route("fd00:201::/64", "", "eth0", ""),
        ];
        let r = update_routes(&req).unwrap();
        let order: Vec<usize> = r.iter().map(|r| r.index).collect();
        assert_eq!(order, [1, 3, 0, 2]);
        assert_eq!(r[0].source, Some("10.200.0.5".parse().unwrap()));
        assert_eq!(r[2].gateway, Some("10.200.0.1".parse().unwrap()));
        assert_eq!(r[2].destination.prefix, 0);

        for (rt, field) in [
            (route("10.0.0.0", "", "eth0", ""), "routes[0].destination"),
            (route("10.0.0.5/8", "", "eth0", ""), "routes[0].destination"),
            (route("default", "", "eth0", ""), "routes[0].destination"),
            (
                route("224.0.0.0/4", "", "eth0", ""),
                "routes[0].destination",
            ),
            (
                route("0.0.0.0/0", "fd00::1", "eth0", ""),
                "routes[0].gateway",
            ),
            (
                route("0.0.0.0/0", "10.0.0.x", "eth0", ""),
                "routes[0].gateway",
            ),
            (
                route("0.0.0.0/0", "0.0.0.0", "eth0", ""),
                "routes[0].gateway",
            ),
            (
                route("::/0", "fd00::1", "eth0", "10.0.0.1"),
                "routes[0].source",
            ),
            (route("0.0.0.0/0", "10.0.0.1", "", ""), "routes[0].device"),
            (
                route("0.0.0.0/0", "10.0.0.1", "eth/0", ""),
                "routes[0].device",
            ),
        ] {
            let mut req = UpdateRoutesRequest::new();
            req.routes = vec![route("10.9.0.0/16", "", "eth0", ""), rt];
            let e = update_routes(&req).unwrap_err();
            let want = field.replace("routes[0]", "routes[1]");
            assert_eq!(field_of(&e), want, "{e}");
        }
        let mut req = UpdateRoutesRequest::new();
        req.routes = (0..257)
            .map(|i| route(&format!("10.{}.{}.0/24", i / 256, i % 256), "", "eth0", ""))
            .collect();
        assert!(matches!(
            update_routes(&req),
            Err(ValidateError::TooMany { count: 257, .. })
        ));
        let mut req = UpdateRoutesRequest::new();
        req.legacy_routes = vec!["default via 10.0.0.1".into()];
        assert_eq!(field_of(&update_routes(&req).unwrap_err()), "legacy_routes");
        assert_eq!(update_routes(&UpdateRoutesRequest::new()).unwrap(), vec![]);
    }

    #[test]
    fn cidr_networks() {
        let c = cidr("d", "10.200.7.5/20").unwrap();
        assert_eq!(c.network().to_string(), "10.200.0.0");
        assert_eq!(
            cidr("d", "0.0.0.0/0").unwrap().network().to_string(),
            "0.0.0.0"
        );
        assert_eq!(
            cidr("d", "10.0.0.1/32").unwrap().network().to_string(),
            "10.0.0.1"
        );
        assert_eq!(
            cidr("d", "fd00:1:2:3:4::5/64")
                .unwrap()
                .network()
                .to_string(),
            "fd00:1:2:3::"
        );
        assert_eq!(cidr("d", "::/0").unwrap().network().to_string(), "::");
    }

    #[test]
    fn etc_files_are_bounded() {
        let mut r = CreateSandboxRequest::new();
        r.etc_hosts = vec![b'x'; MAX_ETC_FILE_BYTES];
        assert_eq!(etc_files(&r), Ok(()));
        r.etc_resolv_conf = vec![b'x'; MAX_ETC_FILE_BYTES + 1];
        let e = etc_files(&r).unwrap_err().to_string();
        assert!(e.starts_with("etc_resolv_conf: 65537 bytes"), "{e}");
    }

    #[test]
    fn entropy_seed_is_bounded() {
        let mut r = CreateSandboxRequest::new();
        assert_eq!(entropy_seed(&r), Ok(()), "empty: no seed");
        r.entropy_seed = vec![7; MAX_ENTROPY_SEED_BYTES];
        assert_eq!(entropy_seed(&r), Ok(()));
        r.entropy_seed = vec![7; MAX_ENTROPY_SEED_BYTES + 1];
        let e = entropy_seed(&r).unwrap_err();
        assert_eq!(
            e,
            ValidateError::TooLarge {
                field: "entropy_seed",
                size: 513,
                max: 512
            }
        );
        assert_eq!(
            e.to_string(),
            "entropy_seed: 513 bytes is more than the 512 allowed"
        );
    }
}
