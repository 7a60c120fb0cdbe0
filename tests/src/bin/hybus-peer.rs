//! `hybus-peer`: a real client process for the end-to-end tests.
//!
//! `hybus-peer SOCKET ROLE [ARGS]`. Prints `ready ...` once set up, other
//! lines as it goes, and exits when its stdin closes (so a test that dies
//! leaves no peers behind). Roles:
//!
//! * `serve NAME [hold] [weight=W] [delay_ms=D] [corrupt_after=N] [idle=busy]` — answers each request
//!   with its payload reversed (`hold`: keeps requests unanswered);
//!   streams answer `n=<count>` with that many items `item-<i>` (packed in
//!   batches if the request also says `batch`); channels
//!   echo every item back; fires print `fire len=<n> data=<text>`;
//!   `corrupt_after=N` writes garbage into its direct channels after N answers;
//!   `idle=busy` waits with `IdleStrategy::BUSY` (and prints the strategy
//!   it follows after connecting, `idle spins=<n> park=<bool>`);
//! * `subscribe TOPIC [hold]` — prints `got seq=<i> len=<n>` per
//!   publication (`hold`: keeps every sample, never releasing its chunk);
//! * `connect N` — opens N connections and keeps them;
//! * `direct SERVICE` — asks for a direct channel to SERVICE, prints
//!   `ready channel=<id>` (or `error ...`), then `closed reason=<why>` when
//!   the daemon closes it;
//! * `monitor PREFIX` — monitors PREFIX, prints `ready`, then
//!   `stopped reason=<why>` if the daemon stops the monitor;
//! * `raw ROUTE request|fire|publish` — writes one such descriptor for
//!   route id `ROUTE` into its ring by hand (no resolving: any id), and
//!   prints what comes back for it, `answer kind=<Kind> code=<aux>`, or
//!   `no answer` after a second.

use std::io::BufRead;
use std::time::Duration;

use hybus::{Bus, Incoming, ServiceOptions};

fn arg<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: hybus-peer SOCKET ROLE [ARGS]");
        std::process::exit(2);
    }
    raise_fd_limit();
    // Exit when the test closes our stdin.
    std::thread::spawn(|| {
        let stdin = std::io::stdin();
        for _ in stdin.lock().lines().map_while(Result::ok) {}
        std::process::exit(0);
    });
    let socket = &args[0];
    let rest = &args[2..];
    let r = match args[1].as_str() {
        "serve" => serve(socket, rest),
        "subscribe" => subscribe(socket, rest),
        "connect" => connect(socket, rest),
        "raw" => raw(socket, rest),
        "direct" => direct(socket, rest),
        "monitor" => monitor(socket, rest),
        other => Err(format!("unknown role {other}").into()),
    };
    if let Err(e) = r {
        println!("error {e}");
        std::process::exit(1);
    }
}

type R = Result<(), Box<dyn std::error::Error>>;

/// Each connection holds five descriptors (socket, two memfds, two
/// eventfds): `connect` with hundreds of them needs more than the usual
/// soft limit of 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// A connection with the idle strategy `idle=` asks for (`busy`; else the default).
fn peer_bus(socket: &str, args: &[String]) -> Result<Bus, Box<dyn std::error::Error>> {
    if arg(args, "idle") != Some("busy") {
        return Ok(Bus::connect_to(socket)?);
    }
    let opts = hybus::BusOptions {
        path: Some(socket.into()),
        idle: hybus::IdleStrategy::BUSY,
        ..hybus::BusOptions::default()
    };
    let bus = Bus::connect_with(opts)?;
    let idle = bus.idle_strategy();
    println!("idle spins={} park={}", idle.spins, idle.park);
    Ok(bus)
}

