//! ring bench
fn main() {}
