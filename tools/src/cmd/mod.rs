//! One module per subcommand.

pub mod bench;
pub mod call;
pub mod demo;
pub mod list;
pub mod monitor;
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
