//! The async API (feature `tokio`): a service served by an async handler
//! and a caller awaiting its calls, on one current-thread runtime. The
//! waits are on the same doorbells as the blocking API, through tokio's
//! reactor: no polling thread, no blocked executor.
//!
//! `cargo run -p hybus --features tokio --example async_api`

use std::time::Duration;

use hybus::{Bus, Request, ServiceError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), hybus::Error> {
    let server = Bus::connect()?.to_async()?;
    let svc = server.bus().register("example.async")?;
    let caller = Bus::connect()?.to_async()?;
    let route = caller.bus().resolve("example.async")?;

    let serving = server.serve(&svc, async |req: &Request| {
        // Any await fits here: a timer, a socket, another call.
        tokio::time::sleep(Duration::from_millis(1)).await;
        match std::str::from_utf8(req.payload())? {
            "" => Err(ServiceError::new(400, "empty request")),
            text => Ok(text.chars().rev().collect::<String>().into()),
        }
    });
    let calling = async {
        for word in ["async", "await", ""] {
            match caller.call(&route, word.as_bytes(), Duration::from_secs(1)).await {
                Ok(answer) => println!("{word:?} → {:?}", String::from_utf8_lossy(&answer)),
                Err(e) => println!("{word:?} → {e}"),
            }
        }
        // Three calls in flight at once from one task.
        let t = Duration::from_secs(1);
        let (a, b, c) = tokio::join!(
            caller.call(&route, b"one", t),
            caller.call(&route, b"two", t),
            caller.call(&route, b"six", t)
        );
        let text = |s: hybus::Sample| String::from_utf8_lossy(&s).into_owned();
        println!("three calls at once: {} {} {}", text(a?), text(b?), text(c?));
        svc.drain()
    };
    // Both on this one thread: the service loop ends once drained.
    let (served, called) = tokio::join!(serving, calling);
    called?;
    served?;
    println!("drained: the async serving loop returned");
    Ok(())
}
