//! Which image of a multi-platform index a guest runs: linux on this host's
//! architecture. One choice for `oci:` layouts (layout.rs) and registry pulls
//! (registry/pull.rs), for OCI image indexes and Docker manifest lists alike.

use serde_json::Value;

/// This host's architecture as OCI platforms name it (guests run the host's).
pub(crate) fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `os/architecture[/variant]` of an index entry, for errors.
fn platform(m: &Value) -> String {
    let p = &m["platform"];
    let mut s = format!(
        "{}/{}",
        p["os"].as_str().unwrap_or("?"),
        p["architecture"].as_str().unwrap_or("?")
    );
    if let Some(v) = p["variant"].as_str() {
        s = format!("{s}/{v}");
    }
    s
}

/// The entry of an index's `manifests` for linux on this host's architecture (or the
/// only entry, when it names no platform); attestation manifests (buildkit marks them)
/// are skipped. Returns its digest and size; when there is none, or it lacks either,
/// the platforms the index has ("linux/arm/v7, windows/amd64", or "nothing").
pub(crate) fn choose(manifests: &[Value]) -> Result<(String, u64), String> {
    let images: Vec<&Value> = manifests
        .iter()
        .filter(|m| m["annotations"]["vnd.docker.reference.type"].is_null())
        .collect();
    let arch = oci_arch();
    let found = images
        .iter()
        .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
        .or_else(|| match &images[..] {
            [only] if only["platform"].is_null() => Some(only),
            _ => None,
        });
    if let Some(m) = found
        && let (Some(d), Some(n)) = (m["digest"].as_str(), m["size"].as_u64())
    {
        return Ok((d.to_string(), n));
    }
    let have: Vec<String> = images.iter().map(|m| platform(m)).collect();
    Err(if have.is_empty() {
        "nothing".into()
    } else {
        have.join(", ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_platforms() {
        let arch = oci_arch();
        let idx = serde_json::json!([
            {"digest": "sha256:a", "size": 1, "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": "sha256:b", "size": 2, "platform": {"os": "linux", "architecture": arch}},
            {"digest": "sha256:c", "size": 3, "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        ]);
        assert_eq!(choose(idx.as_array().unwrap()), Ok(("sha256:b".into(), 2)));
        let idx = serde_json::json!([
            {"digest": "sha256:a", "size": 1, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"digest": "sha256:b", "size": 2, "platform": {"os": "windows", "architecture": arch}},
        ]);
        assert_eq!(
            choose(idx.as_array().unwrap()),
            Err(format!("linux/arm/v7, windows/{arch}"))
        );
        assert_eq!(choose(&[]), Err("nothing".into()));
        let only = serde_json::json!([{"digest": "sha256:a", "size": 1}]);
        assert_eq!(choose(only.as_array().unwrap()), Ok(("sha256:a".into(), 1)));
    }
}
