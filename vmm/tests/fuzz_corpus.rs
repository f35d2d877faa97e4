//! The virtio fuzz targets' corpora, replayed on stable (see docs/testing.md, "Fuzzing").

#[path = "../../fuzz/src/fs.rs"]
mod fs;
#[path = "../../fuzz/src/mmio.rs"]
mod mmio;
#[path = "../../fuzz/src/replay.rs"]
mod replay;
#[path = "../../fuzz/src/virtio.rs"]
mod virtio;

use replay::replay;

#[test]
fn virtio_block() {
    replay("virtio_block", virtio::virtio_block);
}

#[test]
fn virtio_net() {
    replay("virtio_net", virtio::virtio_net);
}

#[test]
fn vsock_packet() {
    replay("vsock_packet", virtio::vsock);
}

#[test]
fn virtio_rng() {
    replay("virtio_rng", virtio::virtio_rng);
}

#[test]
fn virtio_balloon() {
    replay("virtio_balloon", virtio::virtio_balloon);
}

#[test]
fn virtio_mmio() {
    replay("virtio_mmio", mmio::virtio_mmio);
}

#[test]
fn virtio_fs() {
    replay("virtio_fs", fs::virtio_fs);
}
