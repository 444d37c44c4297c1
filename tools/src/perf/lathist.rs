//! A latency histogram cheap enough to record every I/O: log-linear buckets (256 per power of
//! two, so a bucket is at most 0.4% wide), one leading-zero count, a shift and an add per value.
//! Reports convert it to an [`hdrhistogram::Histogram`] once, for percentiles and the bucket
//! listing; recording straight into that histogram cost ~67 instructions per I/O, a sixth of the
//! whole tool's share.

use hdrhistogram::Histogram;

/// Sub-buckets per power of two (as a shift).
const SUB_BITS: u32 = 8;
const SUB: u64 = 1 << SUB_BITS;

/// Per-bucket counts of latencies in ns, up to a maximum (larger values are clamped).
#[derive(Clone, Debug)]
pub struct LatHist {
    counts: Box<[u64]>,
    max: u64,
}

impl LatHist {
    /// An empty histogram for values up to `max` ns.
    pub fn new(max: u64) -> LatHist {
        LatHist {
            counts: vec![0; index(max) + 1].into_boxed_slice(),
            max,
        }
    }

    /// Counts one value (clamped to the maximum).
    #[inline]
    pub fn record(&mut self, v: u64) {
        let i = index(v.min(self.max));
        // `i <= index(max)`, the last bucket: the check never fails.
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }

    /// Forgets every value.
    pub fn reset(&mut self) {
        self.counts.fill(0);
    }

    /// Adds `o`'s counts (same maximum) into `self`.
    pub fn add(&mut self, o: &LatHist) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
    }

    /// The same distribution as an HDR histogram (3 significant digits), each bucket's count at
    /// the bucket's midpoint.
    pub fn to_hdr(&self) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, self.max.max(2), 3).expect("valid bounds");
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 {
                let (lo, width) = bucket(i);
                h.saturating_record_n((lo + width / 2).max(1), n);
            }
        }
        h
    }
}

/// The bucket of `v`: values below 256 have one bucket each; above, each power of two is split
/// into 256 equal buckets.
#[inline]
fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let shift = (63 - v.leading_zeros()) - SUB_BITS;
    ((shift as u64 + 1) * SUB + ((v >> shift) - SUB)) as usize
}

/// Lowest value and width of bucket `i`.
fn bucket(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, 1);
    }
    let shift = i / SUB - 1;
    ((i % SUB + SUB) << shift, 1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_the_bucket_that_holds_it() {
        let mut v = 0u64;
        while v < 1 << 40 {
            let (lo, w) = bucket(index(v));
            assert!(lo <= v && v < lo + w, "{v}: bucket [{lo}, {})", lo + w);
            // Buckets are at most 1/256 of their value wide.
            assert!(w == 1 || w * SUB <= lo, "{v}: width {w} at {lo}");
            v = v * 9 / 8 + 1;
        }
        // Consecutive buckets tile the line with no gap.
        for i in 0..5000 {
            let (lo, w) = bucket(i);
            assert_eq!(bucket(i + 1).0, lo + w, "bucket {i}");
        }
    }

    #[test]
    fn percentiles_survive_the_conversion() {
        let mut h = LatHist::new(100_000_000_000);
        for v in 1..=10_000u64 {
            h.record(v * 1000); // 1 us .. 10 ms, uniform
        }
        h.record(u64::MAX); // clamped to the maximum
        assert_eq!(h.len(), 10_001);
        let hdr = h.to_hdr();
        assert_eq!(hdr.len(), 10_001);
        let p50 = hdr.value_at_quantile(0.5) as f64;
        let p99 = hdr.value_at_quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.01, "p50 {p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.01, "p99 {p99}");
        assert!(hdr.max() >= 99_000_000_000, "clamped value kept at the top");
    }

    #[test]
    fn add_and_reset() {
        let mut a = LatHist::new(1_000_000);
        let mut b = LatHist::new(1_000_000);
        a.record(5);
        b.record(5);
        b.record(700_000);
        a.add(&b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.to_hdr().count_at(5), 2);
        a.reset();
        assert!(a.is_empty());
    }
}
