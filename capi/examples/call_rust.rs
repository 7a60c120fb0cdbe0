//! `call_rust NAME TEXT N SOCKET [IDLE]`: what `call.c` does, with the Rust
//! client, for the C-against-Rust comparison of `python/bench.py`: N calls
//! of an 8-byte payload, then `p50_ns=... p99_ns=...`.

use std::time::{Duration, Instant};

use hybus::{Bus, BusOptions, IdleStrategy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: call_rust NAME TEXT N SOCKET [IDLE]".into());
    }
    let n: usize = args[2].parse()?;
    let idle = match args.get(4).map(String::as_str).unwrap_or("default") {
        "spin" => IdleStrategy { spins: 0, yields: u32::MAX, park: false },
        "busy" => IdleStrategy::BUSY,
        "park" => IdleStrategy::PARK,
        _ => IdleStrategy::DEFAULT,
    };
    let bus = Bus::connect_with(BusOptions { path: Some(args[3].clone().into()), idle, ..BusOptions::default() })?;
    let route = bus.resolve(&args[0])?;
    let mut rtt = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let answer = bus.call(&route, b"pingpong", Duration::from_secs(1))?;
        drop(answer);
        rtt.push(t0.elapsed().as_nanos() as u64);
    }
    rtt.sort_unstable();
    println!("p50_ns={} p99_ns={}", rtt[n / 2], rtt[n * 99 / 100]);
    Ok(())
}
