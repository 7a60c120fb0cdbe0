//! `hybus-bench-worker`: the server process that `benches/benches/bus.rs` spawns.
//!
//! ```text
//! hybus-bench-worker SOCKET ROLE NAME [REPORT] [--idle spin|default|park]
//! ```
//!
//! Roles:
//!
//! * `echo` — answers each request with a payload of the same size. Up to
//!   [`hybus::INLINE_PAYLOAD`] bytes the answer is a copy; larger answers are
//!   a loaned chunk whose first 8 bytes echo the request's (the sequence
//!   number) and whose rest is not touched: that path measures the zero-copy
//!   claim itself;
//! * `sink` — counts fires and reads every byte of them; a request answers
//!   the count (8 bytes, little endian) followed by the wrapping sum of
//!   every byte received (8 bytes, little endian);
//! * `streamer` — answers a stream request `n=<items> size=<bytes>` with
//!   `n` items of `size` bytes (at least 8): item `i` carries `i` in its
//!   first 8 bytes (little endian) and the byte `i as u8` in the rest;
//! * `subscriber` — subscribes to the topic NAME and counts its
//!   publications; the service REPORT answers the count (8 bytes) followed
//!   by the publications this client dropped because it read too slowly
//!   (8 bytes), both little endian.
//!
//! The worker prints `ready` on stdout once it serves, and exits when its
//! stdin closes, so a bench that dies leaves no worker behind.

use std::ffi::OsString;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hybus::{Bus, BusOptions, IdleStrategy, Incoming};

/// How long a worker waits for the next message before it simply waits again.
const FOREVER: Duration = Duration::from_secs(3600);

/// How long sending one answer or stream item may wait for room or a chunk.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The usage line printed on bad arguments.
const USAGE: &str =
    "usage: hybus-bench-worker SOCKET echo|sink|streamer|subscriber NAME [REPORT] [--idle spin|default|park]";

/// A failure in words, with what was being done.
type Failed = String;

/// Adds what was being done to an error.
fn context<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, Failed> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// The parsed command line.
#[derive(Debug)]
struct Args {
    /// The daemon's socket.
    socket: PathBuf,
    /// `echo`, `sink`, `streamer` or `subscriber`.
    role: String,
    /// Service name (topic name for `subscriber`).
    name: String,
    /// `subscriber`: the service that reports the count.
    report: Option<String>,
    /// How waiting calls spend their time.
    idle: IdleStrategy,
}

/// Parses an idle strategy name; `spin` is the bench's spinning strategy
/// (never sleeps, yields between polls after a short spin).
fn idle_strategy(name: &str) -> Result<IdleStrategy, Failed> {
    Ok(match name {
        "spin" => IdleStrategy { spins: 0, yields: u32::MAX, park: false },
        "busy" => IdleStrategy::BUSY,
        "default" => IdleStrategy::DEFAULT,
        "park" => IdleStrategy::PARK,
        other => return Err(format!("unknown idle strategy {other:?}: use busy, spin, default or park")),
    })
}

/// Parses the command line (without the program name).
fn parse(mut raw: impl Iterator<Item = OsString>) -> Result<Args, Failed> {
    let mut positional = Vec::new();
    let mut idle = IdleStrategy::DEFAULT;
    while let Some(a) = raw.next() {
        let text = a.to_str();
        if text == Some("--idle") {
            let v = raw.next().ok_or_else(|| format!("--idle needs a value\n{USAGE}"))?;
            idle = idle_strategy(&v.to_string_lossy())?;
        } else if let Some(v) = text.and_then(|t| t.strip_prefix("--idle=")) {
            idle = idle_strategy(v)?;
        } else if text.is_some_and(|t| t.starts_with("--")) {
            return Err(format!("unknown option {}\n{USAGE}", a.to_string_lossy()));
        } else {
            positional.push(a);
        }
    }
    let mut positional = positional.into_iter();
    let (Some(socket), Some(role), Some(name)) = (positional.next(), positional.next(), positional.next()) else {
        return Err(USAGE.into());
    };
    let report = positional.next().map(|r| r.to_string_lossy().into_owned());
    if positional.next().is_some() {
        return Err(format!("too many arguments\n{USAGE}"));
    }
    Ok(Args {
        socket: socket.into(),
        role: role.to_string_lossy().into_owned(),
        name: name.to_string_lossy().into_owned(),
        report,
        idle,
    })
}

