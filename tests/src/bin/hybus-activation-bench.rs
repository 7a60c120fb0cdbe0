//! `hybus-activation-bench [--rounds N]`: what on-demand activation costs.
//!
//! Starts the real `hybusd` (next to this binary) with N activatable names,
//! each served by `hybus-activated --serve`, and times, round by round in
//! the same run:
//!
//! * **first call**: resolve + call of a name no process serves yet, to its
//!   answer (the daemon forks and execs the service, which connects,
//!   registers, gets the held request and answers);
//! * **start + exit**: the same binary started with `--noop`, which exits
//!   at once, until it is reaped: the floor any activation stands on.
//!
//! Prints both as min / p50 / max in milliseconds, and their ratio at p50.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().expect("exe dir").join(name)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    (ms(v[0]), ms(v[v.len() / 2]), ms(v[v.len() - 1]))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let service = sibling("hybus-activated");
    let dir = std::env::temp_dir().join(format!("hybus-activation-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("bus.sock");
    let mut config = String::new();
    for i in 0..rounds {
        config.push_str(&format!(
            "[[activate]]\nname = \"bench.a{i}\"\nexec = [{:?}, \"--serve\", \"bench.a{i}\"]\n",
            service.display().to_string()
        ));
    }
    let config_path = dir.join("hybusd.toml");
    std::fs::write(&config_path, config)?;
    let mut daemon = Command::new(sibling("hybusd"))
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config_path)
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .spawn()?;
    let bus = {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            match hybus::Bus::connect_to(&socket) {
                Ok(b) => break b,
                Err(e) if Instant::now() >= end => return Err(format!("hybusd did not come up: {e}").into()),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    };
    let mut first_call = Vec::with_capacity(rounds);
    let mut start_exit = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let t = Instant::now();
        let status = Command::new(&service).arg("--noop").stdin(Stdio::null()).status()?;
        start_exit.push(t.elapsed());
        if !status.success() {
            return Err(format!("hybus-activated --noop: {status}").into());
        }
        let t = Instant::now();
        let route = bus.resolve(&format!("bench.a{i}"))?;
        let answer = bus.call(&route, b"ping", Duration::from_secs(20))?;
        first_call.push(t.elapsed());
        if &*answer != b"gnip" {
            return Err("wrong answer".into());
        }
    }
    let (a0, a50, a100) = summary(&mut first_call);
    let (b0, b50, b100) = summary(&mut start_exit);
    println!("activation, {rounds} rounds (ms)           min      p50      max");
    println!("first call to an activated service  {a0:>8.2} {a50:>8.2} {a100:>8.2}");
    println!("same binary: start + exit (--noop)  {b0:>8.2} {b50:>8.2} {b100:>8.2}");
    println!("ratio at p50: {:.1}x", a50 / b50);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
