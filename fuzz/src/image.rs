//! Fuzz body for OCI image layouts as the runtime reads them (shim/src/image.rs), shared
//! by the cargo-fuzz target and the corpus replay test (shim/tests/fuzz_corpus.rs).
//!
//! The input is `\0`-separated: an image reference (`oci:DIR:TAG`; its tag is looked
//! up, or the whole string when it is not a reference), index.json, then blobs: the
//! `k`th (from 1) is stored as `blobs/sha256/<k as 64 hex digits>`, so a document names
//! it `sha256:000...00k`. The layout is written to a fresh folder, and the manifest is
//! looked up as a conversion does (tag, nested indexes, platform). Every blob that is
//! JSON also goes through the image config reader.

// Test harness code (compiled into tests and fuzz targets): a set-up that fails is a
// failed test, so expect() is the point.
#![allow(clippy::expect_used)]

use husk::image::{ImageConfig, ImageRef, resolve_layout};

pub fn image_index(data: &[u8]) {
    let mut docs = data.split(|b| *b == 0);
    let reference = String::from_utf8_lossy(docs.next().unwrap_or_default()).into_owned();
    let index = docs.next().unwrap_or_default();
    let blobs: Vec<&[u8]> = docs.take(16).collect();

    // The tag looked up: the reference's, or the reference itself when it is not one.
    let tag = match ImageRef::parse(&reference) {
        Ok(ImageRef::OciDir { tag, .. } | ImageRef::OciArchive { tag, .. }) => {
            assert!(
                tag.as_ref()
                    .is_none_or(|t| !t.is_empty() && !t.contains('/')),
                "{reference:?}"
            );
            tag
        }
        // A registry reference is parsed (and fuzzed) by its own module; here its
        // text is just a tag to look up.
        Ok(ImageRef::Rootfs(_) | ImageRef::Registry(_)) | Err(_) => {
            (!reference.is_empty()).then(|| reference.clone())
        }
    };

    let dir = tempfile::tempdir().expect("a temporary folder");
    let layout = dir.path();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    std::fs::write(layout.join("index.json"), index).expect("index.json");
    let store = layout.join("blobs/sha256");
    std::fs::create_dir_all(&store).expect("blobs/sha256");
    for (k, b) in blobs.iter().enumerate() {
        std::fs::write(store.join(format!("{:064x}", k + 1)), b).expect("a blob");
        if let Ok(v) = serde_json::from_slice(b) {
            let _ = ImageConfig::from_json(&v);
        }
    }

    if let Ok((_tag, digest, manifest)) = resolve_layout(layout, tag.as_deref()) {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        assert!(
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{digest:?}"
        );
        assert!(store.join(hex).is_file(), "{digest:?} names no blob");
        assert!(manifest["config"]["digest"].is_string());
    }
}
