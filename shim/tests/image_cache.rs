//! The image cache on this host (no VM): a busybox OCI layout converted to erofs once
//! while four runs ask for it at the same time; later runs take it from the cache; a
//! leftover temporary file or scratch folder from a killed conversion does not get in
//! the way or stay behind; a full disk under the state folder at each step of a
//! conversion fails with the reason and leaves nothing (root: tmpfs mounts).
//! Needs umoci, mkfs.erofs and busybox-static (`make setup` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};

use husk::image::{ImageRef, prepare};

/// A scratch folder with a busybox OCI layout in it (tests/images/busybox-oci), or
/// None after saying why `test` is skipped (fails instead under HUSK_REQUIRE_LAB).
fn busybox_layout(test: &str) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !husk_tests::tools_present(test, &["umoci", "mkfs.erofs", "busybox"]) {
        return None;
    }
    let scratch = husk_tests::scratch_dir();
    let layout = scratch.path().join("busybox");
    husk_tests::busybox_oci(&layout, None);
    Some((scratch, layout))
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn one_conversion_for_concurrent_runs() {
    let Some((scratch, layout)) = busybox_layout("one_conversion_for_concurrent_runs") else {
        return;
    };
    let state = scratch.path().join("state");
    let image = ImageRef::parse(&format!("oci:{}", layout.display())).unwrap();
    let cache = state.join("images");

    let n = 4;
    let barrier = Arc::new(Barrier::new(n));
    let runs: Vec<_> = (0..n)
        .map(|i| {
            let (image, state, barrier) = (image.clone(), state.clone(), barrier.clone());
            let work = scratch.path().join(format!("work{i}"));
            std::thread::spawn(move || {
                std::fs::create_dir_all(&work).unwrap();
                barrier.wait();
                prepare(&image, &state, &work, &|_| {})
            })
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    let mut converted = 0;
    for r in &results {
        let p = r.as_ref().unwrap_or_else(|e| panic!("prepare: {e}"));
        assert!(p.erofs.is_file(), "{}", p.erofs.display());
        assert_eq!(p.erofs, results[0].as_ref().unwrap().erofs);
        assert_eq!(p.config.cmd, vec!["sh".to_string()]);
        converted += usize::from(p.converted);
    }
    assert_eq!(converted, 1, "exactly one run converts");
    let hex = results[0]
        .as_ref()
        .unwrap()
        .digest
        .trim_start_matches("sha256:")
        .to_string();
    let one_entry = vec![
        format!("{hex}.erofs"),
        format!("{hex}.json"),
        format!("{hex}.lock"),
    ];
    assert_eq!(files(&cache), one_entry);
    assert!(files(&state.join("tmp")).is_empty(), "scratch folders left");

    // From the cache now; a stale temporary file (a conversion killed half-way) is
    // overwritten by the next conversion rather than used.
    let again = prepare(&image, &state, scratch.path(), &|_| {}).unwrap();
    assert!(!again.converted);
    std::fs::remove_file(cache.join(format!("{hex}.erofs"))).unwrap();
    std::fs::write(cache.join(format!("{hex}.erofs.tmp")), b"half-written").unwrap();
    // ... and the scratch folder of a husk killed while unpacking goes too.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = state.join(format!("tmp/image-{}-x1y2z3", gone.id()));
    std::fs::create_dir_all(dead.join("rootfs/bin")).unwrap();
    let redone = prepare(&image, &state, scratch.path(), &|_| {}).unwrap();
    assert!(redone.converted);
    assert!(files(&state.join("tmp")).is_empty(), "dead scratch left");
    assert_eq!(files(&cache), one_entry);
}

/// Writes `doc` as a blob of `layout`; returns its descriptor fields.
fn add_blob(layout: &Path, doc: &serde_json::Value) -> (String, usize) {
    let bytes = doc.to_string().into_bytes();
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    let out = Command::new("sha256sum").arg(&tmp).output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap()[..64].to_string();
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex)).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// Copies `src` to `dst` with its index.json's only manifest wrapped in an image index
/// listing `platforms` (os, architecture): the shape of multi-platform images and of
/// `docker save` / `ctr export` layouts.
fn wrapped(src: &Path, dst: &Path, platforms: &[(&str, &str)], tagged: bool) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    let entries: Vec<serde_json::Value> = platforms
        .iter()
        .map(|(os, arch)| {
            serde_json::json!({"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                "platform": {"os": os, "architecture": arch}})
        })
        .collect();
    let inner = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    let (digest, size) = add_blob(dst, &inner);
    let mut top = serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": digest, "size": size});
    if tagged {
        top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "latest"});
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(dst.join("index.json"), index.to_string()).unwrap();
}

#[test]
fn image_indexes_pick_this_hosts_platform() {
    let Some((scratch, plain)) = busybox_layout("image_indexes_pick_this_hosts_platform") else {
        return;
    };
    let state = scratch.path().join("state");
    let prep = |layout: &Path| {
        let image = ImageRef::parse(&format!("oci:{}", layout.display())).unwrap();
        prepare(&image, &state, scratch.path(), &|_| {})
    };
    let direct = prep(&plain).unwrap();

    // Multi-platform, tagged: this host's entry is chosen among others, and it is the
    // same image (one cache entry, keyed by the manifest) as the plain layout's.
    let multi = scratch.path().join("multi");
    let arch = if cfg!(target_arch = "x86_64") {
        "amd64"
    } else {
        "arm64"
    };
    wrapped(
        &plain,
        &multi,
        &[("linux", "s390x"), ("linux", arch), ("windows", arch)],
        true,
    );
    let m = prep(&multi).unwrap_or_else(|e| panic!("multi-platform: {e}"));
    assert_eq!(m.digest, direct.digest);
    assert!(!m.converted, "the same manifest is taken from the cache");
    assert_eq!(m.config.cmd, vec!["sh".to_string()]);

    // Untagged single index (as some tools write): converted from scratch this time.
    std::fs::remove_dir_all(state.join("images")).unwrap();
    let untagged = scratch.path().join("untagged");
    wrapped(&plain, &untagged, &[("linux", arch)], false);
    let u = prep(&untagged).unwrap_or_else(|e| panic!("untagged: {e}"));
    assert!(u.converted && u.erofs.is_file());
    assert!(files(&state.join("tmp")).is_empty(), "scratch folders left");

    // No image for this platform: the error lists what the index has.
    let foreign = scratch.path().join("foreign");
    wrapped(
        &plain,
        &foreign,
        &[("linux", "s390x"), ("linux", "riscv64")],
        true,
    );
    let err = prep(&foreign).unwrap_err().to_string();
    assert!(
        err.contains(&format!("no image for linux/{arch}"))
            && err.contains("linux/s390x, linux/riscv64"),
        "{err}"
    );
}

/// A full disk under the state folder, at every step of a conversion: the state folder
/// is a tmpfs of growing sizes (64 KiB up) until a conversion fits. Each failure names
/// the problem ("no space left on device", from umoci or mkfs.erofs) and leaves no scratch folder, temporary file
/// or cache entry behind; failures happen both while unpacking and while mkfs.erofs
/// writes the image; once there is room the same conversion works.
#[test]
fn conversion_onto_a_full_disk_fails_cleanly() {
    let test = "conversion_onto_a_full_disk_fails_cleanly";
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("HUSK_REQUIRE_LAB").is_none(),
            "{test} needs root (it mounts tmpfs state folders)"
        );
        eprintln!("SKIPPED {test}: needs root (mounts a small tmpfs as the state folder)");
        return;
    }
    let Some((scratch, layout)) = busybox_layout(test) else {
        return;
    };
    let image = ImageRef::parse(&format!("oci:{}", layout.display())).unwrap();
    let state = scratch.path().join("state");
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut phases = std::collections::BTreeSet::new();
    let mut fitted = None;
    for kib in (0..40).map(|i| 64 + i * 128) {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "husk-full"])
            .arg(&state)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount a tmpfs on {}", state.display());
        let r = prepare(&image, &state, &work, &|_| {});
        let left: Vec<String> = Command::new("find")
            .arg(&state)
            .args(["-mindepth", "2"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(String::from)
                    .collect()
            })
            .unwrap();
        let _ = Command::new("umount").arg(&state).status();
        match r {
            Ok(p) => {
                assert!(p.converted);
                fitted = Some(kib);
                break;
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.to_lowercase().contains("no space left on device"),
                    "{kib} KiB: the reason is not named: {msg}"
                );
                // Only the (empty) folders and the cache entry's lock may stay.
                let partial: Vec<&String> = left
                    .iter()
                    .filter(|f| !f.ends_with(".lock") && !Path::new(f).is_dir())
                    .collect();
                assert!(partial.is_empty(), "{kib} KiB: {msg}: left {partial:?}");
                phases.insert(if msg.contains("mkfs.erofs") {
                    "convert"
                } else {
                    "unpack"
                });
                eprintln!("{kib} KiB: {msg}");
            }
        }
    }
    let kib = fitted.expect("the conversion never fitted in 5 MiB");
    eprintln!("the conversion fitted in {kib} KiB");
    assert!(phases.contains("unpack"), "no failure while unpacking");
    assert!(
        phases.contains("convert"),
        "no failure in mkfs.erofs: {phases:?}"
    );
}
