//! `cargo +nightly fuzz run session`: see [`hybus_tests::fuzz::session`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybus_tests::fuzz::session(data));
