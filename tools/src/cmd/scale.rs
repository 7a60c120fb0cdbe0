//! `hybusctl scale NAME [--min ..] [--max ..] [--low ..] [--high ..] -- CMD...`: a scaler outside the daemon.
//!
//! The daemon provides the data (per-instance request counts and queue
//! depths, the stats every client may read); this ordinary client decides.
//! Every interval it reads the stats, works out the request rate per
//! serving instance of NAME, and keeps it inside a band by starting one
//! more instance (running the configured command) or stopping one it
//! started (SIGTERM: the instance drains, answers what it has and exits).
//! Nothing in the daemon changes.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `scale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service to scale.
    name: String,
    /// Fewest instances to keep (started at once if fewer serve).
    #[arg(long, default_value_t = 1)]
    min: usize,
    /// Most instances to run.
    #[arg(long, default_value_t = 4)]
    max: usize,
    /// Requests per second per instance below which one is stopped.
    #[arg(long, default_value_t = 10.0)]
    low: f64,
    /// Requests per second per instance above which one is started.
    #[arg(long, default_value_t = 1000.0)]
    high: f64,
    /// Requests waiting per instance (in flight plus queued in the daemon)
    /// above which one is started, whatever the rate.
    #[arg(long, default_value_t = 64)]
    queue: u64,
    /// How often to look, e.g. 500ms.
    #[arg(long, default_value = "500ms", value_parser = super::parse_duration)]
    interval: Duration,
    /// After a change, how long to wait before the next one (the new
    /// instance must register, the stopped one drain).
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    settle: Duration,
    /// Stop after this long (default: run until killed).
    #[arg(long, value_parser = super::parse_duration)]
    duration: Option<Duration>,
    /// The command that starts one instance (after `--`); it gets
    /// `HYBUS_SOCKET` and should register NAME, and drain and exit on SIGTERM.
    #[arg(last = true, required = true)]
    start: Vec<String>,
}

/// What one look at the stats found.
struct Look {
    serving: usize,
    rate: f64,
    waiting: u64,
}

/// Runs `scale`.
pub fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.min <= a.max && a.max > 0, "--min must be at most --max, and --max at least 1");
    anyhow::ensure!(a.low < a.high, "--low must be below --high");
    let bus = super::connect(socket)?;
    let mut children: Vec<Child> = Vec::new();
    let mut last_counts: HashMap<u32, u64> = HashMap::new();
    let mut last_look = Instant::now();
    let mut last_change: Option<Instant> = None;
    let began = Instant::now();
    let r = loop {
        std::thread::sleep(a.interval);
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        let look = match look(&bus, &a.name, &mut last_counts, &mut last_look) {
            Ok(l) => l,
            Err(e) => break Err(e),
        };
        let per = look.rate / look.serving.max(1) as f64;
        let waiting = look.waiting / look.serving.max(1) as u64;
        let settled = last_change.is_none_or(|t| t.elapsed() >= a.settle);
        // Our own children that have not registered yet count as coming.
        let running = look.serving.max(children.len());
        let too_few = look.serving < a.min && children.len() < a.max;
        let too_busy = (per > a.high || waiting > a.queue) && running < a.max;
        let action = if settled && (too_few || too_busy) {
            "up"
        } else if settled && per < a.low && look.serving > a.min && !children.is_empty() {
            "down"
        } else {
            "hold"
        };
        println!(
            "scale {}: instances={} rate={:.0}/s per_instance={per:.0}/s waiting={waiting} action={action}",
            a.name, look.serving, look.rate
        );
        match action {
            "up" => match start(&a.start, socket) {
                Ok(c) => {
                    children.push(c);
                    last_change = Some(Instant::now());
                }
                Err(e) => break Err(e),
            },
            "down" => {
                // The youngest goes first: it has the least warm state.
                if let Some(c) = children.last() {
                    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
                if let Some(c) = children.pop() {
                    // Reaped later, in the background of the loop.
                    stopping(c);
                }
                last_change = Some(Instant::now());
            }
            _ => {}
        }
        if a.duration.is_some_and(|d| began.elapsed() >= d) {
            break Ok(());
        }
    };
    for c in children {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        stopping(c);
    }
    r
}

/// Rate and queue depth of the serving instances of `name` since the last look.
fn look(bus: &hybus::Bus, name: &str, last: &mut HashMap<u32, u64>, at: &mut Instant) -> anyhow::Result<Look> {
    let serving: Vec<u32> = bus
        .list()?
        .into_iter()
        .filter(|s| s.name == name)
        .flat_map(|s| s.instances.into_iter().filter(|i| !i.draining).map(|i| i.instance))
        .collect();
    let stats = bus.stats()?.instances;
    let now = Instant::now();
    let dt = now.duration_since(*at).as_secs_f64().max(1e-3);
    *at = now;
    let mut rate = 0.0;
    let mut waiting = 0;
    let mut counts = HashMap::new();
    for s in stats.iter().filter(|s| s.name == name) {
        if let Some(before) = last.get(&s.instance) {
            rate += s.messages_in.saturating_sub(*before) as f64 / dt;
        }
        counts.insert(s.instance, s.messages_in);
        if serving.contains(&s.instance) {
            waiting += s.in_flight + s.queued;
        }
    }
    *last = counts;
    Ok(Look { serving: serving.len(), rate, waiting })
}

fn start(cmd: &[String], socket: &Path) -> anyhow::Result<Child> {
    use anyhow::Context;
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("HYBUS_SOCKET", socket)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", cmd[0]))
}

/// Reaps a child told to stop, on a thread of its own (it drains first).
fn stopping(mut c: Child) {
    std::thread::spawn(move || {
        let _ = c.wait();
    });
}
