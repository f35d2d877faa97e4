//! A blocking rtnetlink socket (netlink(7), rtnetlink(7)): one request at a time, each
//! answered by an ACK or an error, or a dump read to its end. Every receive is bounded
//! by a deadline (SO_RCVTIMEO, renewed from the time left) and every dump by a message
//! count, so a kernel that never answers cannot hold an agent thread forever.
//!
//! Messages from another request (a different sequence number) are skipped; a kernel
//! error (a negative errno in NLMSG_ERROR) becomes [`NetlinkError::Kernel`] with the
//! operation named.

use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

/// How long one request (with all its answers) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most messages one dump may return (links, addresses or routes of a guest: tens).
const MAX_DUMP_MESSAGES: usize = 16_384;
/// Receive buffer: the kernel's dump pages are at most 32 KiB (NLMSG_GOODSIZE is a page;
/// a larger buffer never truncates).
const RECV_BUFFER: usize = 64 << 10;

/// Why a netlink exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {what}")]
    Socket {
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("{op}: no answer from the kernel within {timeout:?}")]
    Timeout { op: String, timeout: Duration },
    #[error("{op}: {}{}", std::io::Error::from_raw_os_error(*errno), hint(*errno))]
    Kernel { op: String, errno: i32 },
    #[error("{op}: malformed answer from the kernel: {why}")]
    Decode { op: String, why: String },
    #[error("{op}: more than {MAX_DUMP_MESSAGES} messages in a dump")]
    TooLong { op: String },
}

impl NetlinkError {
    /// The errno of a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// What an errno alone does not say about a network change.
fn hint(errno: i32) -> &'static str {
    match errno {
        libc::ENETUNREACH => {
            " (the gateway is not on a link of the device: add its link route first)"
        }
        libc::EEXIST => " (already present)",
        libc::ENODEV => " (no such network device)",
        libc::EADDRNOTAVAIL => " (the address is not on the device)",
        libc::EPERM => " (needs CAP_NET_ADMIN in the agent's network namespace)",
        libc::EBUSY => " (the device is busy: a rename needs it down)",
        _ => "",
    }
}

/// An open rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens and binds a NETLINK_ROUTE socket in this thread's network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let sock_err = |what| move |err| NetlinkError::Socket { what, err };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(sock_err("create"))?;
        sock.bind_auto().map_err(sock_err("bind"))?;
        // Error answers carry only the header of the request, not all of it.
        sock.set_cap_ack(true)
            .map_err(sock_err("NETLINK_CAP_ACK"))?;
        Ok(Netlink {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    fn send(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = NetlinkMessage::from(msg);
        m.header.flags = flags;
        m.header.sequence_number = self.seq;
        m.finalize();
        let mut bytes = vec![0u8; m.buffer_len()];
        m.serialize(&mut bytes);
        let sent = self
            .sock
            .send(&bytes, 0)
            .map_err(|err| NetlinkError::Socket { what: "send", err })?;
        if sent != bytes.len() {
            return Err(NetlinkError::Decode {
                op: op.to_string(),
                why: format!("sent {sent} of {} bytes", bytes.len()),
            });
        }
        Ok(self.seq)
    }

    /// Receives one datagram before `deadline`; returns its length.
    fn recv(&mut self, deadline: Instant, op: &str) -> Result<usize, NetlinkError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NetlinkError::Timeout {
                    op: op.to_string(),
                    timeout: REQUEST_TIMEOUT,
                });
            }
            // At least 1 ms: a zero SO_RCVTIMEO means "block forever".
            let tv = TimeVal::new(
                i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                i64::from(left.subsec_micros().max(1000)),
            );
            setsockopt(&self.sock, sockopt::ReceiveTimeout, &tv).map_err(|e| {
                NetlinkError::Socket {
                    what: "SO_RCVTIMEO",
                    err: e.into(),
                }
            })?;
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(err) => return Err(NetlinkError::Socket { what: "recv", err }),
            }
        }
    }

    /// Sends `msg` and reads answers to it until the ACK (`Ok(vec![])`), the end of a
    /// dump (`Ok(messages)`), or an error.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let seq = self.send(msg, flags, op)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv(deadline, op)?;
            let datagram = self.buf.get(..n).unwrap_or_default().to_vec();
            for m in split(&datagram, op)? {
                if m.header.sequence_number != seq {
                    tracing::debug!(
                        seq = m.header.sequence_number,
                        "netlink: a stale answer skipped"
                    );
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(NetlinkError::Kernel {
                                op: op.to_string(),
                                errno: code.get().checked_neg().unwrap_or(libc::EINVAL),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(inner) => {
                        if out.len() >= MAX_DUMP_MESSAGES {
                            return Err(NetlinkError::TooLong { op: op.to_string() });
                        }
                        out.push(inner);
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(NetlinkError::Decode {
                            op: op.to_string(),
                            why: "overrun".into(),
                        });
                    }
                    // NLMSG_NOOP, and kinds this crate may add: nothing to act on.
                    _ => {}
                }
            }
        }
    }

    /// A change (new/set/delete): waits for the kernel's ACK.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        extra_flags: u16,
        op: &str,
    ) -> Result<(), NetlinkError> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | extra_flags, op)
            .map(|_| ())
    }

    /// A dump: every object the kernel lists for `msg` (a GET message).
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_DUMP, op)
    }
}

