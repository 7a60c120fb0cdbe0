//! `hybusctl status NAME`.

use std::path::Path;

use serde_json::json;

use crate::table::{ns, Table};

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service name (omit for the daemon's own status).
    name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `status`.
pub fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let bus = super::connect(socket)?;
    let Some(name) = a.name else {
        let s = bus.status()?;
        if a.json {
            return super::print_json(&json!({
                "pid": s.pid, "uptime_s": s.uptime_s, "backend": s.backend, "clients": s.clients,
                "services": s.services, "instances": s.instances, "exchanges": s.exchanges,
                "chunks_lent": s.chunks_lent, "queued": s.queued, "control_backlog": s.control_backlog,
                "violations": s.violations,
                "drops": s.drops,
            }));
        }
        println!("hybusd pid {} up {} s, event loop {}", s.pid, s.uptime_s, s.backend);
        println!("  {} clients, {} services ({} instances)", s.clients, s.services, s.instances);
        println!(
            "  {} exchanges in flight, {} chunks lent, {} descriptors queued",
            s.exchanges, s.chunks_lent, s.queued
        );
        println!("  {} control messages wait for clients that do not read their socket", s.control_backlog);
        println!("  {} clients disconnected for protocol violations", s.violations);
        println!("  {} publications dropped for slow subscribers", s.drops);
        return Ok(());
    };
    let services = bus.list()?;
    let Some(svc) = services.into_iter().find(|s| s.name == name) else {
        anyhow::bail!("no service named {name:?} (see `hybusctl list`)");
    };
    let stats = bus.stats()?.instances;
    if a.json {
        let inst: Vec<_> = svc
            .instances
            .iter()
            .map(|i| {
                let st = stats.iter().find(|s| s.instance == i.instance);
                json!({
                    "instance": i.instance, "state": if i.draining { "draining" } else { "serving" },
                    "uid": i.uid, "pid": i.pid, "version": i.version, "weight": i.weight,
                    "remote_via": i.remote.as_ref().map(|r| &r.via),
                    "balance": i.remote.as_ref().map(|r| r.balance),
                    "messages_in": st.map(|s| s.messages_in), "messages_out": st.map(|s| s.messages_out),
                    "in_flight": st.map(|s| s.in_flight), "errors": st.map(|s| s.errors),
                    "latency_ns": st.map(|s| json!({"p50": s.latency_ns[0], "p99": s.latency_ns[1], "p999": s.latency_ns[2], "max": s.latency_ns[3]})),
                })
            })
            .collect();
        return super::print_json(&json!({ "name": svc.name, "route": svc.route, "instances": inst }));
    }
    println!("{} (route {}), {} instance(s)", svc.name, svc.route, svc.instances.len());
    let mut t = Table::new(&[
        ">INSTANCE",
        "STATE",
        ">PID",
        ">UID",
        ">VER",
        ">W",
        ">IN",
        ">OUT",
        ">INFLIGHT",
        ">ERR",
        ">P50",
        ">P99",
        "WHERE",
    ]);
    for i in &svc.instances {
        let st = stats.iter().find(|s| s.instance == i.instance);
        let g = |f: fn(&hybus::InstanceStats) -> u64| st.map_or(0, f).to_string();
        t.row(vec![
            i.instance.to_string(),
            if i.draining { "draining" } else { "serving" }.into(),
            i.pid.to_string(),
            i.uid.to_string(),
            i.version.to_string(),
            i.weight.to_string(),
            g(|s| s.messages_in),
            g(|s| s.messages_out),
            g(|s| s.in_flight),
            g(|s| s.errors),
            st.map_or("-".into(), |s| ns(s.latency_ns[0])),
            st.map_or("-".into(), |s| ns(s.latency_ns[1])),
            super::placement(i),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}
