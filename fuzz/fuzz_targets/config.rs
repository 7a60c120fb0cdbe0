//! `cargo +nightly fuzz run config`: see [`hybus_tests::fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybus_tests::fuzz::config(data));
