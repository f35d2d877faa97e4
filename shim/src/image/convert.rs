//! The child tools that turn an image into erofs: `umoci raw unpack` (layers in
//! order, whiteouts applied, blobs verified; entries are resolved inside the rootfs,
//! so `../x`, absolute symlinks and hard links pointing out write nothing outside it)
//! and `mkfs.erofs`. Each runs with PR_SET_PDEATHSIG=SIGKILL: when husk dies (even by
//! `kill -9`), so does the tool. Work happens in a scratch folder of husk's own (mode
//! 0700, so nothing unpacked there — a setuid file, a device node — is reachable by
//! other users while it exists), removed afterwards.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::ImageError;
use super::layout::{Descriptor, Layout, blob_hex};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Runs `tool` with `args` to its end; its stderr becomes the error.
pub(super) fn run_tool(tool: &'static str, args: &[&OsStr], path: &Path) -> Result<(), ImageError> {
    let mut cmd = Command::new(tool);
    cmd.args(args).stdin(Stdio::null());
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid); no memory shared with the
    // parent is touched.
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
    let out = cmd.output().map_err(|e| ImageError::Tool {
        tool,
        path: path.to_path_buf(),
        msg: format!("cannot run it: {e} (make setup installs it)"),
    })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        tracing::debug!(tool, path = %path.display(), status = %out.status, "image tool failed");
        let mut msg = if msg.is_empty() {
            out.status.to_string()
        } else {
            msg
        };
        // A tool may die of a full disk without saying so (umoci has panicked on a
        // failed write): name the reason when a file system it writes to is full.
        // The paths it was given include where it writes.
        let full = args
            .iter()
            .map(Path::new)
            .filter(|p| p.is_absolute())
            .filter_map(|p| free_bytes(p).map(|f| (p, f)))
            .find(|(_, free)| *free < FULL_BELOW_BYTES);
        if !msg.to_lowercase().contains("no space left on device")
            && let Some((p, free)) = full
        {
            msg = format!(
                "no space left on device: {} has {free} bytes free ({tool}: {msg})",
                p.display()
            );
        }
        return Err(ImageError::Tool {
            tool,
            path: path.to_path_buf(),
            msg,
        });
    }
    Ok(())
}

/// Below this many free bytes, a failed tool's file system counts as full.
const FULL_BELOW_BYTES: u64 = 1 << 20;

/// Bytes free for unprivileged writes on the file system of `path` (or of its nearest
/// existing ancestor).
fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs that
    // statvfs fills; nothing else is touched.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// In a forked child: be killed when the parent dies; if it died already (between
/// fork and this call), stop here.
fn die_with_parent(parent: u32) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if std::os::unix::process::parent_id() != parent {
        return Err(std::io::Error::other("husk exited"));
    }
    Ok(())
}

/// Makes an erofs image of `root` at `out`: written under a unique temporary name
/// beside `out` (created O_EXCL), then renamed into place, so `out` is never a
/// half-written image. A folder on a filesystem without xattr listing (virtio-fs, some
/// FUSE) is converted without xattrs, after a warning.
pub fn mkfs_erofs(root: &Path, out: &Path) -> Result<(), ImageError> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|err| ImageError::Io {
            path: dir.to_path_buf(),
            err,
        })?;
    mkfs_erofs_at(root, tmp.path())?;
    tmp.persist(out).map_err(|e| ImageError::Io {
        path: out.to_path_buf(),
        err: e.error,
    })?;
    Ok(())
}

/// Runs mkfs.erofs into `tmp` (an existing file of ours, overwritten).
pub(super) fn mkfs_erofs_at(root: &Path, tmp: &Path) -> Result<(), ImageError> {
    let r = run_tool("mkfs.erofs", &[tmp.as_os_str(), root.as_os_str()], root);
    match r {
        Err(ImageError::Tool { msg, .. }) if msg.contains("Operation not supported") => {
            eprintln!(
                "husk: {}: extended attributes cannot be read there; converting without them",
                root.display()
            );
            run_tool(
                "mkfs.erofs",
                &[
                    "-x".as_ref(),
                    "-1".as_ref(),
                    tmp.as_os_str(),
                    root.as_os_str(),
                ],
                root,
            )
        }
        r => r,
    }
}

/// Unpacks the image `manifest` (with `blobs`: its config and layers, checked by
/// the caller) of `layout` into `rootfs` with umoci, given a layout of husk's own in
/// `view`: an index naming only `manifest`, as tag "husk", and a symlink per blob to
/// the image's (nothing is copied or written in the image's folder). So a
/// multi-platform or untagged image unpacks as the one manifest chosen here.
pub(super) fn unpack(
    layout: &Layout,
    manifest: &Descriptor,
    blobs: &[String],
    view: &Path,
    rootfs: &Path,
) -> Result<(), ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |err| ImageError::Io { path, err }
    };
    let dir = view.join("blobs/sha256");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    for digest in std::iter::once(&manifest.digest).chain(blobs) {
        let link = dir.join(blob_hex(&layout.path, digest)?);
        if !link.exists() {
            std::os::unix::fs::symlink(layout.blob_path(digest)?, &link).map_err(io(&link))?;
        }
    }
    let write = |name: &str, v: Value| {
        let p = view.join(name);
        std::fs::write(&p, v.to_string()).map_err(io(&p))
    };
    write(
        "oci-layout",
        serde_json::json!({"imageLayoutVersion": "1.0.0"}),
    )?;
    write(
        "index.json",
        serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest.digest,
                "size": manifest.size,
                "annotations": {REF_NAME: "husk"},
            }],
        }),
    )?;
    let image_arg = format!("{}:husk", view.display());
    run_tool(
        "umoci",
        &[
            "raw".as_ref(),
            "unpack".as_ref(),
            "--image".as_ref(),
            image_arg.as_ref(),
            rootfs.as_os_str(),
        ],
        &layout.path,
    )
}

/// A scratch folder `<state_dir>/tmp/image-<pid>-XXXXXX` (mode 0700), removed on drop.
/// Those left by husk processes that died on the way (killed while unpacking) are
/// removed first.
pub(super) fn scratch(state_dir: &Path) -> Result<tempfile::TempDir, ImageError> {
    let base = state_dir.join("tmp");
    std::fs::create_dir_all(&base).map_err(|err| ImageError::Io {
        path: base.clone(),
        err,
    })?;
    remove_dead_scratch(&base);
    // Not the default 0777 & umask: nobody else may reach into the unpacked tree.
    tempfile::Builder::new()
        .prefix(&format!("image-{}-", std::process::id()))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|err| ImageError::Io { path: base, err })
}

/// Removes the scratch folders in `base` whose owner process no longer exists.
fn remove_dead_scratch(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("image-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| p > 0 && !crate::sandbox::alive(p)) {
            tracing::debug!(folder = %e.path().display(), "removing a dead husk's scratch folder");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
