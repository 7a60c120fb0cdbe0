//! `hybusctl`: the hybus command line.
//!
//! One file per subcommand under `cmd/`; this file holds the clap types
//! and the dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod table;
mod workers;

/// Talk to the hybus message bus.
#[derive(Debug, Parser)]
#[command(name = "hybusctl", version, about, propagate_version = true)]
pub struct Cli {
    /// The daemon's socket [default: $HYBUS_SOCKET, else $XDG_RUNTIME_DIR/hybus/bus.sock, else /run/hybus/bus.sock].
    #[arg(long, global = true, env = "HYBUS_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// List services, instances, owners and route ids.
    List(cmd::list::Args),
    /// Show one service in detail.
    Status(cmd::status::Args),
    /// Traffic per service instance (brokered and over its direct channels) and per direct channel:
    /// messages, bytes, in flight, queue, drops, errors, latency.
    Stats(cmd::stats::Args),
    /// Print brokered traffic as it passes (like `busctl monitor`).
    Monitor(cmd::monitor::Args),
    /// Call a service and print the answer.
    Call(cmd::call::CallArgs),
    /// Send a fire-and-forget message to a service.
    Fire(cmd::call::FireArgs),
    /// Publish on a topic.
    Publish(cmd::topic::PublishArgs),
    /// Print a topic's publications.
    Subscribe(cmd::topic::SubscribeArgs),
    /// Measure hybus beside this machine's own limits.
    Bench(cmd::bench::Args),
    /// Keep a service's request rate per instance in a band by starting and stopping instances.
    Scale(cmd::scale::Args),
    /// Run an embedded daemon with demo services and show what hybus does.
    Demo(cmd::demo::Args),
    /// Internal: the server processes `bench` and `demo` spawn.
    #[command(hide = true)]
    Worker(cmd::worker::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.socket.clone().unwrap_or_else(hybus::default_socket_path);
    let r = match cli.command {
        Command::List(a) => cmd::list::run(&socket, a),
        Command::Status(a) => cmd::status::run(&socket, a),
        Command::Stats(a) => cmd::stats::run(&socket, a),
        Command::Monitor(a) => cmd::monitor::run(&socket, a),
        Command::Call(a) => cmd::call::call(&socket, a),
        Command::Fire(a) => cmd::call::fire(&socket, a),
        Command::Publish(a) => cmd::topic::publish(&socket, a),
        Command::Subscribe(a) => cmd::topic::subscribe(&socket, a),
        Command::Bench(a) => cmd::bench::run(cli.socket.as_deref(), a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Scale(a) => cmd::scale::run(&socket, a),
        Command::Worker(a) => cmd::worker::run(&socket, a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hybusctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
