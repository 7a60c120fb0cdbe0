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
        Some(BusEvent::Traffic { kind, from, to, route, correlation, len, from_pid, to_pid }) => {
            let t = start.elapsed().as_secs_f64();
            let correlation = exchange_of(kind, correlation);
            if json {
                println!(
                    "{}",
                    json!({
                        "t": t, "kind": kind_name(kind), "from": from, "from_pid": from_pid,
                        "to": (to != 0).then_some(to), "to_pid": (to != 0).then_some(to_pid),
                        "route": route, "correlation": correlation, "len": len,
                    })
                );
            } else {
                println!("{}", line(t, kind, (from, from_pid), (to, to_pid), route, correlation, len));
            }
            Ok(true)
        }
        Some(BusEvent::Disconnected { reason }) => anyhow::bail!("lost the daemon: {reason}"),
        Some(BusEvent::MonitorStopped { reason }) => anyhow::bail!("the daemon stopped the monitor: {reason}"),
        _ => Ok(false),
    })
}

/// The correlation id worth showing: that of the exchange a descriptor
/// belongs to. Fires, publications, releases and fences belong to none
/// (a fire's id has a marker bit only its sender reads, 2⁶² and up).
fn exchange_of(kind: u8, correlation: u64) -> Option<u64> {
    use hybus_layout::Kind;
    match Kind::from_u8(kind) {
        Some(Kind::Fire | Kind::Publish | Kind::Release | Kind::Fence) | None => None,
        Some(_) => Some(correlation),
    }
}

/// A party as `client ID (pid PID)`; `*` for every subscriber (client id 0).
fn party((client, pid): (u32, i32)) -> String {
    if client == 0 {
        "*".to_owned()
    } else {
        format!("client {client} (pid {pid})")
    }
}

/// One line of the text output.
fn line(t: f64, kind: u8, from: (u32, i32), to: (u32, i32), route: u32, correlation: Option<u64>, len: u32) -> String {
    let corr = correlation.map_or_else(|| "-".to_owned(), |c| c.to_string());
    format!(
        "{t:>10.6}  {:<11}  {:>22} → {:<22}  route {route:<5} corr {corr:<20} {len} B",
        kind_name(kind),
        party(from),
        party(to)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_and_publications_show_no_correlation() {
        let fire = line(1.0, hybus_layout::Kind::Fire as u8, (3, 100), (4, 200), 7, exchange_of(4, 1 << 62), 5);
        assert!(fire.contains("corr -"), "{fire}");
        assert!(!fire.contains("4611686018427387904"), "{fire}");
        assert!(fire.contains("client 3 (pid 100)") && fire.contains("client 4 (pid 200)"), "{fire}");
        let publish = line(1.0, hybus_layout::Kind::Publish as u8, (3, 100), (0, 0), 7, exchange_of(5, 9), 5);
        assert!(publish.contains("→ *") && publish.contains("corr -"), "{publish}");
        let request = line(1.0, hybus_layout::Kind::Request as u8, (3, 100), (4, 200), 7, exchange_of(1, 12), 5);
        assert!(request.contains("corr 12 "), "{request}");
    }
}
