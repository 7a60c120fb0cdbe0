//! `hybusctl worker ROLE`: the server processes that `bench` and `demo`
//! spawn. Hidden from help. Each prints `ready` on stdout once it serves
//! and exits when its stdin closes, so a parent that dies leaves none behind.
//! The benchmark roles (echo, sink, streamer, subscriber) are
//! [`hybus_benches::worker`]'s, shared with the criterion benches; the demo
//! roles (kv, detector) live here.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use hybus::{Bus, BusOptions, ServiceError};
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
    // Shared by the request and the stream handler, which run one at a time on this thread.
    let map: RefCell<BTreeMap<String, Vec<u8>>> = RefCell::new(BTreeMap::new());
    let logs = Cell::new(0u64);
    svc.serving()
        .on_fire(|_| logs.set(logs.get() + 1))
        .on_stream(|st| {
            for (k, v) in map.borrow().iter() {
                let line = format!("{k}={}", String::from_utf8_lossy(v));
                st.send(line.as_bytes(), Duration::from_secs(5))?;
            }
            Ok(())
        })
        .run(|req| {
            let text = String::from_utf8_lossy(req.payload()).into_owned();
            let mut parts = text.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("set"), Some(k), Some(v)) => {
                    map.borrow_mut().insert(k.to_owned(), v.as_bytes().to_vec());
                    Ok(b"ok".into())
                }
                (Some("get"), Some(k), None) => match map.borrow().get(k) {
                    Some(v) => Ok(v.clone().into()),
                    None => Err(ServiceError::new(404, format!("no key {k}"))),
                },
                (Some("logs"), None, None) => Ok(logs.get().to_string().into()),
                _ => Err(ServiceError::new(400, format!("bad command {text:?} (use: set K V | get K | logs)"))),
            }
        })?;
    Ok(())
}

/// "Detects" objects in a frame: answers with the frame's size and a checksum of every byte.
fn detector(bus: &Bus, name: &str) -> anyhow::Result<()> {
    let svc = bus.register(name)?;
    ready();
    svc.serve(|req| {
        let sum: u64 = req.payload().iter().map(|&b| b as u64).sum();
        Ok(format!("objects={} sum={sum}", req.payload().len() / 100_000).into())
    })?;
    Ok(())
}
