#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_fuzz::fs::virtio_fs(data));
