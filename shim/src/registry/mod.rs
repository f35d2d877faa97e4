//! Images by name from OCI distribution registries (`husk pull`, `husk run NAME[:TAG]`,
//! `husk images`, `rmi`, `inspect`).
//!
//! - [`reference`]: `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]` with docker's defaults.
//! - [`auth`]: credentials from docker's `config.json`.
//! - [`pull`]: manifests, platform resolution, blobs verified as they stream in.
//! - [`docker`]: Docker's schema-2 manifests rewritten with OCI's media types.
//! - [`store`]: blobs by digest and one record per reference under `<state_dir>`.
//! - [`progress`]: per-blob progress on stderr.
//!
//! A pulled reference's record names its manifest in the store's blobs; image/mod.rs
//! reads it from there with the same checks and limits as any `oci:` layout, and
//! converts it to erofs with the same cache.

pub mod auth;
pub mod docker;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod store;

use std::path::Path;

use nix::fcntl::Flock;
use serde_json::{Value, json};

pub use pull::{PullError, PullOptions};
pub use reference::{Reference, ReferenceError};
pub use store::{Record, Store, StoreError};

/// Why a registry image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no such image: {0} (--pull never, and it was not pulled before: husk pull {0})")]
    NotLocal(String),
}

/// When `husk run` pulls (docker's `--pull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PullPolicy {
    /// Only when the image is not here yet.
    #[default]
    Missing,
    /// Every time (layers already here are not fetched again).
    Always,
    /// Never: the image must be here.
    Never,
}

/// Makes sure `r` is in the store per `policy`; returns its record.
pub async fn ensure(
    state_dir: &Path,
    r: &Reference,
    policy: PullPolicy,
    opts: &PullOptions,
) -> Result<Record, RegistryError> {
    let store = Store::new(state_dir);
    if policy != PullPolicy::Always
        && let Some(rec) = store.lookup(r)?
    {
        tracing::debug!(reference = %rec.reference, digest = %rec.digest, "found locally");
        return Ok(rec);
    }
    if policy == PullPolicy::Never {
        return Err(RegistryError::NotLocal(r.to_string()));
    }
    Ok(pull::pull(&store, r, opts).await?)
}

/// The record of a pulled `r`, with the store's shared lock (hold it while its blobs
/// are read, so `rmi` cannot take them meanwhile).
pub fn local(
    state_dir: &Path,
    r: &Reference,
) -> Result<(Record, Flock<std::fs::File>), RegistryError> {
    let store = Store::new(state_dir);
    let lock = store.lock(false)?;
    match store.lookup(r)? {
        Some(rec) => Ok((rec, lock)),
        None => Err(RegistryError::NotLocal(r.to_string())),
    }
}

/// A line of `husk images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub reference: String,
    pub digest: String,
    /// Config and layers, compressed, in bytes.
    pub size: u64,
    /// The config's `created`, when it has one.
    pub created: Option<String>,
}

fn summary(store: &Store, rec: &Record) -> Result<Summary, StoreError> {
    let m = store.manifest(rec)?;
    let size = std::iter::once(&m["config"])
        .chain(m["layers"].as_array().into_iter().flatten())
        .filter_map(|d| d["size"].as_u64())
        .sum();
    let created = m["config"]["digest"]
        .as_str()
        .and_then(|c| store.read_json(c, store::MAX_CONFIG).ok())
        .and_then(|c| c["created"].as_str().map(str::to_string));
    Ok(Summary {
        reference: rec.reference.clone(),
        digest: rec.digest.clone(),
        size,
        created,
    })
}

/// Every pulled image.
pub fn images(state_dir: &Path) -> Result<Vec<Summary>, RegistryError> {
    let store = Store::new(state_dir);
    let _lock = store.lock(false)?;
    let mut out = Vec::new();
    for rec in store.list()? {
        out.push(summary(&store, &rec)?);
    }
    Ok(out)
}

/// What `husk inspect` prints: the digests, the config, the layers.
pub fn inspect(state_dir: &Path, r: &Reference) -> Result<Value, RegistryError> {
    let store = Store::new(state_dir);
    let _lock = store.lock(false)?;
    let rec = store
        .lookup(r)?
        .ok_or_else(|| StoreError::NotFound(r.to_string()))?;
    let m = store.manifest(&rec)?;
    let config = match m["config"]["digest"].as_str() {
        Some(c) => store.read_json(c, store::MAX_CONFIG)?,
        None => Value::Null,
    };
    let s = summary(&store, &rec)?;
    Ok(json!({
        "reference": rec.reference,
        "digest": rec.digest,
        "manifest": rec.manifest,
        "original_manifest": rec.original,
        "size": s.size,
        "created": s.created,
        "pulled_unix": rec.pulled,
        "record": rec.dir,
        "config": config,
        "layers": m["layers"],
    }))
}

/// Removes `r`'s record and what no other record needs; returns the blobs removed.
pub fn remove(state_dir: &Path, r: &Reference) -> Result<Vec<String>, RegistryError> {
    Ok(Store::new(state_dir).remove(r)?)
}
