//! One module per subcommand.

pub mod bench;
pub mod bench_bridged;
pub mod call;
pub mod demo;
pub mod list;
pub mod monitor;
pub mod scale;
pub mod stats;
pub mod status;
pub mod topic;
pub mod worker;

use std::path::Path;

use anyhow::Context;

/// Connects to the daemon, labelled `hybusctl`.
pub fn connect(socket: &Path) -> anyhow::Result<hybus::Bus> {
    let opts = hybus::BusOptions { path: Some(socket.to_owned()), label: "hybusctl".into(), ..Default::default() };
    hybus::Bus::connect_with(opts).map_err(anyhow::Error::from)
}

/// Prints `v` as pretty JSON.
pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v).context("cannot encode JSON")?);
    Ok(())
}

/// Parses a payload argument: `@FILE` reads a file, `-` reads stdin, anything else is the bytes of the text.
pub fn payload(arg: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    if arg == "-" {
        let mut v = Vec::new();
        std::io::stdin().read_to_end(&mut v).context("cannot read stdin")?;
        return Ok(v);
    }
    if let Some(f) = arg.strip_prefix('@') {
        return std::fs::read(f).with_context(|| format!("cannot read payload file {f}"));
    }
    Ok(arg.as_bytes().to_vec())
}

/// Shows a payload: as text if it is UTF-8 without control characters, else as hex.
pub fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => s.to_owned(),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(""),
    }
}

/// Parses a duration such as `500ms`, `2s`, `1m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}: use e.g. 500ms, 2s, 1m"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// How a following command (`monitor`, `subscribe`) stops and prints.
#[derive(Debug, clap::Args)]
pub struct Follow {
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

impl Follow {
    /// Calls `next` with how long it may wait until `--count` messages were
    /// shown or `--duration` passed; `next` returns whether it showed one.
    pub fn run(&self, mut next: impl FnMut(std::time::Duration) -> anyhow::Result<bool>) -> anyhow::Result<()> {
        use std::time::{Duration, Instant};
        let end = self.duration.map(|d| Instant::now() + d);
        let mut n = 0;
        loop {
            let left = end.map_or(Duration::from_secs(3600), |e| e.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Ok(());
            }
            if next(left.min(Duration::from_secs(1)))? {
                n += 1;
                if self.count.is_some_and(|c| n >= c) {
                    return Ok(());
                }
            }
        }
    }
}

/// Where an instance runs, for listings: `local`, or `remote via <bridge>`
/// (with `, balanced` when it shares requests with local instances).
pub fn placement(i: &hybus::InstanceInfo) -> String {
    match &i.remote {
        None => "local".into(),
        Some(r) if r.balance => format!("remote via {}, balanced", r.via),
        Some(r) => format!("remote via {}", r.via),
    }
}
