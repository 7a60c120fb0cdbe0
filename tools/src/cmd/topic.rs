//! `hybusctl publish TOPIC PAYLOAD` and `hybusctl subscribe TOPIC`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

/// Arguments of `publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Topic name.
    topic: String,
    /// Payload: text, `@FILE`, or `-` for stdin.
    payload: String,
    /// Publish this many times.
    #[arg(long, default_value = "1")]
    count: u64,
}

/// Arguments of `subscribe`.
#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// Topic name.
    topic: String,
    /// Stop after this many publications.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (e.g. 10s).
    #[arg(long, value_parser = super::parse_duration)]
    duration: Option<Duration>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// Runs `publish`.
pub fn publish(socket: &Path, a: PublishArgs) -> anyhow::Result<()> {
    let bus = super::connect(socket)?;
    let payload = super::payload(&a.payload)?;
    let p = bus.publisher(&a.topic)?;
    for _ in 0..a.count {
        p.publish(&payload)?;
    }
    Ok(())
}

/// Runs `subscribe`.
pub fn subscribe(socket: &Path, a: SubscribeArgs) -> anyhow::Result<()> {
    let bus = super::connect(socket)?;
    let sub = bus.subscribe(&a.topic)?;
    if !a.json {
        eprintln!("subscribed to {} (Ctrl-C to stop)", a.topic);
    }
    let end = a.duration.map(|d| Instant::now() + d);
    let mut n = 0;
    loop {
        let left = end.map_or(Duration::from_secs(3600), |e| e.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return Ok(());
        }
        if let Some(s) = sub.next(left.min(Duration::from_secs(1)))? {
            if a.json {
                println!("{}", json!({"topic": a.topic, "len": s.len(), "payload": super::show(&s)}));
            } else {
                println!("{}", super::show(&s));
            }
            n += 1;
            if a.count.is_some_and(|c| n >= c) {
                return Ok(());
            }
        }
    }
}
