//! A fast PRNG for picking LBAs, and division-free mapping of random words onto ranges.
//!
//! [`WyRand`] is wyrand (Wang Yi's wyhash-based generator): one add and one 64×64→128 multiply per
//! number, 2^64 period, passes BigCrush and PractRand. Good enough for spreading I/O; not for
//! cryptography.
//!
//! [`below`] maps a uniform `u64` onto `[0, n)` with Lemire's multiply-shift
//! (`(r * n) >> 64`): no division, and its bias is below `n / 2^64` — invisible for any namespace.

/// The wyrand generator. `Copy` so a worker can keep it in a register; seed it per worker.
#[derive(Clone, Copy, Debug)]
pub struct WyRand(u64);

impl WyRand {
    /// A generator with `seed` (any value, zero included).
    pub fn new(seed: u64) -> WyRand {
        WyRand(seed)
    }

    /// The next uniform `u64`.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A uniform value in `[0, n)` (0 when `n` is 0), without division.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        below(self.next_u64(), n)
    }

    /// True with probability `threshold / 2^32`; see [`percent_threshold`].
    #[inline]
    pub fn chance(&mut self, threshold: u64) -> bool {
        (self.next_u64() >> 32) < threshold
    }
}

/// Maps a uniform `r` onto `[0, n)`: `(r * n) >> 64`. Returns 0 when `n` is 0.
#[inline]
pub fn below(r: u64, n: u64) -> u64 {
    ((r as u128 * n as u128) >> 64) as u64
}

/// The threshold for [`WyRand::chance`] that is true `pct` percent of the time (`pct` ≤ 100;
/// 100 gives 2^32, which every 32-bit value is below). Computed once, at setup.
pub fn percent_threshold(pct: u8) -> u64 {
    (pct.min(100) as u64 * (1u64 << 32)) / 100
}

/// Mixes `x` into a well-spread seed (splitmix64's finalizer), for deriving per-worker seeds.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range() {
        let mut r = WyRand::new(1);
        for n in [1u64, 2, 3, 7, 1000, 1 << 20, (1 << 40) + 3, u64::MAX] {
            for _ in 0..10_000 {
                assert!(r.below(n) < n);
            }
        }
        assert_eq!(below(u64::MAX, 0), 0);
        assert_eq!(below(u64::MAX, 10), 9);
        assert_eq!(below(0, 10), 0);
    }

    #[test]
    fn below_is_not_grossly_biased() {
        let mut r = WyRand::new(42);
        let n = 10u64;
        let draws = 200_000u64;
        let mut counts = [0u64; 10];
        for _ in 0..draws {
            counts[r.below(n) as usize] += 1;
        }
        let expect = draws / n;
        for (i, c) in counts.iter().enumerate() {
            // 5 % of 20 000 is far beyond ±5 sigma (sigma ≈ 134).
            assert!(
                c.abs_diff(expect) < expect / 20,
                "bucket {i}: {c} vs {expect}"
            );
        }
        // The top and bottom of a large range are both reached.
        let big = 1u64 << 40;
        let (mut lo, mut hi) = (false, false);
        for _ in 0..100_000 {
            let v = r.below(big);
            lo |= v < big / 100;
            hi |= v >= big - big / 100;
        }
        assert!(lo && hi);
    }

    #[test]
    fn chance_matches_percentages() {
        assert_eq!(percent_threshold(0), 0);
        assert_eq!(percent_threshold(100), 1 << 32);
        let mut r = WyRand::new(7);
        assert!((0..1000).all(|_| r.chance(percent_threshold(100))));
        assert!((0..1000).all(|_| !r.chance(percent_threshold(0))));
        let hits = (0..100_000)
            .filter(|_| r.chance(percent_threshold(30)))
            .count();
        assert!((28_000..32_000).contains(&hits), "{hits}");
    }

    #[test]
    fn different_seeds_differ() {
        let a: Vec<u64> = {
            let mut r = WyRand::new(mix(1));
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = WyRand::new(mix(2));
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_ne!(a, b);
    }
}
