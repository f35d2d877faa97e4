//! The muxer's host side: host clients connecting to `<uds>` (accept, with a back-off
//! when descriptors run out; their `CONNECT <port>` line), host socket readiness, and the
//! timer that ends connections and handshakes past their deadlines.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Instant;

use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::super::conn::{Conn, ConnState};
use super::super::host::is_resource_shortage;
use super::{
    ACCEPT_BACKOFF, CLOSE_TIMEOUT, ConnKey, FIRST_LOCAL_PORT, HANDSHAKE_TIMEOUT, MAX_CONNECT_LINE,
    MAX_CONNS, Muxer, OP_CREDIT_UPDATE, OP_REQUEST, Pending, TICK, TOKEN_LISTENER, TOKEN_TIMER,
    Token, parse_connect,
};
use crate::devices::virtio::worker::add_fd;

impl Muxer {
    /// Connections, host clients in their handshake included.
    pub(super) fn conn_count(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    pub(super) fn accept(&mut self, epoll: &Epoll) {
        if !self.reset_taken(Instant::now()) {
            // The client waits in the backlog until the guest has reset its connections
            // (unless no timer could be armed to end the wait: then it comes now).
            self.pause_listener(epoll);
            if self.timer_armed {
                return;
            }
            tracing::warn!("vsock: no timer to bound the wait for the transport reset");
            self.reset_wait = None;
            self.resume_listener(epoll, Instant::now());
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conn_count() >= self.max_conns || stream.set_nonblocking(true).is_err()
                    {
                        self.metrics.conns_refused.inc();
                        continue; // dropped: the client sees EOF
                    }
                    let token = self.new_token();
                    if self.watch(epoll, &stream, token).is_err() {
                        continue;
                    }
                    self.tokens.insert(token, Token::Pending);
                    self.pending.insert(
                        token,
                        Pending {
                            stream,
                            line: Vec::new(),
                            deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                        },
                    );
                    self.arm_timer(epoll);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_resource_shortage(&e) => {
                    // The client stays in the backlog and the listener readable: rest
                    // instead of spinning on the same error.
                    tracing::warn!(error = %e, "vsock: cannot accept a host connection; pausing");
                    self.metrics.accept_backoffs.inc();
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    self.pause_listener(epoll);
                    return;
                }
                Err(_) => return, // WouldBlock, or a transient error
            }
        }
    }

    /// Takes the listener out of epoll (its clients wait in the backlog); the timer's
    /// ticks bring it back.
    fn pause_listener(&mut self, epoll: &Epoll) {
        if self.listener_watched {
            Self::unwatch_fd(epoll, self.listener.as_raw_fd());
            self.listener_watched = false;
        }
        self.arm_timer(epoll);
    }

    /// Puts a paused listener back in epoll and accepts, once its back-off is over and
    /// the guest has taken any transport reset.
    pub(super) fn resume_listener(&mut self, epoll: &Epoll, now: Instant) {
        if self.listener_watched
            || self.accept_paused_until.is_some_and(|t| t > now)
            || !self.reset_taken(now)
        {
            return;
        }
        self.accept_paused_until = None;
        if let Err(e) = add_fd(epoll, &self.listener, EventSet::IN, TOKEN_LISTENER) {
            tracing::warn!(error = %e, "vsock: cannot watch the listener again");
            return;
        }
        self.listener_watched = true;
        self.accept(epoll);
    }

    /// Arms the timer's periodic tick (once) while a deadline is pending.
    pub(super) fn arm_timer(&mut self, epoll: &Epoll) {
        if self.timer_armed {
            return;
        }
        if self.timer.is_none() {
            match TimerFd::new() {
                Ok(t) => {
                    if let Err(e) = add_fd(epoll, &t, EventSet::IN, TOKEN_TIMER) {
                        tracing::warn!(error = %e, "vsock: cannot watch the timer");
                        return;
                    }
                    self.timer = Some(t);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "vsock: cannot create the timer");
                    return;
                }
            }
        }
        if let Some(t) = self.timer.as_mut() {
            match t.reset(TICK, Some(TICK)) {
                Ok(()) => self.timer_armed = true,
                Err(e) => tracing::warn!(error = %e, "vsock: cannot arm the timer"),
            }
        }
    }

    /// On a tick: ends what passed its deadline, resumes accepting, and disarms the
    /// timer when nothing is left to wait for.
    pub(super) fn expire(&mut self, epoll: &Epoll, now: Instant) {
        let late: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            tracing::debug!(
                host_port = key.local_port,
                guest_port = key.peer_port,
                "vsock: connection timed out"
            );
            self.metrics.conns_timed_out.inc();
            self.reset_conn(epoll, key);
        }
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some(p) = self.pending.remove(&token) {
                Self::unwatch(epoll, &p.stream);
                self.tokens.remove(&token);
                self.metrics.conns_timed_out.inc();
            }
        }
        self.resume_listener(epoll, now);
        let waiting = !self.listener_watched
            || !self.pending.is_empty()
            || self.conns.values().any(|c| c.deadline.is_some());
        if !waiting
            && self.timer_armed
            && let Some(t) = self.timer.as_mut()
        {
            let _ = t.clear();
            self.timer_armed = false;
        }
    }

    /// Reads a host client's `CONNECT <port>\n`, then asks the guest to connect.
    pub(super) fn pending_readable(&mut self, epoll: &Epoll, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let close = loop {
            match p.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    p.line.extend_from_slice(&buf[..n]);
                    if p.line.contains(&b'\n') {
                        break false;
                    }
                    if p.line.len() > MAX_CONNECT_LINE {
                        break true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break true,
            }
        };
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        self.tokens.remove(&token);
        let port = (!close).then(|| parse_connect(&p.line)).flatten();
        let Some((port, rest)) = port else {
            Self::unwatch(epoll, &p.stream);
            let mut s = p.stream;
            let _ = s.write_all(b"ERR expected CONNECT <port>\n");
            return;
        };
        let Some(local_port) = self.alloc_local_port(port) else {
            Self::unwatch(epoll, &p.stream);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let mut conn = Conn::new(p.stream, token, ConnState::Connecting);
        conn.early_data = rest;
        conn.deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
        self.conns.insert(key, conn);
        self.tokens.insert(token, Token::Conn(key));
        self.metrics.conns_opened.inc();
        self.reply(key, OP_REQUEST, 0);
    }

    pub(super) fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..MAX_CONNS * 2 {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port: p,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(p);
            }
        }
        None
    }

    pub(super) fn conn_event(&mut self, epoll: &Epoll, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.readable = true;
            if events.contains(EventSet::HANG_UP) {
                if conn.state == ConnState::Connecting {
                    // The client gave up before the guest answered.
                    self.reset_conn(epoll, key);
                    return;
                }
                // The host closed its socket: its last data and a SHUTDOWN go to the
                // guest, which then has CLOSE_TIMEOUT to reset (or to take the data).
                if !conn.host_closed {
                    conn.host_closed = true;
                    conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                    self.arm_timer(epoll);
                }
            }
            self.queue_rx(key);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::OUT) && conn.tx_pending() {
            match conn.flush() {
                Ok(()) => {
                    let credit_due = conn.credit_update_due();
                    let shut = !conn.tx_pending() && conn.peer_shutdown != 0;
                    if credit_due {
                        self.reply(key, OP_CREDIT_UPDATE, 0);
                    }
                    if shut {
                        self.finish_shutdown(epoll, key);
                    }
                }
                Err(_) => self.reset_conn(epoll, key),
            }
        }
        if events.contains(EventSet::ERROR) {
            self.reset_conn(epoll, key);
        }
    }
}
