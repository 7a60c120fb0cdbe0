//! `fuzz-rss [RUNS] [SECONDS] [EVERY] [corpus]`: drives the `channel` fuzz harness
//! ([`hybus_tests::fuzz::channel`]) on stable, without libFuzzer, over the
//! checked-in corpus (`fuzz/corpus/channel/`) and mutations of it, and
//! prints, every `EVERY` runs, what the process holds: live heap bytes and
//! allocations (a counting global allocator), VmRSS, mappings, memfd
//! mappings and open fds. Tells a leak in the code under test (live heap,
//! fds or mappings grow with runs) from memory the harness around it keeps
//! (only RSS grows). Defaults: 20 000 runs or 60 s, a line every 1 000.
//! With `corpus`, the corpus is run over and over as it is, unmutated.
//!
//! The harness runs a real embedded daemon, the honest caller and the echo
//! service in this process, so their allocations are counted too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hybus_tests::counting::{self, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What the process holds at one moment.
#[derive(Debug, Clone, Copy)]
struct Holdings {
    live_bytes: i64,
    live_allocs: i64,
    rss_kb: u64,
    maps: usize,
    memfd_maps: usize,
    fds: usize,
}

fn holdings() -> Holdings {
    let live = counting::live();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    Holdings {
        live_bytes: live.bytes,
        live_allocs: live.allocs,
        rss_kb,
        maps: maps.lines().count(),
        memfd_maps: maps.lines().filter(|l| l.contains("/memfd:")).count(),
        fds,
    }
}

/// A fixed xorshift sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `base` changed in a few places, the way libFuzzer's mutators do: bytes
/// flipped, set, inserted, erased, or a piece of `other` spliced in.
fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 if v.len() < 1024 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i).max(1);
                v.drain(i..i + n);
            }
            _ if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = rng.below(other.len() - from).max(1);
                let at = rng.below(v.len() + 1);
                v.splice(at..at, other[from..from + n].iter().copied());
                v.truncate(1024);
            }
            _ => {}
        }
    }
    v
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/channel");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn print(run: usize, start: Instant, h: Holdings) {
    println!(
        "{run:>7} {:>6.1} {:>12} {:>9} {:>9} {:>6} {:>6} {:>5}",
        start.elapsed().as_secs_f64(),
        h.live_bytes,
        h.live_allocs,
        h.rss_kb,
        h.maps,
        h.memfd_maps,
        h.fds
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (runs, seconds, every) = (num(0, 20_000), num(1, 60), num(2, 1_000).max(1));
    let only_corpus = args.get(3).is_some_and(|a| a == "corpus");
    let corpus = corpus();
    if corpus.is_empty() {
        eprintln!("fuzz-rss: no corpus in fuzz/corpus/channel");
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| eprintln!("fuzz-rss: harness panicked: {info}")));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds as u64);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut failed = 0usize;
    println!(
        "{:>7} {:>6} {:>12} {:>9} {:>9} {:>6} {:>6} {:>5}",
        "run", "secs", "live_bytes", "allocs", "rss_kb", "maps", "memfd", "fds"
    );
    let mut run = 0;
    while run < runs && Instant::now() < deadline {
        let input = if run < corpus.len() || only_corpus {
            corpus[run % corpus.len()].clone()
        } else {
            let base = &corpus[rng.below(corpus.len())];
            let other = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, base, other)
        };
        if std::panic::catch_unwind(|| hybus_tests::fuzz::channel(&input)).is_err() {
            failed += 1;
        }
        if run % every == 0 {
            print(run, start, holdings());
        }
        run += 1;
    }
    print(run, start, holdings());
    println!("runs {run}, harness panics {failed}");
}
