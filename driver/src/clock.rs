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

#[cfg(target_arch = "x86_64")]
fn calibrate() -> Option<Calibration> {
    use crate::pci::sys::rdtsc;
    let t0 = Instant::now();
    let c0 = rdtsc();
    while t0.elapsed() < Duration::from_millis(5) {
        std::hint::spin_loop();
    }
    let c1 = rdtsc();
    let ns = t0.elapsed().as_nanos() as u64;
    let ticks = c1.checked_sub(c0)?;
    if ticks < ns / 16 {
        // A counter slower than 16 ns per tick is not a usable TSC.
        return None;
    }
    Some(Calibration {
        tsc0: c0,
        mult: ((ns as u128) << 32).checked_div(ticks as u128)? as u64,
    })
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
