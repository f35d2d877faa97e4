//! A container's root filesystem, mounted by the agent under the container's bundle:
//! a directory already in the guest, or a read-only block device (erofs, ext4); either
//! optionally under an overlay whose upper layer is a tmpfs or a writable block device
//! (ext4; writes vanish with the container either way). Everything mounted here is
//! unmounted by [`Mounted::unmount`].
//!
//! The overlay is mounted with `xino=on` (the kernel's
//! Documentation/filesystems/overlayfs.rst, "Inode properties"): its layers sit on
//! different filesystems, and without xino an overlay on several filesystems gives
//! `d_ino` (readdir) values that differ from `st_ino` (stat) (CPython's
//! `test_os.TestScandir` checks they agree). xino puts the layer's index in the high
//! bits of the inode number, so both agree for lower and upper files.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Filesystems a block device may hold.
const BLOCK_FSTYPES: &[&str] = &["erofs", "ext4"];
/// Filesystems a writable upper layer's block device may hold.
const UPPER_FSTYPES: &[&str] = &["ext4"];

/// Why a rootfs could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs: give exactly one of path and block_device")]
    Source,
    #[error("rootfs.path {0:?}: must be an absolute path to a directory")]
    Path(String),
    #[error("rootfs.block_device {0:?}: expected /dev/NAME (letters, digits)")]
    Device(String),
    #[error("rootfs.fstype {0:?}: expected one of {BLOCK_FSTYPES:?}")]
    Fstype(String),
    #[error("rootfs.upper_device {0:?}: expected /dev/NAME (letters, digits)")]
    UpperDevice(String),
    #[error("rootfs.upper_fstype {0:?}: expected one of {UPPER_FSTYPES:?}")]
    UpperFstype(String),
    #[error("rootfs.upper_device: needs rootfs.overlay")]
    UpperWithoutOverlay,
    #[error("rootfs: {what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("rootfs: mount {what} on {path}: {err}{}", hint(*err))]
    Mount {
        what: String,
        path: PathBuf,
        err: nix::Error,
    },
}

/// What a failed mount's errno alone does not explain (mount(2): ENODEV is a filesystem
/// type the kernel does not know).
fn hint(err: nix::Error) -> &'static str {
    match err {
        nix::Error::ENODEV => {
            " (the guest kernel has no driver for this filesystem: build it in, or add its \
             module to the guest image)"
        }
        _ => "",
    }
}

/// What the host asked for.
#[derive(Debug, Clone)]
pub enum Source {
    Dir(PathBuf),
    Block { device: PathBuf, fstype: String },
}

impl Source {
    /// Checks the protocol fields.
    pub fn from_request(path: &str, device: &str, fstype: &str) -> Result<Source, RootfsError> {
        match (path.is_empty(), device.is_empty()) {
            (false, true) => {
                let p = Path::new(path);
                if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(RootfsError::Path(path.to_string()));
                }
                Ok(Source::Dir(p.to_path_buf()))
            }
            (true, false) => {
                if !is_dev_name(device) {
                    return Err(RootfsError::Device(device.to_string()));
                }
                if !BLOCK_FSTYPES.contains(&fstype) {
                    return Err(RootfsError::Fstype(fstype.to_string()));
                }
                Ok(Source::Block {
                    device: PathBuf::from(device),
                    fstype: fstype.to_string(),
                })
            }
            _ => Err(RootfsError::Source),
        }
    }
}

/// Whether `device` is `/dev/NAME` with NAME of letters and digits only.
fn is_dev_name(device: &str) -> bool {
    let name = device.strip_prefix("/dev/").unwrap_or("");
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `BLKFLSBUF`: `_IO(0x12, 97)` (linux/fs.h).
const BLKFLSBUF: nix::sys::ioctl::ioctl_num_type = nix::request_code_none!(0x12, 97);

/// Drops what the guest's page cache holds of block device `device` (BLKFLSBUF: dirty
/// blocks written, clean ones forgotten) before it is mounted. A VM restored from a
/// template (a snapshot) resumes with the template's page cache, and the template read
/// its own placeholder disk at this name when the kernel probed it (partition table,
/// filesystem signatures); the clone's disk behind the same name is another one, and
/// without the flush a mount could read those stale blocks. Best effort: a failure is
/// logged and the mount goes on.
fn flush_buffer_cache(device: &Path) {
    use nix::fcntl::{OFlag, open};
    use std::os::fd::AsRawFd;
    let f = match open(
        device,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(device = %device.display(), error = %e, "buffer cache not flushed: open");
            return;
        }
    };
    // SAFETY: BLKFLSBUF takes no argument; the fd is open.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF) };
    if let Err(e) = nix::Error::result(r) {
        tracing::warn!(device = %device.display(), error = %e, "buffer cache not flushed (BLKFLSBUF)");
    }
}

/// Where the overlay's upper layer (and its work folder) lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upper {
    /// A tmpfs in guest RAM.
    Tmpfs,
    /// A writable block device, mounted read-write.
    Block { device: PathBuf, fstype: String },
}

