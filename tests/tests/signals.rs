//! A client keeps working in a process whose signals interrupt its system
//! calls: connecting (the wait for the Welcome) and calling, under a timer
//! that fires every 50 µs. A bare `poll` returns `EINTR` at every handled
//! signal; the handshake took that for "the daemon did not answer Hello"
//! (found by the fuzz targets, whose libFuzzer runs a SIGALRM timer).
//!
//! Its own test binary: the handler and the timer are process-wide.

mod common;

use std::time::Duration;

use common::Load;
use hybus_tests::{DaemonProc, SOON};

extern "C" fn ignore(_: libc::c_int) {}

/// Installs a do-nothing SIGALRM handler (without `SA_RESTART`) and a timer
/// that raises it every `every`; stopped again on drop.
struct Storm;

impl Storm {
    fn start(every: Duration) -> Storm {
        let us = every.as_micros() as libc::suseconds_t;
        let tick = libc::timeval { tv_sec: 0, tv_usec: us };
        let timer = libc::itimerval { it_interval: tick, it_value: tick };
        // SAFETY: `sigaction` with a handler that does nothing (async-signal
        // safe) and a zeroed mask; `setitimer` with a valid `itimerval`.
        // Both only change process-wide signal state, which this binary
        // owns (its only test).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
            assert_eq!(libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()), 0);
            assert_eq!(libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()), 0);
        }
        Storm
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        let off = libc::itimerval {
            it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
            it_value: libc::timeval { tv_sec: 0, tv_usec: 0 },
        };
        // SAFETY: stops the timer started in `start`; a valid `itimerval`.
        unsafe { libc::setitimer(libc::ITIMER_REAL, &off, std::ptr::null_mut()) };
    }
}

#[test]
fn connect_and_call_while_signals_interrupt() {
    let d = DaemonProc::start(None);
    let (_srv, _) = Load::ready(d.socket(), &["serve", "sig.echo"]);
    let _storm = Storm::start(Duration::from_micros(50));
    for i in 0..100 {
        let bus = hybus::Bus::connect_to(d.socket()).unwrap_or_else(|e| panic!("connect #{i}: {e}"));
        let route = bus.resolve("sig.echo").unwrap_or_else(|e| panic!("resolve #{i}: {e}"));
        for j in 0..20u8 {
            let answer = bus.call(&route, &[i as u8, j], SOON).unwrap_or_else(|e| panic!("call #{i}.{j}: {e}"));
            assert_eq!(&answer[..], &[j, i as u8]);
        }
    }
}
