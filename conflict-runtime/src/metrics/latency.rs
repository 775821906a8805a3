//! Lock-free log-linear histogram buckets, summarised through [`hdrhistogram`] on read.
//!
//! Recording is one relaxed atomic add into a fixed bucket array: values below 16 have a bucket
//! each, and every power of two above is split into 16 sub-buckets, so a bucket spans at most
//! 6.25% of its values. A read merges bucket arrays and loads them into an HDR histogram, which
//! computes the mean and the quantiles; hdrhistogram itself is not used on the hot path because
//! recording into it needs `&mut`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::snapshot::HistogramSnapshot;

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
pub(super) const N_BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) << SUB_BITS;

/// Lock-free log-linear histogram buckets (one atomic add per sample).
pub(super) struct Buckets {
    counts: Box<[AtomicU64]>,
}

impl Buckets {
    pub(super) fn new() -> Self {
        Self {
            counts: (0..N_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "both casts are of a bucket index, below N_BUCKETS (976)"
    )]
    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let msb = v.ilog2();
        let shift = msb - SUB_BITS;
        let sub = (v >> shift) & (SUB - 1);
        ((u64::from(shift) + 1) * SUB + sub) as usize
    }

    /// The smallest value of bucket `i`.
    fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let sub = i % SUB;
        (SUB + sub) << shift
    }

    /// The largest value of bucket `i`.
    fn upper(i: usize) -> u64 {
        if i + 1 < N_BUCKETS {
            Self::lower(i + 1) - 1
        } else {
            u64::MAX
        }
    }

    #[inline]
    pub(super) fn record(&self, v: u64) {
        self.counts[Self::index(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration in nanoseconds (saturating at `u64::MAX`, some 584 years).
    #[inline]
    pub(super) fn record_duration(&self, d: std::time::Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// Merges bucket sets and summarises them through an HDR histogram.
pub(super) fn summarize<'a>(parts: impl IntoIterator<Item = &'a Buckets>) -> HistogramSnapshot {
    let mut counts = vec![0u64; N_BUCKETS];
    for b in parts {
        for (c, a) in counts.iter_mut().zip(b.counts.iter()) {
            *c += a.load(Ordering::Relaxed);
        }
    }
    let count: u64 = counts.iter().sum();
    let Some(top) = counts.iter().rposition(|c| *c > 0) else {
        return HistogramSnapshot::default();
    };
    // Each bucket is recorded at its upper edge, so every reported figure is an upper bound of
    // the true one, within the bucket's width (6.25%).
    let max = Buckets::upper(top);
    let mut h = hdrhistogram::Histogram::<u64>::new_with_max(max.max(2), 3)
        .or_else(|_| hdrhistogram::Histogram::<u64>::new(3));
    let Ok(h) = h.as_mut() else {
        return HistogramSnapshot {
            count,
            max_ns: max,
            ..HistogramSnapshot::default()
        };
    };
    for (i, c) in counts.iter().enumerate() {
        if *c > 0 {
            // `saturating_record_n` clamps into the histogram's range instead of failing.
            h.saturating_record_n(Buckets::upper(i).max(1), *c);
        }
    }
    HistogramSnapshot {
        count,
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "the mean of non-negative samples, at most u64::MAX; `as` drops the fraction"
        )]
        mean_ns: h.mean() as u64,
        p50_ns: h.value_at_quantile(0.50),
        p95_ns: h.value_at_quantile(0.95),
        p99_ns: h.value_at_quantile(0.99),
        max_ns: max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev = 0;
        for i in 1..N_BUCKETS {
            let lo = Buckets::lower(i);
            assert!(lo > prev, "bucket {i}");
            assert_eq!(Buckets::index(lo), i);
            assert_eq!(Buckets::index(lo - 1), i - 1);
            assert_eq!(Buckets::upper(i - 1), lo - 1);
            prev = lo;
        }
        for v in [0, 1, 15, 16, 17, 1000, 123_456_789, u64::MAX] {
            let i = Buckets::index(v);
            let lo = Buckets::lower(i);
            assert!(lo <= v && v <= Buckets::upper(i));
            if v >= 16 {
                assert!((v - lo) as f64 / v as f64 <= 1.0 / 16.0);
            }
        }
    }

    #[test]
    fn quantiles_bound_the_truth_within_the_bucket_width() {
        let b = Buckets::new();
        for v in 1..=10_000u64 {
            b.record(v * 1000);
        }
        let s = summarize([&b]);
        assert_eq!(s.count, 10_000);
        assert!(
            (10_000_000..=10_625_000).contains(&s.max_ns),
            "{}",
            s.max_ns
        );
        assert!(
            (5_000_500..=5_320_000).contains(&s.mean_ns),
            "{}",
            s.mean_ns
        );
        for (q, got) in [
            (0.5, s.p50_ns),
            (0.95, s.p95_ns),
            (0.99, s.p99_ns),
            (1.0, s.max_ns),
        ] {
            let truth = (q * 10_000.0) * 1000.0;
            assert!(got as f64 >= truth * 0.999, "q{q}: {got} < {truth}");
            assert!(
                got as f64 <= truth * 1.07,
                "q{q}: {got} too far above {truth}"
            );
        }
        assert_eq!(summarize([&Buckets::new()]), HistogramSnapshot::default());
    }
}
