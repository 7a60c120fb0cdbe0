//! `cargo +nightly fuzz run control`: see [`hybus_tests::fuzz::control`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybus_tests::fuzz::control(data));
