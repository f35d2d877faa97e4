//! `oci-archive:FILE`: a tar of an OCI image layout, extracted in-process into husk's
//! scratch folder. Only the layout's own files are written: `oci-layout`,
//! `index.json` (each at most 4 MiB) and `blobs/sha256/<64 hex>` (all blobs together
//! at most `image.max_layer_bytes`), each created anew (O_EXCL|O_NOFOLLOW, mode 0600).
//! Any entry that is a link (symbolic or hard), a device, a FIFO or a sparse file, or
//! whose name is absolute or has a `..` component, is refused (the whole archive is),
//! wherever it stands; other regular files and folders (docker's `manifest.json` and
//! `repositories`, blobs of other algorithms, which no digest husk accepts can name)
//! are skipped.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

use tar::EntryType;

use super::layout::MAX_INDEX_BYTES;
use super::{ImageError, Limits};

/// Where an archive entry goes.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// The layout's root, `blobs` or `blobs/<alg>`: folders husk makes itself.
    Folder,
    /// `oci-layout` or `index.json`.
    Meta(String),
    /// `blobs/sha256/<hex>`.
    Blob(String),
    /// Anything else: not written.
    Skip,
}

/// Classifies an entry name: `Err` for one that is absolute or has `..`.
fn place(name: &str) -> Result<Place, &'static str> {
    if name.starts_with('/') {
        return Err("an absolute path");
    }
    let mut parts = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().ok_or("a name that is not UTF-8")?),
            Component::CurDir => {}
            Component::ParentDir => return Err("a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path"),
        }
    }
    Ok(match parts[..] {
        [] | ["blobs"] | ["blobs", _] => Place::Folder,
        [m @ ("oci-layout" | "index.json")] => Place::Meta(m.to_string()),
        ["blobs", "sha256", hex] => {
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err("not a blob name (blobs/sha256/<64 lowercase hex>)");
            }
            Place::Blob(hex.to_string())
        }
        _ => Place::Skip,
    })
}

/// Extracts the layout in `file` into `dest` (an empty folder of husk's own).
pub(super) fn extract(file: &Path, dest: &Path, limits: &Limits) -> Result<(), ImageError> {
    let f = std::fs::File::open(file).map_err(|err| ImageError::Io {
        path: file.to_path_buf(),
        err,
    })?;
    let bad = |entry: &str, what: String| ImageError::Archive {
        path: file.to_path_buf(),
        entry: entry.to_string(),
        what,
    };
    let broken = |err: io::Error| ImageError::Archive {
        path: file.to_path_buf(),
        entry: String::new(),
        what: format!("not a valid tar archive: {err}"),
    };
    let blobs = dest.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|err| ImageError::Io {
        path: blobs.clone(),
        err,
    })?;
    let mut archive = tar::Archive::new(io::BufReader::new(f));
    let mut blob_bytes = 0u64;
    let (mut written, mut skipped) = (0usize, 0usize);
    for entry in archive.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let place = place(&name).map_err(|why| bad(&name, format!("refused: {why}")))?;
        match kind {
            EntryType::Regular | EntryType::Continuous => {}
            EntryType::Directory => continue,
            EntryType::XGlobalHeader => continue,
            other => {
                return Err(bad(
                    &name,
                    format!(
                        "refused: {} (an OCI layout holds only files)",
                        kind_name(other)
                    ),
                ));
            }
        }
        let size = entry.size();
        let path = match &place {
            Place::Folder => return Err(bad(&name, "a file where a folder belongs".into())),
            Place::Skip => {
                tracing::debug!(archive = %file.display(), entry = %name, "archive entry skipped");
                skipped += 1;
                continue;
            }
            Place::Meta(m) => {
                if size > MAX_INDEX_BYTES {
                    return Err(ImageError::TooLarge {
                        path: file.to_path_buf(),
                        what: name.clone(),
                        limit: MAX_INDEX_BYTES,
                        setting: "husk's fixed limit for this kind of document",
                    });
                }
                dest.join(m)
            }
            Place::Blob(hex) => {
                blob_bytes = blob_bytes.saturating_add(size);
                if blob_bytes > limits.max_layer_bytes {
                    return Err(ImageError::TooLarge {
                        path: file.to_path_buf(),
                        what: format!("the blobs up to {name}"),
                        limit: limits.max_layer_bytes,
                        setting: "image.max_layer_bytes",
                    });
                }
                blobs.join(hex)
            }
        };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|err| match err.kind() {
                io::ErrorKind::AlreadyExists => bad(&name, "appears twice".into()),
                _ => ImageError::Io {
                    path: path.clone(),
                    err,
                },
            })?;
        let n = io::copy(&mut (&mut entry).take(size), &mut out).map_err(broken)?;
        if n != size {
            return Err(bad(&name, format!("cut short: {n} of {size} bytes")));
        }
        written += 1;
    }
    tracing::debug!(archive = %file.display(), written, skipped, blob_bytes, "archive extracted");
    Ok(())
}

fn kind_name(t: EntryType) -> &'static str {
    match t {
        EntryType::Symlink => "a symlink",
        EntryType::Link => "a hard link",
        EntryType::Char => "a character device",
        EntryType::Block => "a block device",
        EntryType::Fifo => "a FIFO",
        EntryType::GNUSparse => "a sparse file",
        _ => "an entry of an unsupported type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        let hex = "a".repeat(64);
        assert_eq!(place("./"), Ok(Place::Folder));
        assert_eq!(place("./blobs/sha256/"), Ok(Place::Folder));
        assert_eq!(place("./index.json"), Ok(Place::Meta("index.json".into())));
        assert_eq!(place("oci-layout"), Ok(Place::Meta("oci-layout".into())));
        assert_eq!(
            place(&format!("./blobs/sha256/{hex}")),
            Ok(Place::Blob(hex.clone()))
        );
        assert_eq!(place("manifest.json"), Ok(Place::Skip));
        assert_eq!(place(&format!("blobs/sha512/{hex}")), Ok(Place::Skip));
        assert!(place("/etc/passwd").is_err());
        assert!(place("blobs/../../x").is_err());
        assert!(place("../index.json").is_err());
        assert!(place("blobs/sha256/../../../x").is_err());
        assert!(place("blobs/sha256/ABC").is_err());
    }
}
