//! `hybusctl stats [--watch] [--prometheus] [--json]`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hybus::{ChannelStats, InstanceStats, StatsReport};
use hybus_layout::channel::RTT_SAMPLE_EVERY;
use serde_json::json;

use crate::table::{bytes_rate, ns, rate, Table};

/// Arguments of `stats`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Refresh like `top`, showing rates.
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value = "1", value_parser = super::parse_duration)]
    interval: Duration,
    /// Stop after this many refreshes (with --watch).
    #[arg(long)]
    count: Option<u64>,
    /// Print the Prometheus text exposition format.
    #[arg(long, conflicts_with = "json")]
    prometheus: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `stats`.
pub fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let bus = super::connect(socket)?;
    if !a.watch {
        let s = bus.stats()?;
        if a.prometheus {
            print!("{}", prometheus(&s, &bus.activations()?));
        } else if a.json {
            super::print_json(&to_json(&s, None))?;
        } else {
            print!("{}", table(&s, None));
        }
        return Ok(());
    }
    let mut prev: Option<(Instant, StatsReport)> = None;
    let mut n = 0u64;
    loop {
        let now = Instant::now();
        let s = bus.stats()?;
        let rates = prev.as_ref().map(|(t, p)| rates(p, &s, now.duration_since(*t)));
        if a.json {
            println!("{}", serde_json::to_string(&to_json(&s, rates.as_ref()))?);
        } else if a.prometheus {
            print!("{}", prometheus(&s, &bus.activations()?));
        } else {
            // Clear the screen and home the cursor, like top.
            print!("\x1b[2J\x1b[H");
            println!("hybus stats — {} every {:?} (Ctrl-C to quit)", bus.path().display(), a.interval);
            print!("{}", table(&s, rates.as_ref()));
        }
        prev = Some((now, s));
        n += 1;
        if a.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(a.interval);
    }
}

/// Messages/s and bytes/s per instance (keyed by instance id) and per
/// direct channel (keyed by `u32::MAX - channel`) between two snapshots.
fn rates(prev: &StatsReport, cur: &StatsReport, dt: Duration) -> HashMap<u32, (f64, f64)> {
    let secs = dt.as_secs_f64().max(1e-9);
    let channels = cur.channels.iter().map(|c| {
        let p = prev.channels.iter().find(|p| p.channel == c.channel);
        let m = (c.a_messages + c.b_messages).saturating_sub(p.map_or(0, |p| p.a_messages + p.b_messages));
        let b = (c.a_bytes + c.b_bytes).saturating_sub(p.map_or(0, |p| p.a_bytes + p.b_bytes));
        (u32::MAX - c.channel, (m as f64 / secs, b as f64 / secs))
    });
    let prev = &prev.instances;
    cur.instances
        .iter()
        .map(|c| {
            let p = prev.iter().find(|p| p.instance == c.instance);
            let m = (c.messages_in + c.messages_out).saturating_sub(p.map_or(0, |p| p.messages_in + p.messages_out));
            let b = (c.bytes_in + c.bytes_out).saturating_sub(p.map_or(0, |p| p.bytes_in + p.bytes_out));
            (c.instance, (m as f64 / secs, b as f64 / secs))
        })
        .chain(channels)
        .collect()
}

fn table(report: &StatsReport, rates: Option<&HashMap<u32, (f64, f64)>>) -> String {
    let s = &report.instances;
    if s.is_empty() && report.channels.is_empty() {
        return "no service instances\n".into();
    }
    let mut t = Table::new(&[
        "SERVICE",
        ">INST",
        ">PID",
        ">MSG/S",
        ">BYTES/S",
        ">IN",
        ">OUT",
        ">DIRECT",
        ">INFLIGHT",
        ">QUEUE",
        ">DROPS",
        ">ERRORS",
        ">P50",
        ">P99",
        ">P99.9",
    ]);
    for i in s {
        let (m, b) = rates.and_then(|r| r.get(&i.instance)).copied().unwrap_or((f64::NAN, f64::NAN));
        t.row(vec![
            i.name.clone(),
            i.instance.to_string(),
            i.pid.to_string(),
            if m.is_nan() { "-".into() } else { rate(m) },
            if b.is_nan() { "-".into() } else { bytes_rate(b) },
            i.messages_in.to_string(),
            i.messages_out.to_string(),
            {
                let (to, from) = direct_of(report, i);
                (to + from).to_string()
            },
            i.in_flight.to_string(),
            i.queued.to_string(),
            i.drops.to_string(),
            i.errors.to_string(),
            lat(i.latency_ns[0]),
            lat(i.latency_ns[1]),
            lat(i.latency_ns[2]),
        ]);
    }
    let mut out = t.render();
    // Direct channels always get their section: their traffic bypasses the
    // daemon, so the IN and OUT columns above never count it.
    if report.channels.is_empty() {
        out.push_str(
            "\nno direct channels open (IN/OUT count brokered traffic, DIRECT what went over direct channels)\n",
        );
    } else {
        let mut c = Table::new(&[
            "DIRECT CHANNEL",
            ">ID",
            ">CALLER",
            ">SERVER",
            ">MSG/S",
            ">BYTES/S",
            ">→MSGS",
            ">←MSGS",
            ">→BYTES",
            ">←BYTES",
            ">QUEUED→/←",
            ">IN FLIGHT",
            ">ERRORS",
            ">RTT P50",
            ">RTT P99",
            "SINCE",
        ]);
        for ch in &report.channels {
            let (m, b) = rates.and_then(|r| r.get(&(u32::MAX - ch.channel))).copied().unwrap_or((f64::NAN, f64::NAN));
            c.row(vec![
                ch.service.clone(),
                ch.channel.to_string(),
                ch.a_pid.to_string(),
                ch.b_pid.to_string(),
                if m.is_nan() { "-".into() } else { rate(m) },
                if b.is_nan() { "-".into() } else { bytes_rate(b) },
                ch.a_messages.to_string(),
                ch.b_messages.to_string(),
                ch.a_bytes.to_string(),
                ch.b_bytes.to_string(),
                format!("{}/{}", ch.a_queued, ch.b_queued),
                ch.a_in_flight.to_string(),
                ch.b_errors.to_string(),
                lat(ch.latency_ns[0]),
                lat(ch.latency_ns[1]),
                format!("{} s ago: {}", ch.age_s, ch.reason),
            ]);
        }
        out.push('\n');
        out.push_str(&c.render());
    }
    out
}

