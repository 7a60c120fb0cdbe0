//! The client half of `kv_service` (start that first, see its docs): a few
//! puts and gets, and what its errors look like at the caller.

use std::time::{Duration, Instant};

use hybus::{Bus, Error};

const T: Duration = Duration::from_secs(2);

fn main() -> Result<(), Error> {
    let bus = Bus::connect()?;
    // The service may still be starting: wait a little for its name.
    let start = Instant::now();
    let route = loop {
        match bus.resolve("example.kv") {
            Ok(r) => break r,
            Err(Error::NotFound(_)) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(e),
        }
    };
    let ask = |command: &str| match bus.call(&route, command.as_bytes(), T) {
        Ok(answer) => println!("{command} → {}", String::from_utf8_lossy(&answer)),
        // The service's own code and its whole message (up to 4 KiB).
        Err(Error::Service { code, message }) => println!("{command} → error {code}: {message}"),
        Err(e) => println!("{command} → {e}"),
    };
    ask("put colour blue");
    ask("put shape round");
    ask("get colour");
    ask("get size");
    ask("keys");
    ask("frobnicate");
    Ok(())
}
