//! The checked-in `include/hybus.h` is what cbindgen makes of the source now.

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let mut made = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write(&mut made);
    let path = dir.join("include/hybus.h");
    if std::env::var_os("HYBUS_BLESS").is_some() {
        std::fs::write(&path, &made).expect("write include/hybus.h");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == made,
        "capi/include/hybus.h is out of date with capi/src; regenerate it with\n    \
         HYBUS_BLESS=1 cargo test --release -p hybus-c --test header\nand commit it"
    );
}
