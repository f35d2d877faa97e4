//! Pulling an image from a registry (OCI distribution spec, "Pull"): the manifest by
//! tag or digest, an index resolved to this host's platform, then the config and layers
//! as blobs into the store, each verified against its digest as it streams in.
//!
//! Token auth (the `WWW-Authenticate: Bearer` dance) and blob requests are the
//! `oci-client` crate's; manifests are fetched here with the token it obtained, so that
//! their size is bounded while reading (the crate reads a manifest whole).

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use serde_json::Value;

use super::auth::{AuthError, credentials};
use super::docker::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, to_oci};
use super::progress::Progress;
use super::reference::{Reference, is_sha256_digest};
use super::store::{MAX_CONFIG, MAX_MANIFEST, Record, Store, StoreError, sha256_digest};
use crate::image::platform::{choose, oci_arch};

/// Layers pulled at once.
const PARALLEL: usize = 3;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{reference}: cannot reach the registry: {msg}")]
    Unreachable { reference: String, msg: String },
    #[error("{reference}: manifest unknown: {what} {target:?} not found in {repository}")]
    NotFound {
        reference: String,
        what: &'static str,
        target: String,
        repository: String,
    },
    #[error(
        "{reference}: access denied by the registry ({status}); credentials come from {config}"
    )]
    Denied {
        reference: String,
        status: u16,
        config: String,
    },
    #[error("{reference}: {what}")]
    Registry { reference: String, what: String },
    #[error("{reference}: no image for linux/{arch} in index {index} (it has: {have})")]
    Platform {
        reference: String,
        arch: &'static str,
        index: String,
        have: String,
    },
    #[error("{reference}: {kind} {digest}: {what}")]
    Blob {
        reference: String,
        kind: &'static str,
        digest: String,
        what: String,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a pull talks to registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`HOST[:PORT]`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// No progress output at all.
    pub quiet: bool,
}

/// One registry conversation for one reference.
struct Session<'a> {
    r: &'a Reference,
    name: String,
    client: Client,
    http: reqwest::Client,
    base: String,
    authorization: Option<String>,
    store: &'a Store,
}

impl Session<'_> {
    fn err(&self, what: String) -> PullError {
        PullError::Registry {
            reference: self.name.clone(),
            what,
        }
    }

    /// GET a manifest by tag or digest, at most MAX_MANIFEST bytes; returns it with its
    /// digest (verified against `want` when given) and media type.
    async fn manifest(
        &self,
        target: &str,
        want: Option<&str>,
    ) -> Result<(Vec<u8>, String, String), PullError> {
        let url = format!("{}/manifests/{target}", self.base);
        // The manifest types husk accepts: OCI's and Docker's schema 2, indexes and lists.
        let mut req = self.http.get(&url).header(
            reqwest::header::ACCEPT,
            [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", "),
        );
        if let Some(a) = &self.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let resp = req.send().await.map_err(|e| PullError::Unreachable {
            reference: self.name.clone(),
            msg: error_chain(&e),
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(PullError::NotFound {
                reference: self.name.clone(),
                what: if is_sha256_digest(target) {
                    "digest"
                } else {
                    "tag"
                },
                target: target.to_string(),
                repository: format!("{}/{}", self.r.registry, self.r.repository),
            });
        }
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(PullError::Denied {
                reference: self.name.clone(),
                status: status.as_u16(),
                config: super::auth::docker_config_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "nowhere (no HOME)".into()),
            });
        }
        if !status.is_success() {
            return Err(self.err(format!("manifest {target}: the registry answered {status}")));
        }
        let header = |h: &str| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (content_type, header_digest) =
            (header("content-type"), header("docker-content-digest"));
        let too_big = || {
            self.err(format!(
                "manifest {target}: larger than {MAX_MANIFEST} bytes"
            ))
        };
        if resp.content_length().is_some_and(|n| n > MAX_MANIFEST) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| self.err(format!("manifest {target}: {}", error_chain(&e))))?;
            if body.len() + chunk.len() > MAX_MANIFEST as usize {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        let digest = sha256_digest(&body);
        for expected in [
            want,
            header_digest
                .as_deref()
                .filter(|d| d.starts_with("sha256:")),
        ]
        .into_iter()
        .flatten()
        {
            if expected != digest {
                return Err(self.err(format!(
                    "manifest {target}: its content's digest is {digest}, not {expected}"
                )));
            }
        }
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| self.err(format!("manifest {digest}: not valid JSON: {e}")))?;
        let media_type = doc["mediaType"]
            .as_str()
            .map(str::to_string)
            .or(content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string()))
            .unwrap_or_default();
        Ok((body, digest, media_type))
    }

    /// Streams blob `digest` (at most `limit` bytes) into the store.
    async fn blob(
        &self,
        kind: &'static str,
        digest: &str,
        limit: u64,
        progress: &Progress,
    ) -> Result<u64, PullError> {
        let fail = |what: String| PullError::Blob {
            reference: self.name.clone(),
            kind,
            digest: digest.to_string(),
            what,
        };
        if self.store.has_blob(digest) {
            progress.done(kind, digest, 0, true);
            return Ok(0);
        }
        let mut w = self.store.writer(digest, limit)?;
        // Whatever fails from here, the temporary file goes with `w`.
        let kept = |e: String| fail(format!("{e}; nothing of it was kept"));
        let mut stream = self
            .client
            .pull_blob_stream(&self.r.to_client(), digest)
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        let bar = progress.start(kind, digest, stream.content_length.unwrap_or(limit));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| kept(error_chain(&e)))?;
            w.write(&chunk).map_err(|e| kept(error_chain(&e)))?;
            bar.set(w.written());
        }
        let n = w.written();
        w.finish().map_err(|e| match e {
            StoreError::Digest { actual, .. } => kept(format!("the content's digest is {actual}")),
            other => kept(error_chain(&other)),
        })?;
        bar.finish();
        progress.done(kind, digest, n, false);
        Ok(n)
    }
}

