//! `hybus-activated`: a service for the activation tests, started by the
//! daemon (`[[activate]]`) or by the scaler, never by hand.
//!
//! `hybus-activated [--count FILE] [--exit-code N | --never-register |
//! --noop | --serve NAME [--delay-ms D]]`:
//!
//! * `--count FILE` — first appends a line `start pid=<pid>` to FILE (one
//!   `write(2)` with `O_APPEND`, so concurrent starts each leave a line);
//! * `--exit-code N` — exits with status N before connecting;
//! * `--never-register` — connects to nothing and sleeps (at most 120 s);
//! * `--noop` — exits with status 0 at once (the baseline the activation
//!   bench compares with);
//! * `--serve NAME [--delay-ms D] [--delay-start-ms S] [--log FILE]` —
//!   sleeps S ms, connects to `$HYBUS_SOCKET`, registers NAME and answers
//!   each request with its payload reversed (after D ms); with `--log`,
//!   appends each request's and fire's payload to FILE, a line each. When the
//!   daemon asks it to drain (idle) or on SIGTERM, it drains, answers what
//!   came and exits with status 0, printing `drained served=<n>` to stderr
//!   (`--ignore-drain`: only on SIGTERM).
//!
//! It dies with its parent (`PR_SET_PDEATHSIG`), so a test's daemon that is
//! killed leaves none behind.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hybus::{Bus, Incoming};

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::Relaxed);
}

fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid().as_raw() == 1 {
        std::process::exit(70); // the parent died before we could ask
    }
    if let Some(path) = value(&args, "--count") {
        let line = format!("start pid={}\n", std::process::id());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("hybus-activated: cannot write {path}: {e}");
            std::process::exit(71);
        }
    }
    if let Some(code) = value(&args, "--exit-code") {
        std::process::exit(code.parse().unwrap_or(1));
    }
    if args.iter().any(|a| a == "--noop") {
        return;
    }
    if args.iter().any(|a| a == "--never-register") {
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let Some(name) = value(&args, "--serve") else {
        eprintln!("usage: hybus-activated [--count FILE] (--exit-code N | --never-register | --noop | --serve NAME [--delay-ms D])");
        std::process::exit(2);
    };
    let ms = |flag| Duration::from_millis(value(&args, flag).and_then(|v| v.parse().ok()).unwrap_or(0));
    std::thread::sleep(ms("--delay-start-ms"));
    let log = value(&args, "--log").map(|p| {
        std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap_or_else(|e| {
            eprintln!("hybus-activated: cannot open {p}: {e}");
            std::process::exit(71);
        })
    });
    let ignore_drain = args.iter().any(|a| a == "--ignore-drain");
    if let Err(e) = serve(name, ms("--delay-ms"), log, ignore_drain) {
        eprintln!("hybus-activated: {e}");
        std::process::exit(1);
    }
}

fn serve(name: &str, delay: Duration, mut log: Option<std::fs::File>, ignore_drain: bool) -> hybus::Result<()> {
    let handler = on_term as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, handler) };
    let bus = Bus::connect()?;
    let svc = bus.register(name)?;
    let mut served = 0u64;
    let mut draining_since: Option<Instant> = None;
    loop {
        let asked = !ignore_drain && svc.drain_asked();
        if draining_since.is_none() && (TERM.load(Ordering::Relaxed) || asked) {
            svc.drain()?;
            draining_since = Some(Instant::now());
        }
        let wait = if draining_since.is_some() { Duration::from_millis(50) } else { Duration::from_millis(100) };
        match svc.next(wait)? {
            Some(Incoming::Request(req)) => {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{}", String::from_utf8_lossy(req.payload()));
                }
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                let mut v = req.payload().to_vec();
                v.reverse();
                req.reply(&v)?;
                served += 1;
            }
            Some(Incoming::Fire(s)) => {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{}", String::from_utf8_lossy(&s));
                }
                served += 1;
            }
            Some(Incoming::Stream(st)) => drop(st),
            // Draining and quiet for a moment: what was in flight is answered.
            None if draining_since.is_some_and(|t| t.elapsed() >= Duration::from_millis(200)) => break,
            None => {}
        }
    }
    eprintln!("hybus-activated: drained served={served}");
    svc.unregister()?;
    Ok(())
}
