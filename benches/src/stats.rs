//! Percentiles of latency samples.

/// Summary of a set of latency samples (nanoseconds), exact (from sorted samples).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Percentiles {
    /// Summarises samples that are already sorted ascending; `None` if there are none.
    ///
    /// Percentiles use the nearest-rank definition: the smallest sample with
    /// at least that fraction of the samples at or below it.
    pub fn from_sorted(sorted: &[u64]) -> Option<Percentiles> {
        let count = sorted.len();
        let max = *sorted.last()?;
        debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "samples not sorted");
        let rank = |q: f64| sorted[((q * count as f64).ceil() as usize).clamp(1, count) - 1];
        let sum: u128 = sorted.iter().map(|&s| s as u128).sum();
        Some(Percentiles {
            count,
            p50: rank(0.50),
            p99: rank(0.99),
            p999: rank(0.999),
            max,
            mean: sum as f64 / count as f64,
        })
    }

    /// Sorts `samples` in place and summarises them; `None` if there are none.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut ns = vec![30, 10, 20, 1000];
    /// let p = hybus_benches::Percentiles::from_samples(&mut ns).unwrap();
    /// assert_eq!((p.p50, p.max, p.count), (20, 1000, 4));
    /// ```
    pub fn from_samples(samples: &mut [u64]) -> Option<Percentiles> {
        samples.sort_unstable();
        Percentiles::from_sorted(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        let p = Percentiles::from_sorted(&v).unwrap();
        assert_eq!((p.p50, p.p99, p.p999, p.max), (500, 990, 999, 1000));
        assert_eq!(p.mean, 500.5);
        assert_eq!(Percentiles::from_sorted(&[]), None);
        let one = Percentiles::from_sorted(&[7]).unwrap();
        assert_eq!((one.p50, one.p999), (7, 7));
    }
}
