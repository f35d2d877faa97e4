//! The host end of virtio-net: a Linux tap interface (Documentation/networking/tuntap.rst).
//!
//! Opened by name through /dev/net/tun (`TUNSETIFF` with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`), or inherited as an fd from the runtime that created it (checked with
//! `TUNGETIFF`). Either way the fd is non-blocking, and its vnet header size is set to 12
//! bytes (`struct virtio_net_hdr_v1`, virtio 1.2 §5.1.6) here, before the seccomp filter
//! is installed; only `TUNSETOFFLOAD`, which depends on the features the driver accepts,
//! is done later (at activation, on a vCPU thread: see seccomp.rs).

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)`.
pub const TUNSETIFF: u64 = 0x4004_54ca;
/// `_IOR('T', 210, unsigned int)`.
pub const TUNGETIFF: u64 = 0x8004_54d2;
/// `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
pub const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
/// `_IOR('T', 215, int)`.
pub const TUNGETVNETHDRSZ: u64 = 0x8004_54d7;

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// Offload flags for `TUNSETOFFLOAD` (linux/if_tun.h).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`): what VERSION_1 drivers use
/// whatever the features (virtio 1.2 §5.1.6).
pub const VNET_HDR_LEN: usize = 12;

/// Longest interface name (IFNAMSIZ less its NUL).
pub const MAX_NAME: usize = 15;

/// `struct ifreq` as the tun ioctls use it: a name and a flags field.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Why a tap could not be opened or set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} is empty or longer than {MAX_NAME} bytes")]
    Name(String),
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("cannot create or attach tap {name}")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("fd {0} is not open")]
    BadFd(RawFd),
    #[error("fd {fd} is not a tap")]
    NotTap {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is a tun or tap without IFF_TAP, IFF_NO_PI and IFF_VNET_HDR")]
    TapFlags { fd: RawFd },
    #[error("cannot set up the tap {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An open, non-blocking tap with 12-byte vnet headers. Reads return one frame (vnet
/// header first); a write sends one.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates (or attaches to) the tap `name`; root or CAP_NET_ADMIN, or a persistent
    /// tap owned by this user.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() > MAX_NAME || name.as_bytes().contains(&0) {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its layout and
        // size (40 bytes) and lives for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if r < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    /// Takes a tap the runtime opened (with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR) and
    /// passed as `fd`; the fd is duplicated, so the inherited one may be closed.
    pub fn from_inherited_fd(fd: RawFd) -> Result<Tap, TapError> {
        if fd < 0 {
            return Err(TapError::BadFd(fd));
        }
        // SAFETY: F_DUPFD_CLOEXEC takes no pointer; an fd that is not open gives EBADF.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(TapError::BadFd(fd));
        }
        // SAFETY: `dup` was just returned by fcntl and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        let file = File::from(owned);
        let mut req = IfReq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which has its layout and
        // lives for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF as _, &mut req) };
        if r < 0 {
            return Err(TapError::NotTap {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if req.flags & want != want {
            return Err(TapError::TapFlags { fd });
        }
        let len = req.name.iter().position(|b| *b == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        let tap = Tap { file, name };
        tap.set_nonblocking()?;
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    /// A tap stand-in for tests and the fuzz targets (a datagram socket keeps frame
    /// boundaries).
    #[doc(hidden)]
    pub fn from_fd_for_test(fd: OwnedFd) -> Tap {
        Tap {
            file: File::from(fd),
            name: "test".into(),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_nonblocking(&self) -> Result<(), TapError> {
        let err = |source| TapError::Setup {
            what: "non-blocking mode",
            source,
        };
        // SAFETY: F_GETFL takes no pointer.
        let flags = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: F_SETFL takes an int.
        let r = unsafe {
            libc::fcntl(
                self.file.as_raw_fd(),
                libc::F_SETFL,
                flags | libc::O_NONBLOCK,
            )
        };
        if r < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn set_vnet_hdr_len(&self) -> Result<(), TapError> {
        let len: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, valid for the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETVNETHDRSZ as _, &len) };
        if r < 0 {
            return Err(TapError::Setup {
                what: "vnet header size",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The vnet header size the tap uses.
    pub fn vnet_hdr_len(&self) -> io::Result<usize> {
        let mut len: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes an int through the pointer, valid for the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNGETVNETHDRSZ as _, &mut len) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(len).unwrap_or(0))
    }

    /// Tells the tap which offloads the guest accepts in the frames it is given
    /// (`TUN_F_*`); TSO needs CSUM.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame (vnet header first) into `buf`; `WouldBlock` when none waits.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame given in pieces.
    pub fn write_frame(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.file.write_vectored(bufs)
    }

    /// Another handle on the same tap (for the worker).
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // _IOC(dir, 'T', nr, size): dir << 30 | size << 16 | 'T' << 8 | nr.
        let ioc = |dir: u64, nr: u64| dir << 30 | 4 << 16 | u64::from(b'T') << 8 | nr;
        assert_eq!(TUNSETIFF, ioc(1, 202));
        assert_eq!(TUNSETOFFLOAD, ioc(1, 208));
        assert_eq!(TUNGETIFF, ioc(2, 210));
        assert_eq!(TUNGETVNETHDRSZ, ioc(2, 215));
        assert_eq!(TUNSETVNETHDRSZ, ioc(1, 216));
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn bad_names_and_fds_are_refused() {
        assert!(matches!(Tap::open(""), Err(TapError::Name(_))));
        assert!(matches!(
            Tap::open("a-name-far-too-long"),
            Err(TapError::Name(_))
        ));
        assert!(matches!(
            Tap::from_inherited_fd(-1),
            Err(TapError::BadFd(-1))
        ));
        assert!(matches!(
            Tap::from_inherited_fd(987_654),
            Err(TapError::BadFd(_))
        ));
        // An open fd that is not a tap.
        let f = File::open("/dev/null").unwrap();
        assert!(matches!(
            Tap::from_inherited_fd(f.as_raw_fd()),
            Err(TapError::NotTap { .. })
        ));
    }

    /// Creates a real tap when this host allows it (root, /dev/net/tun); says loudly
    /// when it cannot, never passing silently as if it had.
    #[test]
    fn real_tap_opens_with_vnet_headers() {
        let name = format!("hsk{}", std::process::id() % 100_000);
        let tap = match Tap::open(&name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "SKIPPED real_tap_opens_with_vnet_headers: cannot create a tap here: {e} \
                     ({:?})",
                    std::error::Error::source(&e)
                );
                return;
            }
        };
        assert_eq!(tap.name(), name);
        assert_eq!(tap.vnet_hdr_len().unwrap(), VNET_HDR_LEN);
        tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            .unwrap();
        tap.set_offload(0).unwrap();
        // TSO without CSUM is refused by the kernel: the device never asks for it.
        assert!(tap.set_offload(TUN_F_TSO4).is_err());
        let mut buf = [0u8; 128];
        let mut t = tap.try_clone().unwrap();
        // The interface is down: nothing to read, and the fd does not block.
        assert_eq!(
            t.read_frame(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // Inherited: the same tap through its fd.
        let again = Tap::from_inherited_fd(tap.as_raw_fd()).unwrap();
        assert_eq!(again.name(), name);
        assert_eq!(again.vnet_hdr_len().unwrap(), VNET_HDR_LEN);
        drop((tap, t, again));
        // Not persistent: gone with its last fd.
        assert!(!std::path::Path::new(&format!("/sys/class/net/{name}")).exists());
    }
}
