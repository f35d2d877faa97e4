//! The vsock packet header fields the device acts on (virtio 1.2, 5.10.6), the
//! operation codes, and the host side's `CONNECT <port>\n` handshake line.

use virtio_vsock::packet::VsockPacket;

/// The host's context id.
pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// Largest payload accepted in one TX packet (Linux sends at most 64 KiB).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Longest `CONNECT <port>\n` line.
pub const MAX_CONNECT_LINE: usize = 32;

/// (host port, guest port): a connection's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

/// The fields of a packet header we act on.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn of<B: vm_memory::bitmap::BitmapSlice>(p: &VsockPacket<'_, B>) -> Header {
        Header {
            src_cid: p.src_cid(),
            dst_cid: p.dst_cid(),
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            type_: p.type_(),
            op: p.op(),
            flags: p.flags(),
            buf_alloc: p.buf_alloc(),
            fwd_cnt: p.fwd_cnt(),
        }
    }
}

/// Parses `CONNECT <port>\n`; returns the port and the bytes after the newline.
pub fn parse_connect(line: &[u8]) -> Option<(u32, Vec<u8>)> {
    let nl = line.iter().position(|b| *b == b'\n')?;
    let text = std::str::from_utf8(&line[..nl]).ok()?;
    let port = text
        .trim_end_matches('\r')
        .strip_prefix("CONNECT ")?
        .trim()
        .parse()
        .ok()?;
    Some((port, line[nl + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse() {
        assert_eq!(parse_connect(b"CONNECT 1024\n"), Some((1024, vec![])));
        assert_eq!(
            parse_connect(b"CONNECT 52\r\nhello"),
            Some((52, b"hello".to_vec()))
        );
        assert_eq!(parse_connect(b"CONNECT x\n"), None);
        assert_eq!(parse_connect(b"connect 1\n"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999\n"), None);
        assert_eq!(parse_connect(b"CONNECT 5"), None);
    }
}
