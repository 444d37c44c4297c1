//! Fault injection and counters of one simulated controller.
//!
//! Rules are kept behind one mutex and consulted only when [`FaultInjector::active`] says a rule
//! exists, so a controller without faults pays one relaxed atomic load per command. Faults that
//! change the controller itself (fatal status, surprise removal, ANA state) are methods of the
//! [`Faults`] handle, which borrows the controller.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::spec::log::AnaState;
use crate::spec::{Sqe, Status};

use super::{lock, SimController};

/// Which commands a fault rule applies to. All set fields must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultMatch {
    /// Opcode (admin or NVM, depending on `admin`).
    pub opcode: Option<u8>,
    /// Commands whose LBA range `[slba, slba + nlb)` overlaps this range (I/O commands with an
    /// LBA only: read, write, compare, write zeroes, write uncorrectable).
    pub lba_range: Option<Range<u64>>,
    /// Submission queue id.
    pub queue: Option<u16>,
    /// Match admin commands (true) or I/O commands (false).
    pub admin: bool,
}

impl FaultMatch {
    /// Every I/O command.
    pub fn io() -> FaultMatch {
        FaultMatch::default()
    }

    /// Every admin command.
    pub fn admin() -> FaultMatch {
        FaultMatch {
            admin: true,
            ..FaultMatch::default()
        }
    }

    /// Only this opcode.
    pub fn opcode(mut self, opcode: u8) -> FaultMatch {
        self.opcode = Some(opcode);
        self
    }

    /// Only commands touching these LBAs.
    pub fn lbas(mut self, range: Range<u64>) -> FaultMatch {
        self.lba_range = Some(range);
        self
    }

    /// Only this submission queue.
    pub fn queue(mut self, sqid: u16) -> FaultMatch {
        self.queue = Some(sqid);
        self
    }

    fn matches(&self, sqid: u16, sqe: &Sqe) -> bool {
        if self.admin != (sqid == 0) {
            return false;
        }
        if self.opcode.is_some_and(|o| o != sqe.opcode()) {
            return false;
        }
        if self.queue.is_some_and(|q| q != sqid) {
            return false;
        }
        if let Some(r) = &self.lba_range {
            if self.admin || !matches!(sqe.opcode(), 0x01 | 0x02 | 0x04 | 0x05 | 0x08) {
                return false;
            }
            let start = sqe.slba();
            let end = start.saturating_add(u64::from(sqe.nlb_0b()) + 1);
            if !(start < r.end && r.start < end) {
                return false;
            }
        }
        true
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Fail(Status),
    Drop,
    Delay(Duration),
}

#[derive(Clone, Debug)]
struct Rule {
    matcher: FaultMatch,
    action: Action,
    remaining: Option<u32>,
}

/// What the engine does with one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Execute normally.
    Run,
    /// Complete with this status without executing.
    Fail(Status),
    /// Never complete.
    Drop,
    /// Execute, then hold the completion this long.
    Delay(Duration),
}

/// How many dropped (sqid, cid) pairs are remembered for Abort.
const DROPPED_MEMORY: usize = 4096;

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    delay_all: Option<Duration>,
    dropped: VecDeque<(u16, u16)>,
}

/// The fault rules of one controller.
#[derive(Debug, Default)]
pub(crate) struct FaultInjector {
    active: AtomicBool,
    state: Mutex<State>,
}

impl FaultInjector {
    /// True when any rule exists (one relaxed load).
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn update_active(&self, s: &State) {
        self.active.store(
            !s.rules.is_empty() || s.delay_all.is_some(),
            Ordering::Relaxed,
        );
    }

    fn add(&self, matcher: FaultMatch, action: Action, remaining: Option<u32>) {
        let mut s = lock(&self.state);
        s.rules.push(Rule {
            matcher,
            action,
            remaining,
        });
        self.update_active(&s);
    }

