//! Small guests for system tests: Debian's cloud kernel (fetched once by
//! `guest-image/debian-kernel`) and busybox initramfs images built by
//! `tests/lab/mkinitramfs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::repo_root;

fn run_tool(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The Debian cloud kernel (bzImage), downloaded once into the project's cache.
pub fn debian_kernel() -> Result<PathBuf, String> {
    debian_kernel_flavour(None)
}

/// The kernel of Debian's `flavour` (`amd64`: the generic kernel; `None`: the cloud
/// kernel), downloaded once into the project's cache.
pub fn debian_kernel_flavour(flavour: Option<&str>) -> Result<PathBuf, String> {
    let mut cmd = Command::new(repo_root().join("guest-image/debian-kernel"));
    if let Some(f) = flavour {
        cmd.env("HUSK_KERNEL_FLAVOUR", f);
    }
    run_tool(cmd.arg("vmlinuz")).map(PathBuf::from)
}

/// Builds a busybox initramfs at `out` whose `/init` is `init_script`, with the Debian
/// kernel's `modules` (and their dependencies) in `/modules`, listed in load order in
/// `/modules/order`, and the host programs `bins` (with their libraries) in `/bin`.
pub fn busybox_initramfs(
    out: &Path,
    init_script: &str,
    modules: &[&str],
    bins: &[&str],
) -> Result<(), String> {
    busybox_initramfs_flavour(None, out, init_script, modules, bins)
}

/// As [`busybox_initramfs`], with the modules of Debian's kernel `flavour` (see
/// [`debian_kernel_flavour`]).
pub fn busybox_initramfs_flavour(
    flavour: Option<&str>,
    out: &Path,
    init_script: &str,
    modules: &[&str],
    bins: &[&str],
) -> Result<(), String> {
    let init = out.with_extension("init.sh");
    std::fs::write(&init, init_script).map_err(|e| format!("{}: {e}", init.display()))?;
    let mut cmd = Command::new(repo_root().join("tests/lab/mkinitramfs"));
    if let Some(f) = flavour {
        cmd.env("HUSK_KERNEL_FLAVOUR", f);
    }
    if !modules.is_empty() {
        cmd.arg("--modules").arg(modules.join(" "));
    }
    for b in bins {
        cmd.arg("--bin").arg(b);
    }
    cmd.arg(out).arg(&init);
    run_tool(&mut cmd).map(|_| ())
}

/// Compiles the C program `src` into `out` with the host's `cc -O2` (a guest-side helper
/// of a system test, copied into the initramfs with `busybox_initramfs`'s `bins`).
pub fn compile_c(src: &Path, out: &Path) -> Result<(), String> {
    run_tool(Command::new("cc").args(["-O2", "-o"]).arg(out).arg(src)).map(|_| ())
}

/// The sha256 of a file, as hex (with the host's sha256sum).
pub fn sha256_file(path: &Path) -> Result<String, String> {
    let out = run_tool(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| format!("sha256sum printed nothing for {}", path.display()))
}

/// The value after `key ` on the first line of `text` that starts with it.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .map(str::trim)
}
