//! `serve NAME [hold]`: a service instance that checks what it gets.
//!
//! * requests are answered with their payload reversed; a request whose
//!   payload starts with `?fires` is answered `fires=<n> bad=<b>`;
//! * fires are counted and checked ([`payload::parse`], model FIRE, in
//!   order per sender);
//! * a request-stream opened with `n=<N> size=<S>` gets N items
//!   `make({0, ITEM, i}, size)` (S = 0: sizes cycle through [`MIXED`]);
//! * a request-channel gets every item back reversed;
//! * `hold`: requests and streams are kept unanswered (`holding <n>`,
//!   `holding-stream <n>`); streams get no credit either.
//!
//! Stdin: `drain` — drain, keep serving until nothing came for 200 ms,
//! unregister, print `drained served=<n>`, exit 0; `report` — print
//! `report served=.. fires=.. bad=.. streams=.. channels=..`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hybus::{Bus, Incoming, StreamRequest};

use crate::payload::{self, model, Header};
use crate::{stdin_commands, R};

/// Item sizes of a `size=0` stream: inline, the inline limit, just past it, a page, 100 KB.
pub const MIXED: [usize; 5] = [16, 40, 41, 4096, 100_000];

#[derive(Debug, Default)]
struct Counters {
    served: AtomicU64,
    fires: AtomicU64,
    bad: AtomicU64,
    streams: AtomicU64,
    channels: AtomicU64,
    drain: AtomicBool,
}

impl Counters {
    fn report(&self) -> String {
        format!(
            "report served={} fires={} bad={} streams={} channels={}",
            self.served.load(Relaxed),
            self.fires.load(Relaxed),
            self.bad.load(Relaxed),
            self.streams.load(Relaxed),
            self.channels.load(Relaxed)
        )
    }
}

const LONG: Duration = Duration::from_secs(60);

pub fn run(socket: &str, args: &[String]) -> R {
    let name = args.first().ok_or("serve NAME [hold]")?;
    let hold = args.iter().any(|a| a == "hold");
    let bus = Bus::connect_to(socket)?;
    let svc = bus.register(name)?;
    let c = Arc::new(Counters::default());
    let cmd = c.clone();
    stdin_commands(move |line| match line {
        "drain" => cmd.drain.store(true, Relaxed),
        "report" => println!("{}", cmd.report()),
        _ => {}
    });
    println!(
        "ready instance={} route={} client={} pid={}",
        svc.instance(),
        svc.route(),
        bus.client_id(),
        std::process::id()
    );
    let mut next_fire: HashMap<u32, u64> = HashMap::new();
    let mut held = Vec::new();
    let mut held_streams = Vec::new();
    let mut draining = false;
    loop {
        if !draining && c.drain.load(Relaxed) {
            svc.drain()?;
            draining = true;
            println!("draining");
        }
        let wait = if draining { 200 } else { 50 };
        let Some(inc) = svc.next(Duration::from_millis(wait))? else {
            if draining {
                break;
            }
            continue;
        };
        match inc {
            Incoming::Request(req) => {
                if hold {
                    held.push(req);
                    println!("holding {}", held.len());
                    continue;
                }
                let answer = if req.payload().starts_with(b"?fires") {
                    format!("fires={} bad={}", c.fires.load(Relaxed), c.bad.load(Relaxed)).into_bytes()
                } else {
                    let mut v = req.payload().to_vec();
                    v.reverse();
                    v
                };
                c.served.fetch_add(1, Relaxed);
                req.reply(&answer)?;
            }
            Incoming::Fire(s) => {
                c.fires.fetch_add(1, Relaxed);
                let ok = payload::parse(&s).is_some_and(|h| {
                    let next = next_fire.entry(h.sender).or_default();
                    let ok = h.model == model::FIRE && h.seq == *next;
                    *next = h.seq + 1;
                    ok
                });
                if !ok {
                    c.bad.fetch_add(1, Relaxed);
                    println!("bad fire len={}", s.len());
                }
            }
            Incoming::Stream(st) => {
                if hold {
                    held_streams.push(st);
                    println!("holding-stream {}", held_streams.len());
                    continue;
                }
                let r = if st.is_channel() {
                    c.channels.fetch_add(1, Relaxed);
                    echo_channel(st)
                } else {
                    c.streams.fetch_add(1, Relaxed);
                    send_stream(st)
                };
                if let Err(e) = r {
                    // The caller may cancel or die; the service goes on.
                    println!("stream-error {e}");
                }
            }
        }
    }
    let served = c.served.load(Relaxed);
    svc.unregister()?;
    println!("drained served={served}");
    std::process::exit(0);
}

/// The size of item `i` of a stream opened with `size=<size>`.
pub fn item_size(size: usize, i: u64) -> usize {
    if size == 0 {
        MIXED[i as usize % MIXED.len()]
    } else {
        size.max(payload::HEADER)
    }
}

fn field(text: &str, key: &str) -> Option<u64> {
    text.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn send_stream(mut st: StreamRequest) -> R {
    let text = String::from_utf8_lossy(st.payload()).into_owned();
    let n = field(&text, "n").unwrap_or(0);
    let size = field(&text, "size").unwrap_or(16) as usize;
    for i in 0..n {
        let h = Header { sender: 0, model: model::ITEM, seq: i };
        st.send(&payload::make(h, item_size(size, i)), LONG)?;
    }
    st.end()?;
    Ok(())
}

fn echo_channel(mut st: StreamRequest) -> R {
    while let Some(item) = st.recv(LONG)? {
        let mut v = item.to_vec();
        drop(item);
        v.reverse();
        st.send(&v, LONG)?;
    }
    st.end()?;
    Ok(())
}