/// Runs the worker; prints the error and fails if it stops serving.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hybus-bench-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Connects and serves in the role asked for, until stdin closes.
fn run() -> Result<(), Failed> {
    let a = parse(std::env::args_os().skip(1))?;
    // The parent holds our stdin: when it closes (the bench ended or died), so do we.
    std::thread::spawn(|| {
        for _ in std::io::stdin().lock().lines().map_while(Result::ok) {}
        std::process::exit(0);
    });
    let opts = BusOptions {
        path: Some(a.socket.clone()),
        label: format!("bench-worker-{}", a.role),
        idle: a.idle,
        reconnect: false,
    };
    let bus = context(Bus::connect_with(opts), &format!("cannot connect to {}", a.socket.display()))?;
    match a.role.as_str() {
        "echo" => echo(&bus, &a.name),
        "sink" => sink(&bus, &a.name),
        "streamer" => streamer(&bus, &a.name),
        "subscriber" => {
            let report = a.report.as_deref().ok_or_else(|| format!("subscriber needs a REPORT name\n{USAGE}"))?;
            subscriber(&bus, &a.name, report)
        }
        other => Err(format!("unknown role {other:?}\n{USAGE}")),
    }
}

/// Tells the parent we serve.
fn ready() {
    println!("ready");
}

/// Registers `name`.
fn register(bus: &Bus, name: &str) -> Result<hybus::Service, Failed> {
    context(bus.register(name), &format!("cannot register {name}"))
}

/// Answers each request with a payload of the same size (see the module docs).
fn echo(bus: &Bus, name: &str) -> Result<(), Failed> {
    let svc = register(bus, name)?;
    ready();
    loop {
        match context(svc.next(FOREVER), "waiting for a request")? {
            Some(Incoming::Request(req)) => {
                let p = req.payload();
                if p.len() <= hybus::INLINE_PAYLOAD {
                    let copy = p.to_vec();
                    context(req.reply(&copy), "answering")?;
                } else {
                    let mut head = [0u8; 8];
                    head.copy_from_slice(&p[..8]);
                    let mut loan = context(bus.loan(p.len(), SEND_TIMEOUT), "loaning an answer")?;
                    loan[..8].copy_from_slice(&head);
                    context(req.reply_loan(loan), "answering")?;
                }
            }
            Some(Incoming::Stream(st)) => context(st.fail("echo serves requests only"), "refusing a stream")?,
            Some(Incoming::Fire(_)) | None => {}
        }
    }
}

/// Counts fires and sums their bytes; a request answers both.
fn sink(bus: &Bus, name: &str) -> Result<(), Failed> {
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

/// Answers `n=<items> size=<bytes>` with that many items (see the module docs).
fn streamer(bus: &Bus, name: &str) -> Result<(), Failed> {
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
                let mut item = vec![0u8; usize::try_from(size).map_err(|_| format!("size={size} is too large"))?];
                for i in 0..n {
                    item[..8].copy_from_slice(&i.to_le_bytes());
                    item[8..].fill(i as u8);
                    context(st.send(&item, SEND_TIMEOUT), "sending a stream item")?;
                }
                context(st.end(), "ending the stream")?;
            }
            Incoming::Request(r) => context(r.fail("streamer serves stream requests only"), "refusing")?,
            Incoming::Fire(_) => {}
        }
    }
}

/// Counts a topic's publications; the service `report` answers the count and the drops.
fn subscriber(bus: &Bus, topic: &str, report: &str) -> Result<(), Failed> {
    let sub = Arc::new(context(bus.subscribe(topic), &format!("cannot subscribe to {topic}"))?);
    let svc = register(bus, report)?;
    let count = Arc::new(AtomicU64::new(0));
    let (c, s) = (count.clone(), sub.clone());
    std::thread::spawn(move || -> Result<(), Failed> {
        loop {
            match context(svc.next(FOREVER), "waiting for a count request") {
                Ok(Some(Incoming::Request(r))) => {
                    let mut answer = [0u8; 16];
                    // Relaxed: a count that is a little behind only makes the bench ask again.
                    answer[..8].copy_from_slice(&c.load(Ordering::Relaxed).to_le_bytes());
                    answer[8..].copy_from_slice(&s.dropped().to_le_bytes());
                    context(r.reply(&answer), "answering the count")?;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("hybus-bench-worker: {e}");
                    std::process::exit(1);
                }
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
