//! A receiver that keeps every sample cannot empty its sender's pool: its
//! uid holds at most `limits.held_share_percent` of a size class of another
//! client's pool, and past that its oldest is taken back.

use std::time::Duration;

use hybus_tests::{DaemonProc, Peer, OPEN_TO_ALL, SOON};

/// The hoarding side runs as another uid: the bound protects a pool from
/// others' hoarding (a uid's own connections are not charged).
const NOBODY: u32 = 65534;

const N: u64 = 1000;
const LEN: usize = 5000;

/// A `hold` subscriber (keeps every sample), an honest one, and a
/// publisher of 1 000 × 5 000 B (the 64 KiB class: 32 chunks): the
/// publisher publishes them all, and the honest subscriber gets them all,
/// in order. (Before: the publisher managed 36, then "out of pool memory"
/// on every try, and the honest subscriber got 36.)
#[test]
fn a_hoarding_subscriber_does_not_stall_a_topic() {
    let d = DaemonProc::start(Some(OPEN_TO_ALL));
    let mut hoarder = Peer::spawn_as(d.socket(), &["subscribe", "hoard.news", "hold"], NOBODY, NOBODY);
    hoarder.expect_line("ready");
    let honest = d.connect();
    let sub = honest.subscribe("hoard.news").unwrap();
    let reader = std::thread::spawn(move || {
        let mut next = 0u64;
        while next < N {
            let s = sub.next(SOON).expect("subscription").unwrap_or_else(|| panic!("publication {next} never came"));
            assert_eq!(s.len(), LEN);
            let seq = u64::from_le_bytes(s[..8].try_into().unwrap());
            assert_eq!(seq, next, "out of order or lost");
            next += 1;
        }
        drop(honest);
        next
    });
    let bus = d.connect();
    let publisher = bus.publisher("hoard.news").unwrap();
    let mut payload = vec![0u8; LEN];
    for seq in 0..N {
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        publisher.publish_within(&payload, SOON).unwrap_or_else(|e| panic!("publication {seq}: {e}"));
    }
    assert_eq!(reader.join().expect("honest subscriber"), N);
    // The hoarder got publications too, and lost only its oldest.
    hoarder.expect_line("got seq=100 ");
    let st = bus.status().unwrap();
    assert!(st.drops > 0, "nothing was taken back from the hoarder: {st:?}");
}

/// The same for a caller that keeps every answer: the server's pool never
/// runs dry, its later callers are served, and the keeper's own calls all
/// succeed (its oldest kept answers are taken back: their bytes may change).
#[test]
fn a_caller_that_keeps_every_answer_does_not_empty_the_servers_pool() {
    let d = DaemonProc::start(Some(OPEN_TO_ALL));
    let mut server = Peer::spawn_as(d.socket(), &["serve", "hoard.echo"], NOBODY, NOBODY);
    server.expect_line("ready");
    let keeper = d.connect();
    let route = keeper.resolve("hoard.echo").unwrap();
    let payload = vec![5u8; LEN];
    let mut kept = Vec::new();
    for i in 0..100 {
        let answer = keeper.call(&route, &payload, SOON).unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(answer.len(), LEN);
        kept.push(answer);
    }
    let other = d.connect();
    let r = other.resolve("hoard.echo").unwrap();
    assert_eq!(other.call(&r, &payload, Duration::from_secs(5)).unwrap().len(), LEN);
    drop(kept);
    // Everything the keeper held (and owed) is settled: it stays connected.
    keeper.status().expect("the keeper is still connected");
    assert_eq!(keeper.status().unwrap().violations, 0);
}