    /// Decides what happens to a command; consumes one use of the first matching rule.
    pub(crate) fn verdict(&self, sqid: u16, sqe: &Sqe) -> Verdict {
        let mut s = lock(&self.state);
        let mut verdict = Verdict::Run;
        if let Some(pos) = s.rules.iter().position(|r| r.matcher.matches(sqid, sqe)) {
            let rule = &mut s.rules[pos];
            verdict = match rule.action {
                Action::Fail(st) => Verdict::Fail(st),
                Action::Drop => Verdict::Drop,
                Action::Delay(d) => Verdict::Delay(d),
            };
            if let Some(n) = &mut rule.remaining {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.rules.remove(pos);
                }
            }
        }
        if verdict == Verdict::Run && sqid != 0 {
            if let Some(d) = s.delay_all {
                verdict = Verdict::Delay(d);
            }
        }
        if verdict == Verdict::Drop {
            if s.dropped.len() == DROPPED_MEMORY {
                s.dropped.pop_front();
            }
            s.dropped.push_back((sqid, sqe.cid()));
        }
        self.update_active(&s);
        verdict
    }

    /// True if the command `(sqid, cid)` was dropped (Abort then reports "not aborted").
    pub(crate) fn was_dropped(&self, sqid: u16, cid: u16) -> bool {
        lock(&self.state).dropped.contains(&(sqid, cid))
    }

    pub(crate) fn clear(&self) {
        let mut s = lock(&self.state);
        s.rules.clear();
        s.delay_all = None;
        self.update_active(&s);
    }
}

/// Counters of one controller, summed over its live and deleted queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimStats {
    /// Commands fetched from any submission queue.
    pub commands: u64,
    /// Admin commands fetched, per opcode.
    pub admin_opcodes: [u64; 256],
    /// I/O commands fetched, per opcode.
    pub io_opcodes: [u64; 256],
    /// Commands completed with Abort Requested or Aborted SQ Deletion.
    pub aborted: u64,
    /// Commands dropped by fault injection (never completed).
    pub dropped: u64,
    /// Commands failed by fault injection.
    pub injected_failures: u64,
    /// Completions delayed by fault injection.
    pub delayed: u64,
    /// Successful read and compare commands.
    pub host_reads: u64,
    /// Successful write commands.
    pub host_writes: u64,
    /// Bytes read by the host.
    pub bytes_read: u64,
    /// Bytes written by the host.
    pub bytes_written: u64,
}

impl Default for SimStats {
    fn default() -> Self {
        SimStats {
            commands: 0,
            admin_opcodes: [0; 256],
            io_opcodes: [0; 256],
            aborted: 0,
            dropped: 0,
            injected_failures: 0,
            delayed: 0,
            host_reads: 0,
            host_writes: 0,
            bytes_read: 0,
            bytes_written: 0,
        }
    }
}

impl SimStats {
    pub(crate) fn add(&mut self, o: &SimStats) {
        self.commands += o.commands;
        for i in 0..256 {
            self.admin_opcodes[i] += o.admin_opcodes[i];
            self.io_opcodes[i] += o.io_opcodes[i];
        }
        self.aborted += o.aborted;
        self.dropped += o.dropped;
        self.injected_failures += o.injected_failures;
        self.delayed += o.delayed;
        self.host_reads += o.host_reads;
        self.host_writes += o.host_writes;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
    }

    /// Count of one I/O opcode.
    pub fn io(&self, opcode: u8) -> u64 {
        self.io_opcodes[opcode as usize]
    }

    /// Count of one admin opcode.
    pub fn admin(&self, opcode: u8) -> u64 {
        self.admin_opcodes[opcode as usize]
    }
}

/// The fault-injection handle of a controller, from [`SimController::faults`].
///
/// Rules for "the next n" commands and the blanket delay apply to I/O commands only, so the
/// control plane's own admin traffic (keep alive, AER, log pages) is not hit by accident; use a
/// [`FaultMatch::admin`] rule to fail admin commands.
#[derive(Clone, Copy)]
pub struct Faults<'a> {
    pub(crate) ctrl: &'a SimController,
}

