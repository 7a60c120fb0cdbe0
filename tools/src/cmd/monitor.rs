//! `hybusctl monitor [--match NAME]`.

use std::path::Path;
use std::time::Instant;

use hybus::BusEvent;
use serde_json::json;

/// Arguments of `monitor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only traffic for names under this prefix.
    #[arg(long = "match", default_value = "")]
    prefix: String,
    #[command(flatten)]
    follow: super::Follow,
}

fn kind_name(k: u8) -> &'static str {
    match hybus_layout::Kind::from_u8(k) {
        Some(hybus_layout::Kind::Request) => "request",
        Some(hybus_layout::Kind::Response) => "response",
        Some(hybus_layout::Kind::Error) => "error",
        Some(hybus_layout::Kind::Fire) => "fire",
        Some(hybus_layout::Kind::Publish) => "publish",
        Some(hybus_layout::Kind::StreamOpen) => "stream-open",
        Some(hybus_layout::Kind::StreamItem) => "stream-item",
        Some(hybus_layout::Kind::StreamEnd) => "stream-end",
        Some(hybus_layout::Kind::Credit) => "credit",
        Some(hybus_layout::Kind::Cancel) => "cancel",
        Some(hybus_layout::Kind::Release) => "release",
        Some(hybus_layout::Kind::Fence) => "fence",
        None => "?",
    }
}

/// Runs `monitor`.
pub fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let bus = super::connect(socket)?;
    bus.monitor(&a.prefix)?;
    if !a.follow.json {
        eprintln!("monitoring {} (Ctrl-C to stop)", if a.prefix.is_empty() { "all traffic" } else { &a.prefix });
    }
    let start = Instant::now();
    let json = a.follow.json;
    a.follow.run(|wait| match bus.next_event(wait)? {
        Some(BusEvent::Traffic { kind, from, to, route, correlation, len }) => {
            let t = start.elapsed().as_secs_f64();
            if json {
                println!(
                    "{}",
                    json!({"t": t, "kind": kind_name(kind), "from": from, "to": to, "route": route, "correlation": correlation, "len": len})
                );
            } else {
                // 0: no single receiver (a publication goes to every subscriber).
                let to = if to == 0 { "*".to_owned() } else { to.to_string() };
                println!(
                    "{t:>10.6}  {:<11}  client {from:>4} → {to:>4}  route {route:<5} corr {correlation:<20} {len} B",
                    kind_name(kind)
                );
            }
            Ok(true)
        }
        Some(BusEvent::Disconnected { reason }) => anyhow::bail!("lost the daemon: {reason}"),
        Some(BusEvent::MonitorStopped { reason }) => anyhow::bail!("the daemon stopped the monitor: {reason}"),
        _ => Ok(false),
    })
}
