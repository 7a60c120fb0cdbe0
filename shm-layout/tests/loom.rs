//! Loom models of the ring and of the doorbell handshake.
//!
//! Under `--cfg loom` the crate's atomics and fences are loom's, so loom
//! explores the interleavings (and the weak-memory outcomes) of the real
//! `Producer`/`Consumer` code. The models prove:
//!
//! * the ring loses, duplicates and reorders nothing across wrap-around and
//!   the full/empty index reloads, for single pushes/pops and for batches;
//! * the park/notify handshake (`prepare_park` / `needs_wake`, two SeqCst
//!   fences in a Dekker pattern) never loses a wake-up: if it did, the
//!   consumer would sleep forever on the condvar and loom would report a
//!   deadlock;
//! * `Consumer::wait` itself (spin, yield, park) reaches `Ready`;
//! * and, as a control, that this harness does catch a lost wake-up (a
//!   consumer that sleeps although `prepare_park` said not to).
//!
//! Every model is explored exhaustively except the two-item doorbell model,
//! which is bounded to 3 preemptions (see its doc).
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p hybus-layout --release --test loom`
#![cfg(loom)]

use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hybus_layout::descriptor::Slot;
use hybus_layout::ring::RingHeader;
use hybus_layout::{Consumer, Descriptor, IdleStrategy, Kind, Producer, PushError, Ring, Wait, WaitOutcome, Wake};
use loom::sync::{Condvar, Mutex};

/// Heap memory standing in for a shared-memory ring.
struct HeapRing {
    header: Box<RingHeader>,
    slots: Vec<Slot>,
}

/// Builds a ring of `capacity` slots on the heap; the memory lives as long as either end.
fn heap_ring(capacity: u64) -> (Producer, Consumer) {
    let mem = Arc::new(HeapRing {
        header: Box::new(RingHeader::new(capacity)),
        slots: (0..capacity).map(|_| Slot::default()).collect(),
    });
    let header = NonNull::from(&*mem.header);
    let slots = NonNull::new(mem.slots.as_ptr().cast_mut()).expect("Vec pointer is never null");
    let keep: Arc<dyn Send + Sync> = mem;
    // SAFETY: `header` and `slots` (of `capacity` elements) point into the
    // `HeapRing` that `keep` owns; both ends hold a clone of `keep`, and the
    // box/vector are never moved or resized after this point.
    unsafe { Ring::from_parts(header, slots, capacity, Some(keep)) }.expect("valid ring")
}

fn descriptor(i: u64) -> Descriptor {
    Descriptor::new(Kind::Fire, 7, i).with_aux(i * 3 + 1).with_inline(&i.to_le_bytes()).expect("8 bytes fit inline")
}

fn check_in_order(got: &[Descriptor], n: u64) {
    assert_eq!(got.len() as u64, n, "lost or duplicated descriptors");
    for (i, d) in got.iter().enumerate() {
        assert_eq!(*d, descriptor(i as u64), "descriptor {i} reordered or torn");
    }
}

/// Runs `f` under loom with an optional preemption bound (`None`: explore
/// every interleaving), and checks that loom really explored more than one
/// interleaving (a model that runs once proves nothing).
fn model<F>(name: &str, preemption_bound: Option<usize>, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = preemption_bound;
    b.check(move || {
        counter.fetch_add(1, Relaxed);
        f();
    });
    let runs = runs.load(Relaxed);
    eprintln!("{name}: {runs} interleavings explored (preemption bound {preemption_bound:?})");
    assert!(runs > 1, "{name}: loom explored a single interleaving");
}

/// A loom stand-in for an eventfd: a counter that `wake` increments and
/// `wait` blocks on until non-zero, then resets (like a non-semaphore eventfd read).
struct LoomEventFd {
    count: Mutex<u64>,
    cv: Condvar,
}

impl LoomEventFd {
    fn new() -> LoomEventFd {
        LoomEventFd { count: Mutex::new(0), cv: Condvar::new() }
    }
}

impl Wake for LoomEventFd {
    fn wake(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_one();
    }
}

impl Wait for LoomEventFd {
    fn wait(&self, timeout: Option<Duration>) {
        assert!(timeout.is_none(), "the loom doorbell models untimed waits only");
        let mut n = self.count.lock().unwrap();
        while *n == 0 {
            n = self.cv.wait(n).unwrap();
        }
        *n = 0;
    }
}

/// Capacity 2, three descriptors: the producer must wait for the consumer
/// to free a slot (reload of `head`), and the third descriptor reuses slot 0.
#[test]
fn ring_push_pop_wraps_without_loss() {
    const N: u64 = 3;
    model("ring_push_pop_wraps_without_loss", None, || {
        let (mut p, mut c) = heap_ring(2);
        let producer = loom::thread::spawn(move || {
            for i in 0..N {
                let mut d = descriptor(i);
                loop {
                    match p.push(&d) {
                        Ok(()) => break,
                        Err(PushError::Full(back)) => {
                            d = back;
                            loom::thread::yield_now();
                        }
                        Err(e) => panic!("honest consumer reported as hostile: {e}"),
                    }
                }
            }
        });
        let mut got = Vec::new();
        while (got.len() as u64) < N {
            match c.pop().expect("honest producer") {
                Some(d) => got.push(d),
                None => loom::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(c.pop().expect("honest producer"), None, "nothing extra");
        check_in_order(&got, N);
    });
}

/// The same with `push_batch` / `pop_batch`: partial batches when full and
/// when fewer are ready than asked for.
#[test]
fn ring_batches_wrap_without_loss() {
    const N: u64 = 3;
    model("ring_batches_wrap_without_loss", None, || {
        let (mut p, mut c) = heap_ring(2);
        let producer = loom::thread::spawn(move || {
            let all: Vec<Descriptor> = (0..N).map(descriptor).collect();
            let mut sent = 0;
            while sent < all.len() {
                let n = p.push_batch(&all[sent..]).expect("honest consumer");
                sent += n;
                if n == 0 {
                    loom::thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [descriptor(99); 2];
        while (got.len() as u64) < N {
            let n = c.pop_batch(&mut buf).expect("honest producer");
            got.extend_from_slice(&buf[..n]);
            if n == 0 {
                loom::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert_eq!(c.pop_batch(&mut buf).expect("honest producer"), 0);
        check_in_order(&got, N);
    });
}

/// The consumer half of the handshake, written out as a caller would.
/// Returns once `n` descriptors have been popped.
fn park_until(c: &mut Consumer, bell: &LoomEventFd, n: u64) -> Vec<Descriptor> {
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        if let Some(d) = c.pop().expect("honest producer") {
            got.push(d);
        } else if c.prepare_park().expect("honest producer") {
            bell.wait(None);
            c.finish_park();
        }
    }
    got
}

/// One descriptor, one notify: the consumer either sees it before it
/// sleeps or is woken. A lost wake-up leaves it blocked forever on the
/// condvar, which loom reports as a deadlock.
#[test]
fn doorbell_no_lost_wakeup() {
    model("doorbell_no_lost_wakeup", None, || {
        let (mut p, mut c) = heap_ring(2);
        let bell = loom::sync::Arc::new(LoomEventFd::new());
        let pb = bell.clone();
        let producer = loom::thread::spawn(move || {
            p.push(&descriptor(0)).expect("empty ring has room");
            p.notify(&*pb);
        });
        let got = park_until(&mut c, &bell, 1);
        producer.join().unwrap();
        check_in_order(&got, 1);
        assert!(!c.is_parked());
    });
}

/// Two descriptors pushed separately with a notify each: the consumer may
/// park twice, the wake-up for the first may be claimed while it is still
/// awake, and a stale count may end a later wait early. None of it may
/// lose the second wake-up.
///
/// Bounded to 3 preemptions. Unbounded it took ~218,000 interleavings (11 s)
/// when the consumer polled `tail` alone; since it polls the slot's stamp
/// and then `tail`, every empty poll is one more scheduling point and the
/// unbounded model runs for over ten minutes. Three preemptions cover every
/// ordering of the two Dekker halves and the claim of each wake-up (the
/// single-item model above, unbounded, covers the handshake itself).
///
/// The wake-up is claimed with `compare_exchange` rather than `swap`: loom
/// 0.7 does not keep a relaxed RMW and a concurrent plain store in one
/// modification order (tokio-rs/loom#254, #389), and with a swap it reports
/// a deadlock that the C++/Rust model rules out.
#[test]
fn doorbell_two_items_no_lost_wakeup() {
    model("doorbell_two_items_no_lost_wakeup", Some(3), || {
        let (mut p, mut c) = heap_ring(2);
        let bell = loom::sync::Arc::new(LoomEventFd::new());
        let pb = bell.clone();
        let producer = loom::thread::spawn(move || {
            for i in 0..2 {
                p.push(&descriptor(i)).expect("ring of 2 has room for 2");
                p.notify(&*pb);
            }
        });
        let got = park_until(&mut c, &bell, 2);
        producer.join().unwrap();
        check_in_order(&got, 2);
    });
}

/// The library's own `Consumer::wait` (one spin, one yield, then park) with
/// no deadline: it must return `Ready` after the producer's notify.
#[test]
fn consumer_wait_is_woken() {
    const IDLE: IdleStrategy = IdleStrategy { spins: 1, yields: 1, park: true };
    model("consumer_wait_is_woken", None, || {
        let (mut p, mut c) = heap_ring(2);
        let bell = loom::sync::Arc::new(LoomEventFd::new());
        let pb = bell.clone();
        let producer = loom::thread::spawn(move || {
            p.push(&descriptor(0)).expect("empty ring has room");
            p.notify(&*pb);
        });
        assert_eq!(c.wait(&IDLE, &*bell, None), Ok(WaitOutcome::Ready));
        assert_eq!(c.pop().expect("honest producer"), Some(descriptor(0)));
        producer.join().unwrap();
    });
}

/// Control: a consumer that ignores what `prepare_park` says and sleeps
/// anyway (even after it saw a descriptor and withdrew its announcement)
/// can lose the wake-up. Loom must report it as a deadlock, which shows
/// that the models above would catch a lost wake-up.
#[test]
#[should_panic(expected = "deadlock")]
fn control_ignoring_prepare_park_loses_wakeup() {
    model("control_ignoring_prepare_park_loses_wakeup", None, || {
        let (mut p, mut c) = heap_ring(2);
        let bell = loom::sync::Arc::new(LoomEventFd::new());
        let pb = bell.clone();
        let producer = loom::thread::spawn(move || {
            p.push(&descriptor(0)).expect("empty ring has room");
            p.notify(&*pb);
        });
        loop {
            if c.pop().expect("honest producer").is_some() {
                break;
            }
            let _ = c.prepare_park().expect("honest producer");
            bell.wait(None);
            c.finish_park();
        }
        producer.join().unwrap();
    });
}
