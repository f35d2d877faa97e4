//! UpdateRoutes: for each device the request names, the routes of the main table
//! through it are replaced by the request's. The kernel's own routes (protocol
//! `kernel`: the link routes of the device's addresses, IPv6's fe80::/64) stay; every
//! other route through the device goes. New routes are added in the order given by
//! [`husk_agent_protocol::validate::update_routes`]: link routes first, so that a
//! gateway is reachable when the route through it is added (else ENETUNREACH).
//!
//! Routes are added with NLM_F_REPLACE: one equal to a kernel link route takes its
//! place instead of failing with EEXIST, and sending the same routes twice is not an
//! error.

use std::collections::BTreeMap;
use std::net::IpAddr;

use husk_agent_protocol::validate::RouteConfig;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::NetError;
use super::interface::links;
use super::netlink::Netlink;

/// The main routing table (rtnetlink(7), RT_TABLE_MAIN).
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The NEWROUTE message for `r` through the link `index`.
pub fn new_route_message(r: &RouteConfig, index: u32) -> RouteNetlinkMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(&r.destination.addr);
    m.header.destination_prefix_length = r.destination.prefix;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Static;
    m.header.kind = RouteType::Unicast;
    // A route without a gateway reaches its destination on the link itself.
    m.header.scope = if r.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if r.destination.prefix > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                r.destination.addr,
            )));
    }
    if let Some(gw) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(src) = r.source {
        m.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    m.attributes.push(RouteAttribute::Oif(index));
    RouteNetlinkMessage::NewRoute(m)
}

/// The link a route goes through, and its table (RTA_TABLE when present: the header's
/// byte cannot hold tables past 255).
fn oif_and_table(m: &RouteMessage) -> (Option<u32>, u32) {
    let mut oif = None;
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    (oif, table)
}

/// Whether UpdateRoutes replaces this route of the device `index`: a unicast route
/// of the main table through it, not one the kernel made.
pub fn is_replaced(m: &RouteMessage, index: u32) -> bool {
    let (oif, table) = oif_and_table(m);
    oif == Some(index)
        && table == MAIN_TABLE
        && m.header.kind == RouteType::Unicast
        && m.header.protocol != RouteProtocol::Kernel
}

/// The DELROUTE message for a listed route: its header and the attributes of its key
/// (family, table, destination and source prefix, tos, priority, next hop), nothing the
/// kernel only reports (cache info, preference, expiry).
pub fn del_route_message(m: &RouteMessage) -> RouteNetlinkMessage {
    let mut d = RouteMessage::default();
    d.header = m.header.clone();
    d.attributes = m
        .attributes
        .iter()
        .filter(|a| {
            matches!(
                a,
                RouteAttribute::Destination(_)
                    | RouteAttribute::Source(_)
                    | RouteAttribute::Gateway(_)
                    | RouteAttribute::Oif(_)
                    | RouteAttribute::Priority(_)
                    | RouteAttribute::Table(_)
            )
        })
        .cloned()
        .collect();
    RouteNetlinkMessage::DelRoute(d)
}

fn describe(m: &RouteMessage) -> String {
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(a.to_string()),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(a.to_string()),
        _ => None,
    });
    match dst {
        Some(d) => format!("{d}/{}", m.header.destination_prefix_length),
        None => "default".into(),
    }
}

