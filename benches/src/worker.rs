//! The server roles that the benchmarks talk to: one implementation for
//! `hybusctl bench` (its `worker` subcommand) and the criterion benches
//! (`hybus-bench-worker`). Each role registers, prints `ready pid=<pid>` on
//! stdout, and serves until the process is stopped.
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hybus::{Bus, IdleStrategy, Incoming};

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
    loop {
        match context(svc.next(FOREVER), "waiting for a request")? {
            Some(Incoming::Request(req)) => {
                let p = req.payload();
                if p.len() <= hybus::INLINE_PAYLOAD {
                    // On the stack: an allocation per request would be most of what an echo costs.
                    let mut copy = [0u8; hybus::INLINE_PAYLOAD];
                    let copy = &mut copy[..p.len()];
                    copy.copy_from_slice(p);
                    context(req.reply(copy), "answering")?;
                } else {
                    let mut head = [0u8; 8];
                    head.copy_from_slice(&p[..8]);
                    let mut loan = context(bus.loan(p.len(), SEND_TIMEOUT), "loaning an answer")?;
                    loan[..8].copy_from_slice(&head);
                    context(req.reply_loan(loan), "answering")?;
                }
            }
            Some(Incoming::Stream(mut ch)) if ch.is_channel() => {
                while let Some(item) = context(ch.recv(FOREVER), "receiving a channel item")? {
                    context(ch.send(&item, FOREVER), "echoing a channel item")?;
                }
                context(ch.end(), "ending the channel")?;
            }
            Some(Incoming::Stream(st)) => context(st.fail("echo serves requests and channels"), "refusing")?,
            Some(Incoming::Fire(_)) | None => {}
        }
    }
}

/// Serves `name` as a sink (see the module docs).
pub fn sink(bus: &Bus, name: &str) -> Result<(), Failed> {
    let svc = register(bus, name)?;
    ready();
    let mut count = 0u64;
    let mut sum = 0u64;
    loop {
        match context(svc.next(FOREVER), "waiting for a fire")? {
            Some(Incoming::Fire(s)) => {
                count += 1;
                // Touch what was moved: read every byte.
                sum = s.iter().fold(sum, |acc, &b| acc.wrapping_add(u64::from(b)));
            }
            Some(Incoming::Request(r)) => {
                let mut answer = [0u8; 16];
                answer[..8].copy_from_slice(&count.to_le_bytes());
                answer[8..].copy_from_slice(&sum.to_le_bytes());
                context(r.reply(&answer), "answering the count")?;
            }
            Some(Incoming::Stream(st)) => context(st.fail("sink serves fires and count requests only"), "refusing")?,
            None => {}
        }
    }
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
    loop {
        let Some(inc) = context(svc.next(FOREVER), "waiting for a stream request")? else {
            continue;
        };
        match inc {
            Incoming::Stream(mut st) => {
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
                context(st.end(), "ending the stream")?;
            }
            Incoming::Request(r) => context(r.fail("streamer serves stream requests only"), "refusing")?,
            Incoming::Fire(_) => {}
        }
    }
}

/// Serves a subscription to `topic`, reporting through the service `report` (see the module docs).
pub fn subscriber(bus: &Bus, topic: &str, report: &str) -> Result<(), Failed> {
    let sub = Arc::new(context(bus.subscribe(topic), &format!("cannot subscribe to {topic}"))?);
    let svc = register(bus, report)?;
    let count = Arc::new(AtomicU64::new(0));
    let (c, s) = (count.clone(), sub.clone());
    std::thread::spawn(move || loop {
        match svc.next(FOREVER) {
            Ok(Some(Incoming::Request(r))) => {
                let mut answer = [0u8; 16];
                // Relaxed: a count that is a little behind only makes the bench ask again.
                answer[..8].copy_from_slice(&c.load(Ordering::Relaxed).to_le_bytes());
                answer[8..].copy_from_slice(&s.dropped().to_le_bytes());
                if let Err(e) = r.reply(&answer) {
                    eprintln!("subscriber: answering the count: {e}");
                    std::process::exit(1);
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("subscriber: waiting for a count request: {e}");
                std::process::exit(1);
            }
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