/// Descriptors that went over the open direct channels served by instance
/// `i` (matched by service name and pid): `(to it, from it)`.
fn direct_of(report: &StatsReport, i: &InstanceStats) -> (u64, u64) {
    report
        .channels
        .iter()
        .filter(|c| c.service == i.name && c.b_pid == i.pid)
        .fold((0, 0), |(to, from), c| (to + c.a_messages, from + c.b_messages))
}

fn channel_json(c: &ChannelStats) -> serde_json::Value {
    json!({
        "channel": c.channel, "service": c.service, "caller_pid": c.a_pid, "server_pid": c.b_pid,
        "caller_messages": c.a_messages, "caller_bytes": c.a_bytes,
        "server_messages": c.b_messages, "server_bytes": c.b_bytes,
        "caller_queued": c.a_queued, "server_queued": c.b_queued,
        "caller_in_flight": c.a_in_flight, "server_in_flight": c.b_in_flight, "server_errors": c.b_errors,
        "timed_calls": c.timed_calls,
        "latency_ns": {"p50": c.latency_ns[0], "p99": c.latency_ns[1], "p999": c.latency_ns[2], "max": c.latency_ns[3]},
        "reason": c.reason, "age_s": c.age_s,
    })
}

fn to_json(report: &StatsReport, rates: Option<&HashMap<u32, (f64, f64)>>) -> serde_json::Value {
    let v: Vec<_> = report
        .instances
        .iter()
        .map(|i| {
            let r = rates.and_then(|r| r.get(&i.instance));
            let (direct_in, direct_out) = direct_of(report, i);
            json!({
                "service": i.name, "instance": i.instance, "pid": i.pid,
                "messages_in": i.messages_in, "messages_out": i.messages_out,
                "bytes_in": i.bytes_in, "bytes_out": i.bytes_out,
                "in_flight": i.in_flight, "queued": i.queued, "drops": i.drops, "errors": i.errors,
                "direct_messages_in": direct_in, "direct_messages_out": direct_out,
                "msgs_per_s": r.map(|r| r.0), "bytes_per_s": r.map(|r| r.1),
                "latency_ns": {"p50": i.latency_ns[0], "p99": i.latency_ns[1], "p999": i.latency_ns[2], "max": i.latency_ns[3]},
            })
        })
        .collect();
    let ch: Vec<_> = report.channels.iter().map(channel_json).collect();
    json!({ "instances": v, "channels": ch })
}

