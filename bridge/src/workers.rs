//! Threads for blocking jobs (forwarded calls wait for their answers):
//! as many as there are jobs at once, up to a limit, so that one slow
//! service never holds up the requests for another. Zenoh's callbacks hand
//! their work here instead of blocking Zenoh's own threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A job for a worker.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long a worker with nothing to do waits before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(30);

/// A set of worker threads fed by one queue.
#[derive(Debug, Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    tx: Mutex<Sender<Job>>,
    rx: Arc<Mutex<Receiver<Job>>>,
    /// Workers alive.
    alive: AtomicUsize,
    /// Workers waiting for a job.
    idle: AtomicUsize,
    /// Jobs queued and not taken yet.
    queued: AtomicUsize,
    max: usize,
}

impl Workers {
    /// Workers named `name` (for thread names), at most `max` at once.
    pub fn new(name: &'static str, max: usize) -> Workers {
        let (tx, rx) = channel();
        Workers {
            inner: Arc::new(Inner {
                name,
                tx: Mutex::new(tx),
                rx: Arc::new(Mutex::new(rx)),
                alive: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                max: max.max(1),
            }),
        }
    }

    /// Runs `job` on a worker: an idle one, or a new one while fewer than
    /// the limit are alive (beyond it, the job waits for a worker).
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let i = &self.inner;
        let queued = i.queued.fetch_add(1, Ordering::AcqRel) + 1;
        if queued > i.idle.load(Ordering::Acquire) && i.alive.load(Ordering::Acquire) < i.max {
            self.spawn();
        }
        let tx = i.tx.lock().unwrap_or_else(|p| p.into_inner());
        // The queue's receiver lives as long as `inner`: sending cannot fail.
        let _ = tx.send(Box::new(job));
    }

    fn spawn(&self) {
        let inner = self.inner.clone();
        inner.alive.fetch_add(1, Ordering::AcqRel);
        let r = std::thread::Builder::new().name(inner.name.to_owned()).spawn({
            let inner = inner.clone();
            move || worker(&inner)
        });
        if let Err(e) = r {
            inner.alive.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("cannot start a worker thread: {e}");
        }
    }
}

fn worker(inner: &Inner) {
    loop {
        inner.idle.fetch_add(1, Ordering::AcqRel);
        let job = inner.rx.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(IDLE_EXIT);
        inner.idle.fetch_sub(1, Ordering::AcqRel);
        match job {
            Ok(job) => {
                inner.queued.fetch_sub(1, Ordering::AcqRel);
                job()
            }
            Err(_) => break,
        }
    }
    inner.alive.fetch_sub(1, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_jobs_do_not_hold_up_the_others() {
        let w = Workers::new("test", 8);
        let (tx, rx) = channel();
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        for i in 0..4 {
            let (tx, gate) = (tx.clone(), gate.clone());
            w.run(move || {
                if i < 3 {
                    drop(gate.lock());
                }
                let _ = tx.send(i);
            });
        }
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(3));
        drop(held);
        let mut rest: Vec<i32> = (0..3).filter_map(|_| rx.recv_timeout(Duration::from_secs(10)).ok()).collect();
        rest.sort();
        assert_eq!(rest, vec![0, 1, 2]);
    }
}