/// `e` and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        src = c.source();
    }
    s
}

fn is_index(doc: &Value, media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST || doc["manifests"].is_array()
}

/// Pulls `r` into `store` and records it. Blobs already there are not fetched again.
pub async fn pull(store: &Store, r: &Reference, opts: &PullOptions) -> Result<Record, PullError> {
    // reqwest is built without a default crypto provider; ring is ours (a second
    // install in the same process fails harmlessly).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _lock = store.lock(false)?;
    let name = r.to_string();
    let cref = r.to_client();
    let host = cref.resolve_registry().to_string();
    let plain = opts.insecure.iter().any(|h| *h == r.registry || *h == host);
    let client = Client::new(ClientConfig {
        protocol: if plain {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| PullError::Unreachable {
            reference: name.clone(),
            msg: error_chain(&e),
        })?;
    let auth = credentials(&r.registry)?;
    let token = client
        .auth(&cref, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| PullError::Unreachable {
            reference: name.clone(),
            msg: if plain {
                error_chain(&e)
            } else {
                format!(
                    "{} (if it speaks plain HTTP: --insecure-registry {})",
                    error_chain(&e),
                    r.registry
                )
            },
        })?;
    let authorization = match (token, &auth) {
        (Some(t), _) => Some(format!("Bearer {t}")),
        (None, RegistryAuth::Basic(u, p)) => {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            Some(format!("Basic {b}"))
        }
        _ => None,
    };
    let s = Session {
        r,
        name: name.clone(),
        client,
        http,
        base: format!(
            "{}://{host}/v2/{}",
            if plain { "http" } else { "https" },
            r.repository
        ),
        authorization,
        store,
    };
    tracing::info!(reference = %name, registry = %host, plain, "pulling");
    let (body, top_digest, top_type) = s.manifest(r.target(), r.digest.as_deref()).await?;
    let top_size = body.len() as u64;
    let mut docs = vec![(top_digest.clone(), body)];
    let mut doc: Value = serde_json::from_slice(&docs[0].1).unwrap_or_default();
    let mut media_type = top_type.clone();
    let mut digest = top_digest.clone();
    for _ in 0..4 {
        if !is_index(&doc, &media_type) {
            break;
        }
        let entries = doc["manifests"].as_array().map_or(&[][..], Vec::as_slice);
        let (child, size) = choose(entries).map_err(|have| PullError::Platform {
            reference: name.clone(),
            arch: oci_arch(),
            index: digest.clone(),
            have,
        })?;
        if size > MAX_MANIFEST {
            return Err(s.err(format!(
                "manifest {child}: larger than {MAX_MANIFEST} bytes"
            )));
        }
        let (b, d, t) = s.manifest(&child, Some(&child)).await?;
        doc = serde_json::from_slice(&b).unwrap_or_default();
        (media_type, digest) = (t, d.clone());
        docs.push((d, b));
    }
    let Some(config) = doc["config"]["digest"].as_str().map(str::to_string) else {
        return Err(s.err(format!(
            "manifest {digest}: not an image manifest (no config; media type {media_type:?})"
        )));
    };
    let config_size = doc["config"]["size"].as_u64().unwrap_or(MAX_CONFIG);
    if config_size > MAX_CONFIG {
        return Err(s.err(format!(
            "config {config}: {config_size} bytes, over the limit of {MAX_CONFIG}"
        )));
    }
    // Docker's media types rewritten as OCI's (umoci knows only those), before any
    // layer is fetched: a foreign layer is refused here.
    let converted = to_oci(&doc, &media_type)
        .map_err(|what| s.err(format!("manifest {digest}: {what}")))?
        .map(|m| {
            let bytes = m.to_string().into_bytes();
            (sha256_digest(&bytes), bytes)
        });
    let mut blobs = vec![("config", config, config_size)];
    for l in doc["layers"].as_array().into_iter().flatten() {
        let (Some(d), Some(n)) = (l["digest"].as_str(), l["size"].as_u64()) else {
            return Err(s.err(format!(
                "manifest {digest}: a layer lacks a digest or a size"
            )));
        };
        blobs.push(("layer", d.to_string(), n));
    }
    let progress = Progress::new(&name, opts.quiet);
    futures_util::stream::iter(blobs.iter())
        .map(|(kind, d, n)| s.blob(kind, d, *n, &progress))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<u64>>()
        .await?;
    for (d, b) in docs.iter().chain(&converted) {
        store.put(d, b)?;
    }
    // The manifest runs unpack: the rewritten one, else the one pulled.
    let (manifest, bytes) = converted
        .as_ref()
        .or(docs.last())
        .map_or(("", &[][..]), |(d, b)| (d.as_str(), b.as_slice()));
    let rec = store.record(
        r,
        (&top_type, &top_digest, top_size),
        (manifest, bytes.len() as u64),
        converted.is_some().then_some(digest.as_str()),
    )?;
    progress.line(&format!("{name}: digest {top_digest}"));
    Ok(rec)
}
