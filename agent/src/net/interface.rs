//! UpdateInterface: the NIC with the given MAC address (or, in a VM restored from a
//! template, the one with `current_mac`, which takes the given address) is renamed
//! (down first: the kernel renames only a device that is down), given its MTU, its
//! addresses replaced and set up, in that order.
//!
//! Addresses: those the request lists are added (NLM_F_REPLACE: one already there is
//! kept), every other one removed, except IPv6 link-local addresses (fe80::/10, made
//! by the kernel for neighbour discovery, not ours to give or take). IPv6 addresses
//! are added with IFA_F_NODAD: the host assigns them and knows they are unique, and
//! duplicate address detection would leave them tentative (unusable) for a second or
//! more after the interface comes up.

use std::net::IpAddr;

use husk_agent_protocol::validate::{Cidr, InterfaceConfig};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::Netlink;
use super::{NetError, mac_string};

/// A link as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Vec<u8>>,
    pub up: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(a) => l.mac = Some(a.clone()),
                _ => {}
            }
        }
        l
    }
}

/// Every link of this network namespace.
pub fn links(nl: &mut Netlink) -> Result<Vec<Link>, NetError> {
    let msgs = nl.dump(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        "list network interfaces",
    )?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })
        .collect())
}

/// A SETLINK for `index` with `attributes`, and the UP flag changed when `up` is set.
pub fn set_link_message(
    index: u32,
    attributes: Vec<LinkAttribute>,
    up: Option<bool>,
) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if let Some(up) = up {
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
    }
    m.attributes = attributes;
    RouteNetlinkMessage::SetLink(m)
}

