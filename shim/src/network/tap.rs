//! The VM's end of a network namespace: a tap inside it, joined to the namespace's
//! interface (the CNI plugin's veth, or the pod's) by tc: an ingress qdisc on each and a
//! match-all filter whose action redirects every frame to the other's egress (mirred).
//! The model of Kata Containers ("tcfilter") and firecracker-containerd: the guest NIC
//! takes the interface's MAC and addresses, and frames pass through untouched.
//!
//! Links and filters are set up with iproute2's `ip` and `tc` run inside the namespace
//! (by the runtime; husk-vmm only gets the open tap). The tap is opened on a thread that
//! entered the namespace, with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` as husk-vmm's
//! virtio-net expects (it sets the vnet header size and offloads itself); it is not
//! persistent: it goes when the last fd on it closes (husk-vmm's and ours).

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Output;

use super::netns::{Netns, NetnsError};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// Why the tap or its redirect could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("tap {name}: cannot open /dev/net/tun: {source} (is the tun module loaded?)")]
    OpenTun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tap {name}: TUNSETIFF: {source}")]
    SetIff {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("cannot run {program} (iproute2): {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` in {netns} failed: {stderr}")]
    Command {
        command: String,
        netns: String,
        stderr: String,
    },
    #[error("interface {ifname} in {netns}: {message}")]
    Link {
        ifname: String,
        netns: String,
        message: String,
    },
}

/// `struct ifreq` as TUNSETIFF uses it.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// What the guest NIC copies from the namespace's interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub mac: String,
    pub mtu: u32,
}

/// The tap, joined to the namespace's interface.
#[derive(Debug)]
pub struct Joined {
    /// The open tap (close-on-exec; hand it to husk-vmm as an inherited fd).
    pub tap: OwnedFd,
    pub tap_name: String,
    /// The namespace interface's MAC and MTU (the guest NIC takes both).
    pub link: LinkInfo,
}

pub(crate) fn run(ns: &Netns, program: &str, args: &[&str]) -> Result<Output, TapError> {
    let out = ns
        .command(program)?
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| TapError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(TapError::Command {
            command: format!("{program} {}", args.join(" ")),
            netns: ns.path().display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// The MAC and MTU of `ifname` inside the namespace (`ip -j link show`).
pub fn link_info(ns: &Netns, ifname: &str) -> Result<LinkInfo, TapError> {
    let out = run(ns, "ip", &["-j", "link", "show", "dev", ifname])?;
    let bad = |message: String| TapError::Link {
        ifname: ifname.to_string(),
        netns: ns.path().display().to_string(),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| bad(format!("ip -j: {e}")))?;
    let l = &v[0];
    let mac = l["address"]
        .as_str()
        .ok_or_else(|| bad("no MAC address".into()))?
        .to_string();
    let mtu = l["mtu"]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| bad("no MTU".into()))?;
    Ok(LinkInfo { mac, mtu })
}

/// Opens (creates) the tap `name` inside the namespace.
pub fn open_tap(ns: &Netns, name: &str) -> Result<OwnedFd, TapError> {
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(TapError::Name(name.to_string()));
    }
    let n = name.to_string();
    ns.run(move || -> Result<OwnedFd, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: n.clone(),
                source,
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..n.len()].copy_from_slice(n.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its layout and
        // size (40 bytes) and lives for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if r < 0 {
            return Err(TapError::SetIff {
                name: n,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(OwnedFd::from(file))
    })?
}

/// Redirects every frame arriving on `from` to `to`'s egress: an ingress qdisc and a
/// match-all filter (cls_matchall; cls_u32 "match u32 0 0" where matchall is missing).
fn redirect(ns: &Netns, from: &str, to: &str) -> Result<(), TapError> {
    run(ns, "tc", &["qdisc", "add", "dev", from, "ingress"])?;
    let action = ["action", "mirred", "egress", "redirect", "dev", to];
    let mut args = vec![
        "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all",
    ];
    let mut matchall = args.clone();
    matchall.push("matchall");
    matchall.extend(action);
    if run(ns, "tc", &matchall).is_ok() {
        return Ok(());
    }
    args.extend(["u32", "match", "u32", "0", "0"]);
    args.extend(action);
    run(ns, "tc", &args).map(|_| ())
}

/// Creates the tap `tap_name` in the namespace and joins it to `ifname` both ways; the
/// tap takes `ifname`'s MTU. Undone with the namespace (or [`unjoin`]).
pub fn join(ns: &Netns, ifname: &str, tap_name: &str) -> Result<Joined, TapError> {
    let link = link_info(ns, ifname)?;
    let tap = open_tap(ns, tap_name)?;
    let mtu = link.mtu.to_string();
    run(
        ns,
        "ip",
        &["link", "set", "dev", tap_name, "mtu", &mtu, "up"],
    )?;
    redirect(ns, ifname, tap_name)?;
    redirect(ns, tap_name, ifname)?;
    tracing::debug!(netns = %ns.path().display(), ifname, tap = tap_name, mac = %link.mac, mtu = link.mtu, "tap joined by tc redirect");
    Ok(Joined {
        tap,
        tap_name: tap_name.to_string(),
        link,
    })
}

/// Removes the redirect's qdiscs (a namespace that stays, such as a pod's, is left as
/// CNI made it); the tap itself goes when its fds close.
pub fn unjoin(ns: &Netns, ifname: &str, tap_name: &str) {
    for dev in [ifname, tap_name] {
        let _ = run(ns, "tc", &["qdisc", "del", "dev", dev, "ingress"]);
    }
}
