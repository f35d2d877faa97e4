//! The image cache on this host (no VM): a busybox OCI layout converted to erofs once
//! while four runs ask for it at the same time; later runs take it from the cache; a
//! leftover temporary file or scratch folder from a killed conversion does not get in
//! the way or stay behind.
//! Needs umoci, mkfs.erofs and busybox-static (`make setup` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};

use husk::image::{ImageRef, prepare};

fn tools_missing() -> Option<&'static str> {
    ["umoci", "mkfs.erofs", "busybox"].into_iter().find(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
    })
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
    if let Some(t) = tools_missing() {
        assert!(
            std::env::var_os("HUSK_REQUIRE_LAB").is_none(),
            "{t} is missing (make setup installs it)"
        );
        eprintln!("SKIPPED one_conversion_for_concurrent_runs: {t} is missing (make setup)");
        return;
    }
    let scratch = husk_tests::scratch_dir();
    let layout = scratch.path().join("busybox");
    let st = Command::new(husk_tests::repo_root().join("tests/images/busybox-oci"))
        .arg(&layout)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "busybox-oci failed");
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
