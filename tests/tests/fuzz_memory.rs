//! The `channel` fuzz harness ([`hybus_tests::fuzz::channel`]) keeps the
//! process's heap flat: a hostile peer on a direct channel, run after run,
//! leaves nothing behind in the honest caller, the echo service or the
//! embedded daemon once each run is over (issue 18, item 10: the fuzzer's
//! RSS grew with its runs).
//!
//! What it found: the client kept the daemon's reply to every `CloseDirect`
//! it sent and forgot (one per channel a peer broke), and an empty inbox
//! for every route a peer's requests had named.
//!
//! The heap is counted by [`Counting`], this file's global allocator, so the
//! file holds this one test: another running beside it would be counted too.

use std::path::PathBuf;

use hybus_tests::counting::{self, Counting};
use hybus_tests::fuzz;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The checked-in corpus of the `channel` target, in a fixed order.
fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/channel");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fuzz/corpus/channel is checked in")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).expect("readable corpus file")).collect()
}

fn run_all(corpus: &[Vec<u8>], passes: usize) {
    for _ in 0..passes {
        for input in corpus {
            fuzz::channel(input);
        }
    }
}

#[test]
fn channel_harness_leaves_the_heap_flat() {
    let corpus = corpus();
    assert!(corpus.len() >= 100, "the channel corpus has only {} inputs", corpus.len());
    // Warm-up: the stage (daemon, echo service, caller) is set up, and its
    // tables and queues reach the size this traffic needs. The caller never
    // reads its events: its queue (4 096, then the oldest is dropped) fills
    // in the first two passes, about 8 000 allocations.
    run_all(&corpus, 3);
    let before = counting::live();
    let passes = 2;
    run_all(&corpus, passes);
    let after = counting::live();
    let runs = (passes * corpus.len()) as i64;
    let (bytes, allocs) = (after.bytes - before.bytes, after.allocs - before.allocs);
    eprintln!("over {runs} runs: live heap {bytes:+} bytes, {allocs:+} allocations");
    // Leaking one reply per broken channel and one inbox per named route
    // came to about 200 bytes a run.
    assert!(
        bytes < 128 * 1024 && allocs < 100,
        "the live heap grew by {bytes} bytes and {allocs} allocations over {runs} channel runs"
    );
}
