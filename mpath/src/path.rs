//! Path state, published by the control plane and read by I/O cores.
//!
//! Each path of a namespace has an ANA state and a controller. The control plane changes them and
//! then bumps the namespace's generation; a channel compares one atomic generation per poll and
//! re-reads the states only when it moved.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

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
#[derive(Default)]
pub struct Generation(AtomicU64);

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
