//! Replays a committed corpus (fuzz/corpus/<target>/) through a target's body: the
//! stable tests' half of the fuzz targets (`cargo test` needs no nightly or libFuzzer).

// Test harness code (compiled into tests and fuzz targets): a set-up that fails is a
// failed test, so expect() is the point.
#![allow(clippy::expect_used)]

use std::path::Path;

/// Runs `body` on every file of `fuzz/corpus/<target>/`; a failing input's file is
/// named in the test's output.
pub fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for f in &files {
        eprintln!("{target}: {}", f.display());
        body(&std::fs::read(f).expect("a corpus file"));
    }
}