impl Faults<'_> {
    fn inj(&self) -> &FaultInjector {
        &self.ctrl.faults
    }

    /// Fails the next `n` I/O commands with `status` (which may carry DNR, CRD, or SCT 3).
    pub fn fail_next(&self, n: u32, status: Status) -> &Self {
        if n > 0 {
            self.inj()
                .add(FaultMatch::io(), Action::Fail(status), Some(n));
        }
        self
    }

    /// Fails matching commands with `status`, `count` times (`None`: until cleared).
    pub fn fail_matching(&self, m: FaultMatch, status: Status, count: Option<u32>) -> &Self {
        if count != Some(0) {
            self.inj().add(m, Action::Fail(status), count);
        }
        self
    }

    /// Drops the next `n` I/O commands: they are consumed from the SQ and never complete.
    pub fn drop_commands(&self, n: u32) -> &Self {
        if n > 0 {
            self.inj().add(FaultMatch::io(), Action::Drop, Some(n));
        }
        self
    }

    /// Drops matching commands, `count` times (`None`: until cleared).
    pub fn drop_matching(&self, m: FaultMatch, count: Option<u32>) -> &Self {
        if count != Some(0) {
            self.inj().add(m, Action::Drop, count);
        }
        self
    }

    /// Holds every I/O completion for `delay` after the command executed (`Duration::ZERO`
    /// turns it off). Delayed completions are posted by `idle_poll` (inline) or the device
    /// thread.
    pub fn delay_completions(&self, delay: Duration) -> &Self {
        let inj = self.inj();
        let mut s = lock(&inj.state);
        s.delay_all = (!delay.is_zero()).then_some(delay);
        inj.update_active(&s);
        self
    }

    /// Holds matching completions for `delay`, `count` times (`None`: until cleared).
    pub fn delay_matching(&self, m: FaultMatch, delay: Duration, count: Option<u32>) -> &Self {
        if count != Some(0) {
            self.inj().add(m, Action::Delay(delay), count);
        }
        self
    }

    /// Sets CSTS.CFS: the controller stops processing until the host disables it (CC.EN 1→0)
    /// and enables it again.
    pub fn set_cfs(&self) -> &Self {
        self.ctrl.set_cfs();
        self
    }

    /// Surprise removal: every register read returns all-ones, doorbells are ignored and
    /// nothing completes until [`Faults::restore`].
    pub fn surprise_remove(&self) -> &Self {
        self.ctrl.surprise_remove();
        self
    }

    /// Brings a removed controller back as a fresh, disabled controller (like `device_add`):
    /// queues, features, ANA states and fault rules are reset; DMA mappings are kept.
    pub fn restore(&self) -> &Self {
        self.ctrl.restore();
        self
    }

    /// Sets the orderly-removal request seen through `PciFunction::removal_requested`.
    pub fn request_removal(&self, requested: bool) -> &Self {
        self.ctrl
            .removal_requested
            .store(requested, Ordering::Release);
        self
    }

    /// Changes this controller's state for ANA group `grpid` (group id = nsid), bumps the ANA
    /// change count and, if enabled in Async Event Configuration, queues an ANA change notice.
    /// I/O to a namespace of an inaccessible, persistent-loss or change group then fails with
    /// SCT 3h SC 02h, 01h or 03h. Unknown groups are ignored.
    pub fn set_ana_state(&self, grpid: u32, state: AnaState) -> &Self {
        self.ctrl.set_ana_state(grpid, state);
        self
    }

    /// Removes every rule and the blanket delay (controller state such as CFS, removal and ANA
    /// states is left as it is).
    pub fn clear(&self) -> &Self {
        self.inj().clear();
        self
    }
}
