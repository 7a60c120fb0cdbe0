//! A direct channel: the caller asks the daemon for one, and the same
//! calls then go from ring to ring between the two processes, without the
//! daemon in the path (it hands out the shared memory and steps aside).

use std::time::{Duration, Instant};

use hybus::{Bus, BusEvent};

const CALLS: u32 = 10_000;

fn main() -> Result<(), hybus::Error> {
    let server = Bus::connect()?;
    let svc = server.register("example.direct")?;
    std::thread::scope(|s| -> Result<(), hybus::Error> {
        let serving = s.spawn(|| svc.serve(|req| Ok(req.payload().into())));

        let caller = Bus::connect()?;
        let route = caller.resolve("example.direct")?;
        let timed = |label: &str| -> Result<(), hybus::Error> {
            let t = Instant::now();
            for i in 0..CALLS {
                let answer = caller.call(&route, &i.to_le_bytes(), Duration::from_secs(1))?;
                assert_eq!(&*answer, &i.to_le_bytes());
            }
            println!("{label}: {CALLS} calls, {:.1} µs each", t.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS));
            Ok(())
        };
        timed("brokered (through hybusd)")?;

        // Ask for a direct channel (subject to the daemon's policy).
        let channel = caller.request_direct(&route)?;
        println!("direct channel {channel} open: is_direct = {}", caller.is_direct(&route));
        timed("direct (ring to ring)")?;

        // Both sides count the channel's traffic; the daemon reads those counters.
        let stats = caller.stats()?;
        if let Some(ch) = stats.channels.iter().find(|c| c.channel == channel) {
            println!("the channel carried {} messages; the daemon routed none of them", ch.a_messages + ch.b_messages);
        }
        caller.close_direct(channel)?;
        while let Some(ev) = caller.next_event(Duration::from_millis(200))? {
            if let BusEvent::DirectClosed { reason, .. } = ev {
                println!("closed ({reason}); calls go through the daemon again");
                break;
            }
        }
        timed("brokered again")?;
        svc.drain()?;
        serving.join().expect("service thread")
    })
}
