//! `cargo +nightly fuzz run segment_header`: see [`hybus_tests::fuzz::segment_header`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybus_tests::fuzz::segment_header(data));
