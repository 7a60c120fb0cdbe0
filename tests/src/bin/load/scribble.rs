//! `scribble SECONDS SEED [NAME...]`: the chaos test's hostile client
//! (`tests/chaos.rs`), meant to run as a second uid. For SECONDS it
//! connects by hand ([`Raw`]), registers `chaos.evil` (so that honest
//! `direct chaos.evil` peers open channels to it), and then, every few
//! milliseconds, writes seeded random words over everything it has mapped
//! read-write: its pool (header included), both rings of its rings segment
//! (control words and slots), and every direct channel opened to it. In
//! between it sends requests carrying chunks of its scribbled pool to the
//! honest services NAME..., so that they read what it wrote. When the
//! daemon hangs up on it (or a connection has lasted two seconds, or the
//! daemon is away) it connects again, and goes on until SECONDS pass.
//!
//! Prints `ready client=<id>` after its first connection and
//! `done conns=<n> channels=<c> requests=<r> words=<w>` at the end, then
//! waits for its stdin to close.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hybus_layout::control::Request;
use hybus_layout::{Descriptor, Kind, Wake};
use hybus_tests::raw::{self, Raw, RawChannel};

use crate::payload::Rng;
use crate::{stdin_commands, R};

/// How long one connection is scribbled on before the next one.
const PER_CONNECTION: Duration = Duration::from_secs(2);

/// What one run did.
#[derive(Debug, Default)]
struct Tally {
    conns: u64,
    channels: u64,
    requests: u64,
    words: u64,
}

pub fn run(socket: &str, args: &[String]) -> R {
    stdin_commands(|_| {});
    let secs: u64 = args.first().ok_or("scribble SECONDS SEED [NAME...]")?.parse()?;
    let seed: u64 = args.get(1).ok_or("scribble SECONDS SEED [NAME...]")?.parse()?;
    let targets = &args[2..];
    let mut rng = Rng::new(seed);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut t = Tally::default();
    let mut said_ready = false;
    while Instant::now() < end {
        let Ok(mut r) = Raw::connect(socket) else {
            // The daemon is away (killed, not yet restarted): try again soon.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        t.conns += 1;
        if !said_ready {
            println!("ready client={}", r.welcome.client_id);
            said_ready = true;
        }
        // Registration and resolving may fail (a name taken, a service
        // away): scribbling goes on without them.
        let _ = r.control(Request::Register {
            name: "chaos.evil".into(),
            version: 1,
            weight: 1,
            exclusive: false,
            replace: false,
        });
        let routes: Vec<u32> = targets.iter().filter_map(|n| r.resolve(n).ok()).collect();
        let _ = one_connection(&mut r, &routes, &mut rng, end, &mut t);
    }
    println!("done conns={} channels={} requests={} words={}", t.conns, t.channels, t.requests, t.words);
    loop {
        std::thread::park();
    }
}

/// Scribbles on one connection until the daemon hangs up, the connection
/// is [`PER_CONNECTION`] old, or `end` passes.
fn one_connection(r: &mut Raw, routes: &[u32], rng: &mut Rng, end: Instant, t: &mut Tally) -> R {
    let stop = (Instant::now() + PER_CONNECTION).min(end);
    let mut channels: Vec<RawChannel> = Vec::new();
    let mut corr = 1u64;
    while Instant::now() < stop {
        match rng.below(7) {
            0 => {
                r.pool_word(rng.next_u64() as usize).store(rng.next_u64(), Ordering::Release);
                t.words += 1;
            }
            1 => {
                // The pool's header: magic, ABI version, kind, sizes.
                r.pool_word(rng.below(512) as usize).store(rng.next_u64(), Ordering::Release);
                t.words += 1;
            }
            2 => {
                r.rings_word(rng.next_u64() as usize).store(rng.next_u64(), Ordering::Release);
                r.tx_bell.wake();
                t.words += 1;
            }
            3 => {
                let at = [raw::CAPACITY, raw::TAIL, raw::HEAD, raw::PARKED][rng.below(4) as usize];
                r.tx_word(at).store(rng.next_u64(), Ordering::Release);
                r.tx_bell.wake();
                t.words += 1;
            }
            4 | 5 if !routes.is_empty() => {
                // A request whose chunk lies in our scribbled pool.
                let route = routes[rng.below(routes.len() as u64) as usize];
                let len = rng.range(1, 200_000);
                let c = r.own_chunk(len)?;
                for i in (0..len).step_by(4096) {
                    r.pool_word(c.offset as usize + i).store(rng.next_u64(), Ordering::Release);
                }
                corr += 1;
                r.send(&Descriptor::new(Kind::Request, route, corr).with_chunk(c))?;
                t.requests += 1;
            }
            _ => {
                if let Some(ch) = channels.get(rng.below(channels.len().max(1) as u64) as usize) {
                    ch.word(rng.next_u64() as usize).store(rng.next_u64(), Ordering::Release);
                    ch.peer_bell.wake();
                    t.words += 1;
                }
            }
        }
        // Take what the daemon sent (a full rx ring would only test its
        // patience) and any channel opened to us; an error here means the
        // daemon hung up (or our own scribbling broke our side).
        while let Some(_d) = r.pop()? {}
        match r.await_direct(Duration::from_millis(5)) {
            Ok(ch) => {
                t.channels += 1;
                channels.push(ch);
            }
            Err(e) if e.to_string() == "no DirectOpen" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
