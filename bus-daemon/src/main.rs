//! `hybusd`: the hybus daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use hybusd::{Config, Daemon, Options};

/// The hybus message-bus daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Socket to listen on [default: $HYBUS_SOCKET, else $XDG_RUNTIME_DIR/hybus/bus.sock, else /run/hybus/bus.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `hybusd=debug` (also RUST_LOG).
    #[arg(long, default_value = "info")]
    log: String,
    /// Use the epoll event loop even where io_uring works (same as `force_epoll = true`).
    #[arg(long)]
    force_epoll: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log.clone());
    hybusd::log::init(tracing_subscriber::EnvFilter::new(filter));
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hybusd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    config.force_epoll |= args.force_epoll;
    let socket = args
        .socket
        .clone()
        .or_else(|| config.socket.clone().filter(|_| std::env::var_os("HYBUS_SOCKET").is_none()))
        .unwrap_or_else(hybus_os::socket::default_socket_path);
    // Signals are handled in the event loop through a signalfd; block them
    // first so that no thread takes them the default way.
    use nix::sys::signal::{SigSet, Signal};
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().context("cannot block signals")?;
    let signals = nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
    .context("cannot create signalfd")?;
    let listener = hybusd::systemd::listen_fd()?;
    let activated = listener.is_some();
    // Binds (or refuses: another daemon answers on the socket) before
    // anything says "listening".
    let daemon = Daemon::new(Options {
        config,
        config_path: args.config.clone(),
        socket: socket.clone(),
        listener,
        signals: Some(signals),
        systemd: std::env::var_os("NOTIFY_SOCKET").is_some(),
    })?;
    if activated {
        tracing::info!("using the socket passed by systemd");
    } else {
        tracing::info!(socket = %socket.display(), "listening");
    }
    daemon.run()
}
