//! Builders for the hostile-image tests: OCI image layouts written by hand, and tar
//! streams whose entries may have any name, type and link target (the `tar` crate's
//! own setters refuse `..` and absolute names; these write the header fields raw).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn sha(bytes: &[u8]) -> String {
    let h: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{h}")
}

/// An OCI image layout being written.
pub struct Oci {
    pub dir: PathBuf,
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

impl Oci {
    pub fn new(dir: &Path) -> Oci {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Oci {
            dir: dir.to_path_buf(),
        }
    }

    /// `oci:DIR`.
    pub fn arg(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Stores `bytes` as a blob; its descriptor's digest and size.
    pub fn add_blob(&self, bytes: &[u8]) -> (String, usize) {
        let d = sha(bytes);
        std::fs::write(self.blob_path(&d), bytes).unwrap();
        (d, bytes.len())
    }

    /// An image of uncompressed `layers`, tagged latest; the manifest's digest.
    pub fn image(&self, layers: &[Vec<u8>]) -> String {
        self.image_with(layers, |_| {})
    }

    /// [`Oci::image`], with `edit` applied to the manifest before it is stored.
    pub fn image_with(&self, layers: &[Vec<u8>], edit: impl FnOnce(&mut Value)) -> String {
        let blobs: Vec<(Vec<u8>, &str, String)> =
            layers.iter().map(|l| (l.clone(), TAR, sha(l))).collect();
        self.store(&blobs, edit)
    }

    /// An image of gzip-compressed layers (given compressed; the diff_ids are not
    /// those of their content: these images are refused before that matters).
    pub fn image_gzip(&self, layers: &[Vec<u8>]) -> String {
        let blobs: Vec<(Vec<u8>, &str, String)> = layers
            .iter()
            .map(|l| (l.clone(), TAR_GZIP, sha(l)))
            .collect();
        self.store(&blobs, |_| {})
    }

    fn store(&self, layers: &[(Vec<u8>, &str, String)], edit: impl FnOnce(&mut Value)) -> String {
        let arch = if cfg!(target_arch = "x86_64") {
            "amd64"
        } else {
            "arm64"
        };
        let config = json!({"architecture": arch, "os": "linux",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers",
                "diff_ids": layers.iter().map(|l| l.2.clone()).collect::<Vec<_>>()}});
        let (cd, cs) = self.add_blob(config.to_string().as_bytes());
        let descs: Vec<Value> = layers
            .iter()
            .map(|(bytes, mt, _)| {
                let (d, s) = self.add_blob(bytes);
                json!({"mediaType": mt, "digest": d, "size": s})
            })
            .collect();
        let mut manifest = json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cd, "size": cs},
            "layers": descs});
        edit(&mut manifest);
        let (md, ms) = self.add_blob(manifest.to_string().as_bytes());
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
        md
    }
}

/// A tar stream being written.
pub struct Tar<W: Write = Vec<u8>> {
    b: tar::Builder<W>,
}

fn raw(field: &mut [u8; 100], value: &str) {
    assert!(
        value.len() < 100,
        "{value}: too long for a plain tar header"
    );
    *field = [0; 100];
    field[..value.len()].copy_from_slice(value.as_bytes());
}

impl Tar<Vec<u8>> {
    pub fn new() -> Tar<Vec<u8>> {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

impl Tar<flate2::write::GzEncoder<Vec<u8>>> {
    pub fn gzip() -> Self {
        let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        Tar {
            b: tar::Builder::new(enc),
        }
    }

    pub fn finish_gzip(self) -> Vec<u8> {
        self.b.into_inner().unwrap().finish().unwrap()
    }
}

impl<W: Write> Tar<W> {
    fn entry(
        &mut self,
        kind: tar::EntryType,
        name: &str,
        link: &str,
        mode: u32,
        size: u64,
        data: impl std::io::Read,
    ) {
        let mut h = tar::Header::new_gnu();
        raw(&mut h.as_old_mut().name, name);
        raw(&mut h.as_old_mut().linkname, link);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
    }

    pub fn dir(&mut self, name: &str, mode: u32) {
        self.entry(tar::EntryType::Directory, name, "", mode, 0, &[][..]);
    }

    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) {
        self.entry(
            tar::EntryType::Regular,
            name,
            "",
            mode,
            data.len() as u64,
            data,
        );
    }

    /// A regular file under any name (`..`, absolute).
    pub fn raw_file(&mut self, name: &str, data: &[u8]) {
        self.file(name, data, 0o644);
    }

    /// `size` zero bytes, streamed.
    pub fn file_of_zeros(&mut self, name: &str, size: u64) {
        let zeros = std::io::Read::take(std::io::repeat(0), size);
        self.entry(tar::EntryType::Regular, name, "", 0o644, size, zeros);
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(tar::EntryType::Symlink, name, target, 0o777, 0, &[][..]);
    }

    pub fn hardlink(&mut self, name: &str, target: &str) {
        self.entry(tar::EntryType::Link, name, target, 0o644, 0, &[][..]);
    }

    pub fn fifo(&mut self, name: &str) {
        self.entry(tar::EntryType::Fifo, name, "", 0o644, 0, &[][..]);
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        let mut h = tar::Header::new_gnu();
        raw(&mut h.as_old_mut().name, name);
        h.set_entry_type(tar::EntryType::Char);
        h.set_mode(0o666);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.b.append(&h, &[][..]).unwrap();
    }

    /// The files of the OCI image layout at `dir`, as `tar -C dir -cf - .` writes them.
    pub fn layout(&mut self, dir: &Path) {
        self.dir("./", 0o755);
        for name in ["oci-layout", "index.json"] {
            self.file(
                &format!("./{name}"),
                &std::fs::read(dir.join(name)).unwrap(),
                0o644,
            );
        }
        self.dir("./blobs/", 0o755);
        self.dir("./blobs/sha256/", 0o755);
        for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let name = format!("./blobs/sha256/{}", e.file_name().to_string_lossy());
            self.file(&name, &std::fs::read(e.path()).unwrap(), 0o644);
        }
    }
}
