//! Stopping cleanly on SIGTERM, SIGINT and SIGHUP: the signals are blocked in every
//! thread and taken by one thread with sigwait, which turns them into a stop request, so
//! that the VMM removes its sockets and reports like any other stop.

use std::sync::mpsc::Sender;

use crate::devices::ExitReason;

const STOP_SIGNALS: [(libc::c_int, &str); 3] = [
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGHUP, "SIGHUP"),
];

/// Blocks the stop signals in the calling thread (and so in threads it starts later).
/// The binary calls this first thing: a signal that arrives while the VM is being built
/// stays pending until [`stop_on_signals`] takes it, so even then the stop is clean.
/// Calling it again is harmless.
pub fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    let mut set = empty_set();
    for (sig, _) in STOP_SIGNALS {
        // SAFETY: `set` is an initialised sigset_t and `sig` a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(std::io::Error::from_raw_os_error(ret));
    }
    Ok(set)
}

/// Blocks the stop signals (see [`block_stop_signals`]) and starts the thread that
/// waits for them and turns the first into a stop request.
pub fn stop_on_signals(exits: Sender<ExitReason>) -> std::io::Result<()> {
    let set = block_stop_signals()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialised and `sig` is a valid place for the result.
            let ret = unsafe { libc::sigwait(&set, &mut sig) };
            if ret != 0 {
                tracing::error!(error = %std::io::Error::from_raw_os_error(ret), "sigwait failed");
                return;
            }
            let name = STOP_SIGNALS
                .iter()
                .find(|(s, _)| *s == sig)
                .map_or("signal", |(_, n)| n);
            tracing::info!(signal = name, "stopping the VM");
            let _ = exits.send(ExitReason::Stopped(format!("{name} received")));
        })?;
    Ok(())
}

fn empty_set() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set it is given.
    unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    // SAFETY: initialised just above.
    unsafe { set.assume_init() }
}
