//! A service and a caller in one program, each with its own connection.
//!
//! Needs a running daemon: `hybusd --socket /tmp/hybus.sock &` then
//! `HYBUS_SOCKET=/tmp/hybus.sock cargo run -p hybus --example echo`.

use std::time::Duration;

use hybus::{Bus, Incoming};

fn main() -> Result<(), hybus::Error> {
    let server = Bus::connect()?;
    let svc = server.register("example.echo")?;
    let worker = std::thread::spawn(move || -> Result<(), hybus::Error> {
        for _ in 0..3 {
            if let Some(Incoming::Request(req)) = svc.next(Duration::from_secs(5))? {
                let answer = req.payload().to_ascii_uppercase();
                req.reply(&answer)?;
            }
        }
        Ok(())
    });

    let caller = Bus::connect()?;
    let route = caller.resolve("example.echo")?;
    for word in ["zero", "copy", "bus"] {
        let answer = caller.call(&route, word.as_bytes(), Duration::from_secs(1))?;
        println!("{word} → {}", String::from_utf8_lossy(&answer));
    }
    worker.join().expect("service thread")?;
    Ok(())
}
