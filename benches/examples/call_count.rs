//! Direct calls for an instruction count of the caller's path, under callgrind.
//!
//! This VM has no hardware counters (`perf stat -e instructions` is not
//! supported here), so the count is valgrind's. The caller runs under
//! callgrind, the echo server and the daemon natively:
//!
//! ```sh
//! hybusd --socket /tmp/cc/bus.sock &
//! sleep 1200 | hybusctl --socket /tmp/cc/bus.sock worker echo cc.echo --idle busy &
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cc/8.out \
//!     target/release/examples/call_count /tmp/cc/bus.sock cc.echo 8 20000
//! callgrind_annotate --inclusive=yes /tmp/cc/8.out | grep -E 'call_count::main::|send_request|await_answer|Bus::loan '
//! # the worker spins a whole CPU: stop it (and hybusd) when done
//! pkill -f 'worker echo cc.echo'
//! ```
//!
//! The counts that matter, divided by the calls made (printed at the end):
//!
//! * `hybus::bus::Bus::send_request` — from the call to the push on the
//!   channel's ring (the route, a correlation id, the push);
//! * the answer check's successful rounds and what follows — from the pop
//!   to the answer's return: taking the answer, making its `Sample`, and,
//!   at its drop, giving a chunk back;
//! * the wait's empty rounds are left out: they count how long the server
//!   took, not what the caller did.
//!
//! Payloads up to `INLINE_PAYLOAD` go inline; larger ones in a loaned
//! chunk whose first 8 bytes are written (as `hybusctl bench` does).
//!
//! Run the echo worker with `--idle busy`: a parked server makes the
//! caller's wait take the slow path (every answer found after the wait
//! gave up spinning), which is not the path a spinning pair takes.
//!
//! Counted at 9c4de2a (instructions per call, 21 000 calls; `--inclusive=yes`):
//!
//! | | 8 B | 1 MiB |
//! |---|---|---|
//! | the caller's loop body (build, call, check, drop) | 2 609 | 3 390 |
//! | `Bus::loan` | — | 267 |
//! | `Bus::send_request` (call to push) | 401 | 573 |
//! | `Shared::await_answer` (first poll to return) | 1 943 | 2 086 |
//! | of which the wait's first round, `pump_data` | 1 085 | 1 332 |
//!
//! Before and after the first round of a direct call's wait stopped
//! pumping everything (b46e586, then the next commit; one session, the
//! same daemon and worker; the empty rounds of a wait make two runs of
//! the same code differ by some hundreds):
//!
//! | | 8 B before | 8 B after | 1 MiB before | 1 MiB after |
//! |---|---|---|---|---|
//! | the caller's loop body | 2 240 | 1 420 | 3 436 | 2 718 |
//! | `Shared::await_answer` | 1 520 | 701 | 2 075 | 1 007 |
//! | `Bus::loan` (a loan that finds the pool empty takes returns back) | — | — | 266 | 617 |
//! | `Bus::send_request` | 442 | 442 | 617 | 617 |

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, name, payload, calls] = &args[..] else {
        return Err("usage: call_count SOCKET SERVICE PAYLOAD_BYTES CALLS".into());
    };
    let (payload, calls): (usize, u64) = (payload.parse()?, calls.parse()?);
    let bus = hybus::Bus::connect_to(socket)?;
    let route = bus.resolve(name)?;
    bus.request_direct(&route)?;
    let timeout = Duration::from_secs(30);
    let call = |i: u64| -> hybus::Result<()> {
        let seq = i.to_le_bytes();
        let answer = if payload <= hybus::INLINE_PAYLOAD {
            let mut buf = [0u8; hybus::INLINE_PAYLOAD];
            let n = payload.min(8);
            buf[..n].copy_from_slice(&seq[..n]);
            bus.call(&route, &buf[..payload], timeout)?
        } else {
            let mut loan = bus.loan(payload, timeout)?;
            loan[..8].copy_from_slice(&seq);
            bus.call_loan(&route, loan, timeout)?
        };
        assert_eq!(answer.len(), payload, "echo answered another length");
        Ok(())
    };
    // The channel opens a few calls in; warm-up calls also fill the caches.
    for i in 0..1_000 {
        call(i)?;
    }
    if !bus.is_direct(&route) {
        return Err("no direct channel after 1000 calls (policy?)".into());
    }
    for i in 0..calls {
        call(i)?;
    }
    println!("{calls} direct calls of {payload} B after 1000 warm-up calls");
    Ok(())
}
