//! The host's entropy seed (CreateSandbox's `entropy_seed`, protocol 0.5), given to the
//! guest kernel by PID 1. VMs restored from one snapshot (a template) resume with the
//! same kernel CRNG state, so they would hand out the same random bytes until the
//! kernel reseeds on its own; crediting fresh bytes from the host (RNDADDENTROPY) and
//! forcing a reseed (RNDRESEEDCRNG) makes every clone's stream its own (random(4),
//! "ioctl(2) interface").

use std::os::fd::AsRawFd;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])` (linux/random.h).
const RNDADDENTROPY: nix::sys::ioctl::ioctl_num_type =
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>());
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)` (linux/random.h, since Linux 4.17).
const RNDRESEEDCRNG: nix::sys::ioctl::ioctl_num_type = nix::request_code_none!(b'R', 0x07);

/// The argument of RNDADDENTROPY, `struct rand_pool_info { int entropy_count; int
/// buf_size; __u32 buf[]; }`, as 32-bit words: the two header ints (the entropy
/// credited, in bits: 8 per byte; the length in bytes), then `seed` in the words that
/// follow, in memory order, the last one padded with zeroes. The kernel reads
/// `buf_size` bytes from `buf`.
pub fn rand_pool_info(seed: &[u8]) -> Vec<u32> {
    // Seeds are at most 512 bytes (validated); saturate rather than wrap for any other.
    let len = i32::try_from(seed.len()).unwrap_or(i32::MAX / 8);
    let bits = len.saturating_mul(8);
    let mut words = Vec::with_capacity(2 + seed.len().div_ceil(4));
    words.push(u32::from_ne_bytes(bits.to_ne_bytes()));
    words.push(u32::from_ne_bytes(len.to_ne_bytes()));
    for chunk in seed.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        words.push(u32::from_ne_bytes(w));
    }
    words
}

/// What failed when the seed was given to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedError {
    /// /dev/urandom could not be opened.
    Open(nix::Error),
    /// RNDADDENTROPY refused: the seed was neither mixed in nor credited.
    AddEntropy(nix::Error),
    /// RNDRESEEDCRNG refused (before Linux 4.17, or the CRNG not ready): the seed was
    /// credited and is used at the kernel's next reseed.
    Reseed(nix::Error),
}

/// Credits `seed` to the kernel's entropy pool and reseeds the CRNG. Never fails the
/// caller: a refusal (an old kernel without RNDRESEEDCRNG, no CAP_SYS_ADMIN) is logged
/// as a warning, and the guest goes on with what it has.
pub fn seed_kernel(seed: &[u8]) {
    match try_seed_kernel(seed) {
        Ok(()) if seed.is_empty() => {}
        Ok(()) => tracing::info!(bytes = seed.len(), "entropy seed credited, CRNG reseeded"),
        Err(SeedError::Open(e)) => {
            tracing::warn!(error = %e, "entropy seed not used: open /dev/urandom");
        }
        Err(SeedError::AddEntropy(e)) => tracing::warn!(
            error = %e,
            bytes = seed.len(),
            "entropy seed not credited (RNDADDENTROPY): clones of one snapshot may share random streams"
        ),
        Err(SeedError::Reseed(e)) => tracing::warn!(
            error = %e,
            bytes = seed.len(),
            "CRNG not reseeded (RNDRESEEDCRNG): the seed was credited and is used at the kernel's next reseed"
        ),
    }
}

/// [`seed_kernel`]'s work, with the step that failed. Needs CAP_SYS_ADMIN; an empty
/// seed does nothing.
pub fn try_seed_kernel(seed: &[u8]) -> Result<(), SeedError> {
    if seed.is_empty() {
        return Ok(());
    }
    use nix::fcntl::{OFlag, open};
    let urandom = open(
        "/dev/urandom",
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(SeedError::Open)?;
    let info = rand_pool_info(seed);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info from the pointer: two ints and then
    // buf_size (= seed.len()) bytes; `info` holds exactly that (header words, then the
    // seed rounded up to whole words), is u32-aligned and outlives the call. The fd is
    // open.
    let r = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    nix::Error::result(r).map_err(SeedError::AddEntropy)?;
    // SAFETY: RNDRESEEDCRNG takes no argument; the fd is open.
    let r = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) };
    nix::Error::result(r).map_err(SeedError::Reseed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_the_kernels() {
        // As linux/random.h expands them on x86_64 and aarch64.
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG, 0x5207);
    }

    #[test]
    fn rand_pool_info_layout() {
        let seed: Vec<u8> = (1..=6).collect();
        let w = rand_pool_info(&seed);
        assert_eq!(w.len(), 2 + 2, "header, then 6 bytes in 2 words");
        assert_eq!(w[0] as i32, 48, "entropy_count: bits");
        assert_eq!(w[1] as i32, 6, "buf_size: bytes");
        let bytes: Vec<u8> = w[2..].iter().flat_map(|x| x.to_ne_bytes()).collect();
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 0, 0]);

        let full = rand_pool_info(&[0xab; 512]);
        assert_eq!(full.len(), 2 + 128);
        assert_eq!((full[0], full[1]), (4096, 512));
        assert!(full[2..].iter().all(|&x| x == 0xabab_abab));

        // As C lays the struct out: int, int, then the bytes at offset 8.
        let raw: Vec<u8> = w.iter().flat_map(|x| x.to_ne_bytes()).collect();
        assert_eq!(raw[..4], 48i32.to_ne_bytes());
        assert_eq!(raw[4..8], 6i32.to_ne_bytes());
        assert_eq!(raw[8..14], seed[..]);
        assert_eq!(rand_pool_info(&[]), vec![0, 0]);
    }
}
