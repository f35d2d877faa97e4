//! A process as husk records it: its pid and its start time (/proc/PID/stat, clock
//! ticks since boot). A recorded pid alone may name another process once the first
//! has died and the number was reused; husk checks the start time before it trusts a
//! record and signals through a pidfd opened *before* that check, so the signal
//! reaches the recorded process or nothing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A recorded process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    pub pid: i32,
    /// Start time in clock ticks since boot; `None` for a record written by an older
    /// husk (pid only), checked by pid alone.
    pub start: Option<u64>,
}

/// The start time of `pid` (field 22 of /proc/PID/stat), if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After it: field 3 (state) is the first; field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ProcId {
    /// `pid` as it is now (`None` if it does not exist).
    pub fn of(pid: i32) -> Option<ProcId> {
        Some(ProcId {
            pid,
            start: Some(start_time(pid)?),
        })
    }

    /// This process.
    pub fn me() -> ProcId {
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        ProcId {
            pid,
            start: start_time(pid),
        }
    }

    /// A record as [`ProcId::to_record`] writes it ("PID START"), or a bare pid.
    pub fn parse(s: &str) -> Option<ProcId> {
        let mut it = s.split_whitespace();
        let pid: i32 = it.next()?.parse().ok().filter(|p| *p > 0)?;
        let start = match it.next() {
            Some(t) => Some(t.parse().ok()?),
            None => None,
        };
        Some(ProcId { pid, start })
    }

    pub fn to_record(&self) -> String {
        match self.start {
            Some(s) => format!("{} {s}", self.pid),
            None => self.pid.to_string(),
        }
    }

    /// Whether the recorded process still runs (same pid, same start time).
    pub fn alive(&self) -> bool {
        match self.start {
            Some(s) => start_time(self.pid) == Some(s),
            None => {
                self.pid > 0
                    && !matches!(
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), None),
                        Err(nix::errno::Errno::ESRCH)
                    )
            }
        }
    }

    /// Sends `signal` to the recorded process if it still runs; `Ok(false)` when it
    /// is gone (or the pid now names another process, which is left alone).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> std::io::Result<bool> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ESRCH) {
                Ok(false)
            } else {
                Err(e)
            };
        }
        let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("pidfd out of range"))?;
        // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The pidfd now pins the process it names: if that is still the recorded one,
        // the signal cannot reach another.
        if !self.alive() {
            return Ok(false);
        }
        // SAFETY: pidfd_send_signal on an open pidfd, a valid signal number, no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ESRCH) {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let me = ProcId::me();
        assert!(me.start.is_some());
        assert_eq!(ProcId::parse(&me.to_record()), Some(me));
        assert_eq!(
            ProcId::parse("42"),
            Some(ProcId {
                pid: 42,
                start: None
            })
        );
        assert_eq!(ProcId::parse("0 5"), None);
        assert_eq!(ProcId::parse("x"), None);
        assert_eq!(ProcId::parse("42 x"), None);
        assert!(me.alive());
    }

    /// A recorded process that died, its pid now "reused" (simulated by a wrong start
    /// time on a live pid): neither alive nor signalled.
    #[test]
    fn a_reused_pid_is_not_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let real = ProcId::of(pid).unwrap();
        let stale = ProcId {
            pid,
            start: real.start.map(|s| s + 1),
        };
        assert!(!stale.alive());
        assert!(!stale.signal(nix::sys::signal::Signal::SIGKILL).unwrap());
        assert!(
            child.try_wait().unwrap().is_none(),
            "the other process was killed"
        );
        assert!(real.signal(nix::sys::signal::Signal::SIGKILL).unwrap());
        child.wait().unwrap();
        assert!(!real.alive());
        assert!(!real.signal(nix::sys::signal::Signal::SIGKILL).unwrap());
    }
}
