//! Where the guest image (kernel + initramfs) and husk-vmm are found.
//!
//! The guest image: `$HUSK_GUEST_DIR`, else `<state_dir>/guest`, else the source
//! tree's `build/guest` (next to the running binary's `target/` folder). The kernel
//! prefers the ELF `vmlinux` (boots faster under husk-vmm) over `vmlinuz`; the
//! configuration's `vm.kernel` overrides both.

use std::path::{Path, PathBuf};

/// Why something was not found.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(
        "no guest image: looked for initramfs.img in {0}; build one with `make guest-image` or set HUSK_GUEST_DIR"
    )]
    NoImage(String),
    #[error("no husk-vmm: looked in {0}; build it (`cargo build`) or set HUSK_VMM")]
    NoVmm(String),
    #[error("vm.kernel {0}: no such file")]
    NoKernel(PathBuf),
}

/// A guest image.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// The folder holding the running binary, and the source tree's root if the binary
/// runs from `<root>/target/<profile>/` (or a test's `deps/` below it).
fn source_root() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
}

impl GuestImage {
    pub fn locate(
        state_dir: &Path,
        kernel_override: Option<&Path>,
    ) -> Result<GuestImage, GuestError> {
        let mut candidates = Vec::new();
        if let Some(d) = std::env::var_os("HUSK_GUEST_DIR") {
            candidates.push(PathBuf::from(d));
        }
        candidates.push(state_dir.join("guest"));
        if let Some(r) = source_root() {
            candidates.push(r.join("build/guest"));
        }
        let dir = candidates
            .iter()
            .find(|d| d.join("initramfs.img").is_file())
            .ok_or_else(|| {
                GuestError::NoImage(
                    candidates
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })?;
        let kernel = match kernel_override {
            Some(k) if k.is_file() => k.to_path_buf(),
            Some(k) => return Err(GuestError::NoKernel(k.to_path_buf())),
            None if dir.join("vmlinux").is_file() => dir.join("vmlinux"),
            None => dir.join("vmlinuz"),
        };
        Ok(GuestImage {
            kernel,
            initramfs: dir.join("initramfs.img"),
        })
    }
}

/// husk-vmm: `$HUSK_VMM`, else beside the running binary (or its parent, for tests
/// in `deps/`), else on PATH.
pub fn vmm_binary() -> Result<PathBuf, GuestError> {
    if let Some(p) = std::env::var_os("HUSK_VMM") {
        return Ok(PathBuf::from(p));
    }
    let mut looked = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join("husk-vmm");
            if p.is_file() {
                return Ok(p);
            }
            looked.push(dir.display().to_string());
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("husk-vmm");
        if p.is_file() {
            return Ok(p);
        }
    }
    looked.push("$PATH".into());
    Err(GuestError::NoVmm(looked.join(", ")))
}
