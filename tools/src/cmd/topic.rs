//! `hybusctl publish TOPIC PAYLOAD` and `hybusctl subscribe TOPIC`.

use std::path::Path;

use serde_json::json;

/// Arguments of `publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Topic name.
    topic: String,
    /// Payload: text, `@FILE`, or `-` for stdin.
    payload: String,
    /// Publish this many times.
    #[arg(long, default_value = "1")]
    count: u64,
}

/// Arguments of `subscribe`.
#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// Topic name.
    topic: String,
    #[command(flatten)]
    follow: super::Follow,
}

/// Runs `publish`.
pub fn publish(socket: &Path, a: PublishArgs) -> anyhow::Result<()> {
    let bus = super::connect(socket)?;
    let payload = super::payload(&a.payload)?;
    let p = bus.publisher(&a.topic)?;
    for _ in 0..a.count {
        p.publish(&payload)?;
    }
    Ok(())
}

/// Runs `subscribe`.
pub fn subscribe(socket: &Path, a: SubscribeArgs) -> anyhow::Result<()> {
    let bus = super::connect(socket)?;
    let sub = bus.subscribe(&a.topic)?;
    if !a.follow.json {
        eprintln!("subscribed to {} (Ctrl-C to stop)", a.topic);
    }
    let json = a.follow.json;
    a.follow.run(|wait| {
        let Some(s) = sub.next(wait)? else { return Ok(false) };
        if json {
            println!("{}", json!({"topic": a.topic, "len": s.len(), "payload": super::show(&s)}));
        } else {
            println!("{}", super::show(&s));
        }
        Ok(true)
    })
}
