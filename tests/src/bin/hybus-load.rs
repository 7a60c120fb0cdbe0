//! `hybus-load`: client processes for the brokered, hostile and soak
//! end-to-end tests (`tests/brokered.rs`, `tests/hostile.rs`, `tests/soak.rs`).
//!
//! `hybus-load SOCKET ROLE [ARGS]`. Every role prints `ready ...` once set
//! up, reads commands from stdin, and exits when its stdin closes, so a test
//! that dies leaves no process behind. Roles (each described in its module):
//!
//! * `serve NAME [hold]` — a checking service ([`serve`]);
//! * `sub TOPIC [hold] [slow_ms=N] [progress=K] [register=NAME]` — a checking subscriber ([`sub`]);
//! * `hostile CASE [NAME] [other=ID]` — a raw-protocol client that breaks the rules ([`raw`]);
//! * `soak-recv NAME TOPIC SENDERS`, `soak-send ID SEED OPS MAXLEN TOPIC TARGET...` — the soak ([`soak`]);
//! * `scribble SECONDS SEED [NAME...]` — the chaos test's hostile client, writing over all it maps ([`scribble`]).

#[path = "load/payload.rs"]
mod payload;
#[path = "load/raw.rs"]
mod raw;
#[path = "load/scribble.rs"]
mod scribble;
#[path = "load/serve.rs"]
mod serve;
#[path = "load/soak.rs"]
mod soak;
#[path = "load/sub.rs"]
mod sub;

use std::io::BufRead;

type R = Result<(), Box<dyn std::error::Error>>;

/// `key=value` among the arguments.
fn arg<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Hands every stdin line to `handler`; exits the process when stdin closes.
/// Each role calls it exactly once.
fn stdin_commands(handler: impl Fn(&str) + Send + 'static) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines().map_while(Result::ok) {
            handler(line.trim());
        }
        std::process::exit(0);
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: hybus-load SOCKET ROLE [ARGS]");
        std::process::exit(2);
    }
    let (socket, role, rest) = (&args[0], args[1].as_str(), &args[2..]);
    let r = match role {
        "serve" => serve::run(socket, rest),
        "sub" => sub::run(socket, rest),
        "hostile" => raw::run(socket, rest),
        "soak-recv" => soak::recv(socket, rest),
        "soak-send" => soak::send(socket, rest),
        "scribble" => scribble::run(socket, rest),
        other => Err(format!("unknown role {other}").into()),
    };
    if let Err(e) = r {
        println!("error {e}");
        std::process::exit(1);
    }
}
