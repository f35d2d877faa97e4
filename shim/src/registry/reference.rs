//! Image references by name, as docker reads them: `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`.
//!
//! Defaults follow docker's (distribution/reference `ParseNormalizedNamed`): no registry
//! means `docker.io`, a one-component repository there is under `library/`, no tag and no
//! digest means `:latest`. The first component names a registry when it contains a `.` or
//! a `:` (a port), is `localhost`, or has upper-case letters (repository names cannot).
//! Grammar per the OCI distribution spec ("Pulling manifests": `<name>` and `<reference>`).

use std::fmt;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// docker's longest name (registry and repository) and tag.
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference {0:?} is empty")]
    Empty(String),
    #[error("image reference {reference:?}: {what}")]
    Invalid { reference: String, what: String },
}

/// A parsed, normalised reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `127.0.0.1:5000`, `ghcr.io`, ...
    pub registry: String,
    /// `library/busybox`, `org/app`, ...
    pub repository: String,
    /// Absent only when a digest is given alone.
    pub tag: Option<String>,
    /// `sha256:<64 lowercase hex>`; wins over the tag when both are given.
    pub digest: Option<String>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:<64 lowercase hex>` (the only algorithm husk verifies).
pub fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// One repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    t.len() <= MAX_TAG
        && t.bytes().next().is_some_and(word)
        && t.bytes().all(|x| word(x) || x == b'.' || x == b'-')
}

/// A registry host: DNS labels or an IPv4 address (an IPv6 one in brackets), an
/// optional port.
pub fn valid_registry(r: &str) -> bool {
    let port_ok = |p: Option<&str>| p.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if let Some(rest) = r.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, "")) => ip.parse::<std::net::Ipv6Addr>().is_ok(),
            Some((ip, tail)) => {
                ip.parse::<std::net::Ipv6Addr>().is_ok()
                    && tail.strip_prefix(':').is_some_and(|p| port_ok(Some(p)))
            }
            None => false,
        };
    }
    let (host, port) = match r.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|x| x.is_ascii_alphanumeric() || x == b'-')
        })
        && port_ok(port)
}

impl Reference {
    /// Parses `s` with docker's defaults.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let invalid = |what: String| ReferenceError::Invalid {
            reference: s.to_string(),
            what,
        };
        if s.is_empty() {
            return Err(ReferenceError::Empty(s.to_string()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !is_sha256_digest(d) {
                    return Err(invalid(format!(
                        "digest {d:?} is not sha256:<64 lowercase hex>"
                    )));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a ':' before it is
        // a registry's port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !valid_tag(t) {
                    return Err(invalid(format!(
                        "tag {t:?} is not [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
                    )));
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                if !valid_registry(first) {
                    return Err(invalid(format!("registry {first:?} is not HOST[:PORT]")));
                }
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        // docker's spellings of Docker Hub.
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
            _ => registry,
        };
        if repository.is_empty() {
            return Err(invalid("no repository name".into()));
        }
        if let Some(c) = repository.split('/').find(|c| !valid_component(c)) {
            return Err(invalid(format!(
                "repository component {c:?} must be lowercase letters and digits, \
                 separated by '.', '_', '__' or '-'"
            )));
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(invalid(format!(
                "the name is longer than {MAX_NAME} characters"
            )));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What the registry is asked for: the digest when there is one, else the tag.
    pub fn target(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The distribution client's reference (the digest wins over the tag).
    pub fn to_client(&self) -> oci_client::Reference {
        match &self.digest {
            Some(d) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            None => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                self.target().to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        Reference::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_defaults() {
        assert_eq!(p("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(p("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(p("library/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(p("org/app:v1"), "docker.io/org/app:v1");
        assert_eq!(p("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(
            p("index.docker.io/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(p("a/b/c"), "docker.io/a/b/c:latest");
    }

    #[test]
    fn registries() {
        assert_eq!(p("localhost/app"), "localhost/app:latest");
        assert_eq!(p("localhost:5000/app:x"), "localhost:5000/app:x");
        assert_eq!(
            p("127.0.0.1:5000/busybox:latest"),
            "127.0.0.1:5000/busybox:latest"
        );
        assert_eq!(p("ghcr.io/org/app"), "ghcr.io/org/app:latest");
        assert_eq!(p("myhost:443/app"), "myhost:443/app:latest");
        assert_eq!(p("[::1]:5000/app"), "[::1]:5000/app:latest");
        assert_eq!(p("[::1]/app"), "[::1]/app:latest");
        // Upper case cannot be a repository: it is a host.
        assert_eq!(p("Registry/app"), "Registry/app:latest");
        let r = Reference::parse("127.0.0.1:5000/busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.target()),
            ("127.0.0.1:5000", "busybox", "latest")
        );
    }

    #[test]
    fn digests() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.target(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        // Tag and digest: the digest is what is pulled.
        let r = Reference::parse(&format!("localhost:5000/a:v1@{D}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.target()), (Some("v1"), D));
        assert_eq!(r.to_client().digest(), Some(D));
    }

    #[test]
    fn bad_input() {
        for bad in [
            "",
            "UPPER",
            "alpine:",
            "alpine:-x",
            "alpine@sha256:abc",
            &format!("alpine@sha512:{}", "a".repeat(64)),
            &format!("alpine@{}", D.to_uppercase()),
            "host:99999/app",
            "host:port/app",
            "[::1/app",
            "[zz]:5000/app",
            "a//b",
            "a/-b",
            "a..b",
            "/alpine",
            "alpine/",
            "localhost:5000/",
            "ex ample",
            &format!("alpine:{}", "t".repeat(129)),
            &format!("r.io/{}", "a".repeat(260)),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let e = Reference::parse("alpine:bad!tag").unwrap_err().to_string();
        assert!(e.contains("alpine:bad!tag") && e.contains("tag"), "{e}");
        assert!(is_sha256_digest(D) && !is_sha256_digest("sha256:../x"));
        assert!(valid_component("a__b") && valid_component("a---b") && !valid_component("a___b"));
    }
}
