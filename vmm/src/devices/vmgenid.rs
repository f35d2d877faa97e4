//! ACPI Virtual Machine Generation ID (Microsoft's "Virtual Machine Generation ID" paper,
//! the device QEMU and Firecracker give): a 16-byte random identifier in guest memory
//! that changes when the VM is restored from a snapshot. The DSDT describes it as
//! `\_SB.VGEN` (`_CID "VM_GEN_COUNTER"`, `ADDR` its address, see boot/acpi.rs); a Generic
//! Event Device (`\_SB.GED`, ACPI0013) on [`GED_IRQ`] notifies it.
//!
//! Linux's `vmgenid` driver (CONFIG_VMGENID; Debian's generic kernel has it, its cloud
//! kernel not) reads the identifier at probe time and on each notification; a new one
//! is mixed into the kernel's entropy and the CRNG reseeded ("crng reseeded due to
//! virtual machine fork"), so clones of one snapshot draw different random numbers at
//! once, before any host seed arrives. Kernels without the driver ignore both devices.
//!
//! The identifier needs no state of its own in a snapshot: it lives in guest memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::layout::VMGENID_ADDR;

/// The identifier's size.
pub const VMGENID_LEN: usize = 16;

/// Why the identifier could not be set.
#[derive(Debug, thiserror::Error)]
pub enum VmGenIdError {
    #[error("cannot draw a random generation ID")]
    Random(#[source] std::io::Error),
    #[error("cannot write the generation ID into guest memory at {VMGENID_ADDR:#x}")]
    Write(#[source] vm_memory::GuestMemoryError),
    #[error("cannot raise the generation ID's notification interrupt")]
    Notify(#[source] std::io::Error),
}

/// 16 random bytes from the kernel's CRNG (no file: the jail has no /dev/urandom).
fn random_id() -> Result<[u8; VMGENID_LEN], VmGenIdError> {
    let mut id = [0u8; VMGENID_LEN];
    let mut got = 0;
    while got < id.len() {
        let rest = &mut id[got..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, a live,
        // exclusively borrowed buffer of that length.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(VmGenIdError::Random(err));
        }
        got += n as usize;
    }
    Ok(id)
}

/// The generation ID of one VM: where it lives, and the interrupt that tells the guest
/// it changed.
pub struct VmGenId {
    notify: EventFd,
}

impl std::fmt::Debug for VmGenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmGenId").finish_non_exhaustive()
    }
}

impl VmGenId {
    /// A first identifier for a booting VM, written into `mem`; `notify` is the irqfd
    /// of [`GED_IRQ`](crate::boot::layout::GED_IRQ).
    pub fn new(mem: &GuestMemoryMmap, notify: EventFd) -> Result<VmGenId, VmGenIdError> {
        write_id(mem, &random_id()?)?;
        Ok(VmGenId { notify })
    }

    /// The identifier of a restored VM, already in its memory; see [`renew`](Self::renew).
    pub fn attach(notify: EventFd) -> VmGenId {
        VmGenId { notify }
    }

    /// A new identifier for a restored VM (a clone): written into `mem`, then the
    /// guest notified. Call it once the irqchip and vCPUs are restored, so that the
    /// interrupt is not overwritten by the saved state.
    pub fn renew(&self, mem: &GuestMemoryMmap) -> Result<[u8; VMGENID_LEN], VmGenIdError> {
        let id = random_id()?;
        write_id(mem, &id)?;
        self.notify.write(1).map_err(VmGenIdError::Notify)?;
        Ok(id)
    }
}

fn write_id(mem: &GuestMemoryMmap, id: &[u8; VMGENID_LEN]) -> Result<(), VmGenIdError> {
    mem.write_slice(id, GuestAddress(VMGENID_ADDR))
        .map_err(VmGenIdError::Write)
}

/// The identifier now in `mem` (tests).
pub fn read_id(mem: &GuestMemoryMmap) -> Result<[u8; VMGENID_LEN], VmGenIdError> {
    let mut id = [0u8; VMGENID_LEN];
    mem.read_slice(&mut id, GuestAddress(VMGENID_ADDR))
        .map_err(VmGenIdError::Write)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    #[test]
    fn a_renewed_id_differs_and_notifies() {
        let mem = mem();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let g = VmGenId::new(&mem, evt.try_clone().unwrap()).unwrap();
        let first = read_id(&mem).unwrap();
        assert_ne!(first, [0; VMGENID_LEN]);
        // Nothing raised at boot: the driver reads the first ID when it probes.
        assert!(evt.read().is_err());
        let second = g.renew(&mem).unwrap();
        assert_eq!(read_id(&mem).unwrap(), second);
        assert_ne!(first, second);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn memory_without_the_address_is_an_error() {
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        assert!(matches!(
            VmGenId::new(&small, evt),
            Err(VmGenIdError::Write(_))
        ));
    }
}