/// The Prometheus text exposition format (version 0.0.4).
fn prometheus(report: &StatsReport, activations: &[hybus::ActivationInfo]) -> String {
    use std::fmt::Write;
    let s = &report.instances;
    let mut out = String::new();
    type Metric = (&'static str, &'static str, &'static str, fn(&InstanceStats) -> u64);
    let metrics: [Metric; 9] = [
        ("hybus_messages_in_total", "counter", "Descriptors delivered to the instance.", |i| i.messages_in),
        ("hybus_messages_out_total", "counter", "Descriptors the instance sent.", |i| i.messages_out),
        ("hybus_bytes_in_total", "counter", "Payload bytes delivered to the instance.", |i| i.bytes_in),
        ("hybus_bytes_out_total", "counter", "Payload bytes the instance sent.", |i| i.bytes_out),
        ("hybus_in_flight", "gauge", "Requests forwarded and not answered yet.", |i| i.in_flight),
        ("hybus_queue_depth", "gauge", "Descriptors queued in the daemon for the instance.", |i| i.queued),
        ("hybus_drops_total", "counter", "Descriptors dropped for the instance (slow subscriber).", |i| i.drops),
        ("hybus_errors_total", "counter", "Error answers made on the instance's behalf.", |i| i.errors),
        ("hybus_latency_max_nanoseconds", "gauge", "Largest request-to-answer latency seen.", |i| i.latency_ns[3]),
    ];
    for (name, kind, help, f) in metrics {
        family(&mut out, name, kind, help);
        for i in s {
            let _ = writeln!(
                out,
                "{name}{{service=\"{}\",instance=\"{}\",pid=\"{}\"}} {}",
                i.name,
                i.instance,
                i.pid,
                f(i)
            );
        }
    }
    family(&mut out, "hybus_latency_nanoseconds", "summary", "Request-to-answer latency through the daemon.");
    for i in s {
        for (q, v) in quantiles(&i.latency_ns) {
            let _ = writeln!(
                out,
                "hybus_latency_nanoseconds{{service=\"{}\",instance=\"{}\",quantile=\"{q}\"}} {v}",
                i.name, i.instance
            );
        }
    }
    family(&mut out, "hybus_direct_in_flight", "gauge", "Exchanges open on a direct channel, by side.");
    for c in &report.channels {
        for (side, v) in [("caller", c.a_in_flight), ("server", c.b_in_flight)] {
            let _ = writeln!(
                out,
                "hybus_direct_in_flight{{service=\"{}\",channel=\"{}\",side=\"{side}\"}} {v}",
                c.service, c.channel
            );
        }
    }
    family(&mut out, "hybus_direct_errors_total", "counter", "Error answers a service sent over a direct channel.");
    for c in &report.channels {
        let _ = writeln!(
            out,
            "hybus_direct_errors_total{{service=\"{}\",channel=\"{}\"}} {}",
            c.service, c.channel, c.b_errors
        );
    }
    let help = format!("Round trip of direct calls, timed by the caller on one call in {RTT_SAMPLE_EVERY}.");
    family(&mut out, "hybus_direct_latency_nanoseconds", "summary", &help);
    for c in &report.channels {
        let labels = format!("service=\"{}\",channel=\"{}\"", c.service, c.channel);
        for (q, v) in quantiles(&c.latency_ns) {
            let _ = writeln!(out, "hybus_direct_latency_nanoseconds{{{labels},quantile=\"{q}\"}} {v}");
        }
        let _ = writeln!(out, "hybus_direct_latency_nanoseconds_count{{{labels}}} {}", c.timed_calls);
    }
    type Both = fn(&ChannelStats) -> (u64, u64);
    let direct: [(&str, &str, &str, Both); 3] = [
        ("hybus_direct_messages_total", "counter", "Descriptors sent over a direct channel", |c| {
            (c.a_messages, c.b_messages)
        }),
        ("hybus_direct_bytes_total", "counter", "Payload bytes sent over a direct channel", |c| (c.a_bytes, c.b_bytes)),
        ("hybus_direct_queued", "gauge", "Descriptors waiting in a direct channel's ring", |c| {
            (c.a_queued, c.b_queued)
        }),
    ];
    for (name, kind, help, both) in direct {
        family(&mut out, name, kind, &format!("{help}, by direction."));
        for c in &report.channels {
            let (to_server, to_caller) = both(c);
            for (dir, v) in [("to_server", to_server), ("to_caller", to_caller)] {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\",channel=\"{}\",direction=\"{dir}\"}} {v}",
                    c.service, c.channel
                );
            }
        }
    }
    type Act = (&'static str, &'static str, &'static str, fn(&hybus::ActivationInfo) -> u64);
    let acts: [Act; 4] = [
        ("hybus_activations_total", "counter", "Processes the daemon started on demand.", |a| a.activations),
        ("hybus_activation_failures_total", "counter", "On-demand starts that failed before registering.", |a| {
            a.activation_failures
        }),
        ("hybus_activation_idle_stops_total", "counter", "Activated instances asked to drain for idleness.", |a| {
            a.idle_stops
        }),
        ("hybus_activation_held", "gauge", "Requests held while the service starts.", |a| a.held as u64),
    ];
    for (name, kind, help, f) in acts {
        family(&mut out, name, kind, help);
        for a in activations {
            let _ = writeln!(out, "{name}{{service=\"{}\"}} {}", a.name, f(a));
        }
    }
    out
}

/// The HELP and TYPE lines of a metric family (its samples follow them, all together).
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The quantiles of a summary from `[p50, p99, p99.9, max]`: `NaN` before
/// the first sample (max 0), as Prometheus clients write an empty summary.
fn quantiles(figures: &[u64; 4]) -> [(&'static str, String); 3] {
    let v = |x: u64| if figures[3] == 0 { "NaN".to_owned() } else { x.to_string() };
    [("0.5", v(figures[0])), ("0.99", v(figures[1])), ("0.999", v(figures[2]))]
}

/// A latency figure for a table: `-` for none yet.
fn lat(v: u64) -> String {
    if v == 0 {
        "-".into()
    } else {
        ns(v)
    }
}
