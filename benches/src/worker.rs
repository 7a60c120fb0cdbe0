//! The server roles that the benchmarks talk to: one implementation for
//! `hybusctl bench` (its `worker` subcommand) and the criterion benches
//! (`hybus-bench-worker`). Each role registers, prints `ready pid=<pid>` on
//! stdout, and serves (with [`Service::serve`](hybus::Service::serve)) until
//! the process is stopped.
//!
//! * [`echo`] — answers each request with a payload of the same size:
//!   inline payloads are copied back; larger ones go back zero-copy as a
//!   loaned chunk whose first 8 bytes echo the request's (the sequence
//!   number) and whose rest is not touched, since that measures the
//!   zero-copy claim itself. A request-channel gets every item echoed.
//! * [`sink`] — counts fires and reads every byte of them; a request
//!   answers 16 bytes: the count, then the byte sum (both little endian).
//! * [`streamer`] — answers a stream request `n=<items> size=<bytes>
//!   [batch=1]` with that many items, each starting with its index (8 bytes,
//!   little endian); `batch=1` packs them (`send_many`).
//! * [`subscriber`] — counts a topic's publications; the service `report`
//!   answers 16 bytes: the count, then the publications dropped.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hybus::{Bus, IdleStrategy, ServiceError};

/// A role's failure, in words.
pub type Failed = String;

const FOREVER: Duration = Duration::from_secs(3600);
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

fn context<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, Failed> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Parses an idle strategy name: `busy` (spins, never sleeps: two parties
/// with a core each), `spin` (polls and yields, never sleeps: three parties
/// on two cores, where any spinning only delays the party that needs the
/// core — measured), `default`, or `park` (every message is a wake-up).
pub fn idle_strategy(name: &str) -> Result<IdleStrategy, Failed> {
    Ok(match name {
        "busy" => IdleStrategy::BUSY,
        "spin" => IdleStrategy { spins: 0, yields: u32::MAX, park: false },
        "default" => IdleStrategy::DEFAULT,
        "park" => IdleStrategy::PARK,
        other => return Err(format!("unknown idle strategy {other:?}: use busy, spin, default or park")),
    })
}

/// Tells the parent we serve.
pub fn ready() {
    println!("ready pid={}", std::process::id());
}

fn register(bus: &Bus, name: &str) -> Result<hybus::Service, Failed> {
    context(bus.register(name), &format!("cannot register {name}"))
}

/// Serves `name` as an echo (see the module docs).
pub fn echo(bus: &Bus, name: &str) -> Result<(), Failed> {
    let svc = register(bus, name)?;
    ready();
    let served = svc
        .serving()
        .on_stream(|ch| {
            if !ch.is_channel() {
                return Err(ServiceError::new(0, "echo serves requests and channels"));
            }
            while let Some(item) = context(ch.recv(FOREVER), "receiving a channel item")? {
                context(ch.send(&item, FOREVER), "echoing a channel item")?;
            }
            Ok(())
        })
        .run(|req| {
            let p = req.payload();
            if p.len() <= hybus::INLINE_PAYLOAD {
                // Borrowed: the answer is built before the request goes.
                return Ok(p.into());
            }
            let mut loan = bus.loan(p.len(), SEND_TIMEOUT)?;
            loan[..8].copy_from_slice(&p[..8]);
            Ok(loan.into())
        });
    context(served, "serving")
}

/// Serves `name` as a sink (see the module docs).
pub fn sink(bus: &Bus, name: &str) -> Result<(), Failed> {
    let svc = register(bus, name)?;
    ready();
    let (count, sum) = (Cell::new(0u64), Cell::new(0u64));
    let served = svc
        .serving()
        .on_fire(|s| {
            count.set(count.get() + 1);
            // Touch what was moved: read every byte.
            sum.set(s.iter().fold(sum.get(), |acc, &b| acc.wrapping_add(u64::from(b))));
        })
        .run(|_| Ok(counts(count.get(), sum.get()).into()));
    context(served, "serving")
}

/// Two counts as a 16-byte answer, little endian.
fn counts(a: u64, b: u64) -> Vec<u8> {
    let mut answer = Vec::with_capacity(16);
    answer.extend_from_slice(&a.to_le_bytes());
    answer.extend_from_slice(&b.to_le_bytes());
    answer
}

/// Reads `key=<number>` from a stream request's text; 0 if absent.
fn field(text: &str, key: &str) -> u64 {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Items up to this size are written a block at a time when batched.
const SMALL: usize = 256;

/// Items written before they are sent, when batched.
const BLOCK: usize = 1024;

/// Serves `name` as a streamer (see the module docs).
pub fn streamer(bus: &Bus, name: &str) -> Result<(), Failed> {
    let svc = register(bus, name)?;
    ready();
    let served = svc
        .serving()
        .on_stream(|st| {
            let text = String::from_utf8_lossy(st.payload()).into_owned();
            let (n, size) = (field(&text, "n"), field(&text, "size").max(8));
            let size = usize::try_from(size).map_err(|_| format!("size={size} is too large"))?;
            if field(&text, "batch") == 1 && size <= SMALL {
                // Packed as many to a chunk as credits allow. Written a
                // block at a time, then sent: an application streams
                // data it has. Built one by one right before the copy,
                // each item was loaded while its own stores were still
                // in flight (a 64-byte load over an 8-byte store does
                // not forward), and the producer measured that stall.
                let mut block = vec![[0u8; SMALL]; BLOCK];
                let mut i = 0u64;
                while i < n {
                    let m = (n - i).min(BLOCK as u64) as usize;
                    for (k, buf) in (i..).zip(&mut block[..m]) {
                        buf[8..size].fill(k as u8);
                        buf[..8].copy_from_slice(&k.to_le_bytes());
                    }
                    let items = block[..m].iter().map(|b| &b[..size]);
                    context(st.send_many(items, SEND_TIMEOUT), "sending a batch")?;
                    i += m as u64;
                }
            } else {
                let mut item = vec![0u8; size];
                let batch = field(&text, "batch") == 1;
                for i in 0..n {
                    item[..8].copy_from_slice(&i.to_le_bytes());
                    item[8..].fill(i as u8);
                    if batch {
                        context(st.send_many(std::iter::once(&item), SEND_TIMEOUT), "sending an item")?;
                    } else {
                        context(st.send(&item, SEND_TIMEOUT), "sending an item")?;
                    }
                }
            }
            Ok(())
        })
        .run(|_| Err("streamer serves stream requests only".into()));
    context(served, "serving")
}

/// Serves a subscription to `topic`, reporting through the service `report` (see the module docs).
pub fn subscriber(bus: &Bus, topic: &str, report: &str) -> Result<(), Failed> {
    let sub = Arc::new(context(bus.subscribe(topic), &format!("cannot subscribe to {topic}"))?);
    let svc = register(bus, report)?;
    let count = Arc::new(AtomicU64::new(0));
    let (c, s) = (count.clone(), sub.clone());
    std::thread::spawn(move || {
        // Relaxed: a count that is a little behind only makes the bench ask again.
        let served = svc.serve(|_| Ok(counts(c.load(Ordering::Relaxed), s.dropped()).into()));
        if let Err(e) = served {
            eprintln!("subscriber: serving the count: {e}");
            std::process::exit(1);
        }
    });
    ready();
    loop {
        if let Some(p) = context(sub.next(FOREVER), "waiting for a publication")? {
            // The zero-copy fan-out claim: only the first byte is read.
            std::hint::black_box(p.first());
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}