/// Applies UpdateRoutes (`routes` as validated: link routes first).
pub fn update(nl: &mut Netlink, routes: &[RouteConfig]) -> Result<(), NetError> {
    let by_name: BTreeMap<String, u32> =
        links(nl)?.into_iter().map(|l| (l.name, l.index)).collect();
    let mut devices = BTreeMap::new();
    for r in routes {
        let index = by_name
            .get(&r.device)
            .copied()
            .ok_or_else(|| NetError::NoSuchDevice {
                field: format!("routes[{}].device", r.index),
                name: r.device.clone(),
            })?;
        devices.insert(index, r.device.clone());
    }
    for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut get = RouteMessage::default();
        get.header.address_family = fam;
        let listed = nl.dump(RouteNetlinkMessage::GetRoute(get), "list routes")?;
        for m in listed {
            let RouteNetlinkMessage::NewRoute(m) = m else {
                continue;
            };
            let Some((index, name)) = devices.iter().find(|(i, _)| is_replaced(&m, **i)) else {
                continue;
            };
            let what = describe(&m);
            match nl.request(
                del_route_message(&m),
                0,
                &format!("remove route {what} dev {name}"),
            ) {
                Ok(()) => tracing::debug!(route = %what, device = %name, index, "route removed"),
                // Gone already (removed with another, or by the kernel meanwhile).
                Err(e) if e.errno() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    for r in routes {
        let index = by_name.get(&r.device).copied().unwrap_or_default();
        let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        nl.request(
            new_route_message(r, index),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!(
                "routes[{}]: add {}{via} dev {}",
                r.index, r.destination, r.device
            ),
        )?;
        tracing::info!(destination = %r.destination, gateway = ?r.gateway, device = %r.device, "route added");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_agent_protocol::agent::{Route, UpdateRoutesRequest};
    use husk_agent_protocol::validate::update_routes;

    fn routes(list: &[(&str, &str)]) -> Vec<RouteConfig> {
        let mut req = UpdateRoutesRequest::new();
        req.routes = list
            .iter()
            .map(|(d, g)| {
                let mut r = Route::new();
                r.destination = d.to_string();
                r.gateway = g.to_string();
                r.device = "eth0".into();
                r
            })
            .collect();
        update_routes(&req).unwrap()
    }

    fn msg(m: RouteNetlinkMessage) -> RouteMessage {
        match m {
            RouteNetlinkMessage::NewRoute(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn default_and_link_routes() {
        let rs = routes(&[("0.0.0.0/0", "10.200.0.1"), ("10.201.0.0/16", "")]);
        let link = msg(new_route_message(&rs[0], 4));
        assert_eq!(link.header.scope, RouteScope::Link);
        assert_eq!(link.header.destination_prefix_length, 16);
        assert!(
            link.attributes
                .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                    "10.201.0.0".parse().unwrap()
                )))
        );
        assert!(link.attributes.contains(&RouteAttribute::Oif(4)));
        let default = msg(new_route_message(&rs[1], 4));
        assert_eq!(default.header.scope, RouteScope::Universe);
        assert_eq!(default.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(default.header.protocol, RouteProtocol::Static);
        assert!(
            !default
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        assert!(
            default
                .attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
                    "10.200.0.1".parse().unwrap()
                )))
        );
        let v6 = msg(new_route_message(&routes(&[("::/0", "fd00::1")])[0], 4));
        assert_eq!(v6.header.address_family, AddressFamily::Inet6);
    }

    #[test]
    fn kernel_routes_stay() {
        let mut m = RouteMessage::default();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        m.header.protocol = RouteProtocol::Boot;
        m.attributes.push(RouteAttribute::Oif(4));
        assert!(is_replaced(&m, 4));
        assert!(!is_replaced(&m, 5), "another device's");
        let mut k = m.clone();
        k.header.protocol = RouteProtocol::Kernel;
        assert!(!is_replaced(&k, 4));
        let mut local = m.clone();
        local.header.table = 255;
        local.attributes.push(RouteAttribute::Table(255));
        assert!(!is_replaced(&local, 4), "the local table's");
        let mut bcast = m.clone();
        bcast.header.kind = RouteType::Broadcast;
        assert!(!is_replaced(&bcast, 4));
        // Deleted by its key only.
        let mut listed = m;
        listed.attributes.push(RouteAttribute::Priority(1024));
        listed.attributes.push(RouteAttribute::Expires(5));
        let RouteNetlinkMessage::DelRoute(d) = del_route_message(&listed) else {
            panic!()
        };
        assert_eq!(
            d.attributes,
            vec![RouteAttribute::Oif(4), RouteAttribute::Priority(1024)]
        );
    }
}
