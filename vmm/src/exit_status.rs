//! husk-vmm's process exit status: the contract between husk-vmm and the runtime that
//! starts it. husk-vmm exits with [`VmmExit::code`]; the runtime reads a status back
//! with [`VmmExit::from_code`] and words it with [`VmmExit::describe`].

use crate::devices::ExitReason;

/// Why husk-vmm exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmExit {
    /// The guest powered off or reset itself (0).
    GuestStopped,
    /// The guest crashed: triple fault, KVM internal error, shutdown exit (1).
    GuestCrashed,
    /// The configuration or command line was refused (2).
    BadConfig,
    /// The host failed: KVM, memory, a device's host side (3).
    HostError,
    /// The host stopped the VM: API shutdown, SIGTERM/SIGINT/SIGHUP (4).
    StoppedByHost,
}

impl VmmExit {
    const ALL: [VmmExit; 5] = [
        VmmExit::GuestStopped,
        VmmExit::GuestCrashed,
        VmmExit::BadConfig,
        VmmExit::HostError,
        VmmExit::StoppedByHost,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            VmmExit::GuestStopped => 0,
            VmmExit::GuestCrashed => 1,
            VmmExit::BadConfig => 2,
            VmmExit::HostError => 3,
            VmmExit::StoppedByHost => 4,
        }
    }

    /// The status an exit code stands for; `None` for codes husk-vmm never uses.
    pub fn from_code(code: i32) -> Option<VmmExit> {
        Self::ALL.into_iter().find(|e| i32::from(e.code()) == code)
    }

    /// What the status means, in words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            VmmExit::GuestStopped => "the guest powered off or reset",
            VmmExit::GuestCrashed => "the guest crashed",
            VmmExit::BadConfig => "bad VM configuration",
            VmmExit::HostError => "host failure",
            VmmExit::StoppedByHost => "stopped by the host",
        }
    }

    /// The status for the reason a VM stopped.
    pub fn of(reason: &ExitReason) -> VmmExit {
        match reason {
            ExitReason::Poweroff | ExitReason::Reset => VmmExit::GuestStopped,
            ExitReason::Crash(_) => VmmExit::GuestCrashed,
            ExitReason::HostError(_) => VmmExit::HostError,
            ExitReason::Stopped(_) => VmmExit::StoppedByHost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in VmmExit::ALL {
            assert_eq!(VmmExit::from_code(i32::from(e.code())), Some(e));
        }
        assert_eq!(VmmExit::from_code(5), None);
        assert_eq!(VmmExit::from_code(-1), None);
        assert_eq!(
            VmmExit::of(&ExitReason::Crash("x".into())),
            VmmExit::GuestCrashed
        );
    }
}
