//! Loading the guest: kernel (bzImage or ELF vmlinux), initramfs, command line and the
//! `boot_params` page with the e820 map, for the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, Elf, KernelLoader, load_cmdline};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::layout::{
    ACPI_START, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START,
    ZERO_PAGE_START,
};
use crate::config::MAX_CMDLINE;

/// Why the guest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither an ELF vmlinux nor a bzImage")]
    NotAKernel { path: String },
    #[error("cannot load the kernel {path}")]
    Load {
        path: String,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("the initramfs {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooLarge { path: String, size: u64 },
    #[error("cannot read the initramfs {path} into guest memory")]
    InitrdRead {
        path: String,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the command line into guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    #[error("cannot write boot_params into guest memory")]
    BootParams(#[source] vm_memory::GuestMemoryError),
}

/// What the vCPU setup needs to know about the loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the BSP starts, in long mode.
    pub entry: GuestAddress,
}

/// The ELF magic, "\x7fELF".
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// Offset of the 64-bit entry point (startup_64) in a bzImage's protected-mode part.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// setup_header.loadflags: the kernel was loaded high (1 MiB); the boot loader may use
/// the heap.
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;
/// e820 types.
const E820_RAM: u32 = 1;
/// "HdrS": the setup header's magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// boot_flag: 0xAA55.
const BOOT_FLAG: u16 = 0xaa55;
/// An undefined boot loader (type_of_loader 0xff).
const LOADER_UNDEFINED: u8 = 0xff;
/// Kernel alignment the kernel asks for when the header does not say (16 MiB).
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// Loads `kernel`, `initramfs` and `cmdline` into `mem` and writes `boot_params`.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
) -> Result<LoadedKernel, KernelError> {
    let kpath = kernel.display().to_string();
    let mut f = File::open(kernel).map_err(|source| KernelError::Open {
        path: kpath.clone(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let is_elf = f.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC;
    f.seek(SeekFrom::Start(0))
        .map_err(|source| KernelError::Open {
            path: kpath.clone(),
            source,
        })?;

    let load_err = |source| KernelError::Load {
        path: kpath.clone(),
        source,
    };
    let (result, entry) = if is_elf {
        let r = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        // For an ELF vmlinux the loader returns e_entry as kernel_load: startup_64.
        let entry = r.kernel_load;
        (r, entry)
    } else {
        let r = match BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))) {
            Ok(r) => r,
            Err(linux_loader::loader::Error::Bzimage(_)) => {
                return Err(KernelError::NotAKernel { path: kpath });
            }
            Err(e) => return Err(load_err(e)),
        };
        let entry = r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET);
        (r, entry)
    };

    let mut params = boot_params::default();
    if let Some(hdr) = result.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.header = HDRS_MAGIC;
        params.hdr.boot_flag = BOOT_FLAG;
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;

    // Command line.
    let mut cl = Cmdline::new(MAX_CMDLINE).map_err(KernelError::Cmdline)?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline).map_err(KernelError::Cmdline)?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(KernelError::CmdlineWrite)?;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;

    // Initramfs: as high as possible in low memory, page aligned, above the kernel.
    if let Some(path) = initramfs {
        let (addr, size) = load_initramfs(mem, path, result.kernel_end)?;
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    add_e820(mem, &mut params);
    params.acpi_rsdp_addr = ACPI_START;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(KernelError::BootParams)?;
    Ok(LoadedKernel { entry })
}

/// The end of RAM below the MMIO gap.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.last_addr().raw_value() + 1)
        .filter(|end| *end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(GuestAddress, u64), KernelError> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|source| KernelError::Open {
        path: p.clone(),
        source,
    })?;
    let size = f
        .metadata()
        .map_err(|source| KernelError::Open {
            path: p.clone(),
            source,
        })?
        .len();
    let too_large = || KernelError::InitrdTooLarge {
        path: p.clone(),
        size,
    };
    // ramdisk_image and ramdisk_size are 32-bit fields.
    let top = low_ram_end(mem).min(u64::from(u32::MAX));
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end || size > u64::from(u32::MAX) {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, len)
        .map_err(|source| KernelError::InitrdRead { path: p, source })?;
    Ok((GuestAddress(addr), size))
}

/// The e820 map: low RAM below the EBDA, RAM from 1 MiB to the MMIO gap, RAM above 4 GiB.
fn add_e820(mem: &GuestMemoryMmap, params: &mut boot_params) {
    let mut entries = vec![(0u64, EBDA_START)];
    let low_end = low_ram_end(mem);
    if low_end > HIMEM_START {
        entries.push((HIMEM_START, low_end - HIMEM_START));
    }
    for r in mem.iter() {
        let start = r.start_addr().raw_value();
        if start >= MMIO_GAP_END {
            entries.push((start, r.len()));
        }
    }
    for (i, (addr, size)) in entries.iter().enumerate().take(params.e820_table.len()) {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
        params.e820_entries = (i + 1) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn non_kernels_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0u8; 8192]).unwrap();
        let mem = create_guest_memory(32, false).unwrap();
        let e = load(&mem, &junk, None, "").unwrap_err();
        assert!(matches!(e, KernelError::NotAKernel { .. }), "{e}");
        assert!(e.to_string().contains("junk"));
        let e = load(&mem, &dir.path().join("missing"), None, "").unwrap_err();
        assert!(matches!(e, KernelError::Open { .. }));
    }

    #[test]
    fn e820_skips_the_legacy_hole_and_the_mmio_gap() {
        let mem = create_guest_memory(4096, false).unwrap();
        let mut p = boot_params::default();
        add_e820(&mem, &mut p);
        assert_eq!(p.e820_entries, 3);
        let t: Vec<(u64, u64)> = p.e820_table[..3].iter().map(|e| (e.addr, e.size)).collect();
        assert_eq!(t[0], (0, EBDA_START));
        assert_eq!((t[1].0, t[1].0 + t[1].1), (HIMEM_START, MMIO_GAP_START));
        assert_eq!(t[2].0, MMIO_GAP_END);
    }

    #[test]
    fn initramfs_goes_high_and_refuses_to_overlap_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let i = dir.path().join("initrd");
        std::fs::write(&i, vec![7u8; 10_000]).unwrap();
        let mem = create_guest_memory(64, false).unwrap();
        let (addr, size) = load_initramfs(&mem, &i, 0x20_0000).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr.raw_value() % 4096, 0);
        assert!(addr.raw_value() + size <= 64 << 20);
        assert_eq!(mem.read_obj::<u8>(addr).unwrap(), 7);
        let e = load_initramfs(&mem, &i, 64 << 20).unwrap_err();
        assert!(matches!(e, KernelError::InitrdTooLarge { .. }));
    }
}
