//! The controller state machine, shared with the I/O queue pairs through one atomic word.
//!
//! The control plane owns transitions; queue pairs only read. The word packs an *epoch* with the
//! state: the epoch changes whenever commands in flight on the device are known to be dead (the
//! controller was disabled, or the function is gone). A queue pair that sees a new epoch fails
//! what it had in flight and starts its rings over.

use std::fmt;
use std::sync::Mutex;

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

/// One state per step of a controller's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CtrlState {
    /// Being brought up (disable, admin queue, enable, identify, queues).
    Init = 0,
    /// Ready for I/O.
    Live = 1,
    /// Being reset: I/O is refused until it is live again.
    Resetting = 2,
    /// Bring-up or reset failed; the controller is unusable until reset succeeds.
    Failed = 3,
    /// The function is gone (surprise removal, or released after a removal request).
    Removed = 4,
    /// Orderly shutdown (CC.SHN) completed.
    ShutDown = 5,
}

impl CtrlState {
    fn from_u8(v: u8) -> CtrlState {
        match v {
            0 => CtrlState::Init,
            1 => CtrlState::Live,
            2 => CtrlState::Resetting,
            3 => CtrlState::Failed,
            4 => CtrlState::Removed,
            _ => CtrlState::ShutDown,
        }
    }

    /// Name for logs.
    pub fn name(self) -> &'static str {
        match self {
            CtrlState::Init => "init",
            CtrlState::Live => "live",
            CtrlState::Resetting => "resetting",
            CtrlState::Failed => "failed",
            CtrlState::Removed => "removed",
            CtrlState::ShutDown => "shut down",
        }
    }

    /// Whether the state machine allows going from `self` to `to`.
    pub fn may_become(self, to: CtrlState) -> bool {
        use CtrlState::*;
        matches!(
            (self, to),
            (Init, Live)
                | (Init, Failed)
                | (Init, Removed)
                | (Live, Resetting)
                | (Live, Removed)
                | (Live, ShutDown)
                | (Live, Failed)
                | (Resetting, Live)
                | (Resetting, Failed)
                | (Resetting, Removed)
                | (Failed, Resetting)
                | (Failed, Removed)
                | (Failed, ShutDown)
                | (ShutDown, Resetting)
                | (ShutDown, Removed)
        )
    }

    /// True if nothing can ever complete on this controller again.
    pub fn is_terminal(self) -> bool {
        self == CtrlState::Removed
    }
}

impl fmt::Display for CtrlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A state plus epoch snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateWord(u64);

impl StateWord {
    /// The state.
    #[inline]
    pub fn state(self) -> CtrlState {
        CtrlState::from_u8(self.0 as u8)
    }
    /// The epoch.
    #[inline]
    pub fn epoch(self) -> u64 {
        self.0 >> 8
    }
    /// True if the controller is live in `epoch`: one compare, for the submission path.
    #[inline(always)]
    pub fn is_live_in(self, epoch: u64) -> bool {
        self.0 == (epoch << 8 | CtrlState::Live as u64)
    }
}

/// Request from a queue pair to the control plane: a command timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutReport {
    /// Submission queue.
    pub qid: u16,
    /// Command id.
    pub cid: u16,
    /// It has been reported once and an abort did not end it: reset the controller.
    pub escalate: bool,
}

/// What the control plane and the queue pairs of one controller share.
pub struct CtrlShared {
    /// Controller name for errors (PCI address or simulated name).
    pub name: std::sync::Arc<str>,
    word: AtomicU64,
    /// Timed-out commands waiting for the control plane to abort them (rare path, so a lock).
    pub timeouts: Mutex<Vec<TimeoutReport>>,
}

impl CtrlShared {
    /// New shared state in [`CtrlState::Init`], epoch 0.
    pub fn new(name: std::sync::Arc<str>) -> CtrlShared {
        CtrlShared {
            name,
            word: AtomicU64::new(CtrlState::Init as u64),
            timeouts: Mutex::new(Vec::new()),
        }
    }

    /// Current state and epoch.
    #[inline]
    pub fn load(&self) -> StateWord {
        StateWord(self.word.load(Ordering::Acquire))
    }

    /// Current state.
    #[inline]
    pub fn state(&self) -> CtrlState {
        self.load().state()
    }

