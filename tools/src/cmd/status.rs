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
                "spinning_clients": s.crowding.spinners, "daemon_spins": s.crowding.daemon_spins,
                "cpus": s.crowding.cpus, "idle_backed_off": s.idle_backed_off,
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
        println!(
            "  {} clients spin without yielding, hybusd {}, on {} CPUs{}",
            s.crowding.spinners,
            if s.crowding.daemon_spins { "spins too" } else { "yields or parks" },
            s.crowding.cpus,
            if s.crowding.brokered(s.crowding.cpus) && s.crowding.spinners > 0 {
                ": with hybusd more than the CPUs, so brokered waits back off to sched_yield"
            } else {
                ""
            }
        );
        return Ok(());
    };
    let services = bus.list()?;
    let activation = bus.activations()?.into_iter().find(|a| a.name == name);
    let Some(svc) = services.into_iter().find(|s| s.name == name) else {
        if let Some(act) = &activation {
            if a.json {
                return super::print_json(
                    &json!({ "name": name, "instances": [], "activation": activation_json(act) }),
                );
            }
            println!("{name}: no instance");
            print_activation(act);
            return Ok(());
        }
        anyhow::bail!("no service named {name:?} (see `hybusctl list`)");
    };
    let stats = bus.stats()?.instances;
    // The name is held alone while an exclusive instance serves it.
    let holder = svc.instances.iter().find(|i| i.exclusive && !i.draining).map(|i| i.instance);
    let mode = if holder.is_some() { "exclusive" } else { "shared" };
    if a.json {
        let inst: Vec<_> = svc
            .instances
            .iter()
            .map(|i| {
                let st = stats.iter().find(|s| s.instance == i.instance);
                json!({
                    "instance": i.instance, "state": if i.draining { "draining" } else { "serving" },
                    "mode": if i.exclusive { "exclusive" } else { "shared" },
                    "uid": i.uid, "pid": i.pid, "version": i.version, "weight": i.weight,
                    "remote_via": i.remote.as_ref().map(|r| &r.via),
                    "balance": i.remote.as_ref().map(|r| r.balance),
                    "messages_in": st.map(|s| s.messages_in), "messages_out": st.map(|s| s.messages_out),
                    "in_flight": st.map(|s| s.in_flight), "errors": st.map(|s| s.errors),
                    "latency_ns": st.map(|s| json!({"p50": s.latency_ns[0], "p99": s.latency_ns[1], "p999": s.latency_ns[2], "max": s.latency_ns[3]})),
                })
            })
            .collect();
        return super::print_json(&json!({
            "name": svc.name, "route": svc.route, "mode": mode, "holder": holder, "instances": inst,
            "activation": activation.as_ref().map(activation_json),
        }));
    }
    println!("{} (route {}), {} instance(s)", svc.name, svc.route, svc.instances.len());
    match holder {
        Some(h) => {
            println!("mode: exclusive (held by instance {h}; other registrations are refused unless they replace it)")
        }
        None => println!("mode: shared (requests are balanced across the serving instances)"),
    }
    let mut t = Table::new(&[
        ">INSTANCE",
        "STATE",
        "MODE",
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
            if i.exclusive { "exclusive" } else { "shared" }.into(),
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
    if let Some(act) = &activation {
        print_activation(act);
    }
    Ok(())
}

/// An activatable name's state, for `--json`.
fn activation_json(a: &hybus::ActivationInfo) -> serde_json::Value {
    json!({
        "state": a.state, "command": a.command, "pid": a.pid, "last_exit": a.last_exit,
        "last_error": a.last_error, "failures": a.failures, "backoff_ms": a.backoff_ms,
        "backoff_left_ms": a.backoff_left_ms, "activations": a.activations,
        "activation_failures": a.activation_failures, "idle_stops": a.idle_stops, "held": a.held,
    })
}

/// An activatable name's state, in words.
fn print_activation(a: &hybus::ActivationInfo) {
    let pid = if a.pid == 0 { "no process".to_owned() } else { format!("pid {}", a.pid) };
    println!("activation: {}, {pid} ({})", a.state, a.command);
    println!(
        "  {} started, {} failed, {} stopped when idle, {} requests held",
        a.activations, a.activation_failures, a.idle_stops, a.held
    );
    if !a.last_exit.is_empty() {
        println!("  last exit: {}", a.last_exit);
    }
    if !a.last_error.is_empty() {
        println!("  last failure: {} ({} in a row)", a.last_error, a.failures);
    }
    if a.backoff_ms > 0 {
        println!("  back-off: {} ms ({} ms left)", a.backoff_ms, a.backoff_left_ms);
    }
}
