//! Typed messages: rkyv structs at both ends of a call. The service reads
//! its request with `Request::decode` and answers with `Reply::typed`; the
//! caller does both at once with `Bus::call_typed`. A payload of the wrong
//! type is refused with an error that says which type, how long, what failed.

use std::time::Duration;

use hybus::{rkyv, Bus, Error, Reply};

/// Both ends derive with the rkyv that hybus re-exports.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
#[rkyv(crate = hybus::rkyv)]
struct Order {
    customer: String,
    items: Vec<(String, u32)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
#[rkyv(crate = hybus::rkyv)]
struct Receipt {
    customer: String,
    pieces: u32,
}

fn main() -> Result<(), Error> {
    let server = Bus::connect()?;
    let svc = server.register("example.orders")?;
    std::thread::scope(|s| -> Result<(), Error> {
        let serving = s.spawn(|| {
            svc.serve(|req| {
                // Checked on a private copy first; a wrong type is a service error, via `?`.
                let order = req.decode::<Order>()?;
                let pieces = order.items.iter().map(|(_, n)| n).sum();
                Ok(Reply::typed(&Receipt { customer: order.customer, pieces })?)
            })
        });

        let caller = Bus::connect()?;
        let route = caller.resolve("example.orders")?;
        let order = Order { customer: "ada".into(), items: vec![("tea".into(), 2), ("scone".into(), 3)] };
        let receipt: Receipt = caller.call_typed(&route, &order, Duration::from_secs(1))?;
        println!("receipt: {} bought {} pieces", receipt.customer, receipt.pieces);

        // A Receipt sent where an Order is expected:
        match caller.call_typed::<Receipt, Receipt>(&route, &receipt, Duration::from_secs(1)) {
            Err(Error::Service { message, .. }) => println!("wrong type refused: {message}"),
            other => println!("unexpected: {other:?}"),
        }
        svc.drain()?;
        serving.join().expect("service thread")
    })
}
