//! Registry credentials from docker's client configuration: `$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`, field `auths.<registry>.auth` (base64 of `user:pass`),
//! as `docker login` writes it. Credential helpers (`credsStore`, `credHelpers`) are not
//! run; a registry found nowhere is accessed anonymously (token auth still applies: the
//! distribution client asks the registry's token service for an anonymous pull token).

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;

/// docker's config.json is small; anything larger is not one.
const MAX_CONFIG: u64 = 1 << 20;

/// Why the credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {what}")]
    Config { path: PathBuf, what: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where docker's client configuration is, if anywhere.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The keys docker uses for `registry` in `auths` (Docker Hub has its legacy URL).
fn keys(registry: &str) -> Vec<String> {
    let mut k = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == super::reference::DEFAULT_REGISTRY {
        k.splice(
            0..0,
            [
                "https://index.docker.io/v1/".to_string(),
                "index.docker.io".to_string(),
                "registry-1.docker.io".to_string(),
            ],
        );
    }
    k
}

/// The credentials for `registry` in the config file at `path` (a missing file means
/// none).
pub fn credentials_from(path: &Path, registry: &str) -> Result<RegistryAuth, AuthError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut text = Vec::new();
    file.take(MAX_CONFIG + 1)
        .read_to_end(&mut text)
        .map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let bad = |what: String| AuthError::Config {
        path: path.to_path_buf(),
        what,
    };
    if text.len() as u64 > MAX_CONFIG {
        return Err(bad(format!("larger than {MAX_CONFIG} bytes")));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let auths = &v["auths"];
    let Some((key, entry)) = keys(registry)
        .into_iter()
        .find_map(|k| auths.get(&k).map(|e| (k, e)))
    else {
        tracing::debug!(registry, config = %path.display(), "no credentials; anonymous");
        return Ok(RegistryAuth::Anonymous);
    };
    let Some(b64) = entry["auth"].as_str().filter(|s| !s.is_empty()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| bad(format!("auths.{key}.auth: not base64: {e}")))?;
    let pair = String::from_utf8(raw)
        .map_err(|_| bad(format!("auths.{key}.auth: not UTF-8 once decoded")))?;
    let Some((user, pass)) = pair.split_once(':') else {
        return Err(bad(format!(
            "auths.{key}.auth: expected base64 of user:password"
        )));
    };
    tracing::debug!(registry, user, config = %path.display(), "using stored credentials");
    Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()))
}

/// The credentials for `registry` from docker's client configuration.
pub fn credentials(registry: &str) -> Result<RegistryAuth, AuthError> {
    match docker_config_path() {
        Some(p) => credentials_from(&p, registry),
        None => Ok(RegistryAuth::Anonymous),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_login_entries() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("config.json");
        // "alice:s3cr:et" and "bob:pw"
        std::fs::write(
            &f,
            r#"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcjpldA=="},
                "https://index.docker.io/v1/": {"auth": "Ym9iOnB3"},
                "nopass.io": {"auth": "bm9jb2xvbg=="}}}"#,
        )
        .unwrap();
        match credentials_from(&f, "127.0.0.1:5000").unwrap() {
            RegistryAuth::Basic(u, p) => assert_eq!((u.as_str(), p.as_str()), ("alice", "s3cr:et")),
            other => panic!("{other:?}"),
        }
        match credentials_from(&f, "docker.io").unwrap() {
            RegistryAuth::Basic(u, _) => assert_eq!(u, "bob"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            credentials_from(&f, "other.io").unwrap(),
            RegistryAuth::Anonymous
        ));
        let e = credentials_from(&f, "nopass.io").unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("auths.nopass.io.auth"),
            "{e}"
        );
        assert!(matches!(
            credentials_from(&d.path().join("none.json"), "x.io").unwrap(),
            RegistryAuth::Anonymous
        ));
        std::fs::write(&f, "{not json").unwrap();
        let e = credentials_from(&f, "x.io").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
    }
}
