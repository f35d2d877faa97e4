//! The bodies of husk's fuzz targets, one module per area; each `pub fn(&[u8])` is one
//! target (fuzz_targets/*.rs) and is replayed over its corpus (fuzz/corpus/<target>/)
//! by a stable test in the crate it exercises.

pub mod agent;
pub mod fs;
pub mod image;
pub mod mmio;
pub mod virtio;
