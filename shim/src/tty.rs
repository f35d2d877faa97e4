//! The user's terminal: raw mode for `-t` (restored on drop), its window size.

use std::os::fd::AsFd;

use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use nix::unistd::{getpgrp, tcgetpgrp};

pub fn stdin_is_terminal() -> bool {
    nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false)
}

pub fn stdout_is_terminal() -> bool {
    nix::unistd::isatty(std::io::stdout().as_fd()).unwrap_or(false)
}

pub fn stderr_is_terminal() -> bool {
    nix::unistd::isatty(std::io::stderr().as_fd()).unwrap_or(false)
}

/// Raw mode on stdin until dropped.
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// A husk in a background process group of its terminal is stopped here (SIGTTOU)
    /// until it is brought to the foreground, as any terminal program is; it says so
    /// first, so that a stop is not a silent hang.
    pub fn enable() -> nix::Result<RawMode> {
        let stdin = std::io::stdin();
        if tcgetpgrp(stdin.as_fd()).is_ok_and(|fg| fg != getpgrp()) {
            eprintln!(
                "husk: -t: not in the foreground of this terminal; \
                 waiting to be brought to the foreground (fg)"
            );
        }
        let saved = tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// (rows, cols) of the terminal on stdout (or stdin).
pub fn window_size() -> Option<(u16, u16)> {
    for fd in [1, 0] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into the valid pointer given.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}
