//! Checks an image's layers before anything is unpacked (image-spec `layer.md`,
//! `manifest.md`): the media types husk can unpack (tar, tar+gzip), the sizes the
//! manifest declares (their sum against `image.max_layer_bytes`), then each layer read
//! once, in-process: its blob must have the declared size and digest, and what it
//! unpacks to must stay within `image.max_unpacked_bytes` over all layers.
//!
//! What a layer unpacks to is bounded two ways, both against the same budget: the
//! bytes of the decompressed tar stream (a gzip bomb stops at the budget, decompressed
//! no further), and the sum of the sizes its tar headers declare plus 512 bytes a
//! header (a sparse file's logical size counts in full: a 20 GB sparse file is
//! refused from its header, without reading 20 GB). The count stops as soon as either
//! passes the budget, so a refused image costs at most the budget's worth of reading.

use std::cell::Cell;
use std::io::{self, Read};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::layout::{Descriptor, Layout, hex_of};
use super::{ImageError, Limits};

/// How a layer's blob is compressed (only what umoci unpacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
}

fn compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Compression::Gzip),
        _ => None,
    }
}

/// A layer as the manifest lists it.
#[derive(Debug, Clone)]
struct Layer {
    desc: Descriptor,
    compression: Compression,
}

/// Reads through to `inner`, hashing what passes and counting it; more than `limit`
/// bytes is an error (a blob larger than its descriptor says).
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
    limit: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        if self.n > self.limit {
            return Err(io::Error::other(
                "the blob is larger than its descriptor says",
            ));
        }
        Ok(n)
    }
}

/// Counts the bytes read through it against the unpack budget; past it, an error (and
/// `over` is set, to tell this apart from a broken stream).
struct Counting<'a, R> {
    inner: R,
    used: &'a Cell<u64>,
    budget: u64,
    over: &'a Cell<bool>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.used.get().saturating_add(n as u64);
        self.used.set(used);
        if used > self.budget {
            self.over.set(true);
            return Err(io::Error::other("over the unpack budget"));
        }
        Ok(n)
    }
}

/// The layers of `manifest`, checked as the module header says. Returns their
/// digests, in order.
pub(super) fn check(
    layout: &Layout,
    manifest: &Value,
    limits: &Limits,
) -> Result<Vec<String>, ImageError> {
    let layers = listed(layout, manifest)?;
    let declared: u64 = layers
        .iter()
        .fold(0u64, |a, l| a.saturating_add(l.desc.size));
    if declared > limits.max_layer_bytes {
        return Err(ImageError::TooLarge {
            path: layout.path.clone(),
            what: format!(
                "the manifest's {} layers declare {declared} bytes",
                layers.len()
            ),
            limit: limits.max_layer_bytes,
            setting: "image.max_layer_bytes",
        });
    }
    // Both counts, over all layers.
    let (stream, headers) = (Cell::new(0u64), Cell::new(0u64));
    for l in &layers {
        scan(layout, l, limits.max_unpacked_bytes, &stream, &headers)?;
    }
    tracing::debug!(
        layers = layers.len(),
        compressed = declared,
        stream = stream.get(),
        declared_entries = headers.get(),
        "image layers checked"
    );
    Ok(layers.into_iter().map(|l| l.desc.digest).collect())
}

fn listed(layout: &Layout, manifest: &Value) -> Result<Vec<Layer>, ImageError> {
    let bad = |what: String| ImageError::Layout {
        path: layout.path.clone(),
        what,
    };
    let Some(list) = manifest["layers"].as_array() else {
        return Err(bad("manifest: no layers list".into()));
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let desc = Descriptor::of(v)
                .ok_or_else(|| bad(format!("manifest: layer {i} lacks a digest or a size")))?;
            let mt = v["mediaType"].as_str().unwrap_or("");
            let compression = compression(mt).ok_or_else(|| {
                bad(format!(
                    "layer {}: media type {mt:?} is not supported (tar and tar+gzip are)",
                    desc.digest
                ))
            })?;
            Ok(Layer { desc, compression })
        })
        .collect()
}

