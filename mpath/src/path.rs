//! Path state, published by the control plane and read by I/O cores.
//!
//! Each path of a namespace has an ANA state and a controller. The control plane changes them and
//! then bumps the namespace's generation; a channel compares one atomic generation per poll and
//! re-reads the states only when it moved.

use std::sync::atomic::{AtomicBool, AtomicU8};

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

use vfnvme::spec::log::AnaState;
use vfnvme::{Controller, CtrlState};

/// What a channel does with a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathStatus {
    /// Usable, ANA optimized.
    Optimized,
    /// Usable, ANA non-optimized.
    NonOptimized,
    /// Not usable now, but may come back (resetting, reconnecting, ANA inaccessible or changing
    /// within ANATT).
    Waiting,
    /// Will not come back (removed, persistent loss, reconnect given up).
    Gone,
}

impl PathStatus {
    /// True if I/O may be sent.
    #[inline]
    pub fn usable(self) -> bool {
        matches!(self, PathStatus::Optimized | PathStatus::NonOptimized)
    }
}

/// One path of a multipath namespace, shared between the control plane and the channels.
pub struct PathInfo {
    /// The controller.
    pub ctrl: Controller,
    /// ANA state of the namespace's group on this controller (raw [`AnaState`]).
    ana: AtomicU8,
    /// Set by the control plane when reconnecting gave up.
    given_up: AtomicBool,
    /// Set by a channel that saw an ANA error: the control plane re-reads the ANA log.
    pub ana_stale: AtomicBool,
    /// When the ANA state became unusable (ms since the namespace's clock), 0 if usable.
    pub ana_since_ms: AtomicU64,
}

impl PathInfo {
    /// A path, ANA optimized until told otherwise.
    pub fn new(ctrl: Controller) -> PathInfo {
        PathInfo {
            ctrl,
            ana: AtomicU8::new(AnaState::OPTIMIZED.0),
            given_up: AtomicBool::new(false),
            ana_stale: AtomicBool::new(false),
            ana_since_ms: AtomicU64::new(0),
        }
    }

    /// ANA state.
    pub fn ana(&self) -> AnaState {
        AnaState(self.ana.load(Ordering::Acquire))
    }

    /// Sets the ANA state (control plane).
    pub fn set_ana(&self, s: AnaState) {
        self.ana.store(s.0, Ordering::Release);
    }

    /// Marks the path as given up (control plane).
    pub fn give_up(&self) {
        self.given_up.store(true, Ordering::Release);
    }

    /// What channels should do with this path now.
    pub fn status(&self) -> PathStatus {
        if self.given_up.load(Ordering::Acquire) {
            return PathStatus::Gone;
        }
        match self.ctrl.state() {
            CtrlState::Live => {}
            CtrlState::Removed => return PathStatus::Gone,
            CtrlState::Init | CtrlState::Resetting | CtrlState::Failed | CtrlState::ShutDown => {
                return PathStatus::Waiting
            }
        }
        match self.ana() {
            AnaState::OPTIMIZED => PathStatus::Optimized,
            AnaState::NON_OPTIMIZED => PathStatus::NonOptimized,
            AnaState::PERSISTENT_LOSS => PathStatus::Gone,
            _ => PathStatus::Waiting,
        }
    }
}

/// The generation counter of a namespace's path states.
pub struct Generation(AtomicU64);

impl Default for Generation {
    fn default() -> Self {
        Generation(AtomicU64::new(0))
    }
}

impl Generation {
    /// Current generation.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    /// Publishes a change (after the states were stored).
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Loom models of the two cross-thread hand-offs of multipath, over the real [`Generation`]. Run
/// with `RUSTFLAGS="--cfg loom" cargo test -p vfnvme-mpath --lib loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicU8;
    use loom::sync::{Arc, Mutex};

    /// Path-state publication: the control plane stores a new ANA state, then bumps the
    /// generation. A channel that sees the new generation must see the new state.
    #[test]
    fn loom_generation_publishes_path_state() {
        loom::model(|| {
            let gen = Arc::new(Generation::default());
            let ana = Arc::new(AtomicU8::new(AnaState::OPTIMIZED.0));
            let (g2, a2) = (gen.clone(), ana.clone());
            let cp = loom::thread::spawn(move || {
                a2.store(AnaState::INACCESSIBLE.0, Ordering::Release);
                g2.bump();
            });
            if gen.get() == 1 {
                assert_eq!(ana.load(Ordering::Acquire), AnaState::INACCESSIBLE.0);
            }
            cp.join().unwrap();
        });
    }

    /// Requeue hand-off of a re-attached path: the control plane leaves a queue pair in the
    /// channel's inbox, then bumps the generation; a channel that sees the new generation finds it.
    #[test]
    fn loom_inbox_hand_off() {
        loom::model(|| {
            let gen = Arc::new(Generation::default());
            let inbox: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
            let (g2, i2) = (gen.clone(), inbox.clone());
            let cp = loom::thread::spawn(move || {
                i2.lock().unwrap().push(1);
                g2.bump();
            });
            let mut seen = 0;
            let mut got = Vec::new();
            for _ in 0..2 {
                let g = gen.get();
                if g != seen {
                    seen = g;
                    got.extend(inbox.lock().unwrap().drain(..));
                    assert_eq!(got, vec![1], "new generation without its queue pair");
                }
            }
            cp.join().unwrap();
        });
    }
}
