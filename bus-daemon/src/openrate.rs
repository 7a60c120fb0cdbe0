//! How fast one uid may have direct channels opened for it.
//!
//! Each new channel costs the daemon a segment (a memfd it maps) and the
//! serving client a `DirectOpen` with four descriptors, which it must map
//! and set up before it sees its next request. A caller opening and
//! closing channels in a loop once flooded its server with them. Opens are
//! now limited per caller uid by a token bucket: `limits.direct_opens_per_s`
//! tokens a second, at most `limits.direct_open_burst` saved up; each new
//! channel takes one, and a request finding none is refused
//! (`QuotaExceeded`). An existing channel handed back again costs nothing.
//!
//! The table holds one bucket per uid that opened a channel lately;
//! [`OpenRate::forget_full`] drops the buckets that have filled up again,
//! so it stays as small as the set of recent openers.

use std::collections::HashMap;
use std::time::Instant;

/// One uid's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left at `at` (fractional: refilled continuously).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// The per-uid buckets. See the module docs.
#[derive(Debug, Default)]
pub struct OpenRate {
    buckets: HashMap<u32, Bucket>,
}

/// No token left: how long until the next one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exhausted {
    /// Seconds until one open would be allowed.
    pub retry_in_s: f64,
}

impl OpenRate {
    /// Takes a token from `uid`'s bucket (`per_s` a second, `burst` at
    /// most) if it has one. `per_s == 0` means no limit.
    pub fn take(&mut self, uid: u32, per_s: u32, burst: u32, now: Instant) -> Result<(), Exhausted> {
        if per_s == 0 {
            return Ok(());
        }
        let (rate, cap) = (f64::from(per_s), f64::from(burst.max(1)));
        let b = self.buckets.entry(uid).or_insert(Bucket { tokens: cap, at: now });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Exhausted { retry_in_s: (1.0 - b.tokens) / rate })
        }
    }

    /// Forgets the buckets that are full again by `now` (they would start
    /// full anyway), and all of them once the limit is off.
    pub fn forget_full(&mut self, per_s: u32, burst: u32, now: Instant) {
        let (rate, cap) = (f64::from(per_s), f64::from(burst.max(1)));
        self.buckets
            .retain(|_, b| per_s != 0 && b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < cap);
    }

    /// Buckets held (for tests).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_per_uid() {
        let mut r = OpenRate::default();
        let t0 = Instant::now();
        for _ in 0..4 {
            r.take(7, 2, 4, t0).unwrap();
        }
        let e = r.take(7, 2, 4, t0).unwrap_err();
        assert!((e.retry_in_s - 0.5).abs() < 1e-9, "{e:?}");
        // Another uid has its own bucket.
        r.take(8, 2, 4, t0).unwrap();
        // Half a second gives one token back, not more.
        let t1 = t0 + Duration::from_millis(500);
        r.take(7, 2, 4, t1).unwrap();
        assert!(r.take(7, 2, 4, t1).is_err());
        // Never more than the burst saved up.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..4 {
            r.take(7, 2, 4, t2).unwrap();
        }
        assert!(r.take(7, 2, 4, t2).is_err());
        // No limit.
        for _ in 0..1000 {
            r.take(9, 0, 4, t2).unwrap();
        }
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let mut r = OpenRate::default();
        let t0 = Instant::now();
        r.take(1, 10, 10, t0).unwrap();
        r.forget_full(10, 10, t0);
        assert_eq!(r.len(), 1);
        r.forget_full(10, 10, t0 + Duration::from_millis(100));
        assert!(r.is_empty());
    }
}
