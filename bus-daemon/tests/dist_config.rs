//! The shipped example configuration parses and validates.

#[test]
fn shipped_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/hybusd.toml");
    let c = hybusd::Config::load(std::path::Path::new(path)).expect("dist/hybusd.toml");
    assert_eq!(c.ring_capacity, 1024);
    assert!(!c.promotion.enabled);
}
