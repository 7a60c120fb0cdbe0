//! `hybusctl call NAME PAYLOAD` and `hybusctl fire NAME PAYLOAD`.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

/// Arguments of `call`.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// Service name.
    name: String,
    /// Payload: text, `@FILE`, or `-` for stdin.
    payload: String,
    /// How long to wait for the answer (e.g. 500ms, 5s).
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `fire`.
#[derive(Debug, clap::Args)]
pub struct FireArgs {
    /// Service name.
    name: String,
    /// Payload: text, `@FILE`, or `-` for stdin.
    payload: String,
}

/// Runs `call`. With `--json`, a failure is a JSON object on stdout too
/// (`{"service", "error", "kind"}`), and the exit is non-zero all the same.
pub fn call(socket: &Path, a: CallArgs) -> anyhow::Result<()> {
    let (json, name) = (a.json, a.name.clone());
    let r = call_inner(socket, a);
    if let (true, Err(e)) = (json, &r) {
        let kind = e.chain().find_map(|c| c.downcast_ref::<hybus::Error>()).map_or("other", error_kind);
        println!("{}", json!({"service": name, "error": format!("{e:#}"), "kind": kind}));
    }
    r
}

/// A word for each kind of [`hybus::Error`], for scripts that read `--json`.
fn error_kind(e: &hybus::Error) -> &'static str {
    use hybus::Error as E;
    match e {
        E::NoDaemon { .. } => "no-daemon",
        E::VersionMismatch(_) => "version-mismatch",
        E::NameOwned(_) => "name-owned",
        E::AccessDenied(_) => "access-denied",
        E::NotFound(_) | E::NoSuchService => "no-such-service",
        E::QuotaExceeded(_) => "quota-exceeded",
        E::BadRequest(_) => "bad-request",
        E::NoInstance => "no-instance",
        E::DeadlineExceeded => "deadline-exceeded",
        E::PeerGone => "peer-gone",
        E::PayloadTooLarge { .. } => "payload-too-large",
        E::OutOfPool { .. } => "out-of-pool",
        E::QueueFull => "queue-full",
        E::Cancelled => "cancelled",
        E::Service { .. } => "service",
        E::BusGone(_) => "bus-gone",
        E::Protocol(_) => "protocol",
        E::BadPayload(_) => "bad-payload",
        _ => "other",
    }
}

fn call_inner(socket: &Path, a: CallArgs) -> anyhow::Result<()> {
    let bus = super::connect(socket)?;
    let payload = super::payload(&a.payload)?;
    let route = bus.resolve(&a.name)?;
    let t = std::time::Instant::now();
    let answer = bus.call(&route, &payload, a.timeout)?;
    let rtt = t.elapsed();
    if a.json {
        return super::print_json(&json!({
            "service": a.name, "len": answer.len(), "payload": super::show(&answer), "rtt_ns": rtt.as_nanos() as u64,
        }));
    }
    println!("{}", super::show(&answer));
    Ok(())
}

/// Runs `fire`.
pub fn fire(socket: &Path, a: FireArgs) -> anyhow::Result<()> {
    let bus = super::connect(socket)?;
    let payload = super::payload(&a.payload)?;
    let route = bus.resolve(&a.name)?;
    bus.fire(&route, &payload)?;
    // A failure to deliver comes back as an event; give it a moment.
    if let Some(hybus::BusEvent::FireFailed { error, .. }) = bus.next_event(Duration::from_millis(100))? {
        anyhow::bail!("fire to {} failed: {error}", a.name);
    }
    Ok(())
}
