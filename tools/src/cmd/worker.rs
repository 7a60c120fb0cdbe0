//! `hybusctl worker ROLE`: the server processes that `bench` and `demo`
//! spawn. Hidden from help. Each prints `ready` on stdout once it serves
//! and exits when its stdin closes, so a parent that dies leaves none behind.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hybus::{Bus, BusOptions, IdleStrategy, Incoming};

/// Arguments of `worker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The role: echo, sink, streamer, subscriber, kv, detector.
    role: String,
    /// Service or topic name.
    name: String,
    /// A second name (subscriber: the service that reports its count).
    extra: Option<String>,
    /// Idle strategy: busy (spins), spin (spins then yields), default, or park (every message wakes).
    #[arg(long, default_value = "default")]
    idle: String,
}

/// Parses an idle strategy name.
pub fn idle_strategy(name: &str) -> anyhow::Result<IdleStrategy> {
    Ok(match name {
        // Poll and yield: for three parties (client, daemon, server) on two cores,
        // where any spinning only delays the party that needs the core (measured).
        "spin" => IdleStrategy { spins: 0, yields: u32::MAX, park: false },
        // Spin, never sleep: for two parties that each have a core (a direct channel).
        "busy" => IdleStrategy::BUSY,
        "default" => IdleStrategy::DEFAULT,
        "park" => IdleStrategy::PARK,
        other => anyhow::bail!("unknown idle strategy {other:?}: use busy, spin, default or park"),
    })
}

const FOREVER: Duration = Duration::from_secs(3600);

/// Runs a worker.
pub fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    std::thread::spawn(|| {
        for _ in std::io::stdin().lock().lines().map_while(Result::ok) {}
        std::process::exit(0);
    });
    let opts = BusOptions {
        path: Some(socket.to_owned()),
        label: format!("worker-{}", a.role),
        idle: idle_strategy(&a.idle)?,
        reconnect: true,
    };
    let bus = Bus::connect_with(opts)?;
    match a.role.as_str() {
        "echo" => echo(&bus, &a.name),
        "sink" => sink(&bus, &a.name),
        "streamer" => streamer(&bus, &a.name),
        "subscriber" => subscriber(&bus, &a.name, a.extra.as_deref().unwrap_or("demo.subscriber")),
        "kv" => kv(&bus, &a.name),
        "detector" => detector(&bus, &a.name),
        other => anyhow::bail!("unknown worker role {other:?}"),
    }
}

fn ready() {
    println!("ready pid={}", std::process::id());
}

/// Answers each request with a payload of the same size. Large payloads
/// go back zero-copy: the answer is a loaned chunk whose first 8 bytes
/// echo the request's (the bench's sequence number); the rest is not
/// touched, since this measures the zero-copy claim itself.
fn echo(bus: &Bus, name: &str) -> anyhow::Result<()> {
    let svc = bus.register(name)?;
    ready();
    loop {
        let Some(inc) = svc.next(FOREVER)? else {
            continue;
        };
        if let Incoming::Stream(mut ch) = inc {
            // A channel: echo every item back until the caller ends.
            while let Some(item) = ch.recv(FOREVER)? {
                ch.send(&item, FOREVER)?;
            }
            ch.end()?;
            continue;
        }
        if let Incoming::Request(req) = inc {
            let p = req.payload();
            if p.len() <= hybus::INLINE_PAYLOAD {
                let v = p.to_vec();
                req.reply(&v)?;
            } else {
                let mut head = [0u8; 8];
                head.copy_from_slice(&p[..8]);
                let mut loan = bus.loan(p.len(), Duration::from_secs(5))?;
                loan[..8].copy_from_slice(&head);
                req.reply_loan(loan)?;
            }
        }
    }
}

/// Counts fires; a request answers the count so far (8 bytes, little endian).
fn sink(bus: &Bus, name: &str) -> anyhow::Result<()> {
    let svc = bus.register(name)?;
    ready();
    let mut count = 0u64;
    let mut check = 0u64;
    loop {
        match svc.next(FOREVER)? {
            Some(Incoming::Fire(s)) => {
                count += 1;
                // Touch what was moved: read every byte.
                check = check.wrapping_add(s.iter().map(|&b| b as u64).sum::<u64>());
            }
            Some(Incoming::Request(r)) => r.reply(&count.to_le_bytes())?,
            _ => {}
        }
        std::hint::black_box(check);
    }
}

