//! `user[:group]` resolved the way runc users expect: names looked up in the
//! container's own /etc/passwd and /etc/group (never the guest's, never NSS),
//! supplementary groups from /etc/group, numbers taken as they are.

use std::path::Path;

/// Largest /etc/passwd or /etc/group read.
const MAX_FILE: u64 = 4 << 20;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: Option<String>,
}

/// Why a user could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?}: no such user in the container's /etc/passwd")]
    NoUser(String),
    #[error("user: group {0:?}: no such group in the container's /etc/group")]
    NoGroup(String),
    #[error("user {0:?}: expected USER[:GROUP] (names or numbers)")]
    Format(String),
}

struct Entry {
    name: String,
    id: u32,
    gid: u32,
    home: String,
    members: Vec<String>,
}

/// Reads `rel` (e.g. "etc/passwd") of the container's root, resolved as the container
/// would see it: with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so an absolute
/// or `..` symlink in the image stays inside the root and never reaches the guest's
/// own files; opened non-blocking and checked to be a regular file after opening (a
/// FIFO or a device there must not hang the agent, and cannot be swapped in between a
/// check and the read); at most [`MAX_FILE`] bytes read. Missing, unreadable, not a
/// regular file, too large: as if empty (images without /etc/passwd are common), with
/// a log line for the odd cases.
fn read_small(rootfs: &Path, rel: &str) -> String {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    use std::io::Read;
    let root = match std::fs::File::open(rootfs) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(rootfs = %rootfs.display(), error = %e, "cannot open the container's root");
            return String::new();
        }
    };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(&root, rel, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => return String::new(),
        Err(e) => {
            tracing::warn!(file = rel, error = %e, "cannot open in the container's root; taken as empty");
            return String::new();
        }
    };
    let file = std::fs::File::from(fd);
    match file.metadata() {
        Ok(m) if m.is_file() && m.len() <= MAX_FILE => {}
        Ok(m) => {
            tracing::warn!(
                file = rel,
                regular = m.is_file(),
                len = m.len(),
                "not a regular file of at most 4 MiB; taken as empty"
            );
            return String::new();
        }
        Err(_) => return String::new(),
    }
    let mut buf = Vec::new();
    // Bounded even if the file grows after the check.
    if file.take(MAX_FILE).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn passwd(rootfs: &Path) -> Vec<Entry> {
    read_small(rootfs, "etc/passwd")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Entry {
                name: f[0].to_string(),
                id: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                members: Vec::new(),
            })
        })
        .collect()
}

fn group(rootfs: &Path) -> Vec<Entry> {
    read_small(rootfs, "etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Entry {
                name: f[0].to_string(),
                id: f[2].parse().ok()?,
                gid: 0,
                home: String::new(),
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `spec` ("user", "user:group", "uid:gid", ...) inside `rootfs`.
pub fn resolve(rootfs: &Path, spec: &str) -> Result<Resolved, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || grp.is_some_and(str::is_empty) {
        return Err(UserError::Format(spec.to_string()));
    }
    let users = passwd(rootfs);
    let found = match user.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.id == uid),
        Err(_) => Some(
            users
                .iter()
                .find(|e| e.name == user)
                .ok_or_else(|| UserError::NoUser(user.to_string()))?,
        ),
    };
    let uid = match (user.parse::<u32>(), found) {
        (Ok(uid), _) => uid,
        (Err(_), Some(e)) => e.id,
        (Err(_), None) => return Err(UserError::NoUser(user.to_string())),
    };
    let groups = group(rootfs);
    let gid = match grp {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.id)
                .ok_or_else(|| UserError::NoGroup(g.to_string()))?,
        },
        None => found.map(|e| e.gid).unwrap_or(0),
    };
    // Supplementary groups: those listing the user's name (only when no explicit group
    // was asked for, as docker does).
    let mut additional_gids = Vec::new();
    if grp.is_none()
        && let Some(e) = found
    {
        for g in &groups {
            if g.members.contains(&e.name) && g.id != gid && !additional_gids.contains(&g.id) {
                additional_gids.push(g.id);
            }
        }
    }
    Ok(Resolved {
        uid,
        gid,
        additional_gids,
        home: found.map(|e| e.home.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\naudio:x:29:alice\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn names_and_numbers() {
        let d = rootfs();
        let r = resolve(d.path(), "alice").unwrap();
        assert_eq!(
            (r.uid, r.gid, r.additional_gids),
            (1000, 1000, vec![10, 29])
        );
        assert_eq!(r.home.as_deref(), Some("/home/alice"));
        let r = resolve(d.path(), "alice:wheel").unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids.len()), (1000, 10, 0));
        let r = resolve(d.path(), "4242:4343").unwrap();
        assert_eq!((r.uid, r.gid), (4242, 4343));
        let r = resolve(d.path(), "4242").unwrap();
        assert_eq!((r.uid, r.gid), (4242, 0));
    }

    #[test]
    fn unknown_names_are_errors() {
        let d = rootfs();
        assert_eq!(
            resolve(d.path(), "mallory"),
            Err(UserError::NoUser("mallory".into()))
        );
        assert_eq!(
            resolve(d.path(), "alice:nogroup"),
            Err(UserError::NoGroup("nogroup".into()))
        );
        assert!(resolve(d.path(), ":x").is_err());
        assert!(resolve(d.path(), "alice:").is_err());
    }

    #[test]
    fn no_etc_at_all() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(resolve(d.path(), "0").unwrap().uid, 0);
        assert!(resolve(d.path(), "root").is_err());
    }

    /// A passwd file outside the container's root, and an image whose /etc/passwd
    /// points at it (absolutely, and by `..`): the lookup must not see it.
    #[test]
    fn symlinks_out_of_the_root_stay_inside() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("passwd");
        std::fs::write(&target, "mallory:x:666:666::/:/bin/sh\n").unwrap();
        let dots = format!("../../../../../../../..{}", target.display());
        for link in [target.display().to_string(), dots] {
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir(d.path().join("etc")).unwrap();
            std::os::unix::fs::symlink(&link, d.path().join("etc/passwd")).unwrap();
            assert_eq!(
                resolve(d.path(), "mallory"),
                Err(UserError::NoUser("mallory".into())),
                "followed {link} out of the root"
            );
        }
        // A symlink that stays inside resolves as it would in the container.
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        std::fs::write(
            d.path().join("usr/lib/passwd"),
            "bob:x:5:5::/home/bob:/bin/sh\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/usr/lib/passwd", d.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve(d.path(), "bob").unwrap().uid, 5);
    }

    /// A FIFO or a huge file as /etc/group: no hang, no unbounded read.
    #[test]
    fn fifos_and_huge_files_are_taken_as_empty() {
        let d = rootfs();
        let group = d.path().join("etc/group");
        std::fs::remove_file(&group).unwrap();
        nix::unistd::mkfifo(&group, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let root = d.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(resolve(&root, "alice:wheel"));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("resolve hung on a FIFO");
        assert_eq!(r, Err(UserError::NoGroup("wheel".into())));
        std::fs::remove_file(&group).unwrap();
        let f = std::fs::File::create(&group).unwrap();
        f.set_len(MAX_FILE + 1).unwrap();
        assert_eq!(
            resolve(d.path(), "alice:wheel"),
            Err(UserError::NoGroup("wheel".into()))
        );
    }
}
