//! A service that survives a daemon restart. The bus reconnects by itself
//! (the default), registers its services again and re-resolves the
//! caller's routes; the serving loop never notices. What was in flight
//! through the old daemon is lost (those calls fail), nothing else.
//!
//! ```sh
//! HYBUS_SOCKET=/tmp/hybus-restart.sock cargo run -p hybus --example restart -- --daemon target/debug/hybusd
//! ```
//!
//! It starts `hybusd` itself at `$HYBUS_SOCKET` (no other daemon may serve
//! there), kills it as a crash would, and starts it again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hybus::Bus;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let daemon = args.iter().position(|a| a == "--daemon").and_then(|i| args.get(i + 1)).map_or("hybusd", |s| s);
    let socket = PathBuf::from(std::env::var_os("HYBUS_SOCKET").ok_or("set HYBUS_SOCKET to a free socket path")?);

    let mut hybusd = start(daemon, &socket)?;
    let server = Bus::connect_to(&socket)?;
    let svc = server.register("example.survivor")?;
    let caller = Bus::connect_to(&socket)?;
    let route = caller.resolve("example.survivor")?;

    // The service on a thread of its own; the main thread keeps a handle to drain it at the end.
    let svc = std::sync::Arc::new(svc);
    let serving = {
        let svc = svc.clone();
        std::thread::spawn(move || {
            let mut count = 0u32;
            svc.serve(|_| {
                count += 1;
                Ok(format!("answer {count} from pid {}", std::process::id()).into())
            })
        })
    };
    println!("before: {}", String::from_utf8_lossy(&caller.call(&route, b"?", Duration::from_secs(1))?));

    hybusd.kill()?; // as a crash would: no goodbye
    hybusd.wait()?;
    println!("hybusd killed");
    let mut hybusd = start(daemon, &socket)?;
    println!("hybusd started again");

    // The first calls may fail while the bus reconnects and the service registers again.
    let t = Instant::now();
    let answer = loop {
        match caller.call(&route, b"?", Duration::from_secs(1)) {
            Ok(a) => break a,
            Err(e) if t.elapsed() < Duration::from_secs(10) => {
                println!("  (while it comes back: {e})");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    };
    println!("after: {} (the same serving loop)", String::from_utf8_lossy(&answer));

    // Done: drain the service (its loop returns), then stop the daemon.
    svc.drain()?;
    serving.join().map_err(|_| "the service thread panicked")??;
    hybusd.kill()?;
    hybusd.wait()?;
    println!("done: the serving loop returned once drained");
    Ok(())
}

/// Starts `hybusd --socket SOCKET` and waits until it accepts connections.
fn start(daemon: &str, socket: &std::path::Path) -> Result<Child, Box<dyn std::error::Error>> {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(daemon)
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {daemon}: {e} (pass --daemon PATH)"))?;
    let t = Instant::now();
    while Bus::connect_to(socket).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            return Err(format!("{daemon} did not come up at {}", socket.display()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}
