//! `cargo +nightly fuzz run ring`: see [`hybus_tests::fuzz::ring`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybus_tests::fuzz::ring(data));
