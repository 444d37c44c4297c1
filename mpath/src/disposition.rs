//! What happens to a finished command: complete it, fail it over to another path, or retry it on
//! the same path after the controller's retry delay.

use vfnvme::spec::status::{generic, sct};
use vfnvme::Outcome;

/// The decision for one completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Hand the result to the application.
    Complete,
    /// Requeue and rebuild on another usable path.
    Failover,
    /// Resend on the same path after `delay_ms`.
    Retry {
        /// CRDT[CRD-1] × 100 ms (0 when CRD is 0).
        delay_ms: u64,
    },
}

/// Decides what to do with `outcome`.
///
/// * Path errors (SCT 3h), an aborted SQ deletion, a timeout, a reset or the path's removal fail
///   over — path errors even with DNR set, since DNR forbids resending to the same controller,
///   not to another one.
/// * Other errors with DNR complete; without DNR they retry on the same path after
///   `crdt_ms[CRD-1]` (the spec's Command Retry Delay; SPDK indexes `crdt[CRD]`, one off) while
///   `retries_left`.
pub fn dispose(outcome: Outcome, retries_left: bool, crdt_ms: [u64; 3]) -> Disposition {
    let st = match outcome {
        Outcome::Status(s) => s,
        Outcome::TimedOut | Outcome::Reset | Outcome::Removed => return Disposition::Failover,
    };
    if st.is_success() {
        return Disposition::Complete;
    }
    if st.sct() == sct::PATH
        || (st.sct() == sct::GENERIC && st.sc() == generic::ABORTED_SQ_DELETION)
    {
        return Disposition::Failover;
    }
    if st.dnr() || !retries_left {
        return Disposition::Complete;
    }
    let delay_ms = match st.crd() {
        0 => 0,
        n => crdt_ms[(n - 1) as usize],
    };
    Disposition::Retry { delay_ms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfnvme::spec::status::{media, path};
    use vfnvme::spec::Status;

    const CRDT: [u64; 3] = [100, 200, 500];

    #[test]
    fn table() {
        let ok = Outcome::Status(Status::SUCCESS);
        assert_eq!(dispose(ok, true, CRDT), Disposition::Complete);
        for sc in [
            path::INTERNAL_PATH_ERROR,
            path::ANA_INACCESSIBLE,
            path::ANA_TRANSITION,
        ] {
            let s = Outcome::Status(Status::new(sct::PATH, sc).with_dnr(true));
            assert_eq!(
                dispose(s, false, CRDT),
                Disposition::Failover,
                "path error {sc:#x}"
            );
        }
        let sqdel = Outcome::Status(Status::new(sct::GENERIC, generic::ABORTED_SQ_DELETION));
        assert_eq!(dispose(sqdel, false, CRDT), Disposition::Failover);
        for o in [Outcome::TimedOut, Outcome::Reset, Outcome::Removed] {
            assert_eq!(dispose(o, false, CRDT), Disposition::Failover);
        }
        let media_dnr =
            Outcome::Status(Status::new(sct::MEDIA, media::UNRECOVERED_READ).with_dnr(true));
        assert_eq!(dispose(media_dnr, true, CRDT), Disposition::Complete);
        let busy = Status::new(sct::GENERIC, generic::NAMESPACE_NOT_READY);
        assert_eq!(
            dispose(Outcome::Status(busy), true, CRDT),
            Disposition::Retry { delay_ms: 0 }
        );
        // CRD n selects CRDT n (1-based): CRD 1 -> CRDT1, CRD 3 -> CRDT3.
        assert_eq!(
            dispose(Outcome::Status(busy.with_crd(1)), true, CRDT),
            Disposition::Retry { delay_ms: 100 }
        );
        assert_eq!(
            dispose(Outcome::Status(busy.with_crd(3)), true, CRDT),
            Disposition::Retry { delay_ms: 500 }
        );
        assert_eq!(
            dispose(Outcome::Status(busy), false, CRDT),
            Disposition::Complete,
            "budget spent"
        );
    }
}
