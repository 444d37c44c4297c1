//! The admin queue: synchronous commands with a deadline, and asynchronous event requests.
//!
//! Only the control plane touches it (the `Controller` keeps it behind a mutex); I/O cores never
//! issue admin commands.

use std::time::{Duration, Instant};

use crate::qpair::cid::CidTable;
use crate::qpair::ring::Rings;
use crate::spec::log::AsyncEvent;
use crate::spec::{Sqe, Status};

/// What an admin command slot is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum SlotKind {
    /// Nobody waits (free).
    #[default]
    None,
    /// A synchronous command; its result is stored here when it completes.
    Sync { done: Option<(Status, u32)> },
    /// A synchronous command whose waiter gave up; a late completion is absorbed.
    Abandoned,
    /// An Asynchronous Event Request.
    Aer,
}

/// Result of waiting for one admin command.
pub(crate) enum Wait {
    Done(Status, u32),
    TimedOut,
    Gone,
}

pub(crate) struct AdminQueue {
    pub rings: Rings,
    cids: CidTable<SlotKind>,
    /// Outstanding AERs.
    pub aers: u32,
    /// Events received and not yet delivered.
    pub events: Vec<AsyncEvent>,
    /// Completions the device should not have posted.
    pub bad_completions: u64,
}

impl AdminQueue {
    pub fn new(rings: Rings) -> AdminQueue {
        let n = rings.size() as usize - 1;
        AdminQueue {
            rings,
            cids: CidTable::new(n),
            aers: 0,
            events: Vec::new(),
            bad_completions: 0,
        }
    }

    /// Starts over after a controller disable: indices, slots, AERs.
    pub fn reset(&mut self) {
        self.rings.reset();
        self.cids = CidTable::new(self.rings.size() as usize - 1);
        self.aers = 0;
    }

    /// Queues an AER. Returns false when the queue is full.
    pub fn submit_aer(&mut self) -> bool {
        let Some(cid) = self.cids.alloc(SlotKind::Aer) else {
            return false;
        };
        let mut sqe = Sqe::async_event_request();
        sqe.set_cid(cid);
        if !self.rings.push(&sqe) {
            let slot = self.cids.check(cid).expect("just allocated");
            self.cids.free(slot);
            return false;
        }
        self.rings.ring_sq();
        self.aers += 1;
        true
    }

    /// Reaps completions: stores sync results, collects events.
    pub fn reap(&mut self) {
        while let Some(cqe) = self.rings.peek_cqe() {
            self.rings.pop_cqe(cqe.sqhd);
            let Ok(slot) = self.cids.check(cqe.cid) else {
                self.bad_completions += 1;
                log::warn!("admin queue: bad completion cid {:#06x}", cqe.cid);
                continue;
            };
            match *self.cids.get(slot) {
                SlotKind::Sync { .. } => {
                    *self.cids.get_mut(slot) = SlotKind::Sync {
                        done: Some((cqe.status(), cqe.dw0)),
                    };
                }
                SlotKind::Aer => {
                    self.cids.free(slot);
                    self.aers -= 1;
                    if cqe.status().is_success() {
                        self.events.push(AsyncEvent::from_dw0(cqe.dw0));
                    } else {
                        log::debug!("AER completed with {}", cqe.status());
                    }
                }
                SlotKind::Abandoned | SlotKind::None => {
                    self.cids.free(slot);
                }
            }
        }
        self.rings.ring_cq();
    }

    /// Submits `sqe` and waits for it until `deadline`. `alive` is asked between polls whether the
    /// device still answers (it reads CSTS).
    pub fn execute(
        &mut self,
        mut sqe: Sqe,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Wait {
        let Some(cid) = self.cids.alloc(SlotKind::Sync { done: None }) else {
            return Wait::TimedOut;
        };
        sqe.set_cid(cid);
        if !self.rings.push(&sqe) {
            let slot = self.cids.check(cid).expect("just allocated");
            self.cids.free(slot);
            return Wait::TimedOut;
        }
        self.rings.ring_sq();
        let slot = self.cids.check(cid).expect("just allocated");
        let deadline = Instant::now() + timeout;
        let mut spins = 0u32;
        loop {
            self.reap();
            if let SlotKind::Sync {
                done: Some((st, dw0)),
            } = *self.cids.get(slot)
            {
                self.cids.free(slot);
                return Wait::Done(st, dw0);
            }
            spins += 1;
            if spins.is_multiple_of(256) {
                if !alive() {
                    *self.cids.get_mut(slot) = SlotKind::Abandoned;
                    return Wait::Gone;
                }
                if Instant::now() >= deadline {
                    *self.cids.get_mut(slot) = SlotKind::Abandoned;
                    return Wait::TimedOut;
                }
                std::thread::yield_now();
            } else {
                self.rings.func().idle_poll();
                std::hint::spin_loop();
            }
        }
    }
}
