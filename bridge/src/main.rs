//! `hybus-bridge --socket PATH --config FILE`: joins this host's hybus bus
//! to other hosts' over Zenoh (see the `hybus_bridge` crate docs and
//! `dist/hybus-bridge.toml`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hybus_bridge::{Bridge, Config};

/// Joins this host's hybus bus to other hosts' over Zenoh.
#[derive(Debug, Parser)]
#[command(name = "hybus-bridge", version)]
struct Args {
    /// The local daemon's socket (default: $HYBUS_SOCKET, else
    /// $XDG_RUNTIME_DIR/hybus/bus.sock, else /run/hybus/bus.sock).
    #[arg(long, env = "HYBUS_SOCKET")]
    socket: Option<PathBuf>,
    /// The bridge's configuration (TOML; see dist/hybus-bridge.toml).
    #[arg(long, required_unless_present_any = ["bench_echo", "bench_query", "bench_sub", "bench_pub"])]
    config: Option<PathBuf>,
    /// For `hybusctl bench`: serve a bare Zenoh echo queryable on this endpoint.
    #[arg(long, hide = true)]
    bench_echo: Option<String>,
    /// For `hybusctl bench`: time round trips to the bare echo at this endpoint.
    #[arg(long, hide = true)]
    bench_query: Option<String>,
    /// For `hybusctl bench`: count bare Zenoh publications, listening on this endpoint.
    #[arg(long, hide = true)]
    bench_sub: Option<String>,
    /// For `hybusctl bench`: publish bare Zenoh samples to the subscriber at this endpoint.
    #[arg(long, hide = true)]
    bench_pub: Option<String>,
    /// Messages of `--bench-sub` / `--bench-pub`.
    #[arg(long, hide = true, default_value = "10000")]
    messages: u64,
    /// Payload bytes of `--bench-query` / `--bench-pub`.
    #[arg(long, hide = true, default_value = "8")]
    payload: usize,
    /// Round trips of `--bench-query`.
    #[arg(long, hide = true, default_value = "10000")]
    round_trips: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zenoh=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(e) = &args.bench_echo {
        return hybus_bridge::bench::echo(e).map_err(anyhow::Error::msg);
    }
    if let Some(e) = &args.bench_query {
        return hybus_bridge::bench::query(e, args.payload, args.round_trips).map_err(anyhow::Error::msg);
    }
    if let Some(e) = &args.bench_sub {
        return hybus_bridge::bench::subscribe(e, args.messages).map_err(anyhow::Error::msg);
    }
    if let Some(e) = &args.bench_pub {
        return hybus_bridge::bench::publish(e, args.payload, args.messages).map_err(anyhow::Error::msg);
    }
    let stop = stop_flag()?;
    let path = args.config.context("--config FILE is required")?;
    let config = Config::load(&path).with_context(|| format!("config {}", path.display()))?;
    let socket = args.socket.unwrap_or_else(hybus::default_socket_path);
    let bridge = Bridge::start(config, socket.clone()).context("cannot start the bridge")?;
    tracing::info!(bridge = bridge.id(), socket = %socket.display(), "started");
    // Ready once both sides answer: a Zenoh peer (if any is configured) and the daemon.
    let ready = bridge.wait_zenoh(&stop) && {
        let mut said = false;
        loop {
            if stop.load(std::sync::atomic::Ordering::Acquire) {
                break false;
            }
            match hybus::Bus::connect_to(&socket) {
                Ok(_) => break true,
                Err(e) if !said => {
                    tracing::warn!("the local daemon does not answer yet ({e}); retrying");
                    said = true;
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    if ready {
        tracing::info!("connected to the local daemon and to Zenoh");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
    let mut said = false;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let connected = bridge.zenoh_connected();
        if !connected && !said {
            tracing::warn!("no Zenoh peer connected; Zenoh retries in the background");
        } else if connected && said {
            tracing::info!("a Zenoh peer is connected again");
        }
        said = !connected;
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping");
    bridge.stop();
    Ok(())
}

/// A flag SIGTERM and SIGINT set. The signals are blocked in every thread
/// (this runs before any other starts) and taken by one thread with sigwait.
fn stop_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use nix::sys::signal::{SigSet, Signal};
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("cannot block SIGTERM and SIGINT")?;
    let f = flag.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if set.wait().is_ok() {
                f.store(true, std::sync::atomic::Ordering::Release);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(flag)
}
