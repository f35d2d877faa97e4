//! What husk-vmm sees in its jail: the root plan. The jail's `/` is a small tmpfs on
//! `<vm dir>/root` (in husk-vmm's own mount namespace only) holding exactly:
//!
//! - husk-vmm's binary and the shared libraries it loads (read-only, at their host
//!   paths, found with `ldd`);
//! - the kernel, the initramfs and each disk image at the path vm.json names them
//!   (read-only unless the disk is writable);
//! - the sandbox folder itself, read-write (husk-vmm's vsock and console files; the
//!   runtime reaches the same sockets by the same paths on the host);
//! - `/dev/kvm` (a node of its own owned by the VM's uid, mode 0600, as Firecracker's
//!   jailer makes one) and `/dev/urandom` (virtio-rng's source).
//!
//! Every other host path is absent: no /proc, /sys, /etc, /tmp. Taps are inherited as
//! descriptors, so /dev/net/tun is not there. Paths are kept as the host names them
//! so vm.json needs no rewriting; their parent folders in the jail are the tmpfs's own
//! (mode 0755), so the host's folder permissions are not what guards them there.

use std::path::{Component, Path, PathBuf};

/// Why the plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("jail: {path}: a jailed husk-vmm needs absolute paths")]
    Relative { path: PathBuf },
    #[error("jail: {path}")]
    Stat {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("jail: cannot list the libraries of {path} with ldd: {why}")]
    Ldd { path: PathBuf, why: String },
}

/// One bind mount into the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path (also where it appears in the jail).
    pub path: PathBuf,
    pub dir: bool,
    pub writable: bool,
    /// Whether files from it may be executed (husk-vmm and its libraries only).
    pub exec: bool,
}

/// A device node made in the jail's /dev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub path: &'static str,
    pub rdev: u64,
    pub mode: u32,
    /// Owned by the VM's uid (else root).
    pub owned: bool,
}

/// Everything the jail's root holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Where the root is on the host (`<vm dir>/root`).
    pub root: PathBuf,
    /// Folders to make in the root, parents first (paths inside the jail).
    pub dirs: Vec<PathBuf>,
    pub binds: Vec<Bind>,
    pub nodes: Vec<Node>,
}

/// What husk-vmm is given, as the plan takes it.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub vm_dir: &'a Path,
    pub vmm: &'a Path,
    pub libraries: &'a [PathBuf],
    /// Files read only: kernel, initramfs, read-only disks.
    pub read_only: Vec<&'a Path>,
    /// Files written: writable disks.
    pub writable: Vec<&'a Path>,
    /// `/dev/kvm`'s and `/dev/urandom`'s device numbers.
    pub kvm_rdev: u64,
    pub urandom_rdev: u64,
}

fn absolute(p: &Path) -> Result<(), RootError> {
    if p.is_absolute() && !p.components().any(|c| matches!(c, Component::ParentDir)) {
        Ok(())
    } else {
        Err(RootError::Relative {
            path: p.to_path_buf(),
        })
    }
}

/// The plan for `inputs` (pure: nothing is touched).
pub fn plan(inputs: &Inputs) -> Result<Plan, RootError> {
    let mut binds = vec![Bind {
        path: inputs.vm_dir.to_path_buf(),
        dir: true,
        writable: true,
        exec: false,
    }];
    let exe = std::iter::once(inputs.vmm).chain(inputs.libraries.iter().map(PathBuf::as_path));
    for p in exe {
        binds.push(Bind {
            path: p.to_path_buf(),
            dir: false,
            writable: false,
            exec: true,
        });
    }
    for (p, writable) in inputs
        .read_only
        .iter()
        .map(|p| (*p, false))
        .chain(inputs.writable.iter().map(|p| (*p, true)))
    {
        binds.push(Bind {
            path: p.to_path_buf(),
            dir: false,
            writable,
            exec: false,
        });
    }
    for b in &binds {
        absolute(&b.path)?;
    }
    // One bind per path (a writable one wins); nothing below the sandbox folder, which
    // is bound whole (a mount point made there would land in the host's folder).
    let mut kept: Vec<Bind> = Vec::new();
    for b in binds {
        if let Some(k) = kept.iter_mut().find(|k| k.path == b.path) {
            k.writable |= b.writable;
            continue;
        }
        if b.path != inputs.vm_dir && b.path.starts_with(inputs.vm_dir) {
            continue;
        }
        kept.push(b);
    }
    let mut dirs: Vec<PathBuf> = vec![PathBuf::from("/dev")];
    for b in &kept {
        for a in b
            .path
            .ancestors()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            if a != Path::new("/") && !dirs.iter().any(|d| d == a) {
                dirs.push(a.to_path_buf());
            }
        }
    }
    Ok(Plan {
        root: crate::layout::SandboxDir::new(inputs.vm_dir).jail_root(),
        dirs,
        binds: kept,
        nodes: vec![
            Node {
                path: "/dev/kvm",
                rdev: inputs.kvm_rdev,
                mode: 0o600,
                owned: true,
            },
            Node {
                path: "/dev/urandom",
                rdev: inputs.urandom_rdev,
                mode: 0o444,
                owned: false,
            },
        ],
    })
}

