//! `hybusctl list`.

use std::path::Path;

use serde_json::json;

use crate::table::Table;

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `list`.
pub fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let bus = super::connect(socket)?;
    let services = bus.list()?;
    // Activatable names with no instance now: started by the first call.
    let activatable: Vec<hybus::ActivationInfo> = bus
        .activations()?
        .into_iter()
        .filter(|a| !services.iter().any(|s| s.name == a.name && !s.instances.is_empty()))
        .collect();
    if a.json {
        let v: Vec<_> = services
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "route": s.route,
                    "instances": s.instances.iter().map(|i| json!({
                        "instance": i.instance, "state": if i.draining { "draining" } else { "serving" },
                        "uid": i.uid, "pid": i.pid, "client": i.client_id, "version": i.version, "weight": i.weight,
                        "remote_via": i.remote.as_ref().map(|r| &r.via),
                        "balance": i.remote.as_ref().map(|r| r.balance),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let idle: Vec<_> =
            activatable.iter().map(|a| json!({ "name": a.name, "state": a.state, "command": a.command })).collect();
        return super::print_json(&json!({ "services": v, "activatable": idle }));
    }
    let mut t =
        Table::new(&["SERVICE", ">ROUTE", ">INSTANCE", "STATE", ">UID", ">PID", ">VERSION", ">WEIGHT", "WHERE"]);
    for s in &services {
        for i in &s.instances {
            t.row(vec![
                s.name.clone(),
                s.route.to_string(),
                i.instance.to_string(),
                if i.draining { "draining" } else { "serving" }.into(),
                i.uid.to_string(),
                i.pid.to_string(),
                i.version.to_string(),
                i.weight.to_string(),
                super::placement(i),
            ]);
        }
    }
    for a in &activatable {
        let state = if a.state == "inactive" { "activatable".to_owned() } else { format!("activatable ({})", a.state) };
        let dash = || "-".to_owned();
        t.row(vec![a.name.clone(), dash(), dash(), state, dash(), dash(), dash(), dash()]);
    }
    if t.is_empty() {
        println!("no services registered");
    } else {
        print!("{}", t.render());
    }
    Ok(())
}