fn serve(socket: &str, args: &[String]) -> R {
    let name = args.first().ok_or("serve NAME")?;
    let hold = args.iter().any(|a| a == "hold");
    let weight = arg(args, "weight").map_or(Ok(1), str::parse)?;
    let delay = Duration::from_millis(arg(args, "delay_ms").map_or(Ok(0), str::parse)?);
    let corrupt_after: Option<u64> = arg(args, "corrupt_after").map(str::parse).transpose()?;
    let bus = peer_bus(socket, args)?;
    let svc = bus.register_with(name, ServiceOptions::default().weight(weight))?;
    let mut served = 0u64;
    println!("ready instance={} route={} pid={}", svc.instance(), svc.route(), std::process::id());
    let mut held = Vec::new();
    loop {
        let Some(inc) = svc.next(Duration::from_secs(3600))? else {
            continue;
        };
        match inc {
            Incoming::Request(req) => {
                if hold {
                    held.push(req);
                    println!("holding {}", held.len());
                    continue;
                }
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                let mut v = req.payload().to_vec();
                v.reverse();
                req.reply(&v)?;
                served += 1;
                if corrupt_after == Some(served) {
                    println!("corrupted {}", bus.test_hook_corrupt_direct());
                }
            }
            Incoming::Fire(s) => println!("fire len={} data={}", s.len(), String::from_utf8_lossy(&s)),
            Incoming::Stream(mut st) => {
                if st.is_channel() {
                    while let Some(item) = st.recv(Duration::from_secs(60))? {
                        st.send(&item, Duration::from_secs(60))?;
                    }
                    st.end()?;
                } else {
                    let text = String::from_utf8_lossy(st.payload()).into_owned();
                    let n: u64 = text
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("n="))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if text.contains("batch") {
                        st.send_many((0..n).map(|i| format!("item-{i}")), Duration::from_secs(60))?;
                    } else {
                        for i in 0..n {
                            st.send(format!("item-{i}").as_bytes(), Duration::from_secs(60))?;
                        }
                    }
                    st.end()?;
                }
            }
        }
    }
}

fn subscribe(socket: &str, args: &[String]) -> R {
    let topic = args.first().ok_or("subscribe TOPIC")?;
    let hold = args.iter().any(|a| a == "hold");
    let bus = Bus::connect_to(socket)?;
    let sub = bus.subscribe(topic)?;
    println!("ready client={}", bus.client_id());
    let mut held = Vec::new();
    let mut seq = 0u64;
    loop {
        if let Some(s) = sub.next(Duration::from_secs(3600))? {
            println!("got seq={seq} len={}", s.len());
            seq += 1;
            if hold {
                held.push(s);
            }
        }
    }
}

fn direct(socket: &str, args: &[String]) -> R {
    let service = args.first().ok_or("direct SERVICE")?;
    let bus = Bus::connect_to(socket)?;
    let route = bus.resolve(service)?;
    let channel = bus.request_direct(&route)?;
    println!("ready channel={channel}");
    loop {
        if let Some(hybus::BusEvent::DirectClosed { channel: c, reason, .. }) =
            bus.next_event(Duration::from_secs(3600))?
        {
            if c == channel {
                println!("closed reason={reason}");
            }
        }
    }
}

fn monitor(socket: &str, args: &[String]) -> R {
    let prefix = args.first().ok_or("monitor PREFIX")?;
    let bus = Bus::connect_to(socket)?;
    bus.monitor(prefix)?;
    println!("ready");
    loop {
        if let Some(hybus::BusEvent::MonitorStopped { reason }) = bus.next_event(Duration::from_secs(3600))? {
            println!("stopped reason={reason}");
        }
    }
}

fn connect(socket: &str, args: &[String]) -> R {
    let n: usize = args.first().ok_or("connect N")?.parse()?;
    let mut buses = Vec::with_capacity(n);
    for _ in 0..n {
        buses.push(Bus::connect_to(socket)?);
    }
    println!("ready connections={n}");
    loop {
        std::thread::park();
    }
}

/// The `raw` role (see the module docs).
fn raw(socket: &str, args: &[String]) -> R {
    use hybus_layout::{Descriptor, Kind};
    let (Some(route), Some(kind)) = (args.first(), args.get(1)) else {
        return Err("usage: raw ROUTE request|fire|publish".into());
    };
    let kind = match kind.as_str() {
        "request" => Kind::Request,
        "fire" => Kind::Fire,
        "publish" => Kind::Publish,
        other => return Err(format!("unknown kind {other}").into()),
    };
    let mut raw = hybus_tests::raw::Raw::connect(socket)?;
    println!("ready");
    let d = Descriptor::new(kind, route.parse()?, 7).with_inline(b"raw").ok_or("inline")?;
    raw.send(&d)?;
    let end = std::time::Instant::now() + Duration::from_secs(1);
    let mut answer = None;
    while answer.is_none() && std::time::Instant::now() < end {
        match raw.pop()? {
            Some(a) if a.correlation == 7 && (a.kind == Kind::Response as u8 || a.kind == Kind::Error as u8) => {
                answer = Some(a)
            }
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    match answer {
        Some(a) => println!("answer kind={:?} code={}", Kind::from_u8(a.kind).ok_or("kind")?, a.aux),
        None => println!("no answer"),
    }
    Ok(())
}
