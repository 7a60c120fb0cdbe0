//! The bare-Zenoh limits `hybusctl bench` sets the bridged results beside
//! (DESIGN.md §9: every figure beside the machine's own limit, same run).
//!
//! `hybus-bridge --bench-echo ENDPOINT` listens on `ENDPOINT` and answers
//! every query on `bench/echo` with its payload. `hybus-bridge
//! --bench-query ENDPOINT --payload N --round-trips R` connects to it and
//! times `R` get/reply round trips of `N` bytes (after a warm-up), then
//! prints one latency in nanoseconds per line. Both use the same Zenoh
//! configuration a bridge would (peer mode, scouting off, TCP), so the
//! two processes ping-pong over the same kind of endpoint the bridges use.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::Wait;

use crate::config::Config;

/// The key the echo queryable serves.
pub const KEY: &str = "bench/echo";

fn session(listen: Option<&str>, connect: Option<&str>) -> Result<zenoh::Session, String> {
    let c = Config {
        listen: listen.map(|l| vec![l.to_owned()]).unwrap_or_default(),
        connect: connect.map(|c| vec![c.to_owned()]).unwrap_or_default(),
        ..Config::parse("").map_err(|e| e.to_string())?
    };
    let z = c.zenoh().map_err(|e| e.to_string())?;
    zenoh::open(z).wait().map_err(|e| e.to_string())
}

/// Serves the echo queryable on `endpoint` until stdin closes. Prints
/// `ready` once it listens.
pub fn echo(endpoint: &str) -> Result<(), String> {
    let s = session(Some(endpoint), None)?;
    let _q = s
        .declare_queryable(KEY)
        .callback(|q| {
            let payload = q.payload().map(|p| p.to_bytes().into_owned()).unwrap_or_default();
            let _ = q.reply(q.key_expr().clone(), payload).wait();
        })
        .wait()
        .map_err(|e| e.to_string())?;
    println!("ready");
    let _ = std::io::stdout().flush();
    for _ in std::io::stdin().lock().lines().map_while(Result::ok) {}
    Ok(())
}

/// Times `round_trips` get/reply round trips of `payload` bytes to the
/// echo at `endpoint`; prints each latency (ns) on a line of its own. The
/// payload's first 8 bytes carry a sequence number, checked in the reply.
pub fn query(endpoint: &str, payload: usize, round_trips: u64) -> Result<(), String> {
    let s = session(None, Some(endpoint))?;
    let end = Instant::now() + Duration::from_secs(20);
    let querier = s
        .declare_querier(KEY)
        .target(QueryTarget::BestMatching)
        .consolidation(ConsolidationMode::None)
        .timeout(Duration::from_secs(10))
        .wait()
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; payload.max(8)];
    buf.truncate(payload);
    let warmup = (round_trips / 10).clamp(10, 1_000);
    let mut samples = Vec::with_capacity(round_trips as usize);
    let mut i = 0u64;
    let mut t0 = Instant::now();
    while i < warmup + round_trips {
        let seq = i.to_le_bytes();
        let n = payload.min(8);
        buf[..n].copy_from_slice(&seq[..n]);
        let replies = querier.get().payload(buf.clone()).wait().map_err(|e| e.to_string())?;
        let reply = match replies.recv() {
            Ok(r) => r,
            Err(_) if i == 0 && Instant::now() < end => {
                // The echo is not matched yet (the link is still opening).
                std::thread::sleep(Duration::from_millis(50));
                t0 = Instant::now();
                continue;
            }
            Err(e) => return Err(format!("no reply to round trip {i}: {e}")),
        };
        let sample = reply.result().map_err(|e| format!("the echo failed: {:?}", e.payload().to_bytes()))?;
        let got = sample.payload().to_bytes();
        if got.len() != payload || got[..n] != seq[..n] {
            return Err("the echo answered the wrong payload".into());
        }
        let t1 = Instant::now();
        if i >= warmup {
            samples.push((t1 - t0).as_nanos() as u64);
        }
        t0 = t1;
        i += 1;
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for s in samples {
        writeln!(out, "{s}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

/// The key of the bare publish/subscribe limit.
pub const TOPIC_KEY: &str = "bench/topic";

/// Listens on `endpoint`, prints `ready`, counts `n` samples on
/// [`TOPIC_KEY`] (reading every byte of each), then prints the nanoseconds
/// from the first sample to the `n`-th and exits.
pub fn subscribe(endpoint: &str, n: u64) -> Result<(), String> {
    let s = session(Some(endpoint), None)?;
    let sub = s.declare_subscriber(TOPIC_KEY).wait().map_err(|e| e.to_string())?;
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut first = None;
    let mut check = 0u64;
    for i in 0..n {
        let sample = sub.recv_timeout(Duration::from_secs(30)).map_err(|e| e.to_string())?;
        let Some(sample) = sample else {
            return Err(format!("only {i} of {n} samples came"));
        };
        first.get_or_insert_with(Instant::now);
        for slice in sample.payload().slices() {
            check = slice.iter().fold(check, |c, &b| c.wrapping_add(b as u64));
        }
    }
    std::hint::black_box(check);
    let ns = first.map_or(0, |t| t.elapsed().as_nanos());
    println!("{ns}");
    Ok(())
}

/// Connects to `endpoint` and puts `n` samples of `payload` bytes (each
/// written anew) on [`TOPIC_KEY`], blocking when the link is congested
/// (none is dropped).
pub fn publish(endpoint: &str, payload: usize, n: u64) -> Result<(), String> {
    use zenoh::qos::CongestionControl;
    let s = session(None, Some(endpoint))?;
    let p = s
        .declare_publisher(TOPIC_KEY)
        .congestion_control(CongestionControl::Block)
        .wait()
        .map_err(|e| e.to_string())?;
    let end = Instant::now() + Duration::from_secs(20);
    while !p.matching_status().wait().map_err(|e| e.to_string())?.matching() {
        if Instant::now() > end {
            return Err("no subscriber matched".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..n {
        let buf = vec![(i as u8).wrapping_mul(31); payload];
        p.put(buf).wait().map_err(|e| e.to_string())?;
    }
    // Let the last samples leave before the session closes.
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}
