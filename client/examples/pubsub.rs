//! Publish/subscribe with a slow subscriber: the publisher never waits for
//! it. A subscriber that reads too slowly loses its own oldest publications
//! (counted), while a fast one on the same topic gets everything.
//!
//! Each party has its own connection, as separate processes would.

use std::time::Duration;

use hybus::Bus;

/// Publications sent: more than a slow reader's queue holds.
const COUNT: u64 = 100_000;

fn main() -> Result<(), hybus::Error> {
    let fast_bus = Bus::connect()?;
    let fast = fast_bus.subscribe("example.ticks")?;
    let slow_bus = Bus::connect()?;
    let slow = slow_bus.subscribe("example.ticks")?;
    let publisher_bus = Bus::connect()?;
    let publisher = publisher_bus.publisher("example.ticks")?;

    std::thread::scope(|s| -> Result<(), hybus::Error> {
        // The fast subscriber reads as they come, and stops at the last one.
        let fast_reader = s.spawn(|| -> Result<u64, hybus::Error> {
            let mut got = 0;
            while let Some(tick) = fast.next(Duration::from_secs(2))? {
                got += 1;
                if u64::from_le_bytes(tick[..8].try_into().unwrap_or_default()) == COUNT - 1 {
                    break;
                }
            }
            Ok(got)
        });

        // The publisher sends as fast as it can; the slow subscriber does not hold it up.
        for i in 0..COUNT {
            publisher.publish(&i.to_le_bytes())?;
        }
        println!("published {COUNT} ticks without waiting for anyone");

        // The slow subscriber only now starts reading: what it was sent meanwhile
        // overflowed its queue, and its oldest publications were dropped.
        let mut slow_got = 0u64;
        let mut last = 0;
        while let Some(tick) = slow.next(Duration::from_millis(500))? {
            slow_got += 1;
            last = u64::from_le_bytes(tick[..8].try_into().unwrap_or_default());
        }
        let fast_got = fast_reader.join().expect("fast reader")?;
        println!("fast subscriber: {fast_got} of {COUNT}");
        // Dropped oldest first, by the daemon (its queue for the subscriber was
        // full) or by the subscriber's own client (its inbox was): the newest stay.
        let dropped_by_daemon = slow_bus.status()?.drops;
        println!("slow subscriber: {slow_got} of {COUNT}, the newest (up to tick {last})");
        println!("dropped for slow readers: {dropped_by_daemon} by the daemon, {} by the slow client", slow.dropped());
        Ok(())
    })
}
