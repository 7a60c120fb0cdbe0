//! `cargo +nightly fuzz run descriptor_pool`: see [`hybus_tests::fuzz::descriptor_pool`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybus_tests::fuzz::descriptor_pool(data));
