//! A cheap clock for the I/O path: the CPU's time-stamp counter, calibrated once against the OS
//! clock, as SPDK's `spdk_get_ticks` does.
//!
//! Reading the OS clock can cost a system call and a device read — a VM whose clocksource is HPET
//! (QEMU guests under TCG, for one) pays an emulated MMIO on every `Instant::now()`, which at queue
//! depth 1 is a large share of an I/O. The TSC costs one instruction. Readings are meant for
//! intervals measured on one thread (latency, deadlines); on machines without an invariant TSC
//! they are approximate, which deadlines and histograms tolerate. Other architectures use the OS
//! clock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Calibration {
    tsc0: u64,
    /// Nanoseconds per tick, as a 32.32 fixed-point factor.
    mult: u64,
}

static CAL: OnceLock<Option<Calibration>> = OnceLock::new();
static ORIGIN: OnceLock<Instant> = OnceLock::new();

#[cfg(any(target_arch = "x86_64", test))]
/// One reading of the TSC bracketed by two readings of the OS clock, in nanoseconds since the
/// calibration began: the counter was read at some OS time in `os_lo..=os_hi`.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    os_lo: u64,
    tsc: u64,
    os_hi: u64,
}

#[cfg(any(target_arch = "x86_64", test))]
impl Stamp {
    /// How uncertain the stamp's OS time is; a thread preempted between the reads has a wide one.
    fn width(&self) -> u64 {
        self.os_hi - self.os_lo
    }
}

/// Stamps taken at each end of the calibration; the narrowest is kept.
#[cfg(target_arch = "x86_64")]
const STAMP_TRIES: usize = 8;
/// How long the calibration spins between its two ends.
#[cfg(target_arch = "x86_64")]
const CALIBRATION_SPAN: Duration = Duration::from_millis(5);
/// Calibrations tried before the nearest (the fastest of them) is accepted however uncertain.
#[cfg(target_arch = "x86_64")]
const CALIBRATION_TRIES: usize = 4;

/// The narrowest of [`STAMP_TRIES`] stamps taken now.
#[cfg(target_arch = "x86_64")]
fn best_stamp(base: Instant) -> Stamp {
    use crate::pci::sys::rdtsc;
    let elapsed = || base.elapsed().as_nanos() as u64;
    let mut best: Option<Stamp> = None;
    for _ in 0..STAMP_TRIES {
        let os_lo = elapsed();
        let tsc = rdtsc();
        let os_hi = elapsed();
        let s = Stamp { os_lo, tsc, os_hi };
        match best {
            Some(b) if b.width() <= s.width() => {}
            _ => best = Some(s),
        }
    }
    best.expect("STAMP_TRIES > 0")
}

/// Nanoseconds per tick (32.32 fixed point) from stamps at the two ends of a calibration, or
/// `None` if the counter did not advance like a TSC.
///
/// The OS time between the two counter reads is known only to lie between `end.os_lo -
/// start.os_hi` and `end.os_hi - start.os_lo`. The factor uses the lower bound, so the clock it
/// makes may run slow by the stamps' widths but never fast: a deadline measured with it (Command
/// Quiesce Time above all, which stands between a failed write and its resend on another path)
/// can expire late, never early. Taking the OS clock's elapsed time after the second counter
/// read, as a plain calibration does, counts any preemption in between as ticks that took longer
/// than they did — a fast clock, and a write resent before its first copy may have landed.
#[cfg(any(target_arch = "x86_64", test))]
fn mult_from(start: Stamp, end: Stamp) -> Option<u64> {
    let ticks = end.tsc.checked_sub(start.tsc)?;
    let ns = end.os_lo.checked_sub(start.os_hi)?;
    if ns == 0 || ticks < ns / 16 {
        // A counter slower than 16 ns per tick is not a usable TSC.
        return None;
    }
    Some(((ns as u128) << 32).checked_div(ticks as u128)? as u64)
}

/// Whether a calibration's stamps are precise enough to keep: their combined width (how much
/// the factor may undercount) is under 1% of the span.
#[cfg(any(target_arch = "x86_64", test))]
fn precise(start: Stamp, end: Stamp) -> bool {
    let span = end.os_lo.saturating_sub(start.os_hi);
    (start.width() + end.width()).saturating_mul(100) < span
}

#[cfg(target_arch = "x86_64")]
fn calibrate() -> Option<Calibration> {
    let base = Instant::now();
    let mut best: Option<Calibration> = None;
    for _ in 0..CALIBRATION_TRIES {
        let start = best_stamp(base);
        let spin_from = Instant::now();
        while spin_from.elapsed() < CALIBRATION_SPAN {
            std::hint::spin_loop();
        }
        let end = best_stamp(base);
        let cal = Calibration {
            tsc0: start.tsc,
            mult: mult_from(start, end)?,
        };
        if precise(start, end) {
            return Some(cal);
        }
        // Every factor is at most the true one, so the largest is the nearest.
        if best.as_ref().is_none_or(|b| cal.mult > b.mult) {
            best = Some(cal);
        }
    }
    best
}

#[cfg(not(target_arch = "x86_64"))]
fn calibrate() -> Option<Calibration> {
    None
}

