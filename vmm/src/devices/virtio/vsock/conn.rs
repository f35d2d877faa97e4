//! One vsock stream connection between a guest port and a host unix socket, with the
//! credit accounting of virtio 1.2, 5.10.6.3: the guest may have at most our `buf_alloc`
//! bytes in flight (sent but not yet written to the host socket), and we send the guest
//! at most its `buf_alloc - (rx_cnt - fwd_cnt)`.

use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Bytes of guest data we buffer per connection: the `buf_alloc` we advertise.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// A drained buffer larger than this is freed.
const IDLE_BUF_CAPACITY: usize = 16 * 1024;

/// Which side opened the connection, and where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: we sent the guest a REQUEST and wait for its RESPONSE.
    Connecting,
    Established,
}

/// A connection, keyed by (host port, guest port).
#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    pub token: u64,
    pub state: ConnState,
    /// Guest data not yet written to the host socket.
    tx_buf: Vec<u8>,
    /// Host data read before the connection was established (after `CONNECT n\n`).
    pub early_data: Vec<u8>,
    /// Bytes of guest data written to the host socket (what we report as fwd_cnt).
    pub fwd_cnt: Wrapping<u32>,
    /// fwd_cnt as last reported to the guest.
    pub fwd_cnt_reported: Wrapping<u32>,
    /// Bytes of host data sent to the guest.
    pub rx_cnt: Wrapping<u32>,
    /// The guest's receive buffer and how much of our data it has consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: Wrapping<u32>,
    /// The host socket may have data (edge-triggered readiness seen, not yet drained).
    pub readable: bool,
    /// In the muxer's queue of connections with data for the guest (never twice).
    pub queued: bool,
    /// The host side sent EOF; the guest was told (SHUTDOWN SEND).
    pub host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    /// The host closed its socket altogether (EPOLLHUP), not just its writing half.
    pub host_closed: bool,
    /// When the muxer resets the connection unless something happens first (the
    /// guest's answer to our REQUEST, its RST after the host closed).
    pub deadline: Option<Instant>,
}

/// Why a connection must be reset.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnError {
    /// The guest sent more than the credit we gave it.
    CreditExceeded,
    /// The host socket failed.
    Io(io::ErrorKind),
}

impl Conn {
    pub fn new(stream: UnixStream, token: u64, state: ConnState) -> Conn {
        Conn {
            stream,
            token,
            state,
            tx_buf: Vec::new(),
            early_data: Vec::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_reported: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            readable: true,
            queued: false,
            host_eof: false,
            peer_shutdown: 0,
            host_closed: false,
            deadline: None,
        }
    }

    /// Records the credit fields of a packet from the guest.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Queues guest data for the host socket and writes what the socket takes.
    pub fn push_guest_data(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.tx_buf.len() + data.len() > CONN_BUF_SIZE as usize {
            return Err(ConnError::CreditExceeded);
        }
        self.tx_buf.extend_from_slice(data);
        self.flush()
    }

    /// Writes buffered guest data to the host socket until it would block.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        while !self.tx_buf.is_empty() {
            match self.stream.write(&self.tx_buf) {
                Ok(0) => return Err(ConnError::Io(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e.kind())),
            }
        }
        // An idle connection keeps no buffer: the memory bound is for busy ones.
        if self.tx_buf.capacity() > IDLE_BUF_CAPACITY {
            self.tx_buf = Vec::new();
        }
        Ok(())
    }

    pub fn tx_pending(&self) -> bool {
        !self.tx_buf.is_empty()
    }

    /// Whether the guest should hear our fwd_cnt now (half our buffer drained since
    /// the last report), so that it never stalls for want of credit.
    pub fn credit_update_due(&self) -> bool {
        (self.fwd_cnt - self.fwd_cnt_reported).0 >= CONN_BUF_SIZE / 2
    }

    /// Reads host data for the guest into `buf` (early data first). `Ok(0)` is EOF.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.early_data.is_empty() {
            let n = buf.len().min(self.early_data.len());
            buf[..n].copy_from_slice(&self.early_data[..n]);
            self.early_data.drain(..n);
            return Ok(n);
        }
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_accounting_wraps() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 1, ConnState::Established);
        c.update_peer_credit(1000, u32::MAX - 10);
        c.rx_cnt = Wrapping(u32::MAX - 10) + Wrapping(300);
        assert_eq!(c.peer_credit(), 700);
        c.rx_cnt += Wrapping(2000);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_data_beyond_our_buffer_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, 1, ConnState::Established);
        // The peer does not read: the socket fills, then our buffer.
        let chunk = vec![7u8; 64 * 1024];
        let mut refused = false;
        for _ in 0..64 {
            if c.push_guest_data(&chunk) == Err(ConnError::CreditExceeded) {
                refused = true;
                break;
            }
        }
        assert!(refused);
        drop(b);
    }
}
