//! A key-value service, the server half of `kv_client`: `put K V`, `get K`,
//! `del K`, `keys`. Errors carry a code the client can match on.
//!
//! ```sh
//! hybusd --socket /tmp/hybus.sock &
//! export HYBUS_SOCKET=/tmp/hybus.sock
//! cargo run -p hybus --example kv_service &    # serves until replaced
//! cargo run -p hybus --example kv_client
//! cargo run -p hybus --example kv_service -- --replace --requests 5
//! ```
//!
//! It holds `example.kv` exclusively: a second `kv_service` is refused,
//! unless it says `--replace`, which drains this one (its loop returns and
//! it exits) and takes over. `--requests N` makes it drain itself after N
//! requests.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use hybus::{Bus, ServiceError, ServiceOptions};

/// Error codes of this service (the client knows them too).
const NOT_FOUND: u32 = 404;
const BAD_COMMAND: u32 = 400;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut options = ServiceOptions::default().exclusive();
    if args.iter().any(|a| a == "--replace") {
        options = options.replace();
    }
    let limit: Option<u64> =
        args.iter().position(|a| a == "--requests").and_then(|i| args.get(i + 1)).map(|n| n.parse()).transpose()?;

    let bus = Bus::connect()?;
    let svc = match bus.register_with("example.kv", options) {
        Ok(svc) => svc,
        Err(e) => {
            // e.g. "name already owned: name "example.kv" is held exclusively by instance 3 (pid 4242); ..."
            eprintln!("kv_service: cannot register: {e}");
            std::process::exit(2);
        }
    };
    println!("serving example.kv (instance {}, exclusive)", svc.instance());

    // The handler runs on this thread, one request at a time: a RefCell is enough.
    let store = RefCell::new(BTreeMap::<String, String>::new());
    let served = Cell::new(0u64);
    svc.serve(|req| {
        served.set(served.get() + 1);
        if limit == Some(served.get()) {
            // This request is still answered; then the loop returns.
            svc.drain()?;
        }
        let text = std::str::from_utf8(req.payload())?; // not UTF-8: a service error
        let mut words = text.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("put"), Some(k), Some(v)) => {
                store.borrow_mut().insert(k.to_owned(), v.to_owned());
                Ok("ok".into())
            }
            (Some("get"), Some(k), None) => match store.borrow().get(k) {
                Some(v) => Ok(v.clone().into()),
                None => Err(ServiceError::new(NOT_FOUND, format!("no key {k:?}"))),
            },
            (Some("del"), Some(k), None) => match store.borrow_mut().remove(k) {
                Some(_) => Ok("deleted".into()),
                None => Err(ServiceError::new(NOT_FOUND, format!("no key {k:?}"))),
            },
            (Some("keys"), None, None) => Ok(store.borrow().keys().cloned().collect::<Vec<_>>().join(" ").into()),
            _ => Err(ServiceError::new(
                BAD_COMMAND,
                format!("bad command: {text:?} (want 'put K V', 'get K', 'del K' or 'keys')"),
            )),
        }
    })?;
    println!("drained after {} requests, exiting", served.get());
    Ok(())
}