impl Upper {
    /// Checks the protocol fields: `None` without an overlay.
    pub fn from_request(
        overlay: bool,
        device: &str,
        fstype: &str,
    ) -> Result<Option<Upper>, RootfsError> {
        match (overlay, device.is_empty()) {
            (false, true) => Ok(None),
            (false, false) => Err(RootfsError::UpperWithoutOverlay),
            (true, true) => Ok(Some(Upper::Tmpfs)),
            (true, false) => {
                if !is_dev_name(device) {
                    return Err(RootfsError::UpperDevice(device.to_string()));
                }
                if !UPPER_FSTYPES.contains(&fstype) {
                    return Err(RootfsError::UpperFstype(fstype.to_string()));
                }
                Ok(Some(Upper::Block {
                    device: PathBuf::from(device),
                    fstype: fstype.to_string(),
                }))
            }
        }
    }
}

/// The overlay's mount data: one lower layer, upper and work on one filesystem, and
/// `xino=on` so that readdir's d_ino equals stat's st_ino (see the module's header).
fn overlay_data(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={},xino=on",
        lower.display(),
        upper.display(),
        work.display()
    )
}

/// Mounts made for one container, innermost last.
#[derive(Debug, Default)]
pub struct Mounted {
    /// The container's root, ready for the runtime.
    pub root: PathBuf,
    mounts: Vec<PathBuf>,
}

fn mkdir(p: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(p).map_err(|err| RootfsError::Io {
        what: "create",
        path: p.to_path_buf(),
        err,
    })
}

impl Mounted {
    fn mount(
        &mut self,
        src: &Path,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RootfsError> {
        mkdir(target)?;
        mount(Some(src), target, fstype, flags, data).map_err(|err| RootfsError::Mount {
            what: format!("{} ({})", src.display(), fstype.unwrap_or("bind")),
            path: target.to_path_buf(),
            err,
        })?;
        self.mounts.push(target.to_path_buf());
        Ok(())
    }

    /// Mounts `source` for a container whose bundle is `bundle`; on failure, whatever
    /// was mounted is unmounted again.
    pub fn mount_rootfs(
        bundle: &Path,
        source: &Source,
        upper: Option<&Upper>,
    ) -> Result<Mounted, RootfsError> {
        let mut m = Mounted::default();
        match m.mount_all(bundle, source, upper) {
            Ok(()) => Ok(m),
            Err(e) => {
                m.unmount();
                Err(e)
            }
        }
    }

    fn mount_all(
        &mut self,
        bundle: &Path,
        source: &Source,
        upper: Option<&Upper>,
    ) -> Result<(), RootfsError> {
        let root = bundle.join("rootfs");
        let lower = match source {
            Source::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(RootfsError::Path(dir.display().to_string()));
                }
                if upper.is_none() {
                    self.mount(dir, &root, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
                    self.root = root;
                    return Ok(());
                }
                dir.clone()
            }
            Source::Block { device, fstype } => {
                let lower = bundle.join("lower");
                flush_buffer_cache(device);
                self.mount(device, &lower, Some(fstype), MsFlags::MS_RDONLY, None)?;
                lower
            }
        };
        let rw = bundle.join("rw");
        let layer = match upper {
            None => {
                self.root = lower;
                return Ok(());
            }
            Some(Upper::Tmpfs) => {
                self.mount(
                    Path::new("tmpfs"),
                    &rw,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    Some("mode=0755"),
                )?;
                rw
            }
            Some(Upper::Block { device, fstype }) => {
                // noinit_itable: the disk is a fresh sparse image (its inode tables read
                // as zeroes), so ext4's background zeroing of them would only cost
                // guest I/O and host disk.
                flush_buffer_cache(device);
                self.mount(
                    device,
                    &rw,
                    Some(fstype),
                    MsFlags::empty(),
                    Some("noinit_itable"),
                )?;
                // A folder per container: one disk could serve several containers.
                let name = bundle.file_name().unwrap_or(std::ffi::OsStr::new("c"));
                rw.join(name)
            }
        };
        let (upper, work) = (layer.join("upper"), layer.join("work"));
        mkdir(&upper)?;
        mkdir(&work)?;
        let data = overlay_data(&lower, &upper, &work);
        self.mount(
            Path::new("overlay"),
            &root,
            Some("overlay"),
            MsFlags::empty(),
            Some(&data),
        )?;
        self.root = root;
        Ok(())
    }

    /// Unmounts everything, innermost first. Detaches lazily so that a mount still busy
    /// (a process that outlived its container) cannot make the agent keep it forever.
    pub fn unmount(&mut self) {
        while let Some(p) = self.mounts.pop() {
            if let Err(e) = umount2(&p, MntFlags::MNT_DETACH) {
                tracing::warn!(path = %p.display(), error = %e, "unmount failed");
            }
        }
    }
}