    /// Moves to `to`, optionally starting a new epoch. Returns false (and changes nothing) when
    /// the transition is not allowed.
    pub fn transition(&self, to: CtrlState, new_epoch: bool) -> bool {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let w = StateWord(cur);
            if w.state() != to && !w.state().may_become(to) {
                return false;
            }
            let epoch = w.epoch() + new_epoch as u64;
            let next = (epoch << 8) | to as u64;
            match self
                .word
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    log::info!("{}: {} -> {}", self.name, w.state(), to);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Starts a new epoch without changing the state (commands in flight are dead).
    pub fn bump_epoch(&self) {
        self.word.fetch_add(1 << 8, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CtrlState::*;

    #[test]
    fn allowed_and_refused_transitions() {
        let allowed = [
            (Init, Live),
            (Live, Resetting),
            (Resetting, Live),
            (Resetting, Failed),
            (Failed, Resetting),
            (Live, Removed),
            (Live, ShutDown),
            (ShutDown, Resetting),
        ];
        let refused = [
            (Removed, Live),
            (Removed, Resetting),
            (Init, Resetting),
            (ShutDown, Live),
            (Resetting, ShutDown),
            (Failed, Live),
        ];
        for (a, b) in allowed {
            assert!(a.may_become(b), "{a} -> {b} should be allowed");
        }
        for (a, b) in refused {
            assert!(!a.may_become(b), "{a} -> {b} should be refused");
        }
    }

    #[test]
    fn shared_word_tracks_state_and_epoch() {
        let s = CtrlShared::new("t".into());
        assert_eq!(s.state(), Init);
        assert!(s.transition(Live, false));
        assert!(s.transition(Resetting, true));
        assert_eq!(s.load().epoch(), 1);
        assert!(
            !s.transition(ShutDown, false),
            "refused transition changes nothing"
        );
        assert_eq!(s.state(), Resetting);
        s.bump_epoch();
        assert_eq!(s.load().epoch(), 2);
        assert!(s.transition(Removed, true));
        assert!(!s.transition(Live, false));
        assert_eq!(s.load().state(), Removed);
        assert_eq!(s.load().epoch(), 3);
    }
}

/// Loom model of a reset racing an I/O thread, over the real [`CtrlShared`]. Run with
/// `RUSTFLAGS="--cfg loom" cargo test -p vfnvme --lib loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;

    /// The control plane resets the controller (Resetting, disable, new epoch, enable, Live)
    /// while an I/O thread submits whenever it sees Live and fails what it holds whenever it sees
    /// a new epoch. However the two interleave, no command that reached a disabled device is
    /// still held as in flight once the I/O thread has seen the final word: the epoch protocol
    /// always hands it back as failed.
    #[test]
    fn loom_reset_never_strands_a_command() {
        loom::model(|| {
            let shared = Arc::new(CtrlShared::new("loom".into()));
            assert!(shared.transition(CtrlState::Live, false));
            let enabled = Arc::new(AtomicBool::new(true));
            let (s2, e2) = (shared.clone(), enabled.clone());
            let cp = loom::thread::spawn(move || {
                assert!(s2.transition(CtrlState::Resetting, false));
                e2.store(false, Ordering::SeqCst);
                s2.bump_epoch();
                e2.store(true, Ordering::SeqCst);
                assert!(s2.transition(CtrlState::Live, false));
            });
            // I/O thread: two submit attempts, then a final poll after the reset is done.
            let mut my_epoch = 0;
            let mut held: Vec<(u64, bool)> = Vec::new(); // (epoch, reached an enabled device)
            for _ in 0..2 {
                let w = shared.load();
                if w.epoch() != my_epoch {
                    held.clear();
                    my_epoch = w.epoch();
                }
                if w.state() == CtrlState::Live {
                    held.push((my_epoch, enabled.load(Ordering::SeqCst)));
                }
            }
            cp.join().unwrap();
            let w = shared.load();
            assert_eq!(w.state(), CtrlState::Live);
            if w.epoch() != my_epoch {
                held.clear();
            }
            assert!(
                held.iter().all(|&(_, reached)| reached),
                "a command sent to a disabled device is still held: {held:?}"
            );
        });
    }

    /// The queue re-creation handshake ([`crate::qpair::QueueSync`]): the control plane resets
    /// and re-creates the queue only once the queue pair has rewound to the new epoch; the queue
    /// pair rings only into a queue that exists in the epoch its commands were submitted in.
    /// Without the handshake (re-creating at once), an I/O thread that checked the old state just
    /// before the reset rings its old tail into the new queue, which this model finds.
    #[test]
    fn loom_recreated_queue_never_gets_stale_commands() {
        use crate::qpair::QueueSync;
        loom::model(|| {
            let shared = Arc::new(CtrlShared::new("loom".into()));
            assert!(shared.transition(CtrlState::Live, false));
            let sync = Arc::new(QueueSync::new(0));
            let create_if_acked = |s: &CtrlShared, q: &QueueSync| {
                let e = s.load().epoch();
                if q.acked() == e && q.live() != e {
                    q.set_live(e);
                }
            };
            let (s2, q2) = (shared.clone(), sync.clone());
            let cp = loom::thread::spawn(move || {
                assert!(s2.transition(CtrlState::Resetting, false));
                s2.bump_epoch(); // the device dropped its queues
                create_if_acked(&s2, &q2); // bring-up: only queues already rewound
                assert!(s2.transition(CtrlState::Live, false));
                create_if_acked(&s2, &q2); // the next service step
            });
            let mut my_epoch = 0;
            for _ in 0..3 {
                let w = shared.load();
                if w.epoch() != my_epoch {
                    my_epoch = w.epoch(); // fail what is held, rewind the rings
                    sync.set_acked(my_epoch);
                }
                if w.state() == CtrlState::Live && sync.live() == my_epoch {
                    // The control plane may run between the check and the doorbell write.
                    loom::thread::yield_now();
                    // Ring the doorbell: the device queue must be the one of this epoch.
                    assert_eq!(
                        sync.live(),
                        my_epoch,
                        "stale commands rung into a new queue"
                    );
                }
            }
            cp.join().unwrap();
        });
    }
}
