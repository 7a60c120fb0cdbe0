//! `hybus-bench-worker`: the server process that `benches/benches/bus.rs` spawns.
//!
//! ```text
//! hybus-bench-worker SOCKET ROLE NAME [REPORT] [--idle busy|spin|default|park]
//! ```
//!
//! The roles are [`hybus_benches::worker`]'s, shared with `hybusctl bench`.
//!
//! The worker prints `ready` on stdout once it serves, and exits when its
//! stdin closes, so a bench that dies leaves no worker behind.

use std::ffi::OsString;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use hybus::{Bus, BusOptions, IdleStrategy};
use hybus_benches::worker::{self, Failed};

/// The usage line printed on bad arguments.
const USAGE: &str =
    "usage: hybus-bench-worker SOCKET echo|sink|streamer|subscriber NAME [REPORT] [--idle busy|spin|default|park]";

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

/// Parses the command line (without the program name).
fn parse(mut raw: impl Iterator<Item = OsString>) -> Result<Args, Failed> {
    let mut positional = Vec::new();
    let mut idle = IdleStrategy::DEFAULT;
    while let Some(a) = raw.next() {
        let text = a.to_str();
        if text == Some("--idle") {
            let v = raw.next().ok_or_else(|| format!("--idle needs a value\n{USAGE}"))?;
            idle = worker::idle_strategy(&v.to_string_lossy())?;
        } else if let Some(v) = text.and_then(|t| t.strip_prefix("--idle=")) {
            idle = worker::idle_strategy(v)?;
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
        "echo" => worker::echo(&bus, &a.name),
        "sink" => worker::sink(&bus, &a.name),
        "streamer" => worker::streamer(&bus, &a.name),
        "subscriber" => {
            let report = a.report.as_deref().ok_or_else(|| format!("subscriber needs a REPORT name\n{USAGE}"))?;
            worker::subscriber(&bus, &a.name, report)
        }
        other => Err(format!("unknown role {other:?}\n{USAGE}")),
    }
}
