//! A service and a caller in one program, each with its own connection.
//!
//! Needs a running daemon: `hybusd --socket /tmp/hybus.sock &` then
//! `HYBUS_SOCKET=/tmp/hybus.sock cargo run -p hybus --example echo`.

use std::time::Duration;

use hybus::Bus;

fn main() -> Result<(), hybus::Error> {
    let server = Bus::connect()?; // $HYBUS_SOCKET, else the user bus, else the system bus
    let svc = server.register("example.echo")?;
    std::thread::scope(|s| -> Result<(), hybus::Error> {
        // The serving loop: each request's answer is what the handler returns.
        // It runs until the instance is drained (below), whatever comes meanwhile.
        let serving = s.spawn(|| svc.serve(|req| Ok(req.payload().to_ascii_uppercase().into())));

        let caller = Bus::connect()?;
        let route = caller.resolve("example.echo")?;
        for word in ["zero", "copy", "bus"] {
            let answer = caller.call(&route, word.as_bytes(), Duration::from_secs(1))?;
            println!("{word} → {}", String::from_utf8_lossy(&answer));
        }
        // No new requests; the loop returns once those in flight are answered.
        svc.drain()?;
        serving.join().expect("service thread")?;
        println!("drained: the serving loop returned");
        Ok(())
    })
}
