//! `sub TOPIC [hold] [slow_ms=N] [progress=K] [register=NAME]`: a subscriber
//! that checks every publication (model PUB, one sender, seq 0, 1, 2, …).
//!
//! * `hold`: keeps every sample (its chunk stays lent) and prints `got seq=<s>`;
//! * `slow_ms=N`: sleeps N ms after each sample (stdin `fast` stops that);
//! * `progress=K`: prints `progress n=<n>` every K samples;
//! * `register=NAME`: also registers (and never serves) an instance, so that
//!   the daemon's per-instance stats show this client's queue drops.
//!
//! Stdin `report` prints `report n=.. bad=.. gaps=.. last=.. dropped=..`:
//! `bad` counts samples that fail the content check or go backwards,
//! `gaps` the sequence numbers skipped (dropped upstream), `last` the
//! last sequence number seen (`none` before the first).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hybus::Bus;

use crate::payload::{self, model};
use crate::{arg, stdin_commands, R};

const NONE: u64 = u64::MAX;

#[derive(Debug)]
struct Counters {
    n: AtomicU64,
    bad: AtomicU64,
    gaps: AtomicU64,
    last: AtomicU64,
    dropped: AtomicU64,
    slow_ms: AtomicU64,
}

impl Counters {
    fn report(&self) -> String {
        let last = match self.last.load(Relaxed) {
            NONE => "none".to_string(),
            l => l.to_string(),
        };
        format!(
            "report n={} bad={} gaps={} last={last} dropped={}",
            self.n.load(Relaxed),
            self.bad.load(Relaxed),
            self.gaps.load(Relaxed),
            self.dropped.load(Relaxed)
        )
    }
}

pub fn run(socket: &str, args: &[String]) -> R {
    let topic = args.first().ok_or("sub TOPIC")?;
    let hold = args.iter().any(|a| a == "hold");
    let progress: u64 = arg(args, "progress").map_or(Ok(0), str::parse)?;
    let c = Arc::new(Counters {
        n: AtomicU64::new(0),
        bad: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        last: AtomicU64::new(NONE),
        dropped: AtomicU64::new(0),
        slow_ms: AtomicU64::new(arg(args, "slow_ms").map_or(Ok(0), str::parse)?),
    });
    let cmd = c.clone();
    stdin_commands(move |line| match line {
        "report" => println!("{}", cmd.report()),
        "fast" => cmd.slow_ms.store(0, Relaxed),
        _ => {}
    });
    let bus = Bus::connect_to(socket)?;
    let _svc = match arg(args, "register") {
        Some(name) => Some(bus.register(name)?),
        None => None,
    };
    let sub = bus.subscribe(topic)?;
    println!("ready client={} pid={}", bus.client_id(), std::process::id());
    let mut held = Vec::new();
    loop {
        let Some(s) = sub.next(Duration::from_secs(3600))? else {
            continue;
        };
        let last = c.last.load(Relaxed);
        match payload::parse(&s) {
            Some(h) if h.model == model::PUB && (last == NONE || h.seq > last) => {
                let expected = if last == NONE { 0 } else { last + 1 };
                c.gaps.fetch_add(h.seq - expected, Relaxed);
                c.last.store(h.seq, Relaxed);
                if hold {
                    println!("got seq={} len={}", h.seq, s.len());
                }
            }
            other => {
                c.bad.fetch_add(1, Relaxed);
                println!("bad publication len={} header={other:?}", s.len());
            }
        }
        let n = c.n.fetch_add(1, Relaxed) + 1;
        c.dropped.store(sub.dropped(), Relaxed);
        if progress > 0 && n % progress == 0 {
            println!("progress n={n}");
        }
        if hold {
            held.push(s);
        } else {
            drop(s);
        }
        let slow = c.slow_ms.load(Relaxed);
        if slow > 0 {
            std::thread::sleep(Duration::from_millis(slow));
        }
    }
}
