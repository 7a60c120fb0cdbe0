//! `cargo +nightly fuzz run channel`: see [`hybus_tests::fuzz::channel`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybus_tests::fuzz::channel(data));
