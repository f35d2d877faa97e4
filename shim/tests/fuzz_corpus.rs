//! The image layout fuzz target's corpus, replayed on stable (see docs/testing.md,
//! "Fuzzing").

#[path = "../../fuzz/src/image.rs"]
mod image;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn image_index() {
    replay::replay("image_index", image::image_index);
}