/// Creates `dir` (an absolute path inside the container) under `root` where it is
/// missing, as runc does for a process's working directory; new folders are 0755 and
/// root's. Every step is resolved inside `root` (openat2 RESOLVE_IN_ROOT), so a symlink
/// in the image cannot lead the agent outside the container's root.
pub fn make_dir_in(root: &Path, dir: &Path) -> Result<(), RootfsError> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    use nix::sys::stat::{Mode, mkdirat};
    use std::path::Component;

    let fail = |what: &'static str, err: std::io::Error| RootfsError::Io {
        what,
        path: dir.to_path_buf(),
        err,
    };
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let rootfd = open(root, flags, Mode::empty()).map_err(|e| fail("open root for", e.into()))?;
    let how = || {
        OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT)
    };
    let mut parent = rootfd.try_clone().map_err(|e| fail("open root for", e))?;
    let mut prefix = PathBuf::from(".");
    for c in dir.components() {
        let name = match c {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => n,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(fail("resolve", nix::Error::EINVAL.into()));
            }
        };
        prefix.push(name);
        parent = match openat2(&rootfd, &prefix, how()) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => {
                match mkdirat(&parent, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(nix::Error::EEXIST) => {}
                    Err(e) => return Err(fail("mkdir", e.into())),
                }
                openat2(&rootfd, &prefix, how()).map_err(|e| fail("open", e.into()))?
            }
            Err(e) => return Err(fail("open", e.into())),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields_are_checked() {
        assert!(matches!(
            Source::from_request("", "", ""),
            Err(RootfsError::Source)
        ));
        assert!(matches!(
            Source::from_request("/a", "/dev/vda", "erofs"),
            Err(RootfsError::Source)
        ));
        assert!(matches!(
            Source::from_request("rel", "", ""),
            Err(RootfsError::Path(_))
        ));
        assert!(matches!(
            Source::from_request("/a/../b", "", ""),
            Err(RootfsError::Path(_))
        ));
        assert!(matches!(
            Source::from_request("", "/dev/../etc/x", "erofs"),
            Err(RootfsError::Device(_))
        ));
        assert!(matches!(
            Source::from_request("", "/tmp/x", "erofs"),
            Err(RootfsError::Device(_))
        ));
        assert!(matches!(
            Source::from_request("", "/dev/vdb", "xfs"),
            Err(RootfsError::Fstype(_))
        ));
        assert!(Source::from_request("", "/dev/vdb", "erofs").is_ok());
        assert!(Source::from_request("/r", "", "").is_ok());
    }

    #[test]
    fn upper_layer_fields_are_checked() {
        assert_eq!(Upper::from_request(false, "", "").unwrap(), None);
        assert_eq!(
            Upper::from_request(true, "", "").unwrap(),
            Some(Upper::Tmpfs)
        );
        assert_eq!(
            Upper::from_request(true, "/dev/vdb", "ext4").unwrap(),
            Some(Upper::Block {
                device: PathBuf::from("/dev/vdb"),
                fstype: "ext4".into()
            })
        );
        assert!(matches!(
            Upper::from_request(false, "/dev/vdb", "ext4"),
            Err(RootfsError::UpperWithoutOverlay)
        ));
        for bad in ["/dev/../vda", "/tmp/disk", "/dev/", "vdb", "/dev/vd b"] {
            assert!(
                matches!(
                    Upper::from_request(true, bad, "ext4"),
                    Err(RootfsError::UpperDevice(_))
                ),
                "{bad}"
            );
        }
        // erofs is read-only: no upper layer on it.
        for bad in ["erofs", "", "tmpfs", "xfs"] {
            let e = Upper::from_request(true, "/dev/vdb", bad).unwrap_err();
            assert!(matches!(e, RootfsError::UpperFstype(_)), "{bad}");
            assert!(e.to_string().contains("rootfs.upper_fstype"), "{e}");
        }
    }

    #[test]
    fn blkflsbuf_is_the_kernels() {
        assert_eq!(BLKFLSBUF, 0x1261);
    }

    #[test]
    fn overlay_keeps_inode_numbers_consistent() {
        assert_eq!(
            overlay_data(
                Path::new("/b/lower"),
                Path::new("/b/rw/u"),
                Path::new("/b/rw/w")
            ),
            "lowerdir=/b/lower,upperdir=/b/rw/u,workdir=/b/rw/w,xino=on"
        );
    }

    #[test]
    fn working_directories_are_made_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("srv")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        make_dir_in(&root, Path::new("/a/b/c")).unwrap();
        assert!(root.join("a/b/c").is_dir());
        make_dir_in(&root, Path::new("/a/b/c")).unwrap(); // already there
        // A relative symlink inside the image is followed inside the root.
        std::os::unix::fs::symlink("srv", root.join("app")).unwrap();
        make_dir_in(&root, Path::new("/app/data")).unwrap();
        assert!(root.join("srv/data").is_dir());
        // One aiming outside (absolute, or climbing with ..) is read as inside the root,
        // where its target is missing: an error, and nothing made outside.
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("rel")).unwrap();
        assert!(make_dir_in(&root, Path::new("/abs/x")).is_err());
        assert!(make_dir_in(&root, Path::new("/rel/y")).is_err());
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "wrote outside"
        );
        // A file where a folder should be is an error naming the path.
        std::fs::write(root.join("file"), b"").unwrap();
        let err = make_dir_in(&root, Path::new("/file/z"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/file/z"), "{err}");
    }
}