/// Splits one datagram into its netlink messages, checking every length (a message
/// shorter than its header or longer than what is left is an error, never a panic).
pub fn split(
    datagram: &[u8],
    op: &str,
) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, NetlinkError> {
    let decode = |why: String| NetlinkError::Decode {
        op: op.to_string(),
        why,
    };
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let buf = NetlinkBuffer::new_checked(rest).map_err(|e| decode(e.to_string()))?;
        let len = usize::try_from(buf.length()).unwrap_or(usize::MAX);
        let this = rest
            .get(..len)
            .ok_or_else(|| decode(format!("a message of {len} bytes in {} left", rest.len())))?;
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(this)
            .map_err(|e| decode(e.to_string()))?;
        out.push(m);
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        let next = len.checked_add(3).map(|l| l & !3).unwrap_or(usize::MAX);
        rest = rest.get(next..).unwrap_or_default();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{ErrorMessage, NLM_F_MULTIPART};
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    fn bytes(m: &mut NetlinkMessage<RouteNetlinkMessage>) -> Vec<u8> {
        m.finalize();
        let mut b = vec![0u8; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    #[test]
    fn datagrams_split_into_messages() {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.attributes.push(LinkAttribute::IfName("eth0x".into()));
        let mut a = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
        a.header.flags = NLM_F_MULTIPART;
        a.header.sequence_number = 3;
        let mut err = ErrorMessage::default();
        err.code = std::num::NonZeroI32::new(-libc::EEXIST);
        let mut b = NetlinkMessage::new(
            Default::default(),
            NetlinkPayload::<RouteNetlinkMessage>::Error(err),
        );
        b.header.sequence_number = 3;
        let mut d = bytes(&mut a);
        assert_eq!(d.len() % 4, 0);
        d.extend(bytes(&mut b));
        let ms = split(&d, "test").unwrap();
        assert_eq!(ms.len(), 2);
        assert!(matches!(
            &ms[0].payload,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) if l.header.index == 7
        ));
        assert!(
            matches!(&ms[1].payload, NetlinkPayload::Error(e) if e.code.map(|c| c.get()) == Some(-libc::EEXIST))
        );
    }

    #[test]
    fn truncated_or_lying_lengths_are_errors() {
        let mut link = LinkMessage::default();
        link.header.index = 1;
        let mut a = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
        let d = bytes(&mut a);
        assert!(split(&d[..d.len() - 4], "t").is_err());
        assert!(split(&d[..10], "t").is_err());
        let mut long = d.clone();
        long[0] = 0xff; // a length past the datagram
        assert!(split(&long, "t").is_err());
        let mut zero = d;
        zero[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(split(&zero, "t").is_err());
        assert!(split(&[], "t").unwrap().is_empty());
    }

    #[test]
    fn kernel_errors_name_the_operation() {
        let e = NetlinkError::Kernel {
            op: "add route 1".into(),
            errno: libc::ENETUNREACH,
        };
        let s = e.to_string();
        assert!(
            s.starts_with("add route 1: ") && s.contains("link route"),
            "{s}"
        );
        assert_eq!(e.errno(), Some(libc::ENETUNREACH));
    }
}
