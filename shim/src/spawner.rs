//! Starting the long-lived helpers of a sandbox (husk-vmm, virtiofsd) so that they die
//! with this process, and only then.
//!
//! Both set PR_SET_PDEATHSIG(SIGKILL) before exec, so a `husk` or shim that is killed
//! (even with SIGKILL) takes its VM with it. But Linux sends that signal when the
//! *thread* that forked the child exits, not the process (prctl(2)): spawned from a
//! tokio worker or blocking-pool thread, which the runtime may retire while the process
//! lives on (a shim serves pods for days), the VM would be killed under a running
//! container. So every such child is forked by one dedicated thread, started on first
//! use and never ended: it lives exactly as long as the process. The owner records
//! (`owner`, `vm/pid`, crate::procid) and [`crate::sandbox::reap_stale`] remain the
//! second line: whatever survives a dead owner is killed by the next `husk` call.

use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;

/// A command to spawn and where to send the result.
type Job = (Command, mpsc::SyncSender<std::io::Result<Child>>);

/// The spawner thread's queue; `None` if the thread could not be started.
static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();

fn queue() -> Option<&'static mpsc::Sender<Job>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let started = std::thread::Builder::new()
                .name("husk-spawner".into())
                .spawn(move || {
                    // Never returns while the process holds the sender (a static).
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "no spawner thread: children are forked by their caller's thread");
                    None
                }
            }
        })
        .as_ref()
}

/// Spawns `cmd` from the process-long spawner thread (blocking until it is forked), so
/// that a PR_SET_PDEATHSIG set in its `pre_exec` fires only when this process ends.
pub fn spawn(cmd: Command) -> std::io::Result<Child> {
    let Some(q) = queue() else {
        let mut cmd = cmd;
        return cmd.spawn();
    };
    let (tx, rx) = mpsc::sync_channel(1);
    q.send((cmd, tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_outlive_the_thread_that_asked() {
        use std::os::unix::process::CommandExt;
        // A child with PDEATHSIG, asked for by a thread that then ends: it must live on.
        let child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            // SAFETY: prctl in the forked child before exec; plain integers, no memory.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            spawn(cmd).unwrap()
        })
        .join()
        .unwrap();
        let mut child = child;
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child died with the thread that asked for it"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
