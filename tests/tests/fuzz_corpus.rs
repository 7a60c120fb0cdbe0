//! The fuzz harnesses of [`hybus_tests::fuzz`] on stable: over the checked-in
//! corpus of each cargo-fuzz target (`fuzz/corpus/<target>/`, where every
//! input that once crashed is kept) and over a fixed set of pseudo-random
//! inputs. A harness panics when the code under test misbehaves.

use std::path::PathBuf;

use hybus_tests::fuzz;

/// The corpus of `target`, in a fixed order (empty if there is none yet).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("readable corpus file"))).collect()
}

/// `count` inputs of 0..=`max_len` bytes from a fixed xorshift sequence.
fn pseudo_random(count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count).map(|_| (0..next() as usize % (max_len + 1)).map(|_| next() as u8).collect()).collect()
}

/// Runs `harness` over `target`'s corpus and `count` pseudo-random inputs,
/// naming the input that made it panic.
fn run(target: &str, harness: fn(&[u8]), count: usize, max_len: usize) {
    let inputs = corpus(target)
        .into_iter()
        .map(|(p, b)| (p.display().to_string(), b))
        .chain(pseudo_random(count, max_len).into_iter().enumerate().map(|(i, b)| (format!("random #{i}"), b)));
    for (name, bytes) in inputs {
        if std::panic::catch_unwind(|| harness(&bytes)).is_err() {
            panic!("fuzz harness {target} failed on {name} ({} bytes)", bytes.len());
        }
    }
}

#[test]
fn control() {
    run("control", fuzz::control, 2_000, 512);
}

#[test]
fn descriptor_pool() {
    run("descriptor_pool", fuzz::descriptor_pool, 2_000, 512);
}

#[test]
fn ring() {
    run("ring", fuzz::ring, 500, 512);
}

#[test]
fn segment_header() {
    run("segment_header", fuzz::segment_header, 300, 300);
}

#[test]
fn config() {
    run("config", fuzz::config, 2_000, 512);
}

#[test]
fn session() {
    run("session", fuzz::session, 150, 1_024);
}

#[test]
fn channel() {
    run("channel", fuzz::channel, 150, 1_024);
}
