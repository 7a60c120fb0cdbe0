//! `hybusctl worker ROLE`: the server processes that `bench` and `demo`
//! spawn. Hidden from help. Each prints `ready` on stdout once it serves
//! and exits when its stdin closes, so a parent that dies leaves none behind.
//! The benchmark roles (echo, sink, streamer, subscriber) are
//! [`hybus_benches::worker`]'s, shared with the criterion benches; the demo
//! roles (kv, detector) live here.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use hybus::{Bus, BusOptions, Incoming};
use hybus_benches::worker::{self, ready};

/// Arguments of `worker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The role: echo, sink, streamer, subscriber, kv, detector.
    role: String,
    /// Service or topic name.
    name: String,
    /// A second name (subscriber: the service that reports its count).
    extra: Option<String>,
    /// Idle strategy: busy (spins), spin (spins then yields), default, or park (every message wakes).
    #[arg(long, default_value = "default")]
    idle: String,
}

const FOREVER: Duration = Duration::from_secs(3600);

/// Runs a worker.
pub fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    std::thread::spawn(|| {
        for _ in std::io::stdin().lock().lines().map_while(Result::ok) {}
        std::process::exit(0);
    });
    let opts = BusOptions {
        path: Some(socket.to_owned()),
        label: format!("worker-{}", a.role),
        idle: worker::idle_strategy(&a.idle).map_err(anyhow::Error::msg)?,
        reconnect: true,
    };
    let bus = Bus::connect_with(opts)?;
    match a.role.as_str() {
        "echo" => worker::echo(&bus, &a.name).map_err(anyhow::Error::msg),
        "sink" => worker::sink(&bus, &a.name).map_err(anyhow::Error::msg),
        "streamer" => worker::streamer(&bus, &a.name).map_err(anyhow::Error::msg),
        "subscriber" => worker::subscriber(&bus, &a.name, a.extra.as_deref().unwrap_or("demo.subscriber"))
            .map_err(anyhow::Error::msg),
        "kv" => kv(&bus, &a.name),
        "detector" => detector(&bus, &a.name),
        other => anyhow::bail!("unknown worker role {other:?}"),
    }
}

/// A small key-value store: `set K V`, `get K`; `scan` as a stream; fires `log ...` are counted.
fn kv(bus: &Bus, name: &str) -> anyhow::Result<()> {
    let svc = bus.register(name)?;
    ready();
    let mut map: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut logs = 0u64;
    loop {
        let Some(inc) = svc.next(FOREVER)? else {
            continue;
        };
        match inc {
            Incoming::Request(req) => {
                let text = String::from_utf8_lossy(req.payload()).into_owned();
                let mut parts = text.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("set"), Some(k), Some(v)) => {
                        map.insert(k.to_owned(), v.as_bytes().to_vec());
                        req.reply(b"ok")?;
                    }
                    (Some("get"), Some(k), None) => match map.get(k) {
                        Some(v) => req.reply(v)?,
                        None => req.fail(&format!("no key {k}"))?,
                    },
                    (Some("logs"), None, None) => req.reply(logs.to_string().as_bytes())?,
                    _ => req.fail("use: set K V | get K | logs")?,
                }
            }
            Incoming::Fire(_) => logs += 1,
            Incoming::Stream(mut st) => {
                for (k, v) in &map {
                    let line = format!("{k}={}", String::from_utf8_lossy(v));
                    st.send(line.as_bytes(), Duration::from_secs(5))?;
                }
                st.end()?;
            }
        }
    }
}

/// "Detects" objects in a frame: answers with the frame's size and a checksum of every byte.
fn detector(bus: &Bus, name: &str) -> anyhow::Result<()> {
    let svc = bus.register(name)?;
    ready();
    loop {
        if let Some(Incoming::Request(req)) = svc.next(FOREVER)? {
            let sum: u64 = req.payload().iter().map(|&b| b as u64).sum();
            let answer = format!("objects={} sum={sum}", req.payload().len() / 100_000);
            req.reply(answer.as_bytes())?;
        }
    }
}