/// Answers a stream request `n=<items> size=<bytes>` with that many items,
/// each carrying its index in the first 8 bytes.
fn streamer(bus: &Bus, name: &str) -> anyhow::Result<()> {
    let svc = bus.register(name)?;
    ready();
    loop {
        let Some(inc) = svc.next(FOREVER)? else {
            continue;
        };
        if let Incoming::Stream(mut st) = inc {
            let text = String::from_utf8_lossy(st.payload()).into_owned();
            let get = |k: &str| -> u64 {
                text.split_whitespace()
                    .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let (n, size) = (get("n"), get("size").max(8) as usize);
            if get("batch") == 1 {
                // Packed: as many items per chunk as credits allow. Small
                // items are built on the stack (no allocation per item).
                if size <= SMALL {
                    let items = (0..n).map(|i| SmallItem::new(i, size));
                    st.send_many(items, Duration::from_secs(60))?;
                } else {
                    let mut item = vec![0u8; size];
                    let items = (0..n).map(move |i| {
                        item[..8].copy_from_slice(&i.to_le_bytes());
                        item.clone()
                    });
                    st.send_many(items, Duration::from_secs(60))?;
                }
            } else {
                let mut item = vec![0u8; size];
                for i in 0..n {
                    item[..8].copy_from_slice(&i.to_le_bytes());
                    st.send(&item, Duration::from_secs(30))?;
                }
            }
            st.end()?;
        }
    }
}

const SMALL: usize = 256;

/// A stream item of up to [`SMALL`] bytes whose first 8 bytes are its index.
struct SmallItem {
    buf: [u8; SMALL],
    len: usize,
}

impl SmallItem {
    fn new(i: u64, len: usize) -> SmallItem {
        let mut buf = [0u8; SMALL];
        buf[..8].copy_from_slice(&i.to_le_bytes());
        SmallItem { buf, len }
    }
}

impl AsRef<[u8]> for SmallItem {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Counts a topic's publications; the service `report` answers the count.
fn subscriber(bus: &Bus, topic: &str, report: &str) -> anyhow::Result<()> {
    let sub = bus.subscribe(topic)?;
    let svc = bus.register(report)?;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || -> anyhow::Result<()> {
        loop {
            if let Some(Incoming::Request(r)) = svc.next(FOREVER)? {
                r.reply(&c.load(Ordering::Relaxed).to_le_bytes())?;
            }
        }
    });
    ready();
    loop {
        if let Some(s) = sub.next(FOREVER)? {
            std::hint::black_box(s.first());
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A small key-value store: `set K V`, `get K`; `scan` as a stream; fires `log ...` are counted.
fn kv(bus: &Bus, name: &str) -> anyhow::Result<()> {
    let svc = bus.register(name)?;
    ready();
    let mut map: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut logs = 0u64;
    loop {
        let Some(inc) = svc.next(FOREVER)? else {
            continue;
        };
        match inc {
            Incoming::Request(req) => {
                let text = String::from_utf8_lossy(req.payload()).into_owned();
                let mut parts = text.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("set"), Some(k), Some(v)) => {
                        map.insert(k.to_owned(), v.as_bytes().to_vec());
                        req.reply(b"ok")?;
                    }
                    (Some("get"), Some(k), None) => match map.get(k) {
                        Some(v) => req.reply(v)?,
                        None => req.fail(&format!("no key {k}"))?,
                    },
                    (Some("logs"), None, None) => req.reply(logs.to_string().as_bytes())?,
                    _ => req.fail("use: set K V | get K | logs")?,
                }
            }
            Incoming::Fire(_) => logs += 1,
            Incoming::Stream(mut st) => {
                for (k, v) in &map {
                    let line = format!("{k}={}", String::from_utf8_lossy(v));
                    st.send(line.as_bytes(), Duration::from_secs(5))?;
                }
                st.end()?;
            }
        }
    }
}

/// "Detects" objects in a frame: answers with the frame's size and a checksum of every byte.
fn detector(bus: &Bus, name: &str) -> anyhow::Result<()> {
    let svc = bus.register(name)?;
    ready();
    loop {
        if let Some(Incoming::Request(req)) = svc.next(FOREVER)? {
            let sum: u64 = req.payload().iter().map(|&b| b as u64).sum();
            let answer = format!("objects={} sum={sum}", req.payload().len() / 100_000);
            req.reply(answer.as_bytes())?;
        }
    }
}
