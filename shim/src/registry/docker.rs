//! Docker's image manifest (schema 2) as an OCI image manifest. Registries serve many
//! images in Docker's format, which `umoci` refuses ("config blob is not correct
//! mediatype"); the two differ only in media types (image-spec `media-types.md`,
//! "Compatibility Matrix"), so a pull rewrites the chosen manifest with OCI's and
//! stores the result as a blob of its own, which is what runs unpack. The manifest as
//! served stays in the store too: its digest is the image's (docker's "RepoDigest").
//!
//! A Docker manifest list needs no rewriting: the platform choice reads both kinds of
//! index, and only the manifest chosen from it is unpacked.

use serde_json::Value;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const FOREIGN: [&str; 2] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
];

/// The OCI media type of a Docker layer type (those husk can unpack).
fn oci_layer(media_type: &str) -> Option<&'static str> {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Some("application/vnd.oci.image.layer.v1.tar+gzip")
        }
        "application/vnd.docker.image.rootfs.diff.tar" => {
            Some("application/vnd.oci.image.layer.v1.tar")
        }
        _ => None,
    }
}

/// `manifest` (served as `media_type`) with Docker's media types replaced by OCI's:
/// the manifest's own, the config's and each layer's. `None` when there is nothing to
/// replace. A foreign layer (a Windows base layer, fetched from elsewhere than the
/// registry) is an error; media types of neither kind are left for the layer check to
/// refuse.
pub fn to_oci(manifest: &Value, media_type: &str) -> Result<Option<Value>, String> {
    let mut m = manifest.clone();
    let mut changed = false;
    if media_type == DOCKER_MANIFEST || m["mediaType"] == DOCKER_MANIFEST {
        m["mediaType"] = OCI_MANIFEST.into();
        changed = true;
    }
    if m["config"]["mediaType"] == DOCKER_CONFIG {
        m["config"]["mediaType"] = OCI_CONFIG.into();
        changed = true;
    }
    for layer in m["layers"].as_array_mut().into_iter().flatten() {
        let t = layer["mediaType"].as_str().unwrap_or("");
        if FOREIGN.contains(&t) {
            return Err(format!(
                "layer {} is a foreign layer ({t}: a Windows base layer, not in the \
                 registry); husk runs Linux images only",
                layer["digest"].as_str().unwrap_or("?")
            ));
        }
        if let Some(oci) = oci_layer(t) {
            layer["mediaType"] = oci.into();
            changed = true;
        }
    }
    Ok(changed.then_some(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn docker(layer_type: &str) -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": "sha256:c", "size": 1},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                 "digest": "sha256:l1", "size": 2},
                {"mediaType": layer_type, "digest": "sha256:l2", "size": 3},
            ],
        })
    }

    #[test]
    fn docker_media_types_become_oci() {
        let m = to_oci(
            &docker("application/vnd.docker.image.rootfs.diff.tar"),
            DOCKER_MANIFEST,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            m,
            json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": "sha256:c", "size": 1},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                     "digest": "sha256:l1", "size": 2},
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                     "digest": "sha256:l2", "size": 3},
                ],
            })
        );
        // An OCI manifest is left as it is.
        assert_eq!(to_oci(&m, OCI_MANIFEST), Ok(None));
    }

    #[test]
    fn foreign_layers_are_refused() {
        let e = to_oci(&docker(FOREIGN[0]), DOCKER_MANIFEST).unwrap_err();
        assert!(e.contains("sha256:l2") && e.contains("foreign"), "{e}");
    }
}