/// The size a tar entry unpacks to: a sparse file's logical size (GNU sparse entries:
/// the tar crate reports it; PAX sparse: `GNU.sparse.realsize` / `GNU.sparse.size`).
fn entry_size<R: Read>(e: &mut tar::Entry<'_, R>) -> u64 {
    let mut size = e.size();
    if let Ok(Some(pax)) = e.pax_extensions() {
        for ext in pax.flatten() {
            if matches!(ext.key(), Ok("GNU.sparse.realsize" | "GNU.sparse.size"))
                && let Some(n) = ext.value().ok().and_then(|v| v.trim().parse::<u64>().ok())
            {
                size = size.max(n);
            }
        }
    }
    size
}

/// Reads one layer through: digest, size and the unpack budget (`stream`, `headers`:
/// the counts so far, over all layers).
fn scan(
    layout: &Layout,
    layer: &Layer,
    budget: u64,
    stream: &Cell<u64>,
    headers: &Cell<u64>,
) -> Result<(), ImageError> {
    let digest = &layer.desc.digest;
    let (file, size) = layout.open_blob(digest, "layer")?;
    let bad = |what: String| ImageError::Layout {
        path: layout.path.clone(),
        what: format!("layer {digest}: {what}"),
    };
    if size != layer.desc.size {
        return Err(bad(format!(
            "the blob has {size} bytes, the manifest says {}",
            layer.desc.size
        )));
    }
    let over_budget = |what: String| ImageError::TooLarge {
        path: layout.path.clone(),
        what: format!("layer {digest}: {what}"),
        limit: budget,
        setting: "image.max_unpacked_bytes",
    };
    let mut blob = Hashing {
        inner: io::BufReader::new(file),
        hasher: Sha256::new(),
        n: 0,
        limit: size,
    };
    let over = Cell::new(false);
    let decompressed: Box<dyn Read + '_> = match layer.compression {
        Compression::None => Box::new(&mut blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
    };
    let mut counted = Counting {
        inner: decompressed,
        used: stream,
        budget,
        over: &over,
    };
    let mut broken: Option<String> = None;
    {
        let mut archive = tar::Archive::new(&mut counted);
        match archive.entries() {
            Ok(entries) => {
                for e in entries {
                    let mut e = match e {
                        Ok(e) => e,
                        Err(err) => {
                            broken = Some(format!("not a valid tar stream: {err}"));
                            break;
                        }
                    };
                    let n = entry_size(&mut e).saturating_add(512);
                    let total = headers.get().saturating_add(n);
                    headers.set(total);
                    if total > budget {
                        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                        return Err(over_budget(format!(
                            "entry {name:?} ({} bytes) brings the image past the limit",
                            n - 512
                        )));
                    }
                }
            }
            Err(err) => broken = Some(format!("not a valid tar stream: {err}")),
        }
    }
    if over.get() {
        return Err(over_budget("the decompressed layers are larger".into()));
    }
    // What follows the tar's end still counts (another tool may read on), then the
    // rest of the blob, for its digest.
    if broken.is_none()
        && let Err(err) = io::copy(&mut counted, &mut io::sink())
    {
        if over.get() {
            return Err(over_budget("the decompressed layers are larger".into()));
        }
        broken = Some(format!("cannot decompress: {err}"));
    }
    drop(counted);
    io::copy(&mut blob, &mut io::sink()).map_err(|e| bad(e.to_string()))?;
    let actual = hex_of(&blob.hasher.finalize());
    if Some(actual.as_str()) != digest.strip_prefix("sha256:") {
        return Err(ImageError::Digest {
            path: layout.path.clone(),
            what: "layer".into(),
            digest: digest.clone(),
            actual,
        });
    }
    match broken {
        Some(what) => Err(bad(what)),
        None => Ok(()),
    }
}