/// A NEWADDR or DELADDR message for `cidr` on the link `index`.
pub fn address_message(index: u32, cidr: &Cidr, new: bool) -> RouteNetlinkMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = cidr.prefix;
    m.header.scope = AddressScope::Universe;
    match cidr.addr {
        IpAddr::V4(_) => {
            m.header.family = AddressFamily::Inet;
            // As `ip addr add`: IFA_LOCAL is the interface's address, IFA_ADDRESS the
            // peer's (the same on a broadcast link).
            m.attributes.push(AddressAttribute::Local(cidr.addr));
            m.attributes.push(AddressAttribute::Address(cidr.addr));
        }
        IpAddr::V6(_) => {
            m.header.family = AddressFamily::Inet6;
            m.attributes.push(AddressAttribute::Address(cidr.addr));
            if new {
                m.header.flags = AddressHeaderFlags::Nodad;
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
    }
    if new {
        RouteNetlinkMessage::NewAddress(m)
    } else {
        RouteNetlinkMessage::DelAddress(m)
    }
}

/// The addresses of link `index`, as CIDRs (IFA_LOCAL where present: on a
/// point-to-point link IFA_ADDRESS is the peer's).
pub fn addresses(nl: &mut Netlink, index: u32) -> Result<Vec<Cidr>, NetError> {
    let msgs = nl.dump(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        "list addresses",
    )?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        if a.header.index != index {
            continue;
        }
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = local.or_else(|| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let Some(addr) = addr {
            out.push(Cidr {
                addr,
                prefix: a.header.prefix_len,
            });
        }
    }
    Ok(out)
}

/// Whether an address is IPv6 link-local (fe80::/10): the kernel's, kept.
fn is_link_local_v6(c: &Cidr) -> bool {
    matches!(c.addr, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

/// The link UpdateInterface acts on: the one with `cfg.mac`; else, when the request
/// names a `current_mac` (a VM restored from a template), the one with that address,
/// which takes `cfg.mac` first (down: not every driver changes a live address).
fn find(nl: &mut Netlink, cfg: &InterfaceConfig) -> Result<Link, NetError> {
    let all = links(nl)?;
    let with = |mac: &[u8; 6]| {
        all.iter()
            .find(|l| l.mac.as_deref() == Some(&mac[..]))
            .cloned()
    };
    if let Some(l) = with(&cfg.mac) {
        return Ok(l);
    }
    let Some(current) = cfg.current_mac else {
        return Err(NetError::NoSuchMac {
            mac: mac_string(&cfg.mac),
        });
    };
    let mut link = with(&current).ok_or_else(|| NetError::NoSuchMacs {
        mac: mac_string(&cfg.mac),
        current: mac_string(&current),
    })?;
    let was_up = link.up;
    if was_up {
        nl.request(
            set_link_message(link.index, vec![], Some(false)),
            0,
            &format!("set {} down to change its MAC address", link.name),
        )?;
        link.up = false;
    }
    let changed = nl.request(
        set_link_message(
            link.index,
            vec![LinkAttribute::Address(cfg.mac.to_vec())],
            None,
        ),
        0,
        &format!(
            "give {} the MAC address {}",
            link.name,
            mac_string(&cfg.mac)
        ),
    );
    if let Err(e) = changed {
        // Not left down by a refused change (as for a refused rename).
        if was_up
            && let Err(up) = nl.request(
                set_link_message(link.index, vec![], Some(true)),
                0,
                &format!("set {} up again", link.name),
            )
        {
            tracing::warn!(error = %up, "interface left down");
        }
        return Err(e.into());
    }
    tracing::info!(
        name = %link.name,
        from = %mac_string(&current),
        to = %mac_string(&cfg.mac),
        "MAC address changed"
    );
    Ok(link)
}

/// Applies UpdateInterface. Returns the link as it was found.
pub fn update(nl: &mut Netlink, cfg: &InterfaceConfig) -> Result<Link, NetError> {
    let link = find(nl, cfg)?;
    let index = link.index;
    if link.name != cfg.name {
        nl.request(
            set_link_message(index, vec![], Some(false)),
            0,
            &format!("set {} down to rename it", link.name),
        )?;
        let renamed = nl.request(
            set_link_message(index, vec![LinkAttribute::IfName(cfg.name.clone())], None),
            0,
            &format!("rename {} to {}", link.name, cfg.name),
        );
        if let Err(e) = renamed {
            // Not left down by a refused rename (the name taken: EEXIST).
            if link.up
                && let Err(up) = nl.request(
                    set_link_message(index, vec![], Some(true)),
                    0,
                    &format!("set {} up again", link.name),
                )
            {
                tracing::warn!(error = %up, "interface left down");
            }
            return Err(e.into());
        }
        tracing::info!(from = %link.name, to = %cfg.name, "interface renamed");
    }
    if let Some(mtu) = cfg.mtu {
        nl.request(
            set_link_message(index, vec![LinkAttribute::Mtu(mtu)], None),
            0,
            &format!("set the MTU of {} to {mtu}", cfg.name),
        )?;
    }
    let current = addresses(nl, index)?;
    for old in current.iter().filter(|c| !is_link_local_v6(c)) {
        if !cfg.addresses.contains(old) {
            nl.request(
                address_message(index, old, false),
                0,
                &format!("remove address {old} from {}", cfg.name),
            )?;
        }
    }
    for (i, new) in cfg.addresses.iter().enumerate() {
        nl.request(
            address_message(index, new, true),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("addresses[{i}]: add {new} to {}", cfg.name),
        )?;
    }
    nl.request(
        set_link_message(index, vec![], Some(true)),
        0,
        &format!("set {} up", cfg.name),
    )?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_agent_protocol::validate::cidr;
    use netlink_packet_core::NetlinkMessage;

    fn roundtrip(m: RouteNetlinkMessage) -> RouteNetlinkMessage {
        let mut nm = NetlinkMessage::from(m);
        nm.finalize();
        let mut b = vec![0u8; nm.buffer_len()];
        nm.serialize(&mut b);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&b)
            .unwrap()
            .payload
        {
            netlink_packet_core::NetlinkPayload::InnerMessage(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ipv4_addresses_carry_local_and_address() {
        let c = cidr("a", "10.200.0.5/24").unwrap();
        let RouteNetlinkMessage::NewAddress(m) = roundtrip(address_message(3, &c, true)) else {
            panic!()
        };
        assert_eq!((m.header.index, m.header.prefix_len), (3, 24));
        assert_eq!(m.header.family, AddressFamily::Inet);
        assert!(m.attributes.contains(&AddressAttribute::Local(c.addr)));
        assert!(m.attributes.contains(&AddressAttribute::Address(c.addr)));
    }

    #[test]
    fn ipv6_addresses_skip_dad() {
        let c = cidr("a", "fd00:200::5/64").unwrap();
        let RouteNetlinkMessage::NewAddress(m) = roundtrip(address_message(3, &c, true)) else {
            panic!()
        };
        assert_eq!(m.header.family, AddressFamily::Inet6);
        assert!(m.header.flags.contains(AddressHeaderFlags::Nodad));
        let RouteNetlinkMessage::DelAddress(d) = roundtrip(address_message(3, &c, false)) else {
            panic!()
        };
        assert!(!d.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(is_link_local_v6(&cidr("a", "fe80::1/64").unwrap()));
        assert!(!is_link_local_v6(&cidr("a", "fd00::1/64").unwrap()));
    }

    #[test]
    fn set_link_changes_only_what_it_names() {
        let RouteNetlinkMessage::SetLink(m) =
            roundtrip(set_link_message(5, vec![LinkAttribute::Mtu(1400)], None))
        else {
            panic!()
        };
        assert!(m.header.change_mask.is_empty());
        assert_eq!(m.attributes, vec![LinkAttribute::Mtu(1400)]);
        let RouteNetlinkMessage::SetLink(m) = roundtrip(set_link_message(5, vec![], Some(false)))
        else {
            panic!()
        };
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert!(!m.header.flags.contains(LinkFlags::Up));
        let RouteNetlinkMessage::SetLink(m) = roundtrip(set_link_message(5, vec![], Some(true)))
        else {
            panic!()
        };
        assert!(m.header.flags.contains(LinkFlags::Up));
    }
}
