//! A long mixed soak through the real `hybusd`: three sender processes mix
//! fires, publications, calls, request-streams and request-channels with
//! seeded random payload sizes (16 B .. 200 KiB; every payload carries its
//! sender and sequence number, so 16 B is the floor), some of them as
//! loans, to two receiver processes that serve and subscribe. Receivers
//! check every byte and exactly-once, in-order delivery per sender and
//! model; senders check every answer and item. At the end every count
//! matches, every sender's pool is whole, and the daemon holds no loan and
//! no exchange.
//!
//! Release: about 1.2 million operations (plus fan-out and answers); debug:
//! a few tens of thousands. The message count and elapsed time are printed
//! (`cargo test --test soak -- --nocapture`); nothing about time is asserted.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{num, scaled, Load};
use hybus_tests::{eventually, field, DaemonProc, SOON};

const SENDERS: u32 = 3;
const RECEIVERS: [&str; 2] = ["soak.r1", "soak.r2"];
const TOPIC: &str = "soak.topic";
const MAX_LEN: usize = 200 << 10;

/// What one sender said it sent to one receiver.
type Sent = HashMap<&'static str, u64>;

fn counts(line: &str, keys: &[&'static str]) -> Sent {
    keys.iter().map(|&k| (k, num(line, k))).collect()
}

#[test]
fn mixed_soak_exactly_once_in_order() {
    // Round trips (calls, streams, channels) cost a scheduling round on
    // every hop, milliseconds on a loaded 2-core machine; fires and
    // publications pipeline. So release runs 50 times the operations of
    // debug but only about three times the round trips (~1000 per sender
    // against ~320).
    let ops = scaled(400_000, 8_000);
    let rt = scaled(25, 400).to_string();
    let d = DaemonProc::start(None);
    let senders_arg = SENDERS.to_string();
    let mut receivers: Vec<Load> =
        RECEIVERS.iter().map(|r| Load::ready(d.socket(), &["soak-recv", r, TOPIC, &senders_arg]).0).collect();
    let start = Instant::now();
    let max = MAX_LEN.to_string();
    let ops_arg = ops.to_string();
    let mut senders: Vec<Load> = (0..SENDERS)
        .map(|i| {
            let id = i.to_string();
            let seed = (0x5eed_0000 + i as u64 * 7919).to_string();
            let mut args = vec!["soak-send", &id, &seed, &ops_arg, &max, &rt, TOPIC];
            args.extend_from_slice(&RECEIVERS);
            Load::ready(d.socket(), &args).0
        })
        .collect();

    // Each sender's own account: per target, then its publications.
    let keys = ["calls", "fires", "streams", "channels", "citems"];
    let mut sent: Vec<HashMap<String, Sent>> = Vec::new();
    let mut pubs = Vec::new();
    let mut msgs = 0;
    for (i, s) in senders.iter_mut().enumerate() {
        let mut per_target = HashMap::new();
        let done = loop {
            let line = s.line_within("", Duration::from_secs(120)).unwrap_or_else(|| panic!("sender {i} went silent"));
            if line.starts_with("spent ") || line.starts_with("progress ") {
                println!("sender {i}: {line}");
            } else if line.starts_with("error") {
                panic!("sender {i}: {line}");
            } else if line.starts_with("sent ") {
                let target = field(&line, "target").expect("target").to_owned();
                per_target.insert(target, counts(&line, &keys));
            } else if line.starts_with("done ") {
                break line;
            }
        };
        assert_eq!(num(&done, "chunks"), 0, "sender {i} still lends chunks: {done}");
        pubs.push(num(&done, "pubs"));
        msgs += num(&done, "msgs");
        sent.push(per_target);
    }
    let elapsed = start.elapsed();
    for (i, s) in senders.drain(..).enumerate() {
        assert!(s.finish().success(), "sender {i} failed");
    }

    // Each receiver's account must match every sender's, exactly.
    for (r, recv) in RECEIVERS.iter().zip(receivers.iter_mut()) {
        recv.say("report");
        for i in 0..SENDERS as usize {
            let line = recv.expect_line("report sender=");
            assert_eq!(num(&line, "sender"), i as u64);
            let want = &sent[i][*r];
            for k in ["calls", "fires", "streams", "channels", "citems"] {
                assert_eq!(num(&line, k), want[k], "{r}: {k} of sender {i}: {line}");
            }
            assert_eq!(num(&line, "pubs"), pubs[i], "{r}: publications of sender {i}");
        }
        let end = recv.expect_line("report-end");
        assert_eq!(num(&end, "errors"), 0, "{r} saw errors: {:?}", recv.seen());
    }
    let ok = eventually(SOON, || {
        let s = d.connect().status().ok()?;
        (s.chunks_lent == 0 && s.exchanges == 0).then_some(s)
    });
    assert!(ok.is_some(), "the daemon still holds: {:?}", d.connect().status());
    let total_ops = ops * SENDERS as u64;
    let total: u64 = sent
        .iter()
        .flat_map(|t| t.values())
        .map(|c| c["fires"] + c["calls"] + c["streams"] + c["channels"])
        .sum::<u64>()
        + pubs.iter().sum::<u64>();
    assert_eq!(total, total_ops, "every operation accounted for");
    println!(
        "soak: {total_ops} operations, {msgs} messages delivered, in {:.1} s ({:.0} messages/s)",
        elapsed.as_secs_f64(),
        msgs as f64 / elapsed.as_secs_f64()
    );
}
