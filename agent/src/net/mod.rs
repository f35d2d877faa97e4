//! The guest's network configuration over rtnetlink (rtnetlink(7)): a NIC found by its
//! MAC address, renamed, given its MTU and addresses and set up ([`interface`]); the
//! routes of the devices named replaced ([`route`]); the socket ([`netlink`]).
//!
//! Everything here blocks (a netlink socket with a receive deadline): call it from a
//! blocking thread. It acts in the calling thread's network namespace, the agent's:
//! the guest's, which containers without a network namespace of their own share.

pub mod interface;
pub mod netlink;
pub mod route;

use netlink::NetlinkError;

/// Why a network change failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no network interface has MAC address {mac}")]
    NoSuchMac { mac: String },
    #[error("no network interface has MAC address {mac} or {current}")]
    NoSuchMacs { mac: String, current: String },
    #[error("{field} {name:?}: no such network interface")]
    NoSuchDevice { field: String, name: String },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
