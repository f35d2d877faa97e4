//! Registry images on this host (no VM: pulling and converting happen before boot).
//! Starts Debian's `docker-registry` on 127.0.0.1 with its storage in a scratch folder,
//! pushes the busybox test image with `skopeo`, then drives `husk pull`, `images`,
//! `inspect`, `rmi` and `run --pull never`: by tag, by digest, an unknown tag, a blob
//! corrupted in the registry's storage (refused, naming the layer, nothing of it kept),
//! blobs shared and collected, and the erofs cache shared with `oci:` layouts.
//! Needs docker-registry, skopeo, umoci, mkfs.erofs, busybox-static (`make setup`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use husk::image::{ImageRef, Limits, prepare, prepare_with};
use husk_tests::registry::{Registry, TOOLS};

/// `husk --config CONFIG ARGS...`, bounded in time.
fn husk(config: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", "120"])
        .arg(env!("CARGO_BIN_EXE_husk"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("DOCKER_CONFIG", config.with_extension("docker"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A configuration `<dir>/<file>.toml` whose state and run folders are `<dir>/<name>`
/// and `<dir>/<name>-run`.
fn state_config(dir: &Path, file: &str, name: &str, insecure: Option<&str>) -> (PathBuf, PathBuf) {
    let state = dir.join(name);
    let config = dir.join(format!("{file}.toml"));
    let mut t = format!(
        "state_dir = \"{}\"\nrun_dir = \"{}\"\n",
        state.display(),
        dir.join(format!("{name}-run")).display()
    );
    if let Some(h) = insecure {
        t += &format!("[registry]\ninsecure = [\"{h}\"]\n");
    }
    std::fs::write(&config, t).unwrap();
    (config, state)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A local registry with the busybox test image pushed into it, and a configuration
/// (`config.toml`, state in `state/`) that reaches it over plain HTTP.
struct Setup {
    scratch: tempfile::TempDir,
    reg: Registry,
    host: String,
    layout: PathBuf,
    cfg: PathBuf,
    state: PathBuf,
}

/// [`Setup`] with the image pushed by `push` as `name`, or None when `test` cannot run
/// (see [`husk_tests::tools_present`]).
fn setup(test: &str, push: fn(&Registry, &Path, &str), name: &str) -> Option<Setup> {
    let tools: Vec<&str> = TOOLS
        .into_iter()
        .chain(["umoci", "mkfs.erofs", "busybox"])
        .collect();
    if !husk_tests::tools_present(test, &tools) {
        return None;
    }
    let scratch = husk_tests::scratch_dir();
    let dir = scratch.path();
    let layout = dir.join("busybox");
    husk_tests::busybox_oci(&layout, None);
    let reg = Registry::start(dir);
    let host = reg.host();
    push(&reg, &layout, name);
    let (cfg, state) = state_config(dir, "config", "state", Some(&host));
    Some(Setup {
        scratch,
        reg,
        host,
        layout,
        cfg,
        state,
    })
}

/// `husk pull ARGS... REF`, which must succeed and print `REF@DIGEST`: the digest, and
/// the output.
fn pull(cfg: &Path, args: &[&str], reference: &str) -> (String, Output) {
    let o = husk(cfg, &[&["pull"], args, &[reference]].concat());
    assert!(o.status.success(), "pull {reference}: {}", text(&o));
    let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let digest = line
        .strip_prefix(&format!("{reference}@"))
        .unwrap_or_else(|| panic!("pull's output: {line}"))
        .to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{line}"
    );
    (digest, o)
}

#[test]
fn pull_images_inspect_rmi_from_a_local_registry() {
    let test = "pull_images_inspect_rmi_from_a_local_registry";
    let Some(s) = setup(test, Registry::push, "busybox:latest") else {
        return;
    };
    let Setup {
        scratch,
        reg,
        host,
        layout,
        cfg,
        state,
    } = s;
    let dir = scratch.path();

    // The registry is plain HTTP: named in the configuration here, by flag below.
    let tag_ref = format!("{host}/busybox:latest");
    let (digest, o) = pull(&cfg, &[], &tag_ref);
    // Not a terminal: one plain line per blob.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("config") && err.contains("layer") && err.contains("pulled"),
        "{err}"
    );
    let blobs = state.join("blobs/sha256");
    let pulled = names(&blobs);
    assert!(pulled.len() >= 3, "manifest, config, a layer: {pulled:?}");
    // A record is its index.json alone: no symlink to the blobs (the image is read from
    // the store itself).
    for rec in names(&state.join("refs")) {
        assert_eq!(names(&state.join("refs").join(rec)), ["index.json"]);
    }

    // Again: nothing fetched twice. Without the registry marked insecure: refused (https).
    let o = husk(&cfg, &["pull", &tag_ref]);
    assert!(o.status.success(), "second pull: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already present"),
        "{}",
        text(&o)
    );
    assert_eq!(names(&blobs), pulled);
    let (plain_cfg, _) = state_config(dir, "plain", "state", None);
    let o = husk(&plain_cfg, &["pull", &tag_ref]);
    assert_eq!(
        o.status.code(),
        Some(125),
        "https to a plain registry: {}",
        text(&o)
    );

    // By digest, with the flag.
    let digest_ref = format!("{host}/busybox@{digest}");
    let o = husk(
        &plain_cfg,
        &["--insecure-registry", &host, "pull", "-q", &digest_ref],
    );
    assert!(o.status.success(), "pull by digest: {}", text(&o));
    assert_eq!(names(&blobs), pulled, "the same blobs");

    let o = husk(&cfg, &["images"]);
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    assert!(list.starts_with("REFERENCE"), "{list}");
    assert!(
        list.contains(&tag_ref) && list.contains(&digest_ref),
        "{list}"
    );
    assert!(list.contains(&digest[7..19]), "{list}");

    let o = husk(&cfg, &["inspect", &tag_ref]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["config"]["config"]["Cmd"], serde_json::json!(["sh"]));
    let layer = v["layers"][0]["digest"].as_str().unwrap().to_string();

    // Unknown tag; not pulled and --pull never.
    let o = husk(&cfg, &["pull", &format!("{host}/busybox:nope")]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"nope\""),
        "{}",
        text(&o)
    );
    let other = format!("{host}/busybox:other");
    let o = husk(&cfg, &["run", "--pull", "never", &other, "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no such image") && err.contains(&other),
        "{err}"
    );

    // The pulled image converts through the erofs path, and its cache entry (by
    // manifest digest) is the one an oci: layout of the same image uses.
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    // Its layers are checked against the limits as an oci: layout's are.
    let tight = Limits {
        max_unpacked_bytes: 4096,
        ..Limits::default()
    };
    let e = prepare_with(
        &ImageRef::parse(&tag_ref).unwrap(),
        &state,
        &work,
        &tight,
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&tag_ref) && e.contains("image.max_unpacked_bytes"),
        "{e}"
    );
    let from_registry = prepare(&ImageRef::parse(&tag_ref).unwrap(), &state, &work, &|_| {})
        .unwrap_or_else(|e| panic!("prepare {tag_ref}: {e}"));
    assert!(from_registry.converted && from_registry.erofs.is_file());
    let oci = ImageRef::parse(&format!("oci:{}", layout.display())).unwrap();
    let from_layout = prepare(&oci, &state, &work, &|_| {}).unwrap();
    assert!(!from_layout.converted, "the erofs cache is shared");
    assert_eq!(from_layout.erofs, from_registry.erofs);

    // rmi: the tag goes, the blobs stay (the digest reference uses them); then those
    // go too, with the erofs entry.
    let o = husk(&cfg, &["rmi", &tag_ref]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(names(&blobs), pulled);
    let o = husk(&cfg, &["rmi", &digest_ref]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(names(&blobs), Vec::<String>::new(), "{}", text(&o));
    assert!(!from_registry.erofs.exists(), "erofs entry left");
    let o = husk(&cfg, &["images"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        1,
        "{}",
        text(&o)
    );
    let o = husk(&cfg, &["rmi", &tag_ref]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));

    // A layer whose bytes in the registry no longer match its digest: refused, naming
    // it, and nothing of it (nor a record) kept.
    let file = reg.blob_file(&layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let (cfg2, state2) = state_config(dir, "config2", "state2", Some(&host));
    let o = husk(&cfg2, &["pull", &tag_ref]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&layer),
        "{}",
        text(&o)
    );
    let left = names(&state2.join("blobs/sha256"));
    assert!(!left.contains(&layer[7..].to_string()), "{left:?}");
    assert!(left.iter().all(|n| !n.starts_with(".tmp")), "{left:?}");
    assert!(
        names(&state2.join("refs")).is_empty(),
        "a record of a failed pull"
    );
}

/// An image in Docker's format (schema 2, as skopeo `--format v2s2` pushes it):
/// pulled, its manifest rewritten with OCI media types (umoci refuses Docker's) as a
/// blob of its own, and converted to erofs (no VM). The digest shown is the manifest's
/// as pulled (docker's RepoDigest), and a pull by that digest works.
#[test]
fn docker_schema2_images_are_pulled_and_converted() {
    let test = "docker_schema2_images_are_pulled_and_converted";
    let Some(s) = setup(test, Registry::push_docker_v2s2, "busybox-docker:latest") else {
        return;
    };
    let Setup {
        scratch,
        host,
        cfg,
        state,
        ..
    } = s; // `reg` stays in `s`: the registry runs to the end of the test
    let dir = scratch.path();
    let tag_ref = format!("{host}/busybox-docker:latest");
    let (digest, _) = pull(&cfg, &["-q"], &tag_ref);
    let blob = |d: &str| -> serde_json::Value {
        let file = state.join("blobs/sha256").join(&d[7..]);
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap()
    };
    assert_eq!(
        blob(&digest)["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json",
        "the manifest as pulled"
    );

    let o = husk(&cfg, &["inspect", &tag_ref]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["original_manifest"], digest.as_str());
    let manifest = v["manifest"].as_str().unwrap().to_string();
    assert_ne!(manifest, digest);
    let m = blob(&manifest);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = m["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for l in layers {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }
    let o = husk(&cfg, &["images"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&digest[7..19]),
        "{}",
        text(&o)
    );

    // By the digest as pulled: found in the registry, rewritten the same way.
    let digest_ref = format!("{host}/busybox-docker@{digest}");
    assert_eq!(pull(&cfg, &["-q"], &digest_ref).0, digest);
    let o = husk(&cfg, &["inspect", &digest_ref]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["digest"], digest.as_str(), "{}", text(&o));
    assert_eq!(v["manifest"], manifest.as_str());

    // umoci unpacks it; the tag and the digest share the erofs entry.
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let by_digest = prepare(
        &ImageRef::parse(&digest_ref).unwrap(),
        &state,
        &work,
        &|_| {},
    )
    .unwrap_or_else(|e| panic!("prepare {digest_ref}: {e}"));
    assert!(by_digest.converted && by_digest.erofs.is_file());
    assert_eq!(by_digest.digest, manifest);
    assert_eq!(by_digest.config.cmd, ["sh"]);
    let by_tag = prepare(&ImageRef::parse(&tag_ref).unwrap(), &state, &work, &|_| {}).unwrap();
    assert!(!by_tag.converted, "the erofs cache is shared");

    // rmi of both: nothing left, the rewritten manifest included.
    let o = husk(&cfg, &["rmi", &tag_ref, &digest_ref]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(names(&state.join("blobs/sha256")), Vec::<String>::new());
}

/// A full disk under the state folder (a 256 KiB tmpfs, smaller than the image): `husk
/// pull` fails with the reason and the path, exit 125, and leaves no partial blob or
/// temporary file; the same pull succeeds once there is room.
#[test]
fn pull_onto_a_full_disk_fails_cleanly() {
    let test = "pull_onto_a_full_disk_fails_cleanly";
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {test}: needs root (mounts a small tmpfs as the state folder)");
        return;
    }
    let Some(s) = setup(test, Registry::push, "busybox:latest") else {
        return;
    };
    let dir = s.scratch.path();
    let (cfg, state) = state_config(dir, "small", "small", Some(&s.host));
    std::fs::create_dir_all(&state).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "husk-full"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs on {}", state.display());
    let reference = format!("{}/busybox:latest", s.host);
    let o = husk(&cfg, &["pull", "-q", &reference]);
    let all = text(&o);
    // What is left on the full tmpfs, before it goes: no temporary file, and every
    // blob whole (its sha256 is its name).
    let walk = Command::new("find")
        .arg(&state)
        .args(["-type", "f"])
        .output()
        .unwrap();
    let left: Vec<PathBuf> = String::from_utf8_lossy(&walk.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    let partial: Vec<&PathBuf> = left
        .iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy();
            if name.starts_with(".tmp") {
                return true;
            }
            f.parent().is_some_and(|p| p.ends_with("blobs/sha256")) && {
                use sha2::Digest;
                let sum = sha2::Sha256::digest(std::fs::read(f).unwrap());
                let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
                hex != name
            }
        })
        .collect();
    let _ = Command::new("umount").arg("-l").arg(&state).status();
    assert_eq!(o.status.code(), Some(125), "{all}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("No space left on device"), "{all}");
    assert!(
        stderr.contains(&state.display().to_string()),
        "the path: {all}"
    );
    assert!(
        partial.is_empty(),
        "partial or temporary files left: {partial:?}\n{all}"
    );
    assert!(stderr.contains("nothing of it was kept"), "{all}");
    // With room, the same pull works.
    let (cfg2, _) = state_config(dir, "roomy", "roomy", Some(&s.host));
    pull(&cfg2, &["-q"], &reference);
}
