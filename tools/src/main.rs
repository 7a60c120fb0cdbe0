//! hybusctl
fn main() {}