/// Nanoseconds since the first call in this process (monotonic per thread). Always inlined: it
/// is a TSC read and a multiply, stamped on every command, and left to itself the compiler kept
/// it out of line in the perf tool's submission loop.
#[inline(always)]
pub fn now_ns() -> u64 {
    match CAL.get_or_init(calibrate) {
        #[cfg(target_arch = "x86_64")]
        Some(c) => {
            let d = crate::pci::sys::rdtsc().saturating_sub(c.tsc0);
            ((d as u128 * c.mult as u128) >> 32) as u64
        }
        _ => ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp of a counter ticking `per_ns` times a nanosecond from 0, read at OS time `at`
    /// and bracketed by OS reads `before` and `after` nanoseconds either side of it.
    fn stamp_at(per_ns: u64, at: u64, before: u64, after: u64) -> Stamp {
        Stamp {
            os_lo: at - before,
            tsc: at * per_ns,
            os_hi: at + after,
        }
    }

    /// The nanoseconds `mult` gives for `ticks`.
    fn ns_of(mult: u64, ticks: u64) -> u64 {
        ((ticks as u128 * mult as u128) >> 32) as u64
    }

    #[test]
    fn exact_stamps_give_the_true_rate() {
        let mult = mult_from(stamp_at(3, 1_000, 0, 0), stamp_at(3, 5_001_000, 0, 0)).unwrap();
        // 3 ticks a nanosecond: 3 000 000 ticks are 1 ms, give or take the fixed point's floor.
        let ms = ns_of(mult, 3_000_000);
        assert!((999_999..=1_000_000).contains(&ms), "{ms}");
    }

    #[test]
    fn preemption_anywhere_in_a_stamp_makes_the_clock_slow_never_fast() {
        // Seeded walk over stamps preempted before or after their counter read, by up to 3 ms
        // of a 5 ms span: the factor never exceeds the true one.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |below: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % below
        };
        let per_ns = 2;
        let truth = mult_from(
            stamp_at(per_ns, 4_000_000, 0, 0),
            stamp_at(per_ns, 9_000_000, 0, 0),
        )
        .unwrap();
        let mut slower = 0;
        for _ in 0..10_000 {
            let start = stamp_at(per_ns, 4_000_000, next(3_000_000), next(3_000_000));
            let end = stamp_at(per_ns, 9_000_000, next(3_000_000), next(3_000_000));
            match mult_from(start, end) {
                Some(m) => {
                    assert!(m <= truth, "fast clock from {start:?} {end:?}");
                    slower += u32::from(m < truth);
                    assert!(
                        !precise(start, end) || m >= truth - truth / 100,
                        "{start:?} {end:?}"
                    );
                }
                // The brackets overlapped: nothing to measure, and the caller tries again.
                None => assert!(end.os_lo <= start.os_hi, "{start:?} {end:?}"),
            }
        }
        assert!(slower > 0, "the walk preempted something");
    }

    #[test]
    fn the_plain_calibration_this_replaces_runs_fast_when_preempted() {
        // Reading the OS clock after the counter, as the old calibration did, counts a 2 ms
        // preemption between the two as time the ticks took: a clock 40% fast. The bracketed
        // stamp sees the preemption as width and keeps to the lower bound.
        let (start, end) = (stamp_at(2, 0, 0, 0), stamp_at(2, 5_000_000, 0, 2_000_000));
        let plain = ((end.os_hi as u128) << 32) / (end.tsc - start.tsc) as u128;
        let bracketed = mult_from(start, end).unwrap() as u128;
        assert!(plain > bracketed * 13 / 10);
        assert_eq!(ns_of(bracketed as u64, 10_000_000), 5_000_000);
        assert!(
            !precise(start, end),
            "a 2 ms bracket is not kept while tries remain"
        );
    }

    #[test]
    fn counters_that_are_not_a_tsc_are_refused() {
        let start = stamp_at(1, 1_000_000, 10, 10);
        // Went backwards.
        let back = Stamp {
            tsc: 0,
            ..stamp_at(1, 6_000_000, 10, 10)
        };
        assert_eq!(mult_from(start, back), None);
        // Slower than a tick every 16 ns.
        let slow = Stamp {
            tsc: start.tsc + 5_000_000 / 32,
            ..stamp_at(1, 6_000_000, 10, 10)
        };
        assert_eq!(mult_from(start, slow), None);
        // No OS time known to have passed between the reads.
        assert_eq!(mult_from(start, stamp_at(1, 1_000_005, 10, 10)), None);
    }

    #[test]
    fn tracks_the_os_clock() {
        let t = Instant::now();
        let a = now_ns();
        let os_a = t.elapsed().as_nanos() as u64;
        std::thread::sleep(Duration::from_millis(20));
        let os_before = t.elapsed().as_nanos() as u64;
        let b = now_ns();
        let os_after = t.elapsed().as_nanos() as u64;
        assert!(b > a, "monotonic on one thread");
        // The OS clock brackets both readings, so preemption anywhere only widens the bracket.
        // Generous factors: calibration error, not a timing assertion on speed.
        let measured = b - a;
        let (lo, hi) = (os_before.saturating_sub(os_a), os_after);
        assert!(
            measured > lo / 2 && measured < hi * 2,
            "tsc {measured} ns vs os between {lo} and {hi} ns"
        );
    }
}