/// The shared libraries `ldd` lists for `exe` (with the program interpreter), as
/// absolute paths. A static binary has none.
pub fn libraries(exe: &Path) -> Result<Vec<PathBuf>, RootError> {
    let err = |why: String| RootError::Ldd {
        path: exe.to_path_buf(),
        why,
    };
    let out = std::process::Command::new("ldd")
        .arg(exe)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable" (exit 1): a static husk-vmm needs nothing.
        let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(err(format!("{}: {}", out.status, all.trim())));
    }
    parse_ldd(&text).map_err(err)
}

/// The paths in `ldd`'s output; an unresolved library ("not found") is an error.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(format!("a library is missing: {line}"));
        }
        if line.contains("statically linked") {
            continue;
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1 (0x...)" has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD: &str = "\tlinux-vdso.so.1 (0x00007fb02cd6e000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007fb02cd3d000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fb02c21e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fb02cd70000)
";

    #[test]
    fn ldd_output_gives_the_files() {
        assert_eq!(
            parse_ldd(LDD).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
        assert_eq!(
            parse_ldd("\tstatically linked\n").unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    fn inputs<'a>(libs: &'a [PathBuf]) -> Inputs<'a> {
        Inputs {
            vm_dir: Path::new("/run/husk/web/vm"),
            vmm: Path::new("/usr/bin/husk-vmm"),
            libraries: libs,
            read_only: vec![
                Path::new("/var/lib/husk/guest/vmlinuz"),
                Path::new("/var/lib/husk/guest/initramfs.img"),
                Path::new("/var/lib/husk/images/ab.erofs"),
            ],
            writable: vec![Path::new("/var/lib/husk/scratch/web.img")],
            kvm_rdev: 1,
            urandom_rdev: 2,
        }
    }

    #[test]
    fn the_root_holds_only_what_husk_vmm_needs() {
        let libs = parse_ldd(LDD).unwrap();
        let p = plan(&inputs(&libs)).unwrap();
        assert_eq!(p.root, Path::new("/run/husk/web/vm/root"));
        let binds: Vec<(&str, bool, bool, bool)> = p
            .binds
            .iter()
            .map(|b| (b.path.to_str().unwrap(), b.dir, b.writable, b.exec))
            .collect();
        assert_eq!(
            binds,
            vec![
                ("/run/husk/web/vm", true, true, false),
                ("/usr/bin/husk-vmm", false, false, true),
                ("/lib/x86_64-linux-gnu/libgcc_s.so.1", false, false, true),
                ("/lib/x86_64-linux-gnu/libc.so.6", false, false, true),
                ("/lib64/ld-linux-x86-64.so.2", false, false, true),
                ("/var/lib/husk/guest/vmlinuz", false, false, false),
                ("/var/lib/husk/guest/initramfs.img", false, false, false),
                ("/var/lib/husk/images/ab.erofs", false, false, false),
                ("/var/lib/husk/scratch/web.img", false, true, false),
            ]
        );
        // Parents before children, each once.
        let dirs: Vec<&str> = p.dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(
            dirs,
            vec![
                "/dev",
                "/run",
                "/run/husk",
                "/run/husk/web",
                "/usr",
                "/usr/bin",
                "/lib",
                "/lib/x86_64-linux-gnu",
                "/lib64",
                "/var",
                "/var/lib",
                "/var/lib/husk",
                "/var/lib/husk/guest",
                "/var/lib/husk/images",
                "/var/lib/husk/scratch",
            ]
        );
        let nodes: Vec<(&str, u32, bool)> =
            p.nodes.iter().map(|n| (n.path, n.mode, n.owned)).collect();
        assert_eq!(
            nodes,
            vec![("/dev/kvm", 0o600, true), ("/dev/urandom", 0o444, false)]
        );
    }

    #[test]
    fn duplicates_merge_and_files_in_the_vm_folder_ride_along() {
        let mut i = inputs(&[]);
        i.read_only.push(Path::new("/var/lib/husk/scratch/web.img"));
        i.read_only.push(Path::new("/run/husk/web/vm/disk.img"));
        let p = plan(&i).unwrap();
        let web: Vec<&Bind> = p
            .binds
            .iter()
            .filter(|b| b.path.ends_with("web.img"))
            .collect();
        assert_eq!(web.len(), 1);
        assert!(web[0].writable, "the writable use of a disk must win");
        assert!(!p.binds.iter().any(|b| b.path.ends_with("disk.img")));
    }

    #[test]
    fn relative_paths_are_refused() {
        let mut i = inputs(&[]);
        i.read_only.push(Path::new("build/guest/vmlinuz"));
        let e = plan(&i).unwrap_err();
        assert!(e.to_string().contains("build/guest/vmlinuz"), "{e}");
        let mut i = inputs(&[]);
        i.read_only.push(Path::new("/var/../etc/shadow"));
        assert!(plan(&i).is_err());
    }
}
