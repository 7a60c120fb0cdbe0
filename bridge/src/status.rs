//! The bridge's own service on the local bus, `hybus-bridge.<name>`: any
//! request is answered with one line of state, for `hybusctl call
//! hybus-bridge.<name> status` (and `hybusctl list` shows it is up):
//!
//! `zenoh=connected peers=1 exported=2 imported=3 published=5000 puts=120` or
//! `zenoh=waiting connect=tcp/10.0.0.2:7447 exported=0 imported=0 published=0 puts=0`
//! (`published`: publications of exported topics sent to other hosts;
//! `puts`: the Zenoh puts that carried them, fewer when bursts go in batches).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hybus::Incoming;
use zenoh::Wait;

use crate::bridge::Ctx;

/// The name of the status service of the bridge called `id`.
pub fn service_name(id: &str) -> String {
    // Bridge names may hold characters a hybus name may not.
    let clean: String = id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("hybus-bridge.{clean}")
}

/// One line of state.
pub fn line(ctx: &Ctx) -> String {
    let info = ctx.session.info();
    let peers = info.peers_zid().wait().count() + info.routers_zid().wait().count();
    let zenoh = if peers > 0 || ctx.config.connect.is_empty() {
        format!("zenoh=connected peers={peers}")
    } else {
        format!("zenoh=waiting connect={}", ctx.config.connect.join(","))
    };
    format!(
        "{zenoh} exported={} imported={} published={} puts={}",
        ctx.exported.load(Ordering::Acquire),
        ctx.imported.load(Ordering::Acquire),
        ctx.published_out.load(Ordering::Relaxed),
        ctx.puts_out.load(Ordering::Relaxed),
    )
}

/// Serves the status service until the bridge stops.
pub fn run(ctx: Arc<Ctx>) {
    let Some(bus) = ctx.connect("status") else {
        return;
    };
    let name = service_name(&ctx.id);
    let service = loop {
        if ctx.stopping() {
            return;
        }
        match bus.register(&name) {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(service = name, "cannot register the status service (retrying): {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    while !ctx.stopping() {
        match service.next(Duration::from_millis(200)) {
            Ok(Some(Incoming::Request(req))) => {
                let _ = req.reply(line(&ctx).as_bytes());
            }
            Ok(Some(Incoming::Stream(s))) => {
                let _ = s.fail("the status service answers requests");
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
