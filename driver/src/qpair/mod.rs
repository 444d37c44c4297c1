//! Polled I/O queue pairs.
//!
//! A [`QueuePair`] is one submission queue and its completion queue on one controller, owned by
//! one thread (`Send`, not `Sync`). Submitting writes the SQE and advances the tail; the doorbell
//! is written once per batch, by [`QueuePair::ring`] or at the start of [`QueuePair::poll`].
//!
//! # Completions: tokens, not callbacks
//! Every submission carries a caller-chosen tag, and [`QueuePair::poll`] hands each
//! completion with its tag to a closure the caller passes *to that poll*. Nothing is boxed or
//! stored per command, so there is no allocation on the I/O path and no `'static` bound on the
//! caller's state, and the closure is inlined into the caller's loop. A callback-per-command API
//! (SPDK's `cb_fn, cb_arg`) costs an indirect call and makes ownership of the argument unclear;
//! a tag is what the caller indexes its own table with.
//!
//! The tag is a `u64` by default. A caller that must remember more per command (the multipath
//! channel keeps what it needs to rebuild the command on another path) makes it any small `Copy`
//! type with [`Controller::io_queue_pair_with`](crate::Controller::io_queue_pair_with): the
//! queue pair stores it with the command and gives it back in the [`Completion`], so the caller
//! keeps no table of its own.
//!
//! # Per-command host memory
//! A command costs one slot of the command-id table: 32 bytes with a `u64` tag (a 24-byte
//! [`Tracker`] plus its generation and busy flag), 48 with the multipath channel's context; the
//! design allows 256. PRP list pages come from
//! a per-queue pool and are taken only for transfers that span more than two pages.
//!
//! # Buffers belong to the device until the command completes
//! A data buffer passed to a submission is the device's to read or write until its command
//! completes (or is failed back by a reset or removal, which happens only once the device can no
//! longer touch it). Dropping a queue pair with commands in flight does not end them: the
//! control plane deletes its queues at its next step. Keep their buffers until then, or hand
//! them to [`QueuePair::keep_until_deleted`], which frees them after the deletion; its PRP list
//! pages are kept that way already. The multipath channel does this for the buffers it holds.
//!
//! # Errors
//! Submission errors ([`SubmitError`]) name the controller, queue and opcode. A completion the
//! device should not have posted (unknown, duplicate or stale command id) is consumed, reported
//! by [`QueuePair::poll`] as [`QueueError::BadCompletion`], and the queue keeps working.

pub mod cid;
pub mod prp;
pub mod ring;

use std::sync::Arc;

#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vfnvme_hugepages::{DmaBuf, DmaPool, DomainId};

use crate::ctrl::state::{CtrlShared, CtrlState, StateWord, TimeoutReport};
use crate::spec::status::{generic, sct};
use crate::spec::{NvmOpcode, Sqe, Status};
use cid::{CidFault, CidTable};
use ring::{Rings, ShadowPages};

/// Marks "no PRP list" / "no group" in a tracker.
const NONE: u16 = u16::MAX;

/// What the driver keeps per in-flight command.
#[derive(Clone, Copy, Debug)]
pub struct Tracker<C = u64> {
    tag: C,
    /// The deadline (ns on [`crate::clock`]) once the timeout scan has seen the command; until
    /// then its timeout, with [`UNSTAMPED`] set (see [`QueuePair::check_timeouts`]).
    deadline_ns: u64,
    prp_list: u16,
    group: u16,
    opcode: u8,
    timed_out: bool,
}

impl<C: Default> Default for Tracker<C> {
    fn default() -> Self {
        Tracker {
            tag: C::default(),
            deadline_ns: 0,
            prp_list: NONE,
            group: NONE,
            opcode: 0,
            timed_out: false,
        }
    }
}

const _: () = assert!(std::mem::size_of::<Tracker>() == 24);

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device completed it with this status (success or an error).
    Status(Status),
    /// It timed out; the driver aborted it or reset the controller to get it back.
    TimedOut,
    /// The controller was reset while it was in flight; it may or may not have executed.
    Reset,
    /// The function went away while it was in flight.
    Removed,
}

impl Outcome {
    /// True for a successful device status.
    #[inline]
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Status(s) if s.is_success())
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Status(s) => write!(f, "{s}"),
            Outcome::TimedOut => f.write_str("command timed out"),
            Outcome::Reset => f.write_str("controller reset while in flight"),
            Outcome::Removed => f.write_str("controller removed while in flight"),
        }
    }
}

/// One finished command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion<C = u64> {
    /// The tag (or context) given at submission.
    pub tag: C,
    /// How it ended.
    pub outcome: Outcome,
    /// Command-specific result (CQE dword 0).
    pub dw0: u32,
    /// Opcode of the command.
    pub opcode: u8,
}

/// Why a submission was refused. Nothing was queued when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No free command slot or SQ entry: poll, then try again.
    #[error("queue full")]
    QueueFull,
    /// The controller is not live (resetting, failed, shut down).
    #[error("{ctrl} qid {qid}: controller is {state}")]
    NotReady {
        /// Controller.
        ctrl: Arc<str>,
        /// Queue.
        qid: u16,
        /// Its state.
        state: CtrlState,
    },
    /// The function is gone.
    #[error("{ctrl} qid {qid}: controller removed")]
    DeviceGone {
        /// Controller.
        ctrl: Arc<str>,
        /// Queue.
        qid: u16,
    },
    /// A passthrough transfer above the controller's maximum (MDTS).
    #[error("{ctrl} qid {qid} opcode {opcode:#04x}: transfer of {len} bytes exceeds MDTS ({mdts} bytes)")]
    TooLarge {
        /// Controller.
        ctrl: Arc<str>,
        /// Queue.
        qid: u16,
        /// Opcode.
        opcode: u8,
        /// Requested bytes.
        len: usize,
        /// The limit.
        mdts: u64,
    },
    /// The buffer range is unusable: outside the buffer, not dword-aligned, not a multiple of the
    /// block size, or not mapped into this controller's DMA domain.
    #[error("{ctrl} qid {qid} opcode {opcode:#04x}: bad buffer: {why}")]
    BadBuffer {
        /// Controller.
        ctrl: Arc<str>,
        /// Queue.
        qid: u16,
        /// Opcode.
        opcode: u8,
        /// What is wrong.
        why: &'static str,
    },
    /// No DMA memory for PRP list pages.
    #[error("{ctrl} qid {qid}: no memory for PRP lists")]
    NoPrpMemory {
        /// Controller.
        ctrl: Arc<str>,
        /// Queue.
        qid: u16,
        /// The cause.
        #[source]
        source: vfnvme_hugepages::Error,
    },
}

/// A device error found while polling. The bad entry was consumed; the queue keeps working.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A completion whose command id is unknown, already completed, or stale.
    #[error("{ctrl} qid {qid}: bad completion from device: cid {cid:#06x} is {fault:?}")]
    BadCompletion {
        /// Controller.
        ctrl: Arc<str>,
        /// Queue.
        qid: u16,
        /// The command id in the CQE.
        cid: u16,
        /// What is wrong with it.
        fault: CidFault,
    },
}

/// A namespace as a queue pair needs it: id, block size and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsInfo {
    /// Namespace id.
    pub nsid: u32,
    /// log2 of the LBA data size.
    pub lba_shift: u32,
    /// Size in logical blocks.
    pub nsze: u64,
}

impl NsInfo {
    /// Bytes per logical block.
    #[inline]
    pub fn lba_size(&self) -> u64 {
        1 << self.lba_shift
    }
}

/// A data buffer range for one command.
#[derive(Clone, Copy, Debug)]
pub struct DataRef<'a> {
    /// The buffer.
    pub buf: &'a DmaBuf,
    /// Offset of the first byte in `buf`.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
}

impl<'a> DataRef<'a> {
    /// The whole buffer.
    pub fn whole(buf: &'a DmaBuf) -> Self {
        DataRef {
            buf,
            offset: 0,
            len: buf.len(),
        }
    }
}

/// A raw command, the userspace twin of io_uring's `nvme_uring_cmd`: the caller sets every
/// command dword; the driver sets the command id, PRPs and metadata pointer.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassthruCmd {
    /// Opcode.
    pub opcode: u8,
    /// Command flags (SQE byte 1: FUSE, PSDT). PSDT must be 0 (PRPs).
    pub flags: u8,
    /// Namespace id.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Command dwords 10 to 15.
    pub cdw10_15: [u32; 6],
    /// Timeout in milliseconds; 0 means the queue's default.
    pub timeout_ms: u32,
}

impl PassthruCmd {
    /// The SQE this describes, without command id, PRPs or metadata pointer.
    pub fn to_sqe(&self) -> Sqe {
        let mut s = Sqe::default();
        s.set_opcode(self.opcode);
        s.set_flags(self.flags);
        s.nsid = self.nsid;
        s.cdw2 = self.cdw2;
        s.cdw3 = self.cdw3;
        s.cdw10 = self.cdw10_15[0];
        s.cdw11 = self.cdw10_15[1];
        s.cdw12 = self.cdw10_15[2];
        s.cdw13 = self.cdw10_15[3];
        s.cdw14 = self.cdw10_15[4];
        s.cdw15 = self.cdw10_15[5];
        s
    }
}

/// Options for a queue pair.
#[derive(Clone, Copy, Debug)]
pub struct QueueOptions {
    /// Entries per ring (the queue holds one fewer command). Clamped to CAP.MQES + 1 and 4096.
    pub size: u16,
    /// Default command timeout in milliseconds.
    pub timeout_ms: u32,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            size: 256,
            timeout_ms: 30_000,
        }
    }
}

/// Split transfers: one completion for several commands.
#[derive(Clone, Copy, Default)]
struct Group<C> {
    tag: C,
    left: u16,
    opcode: u8,
    outcome: Option<Outcome>,
    dw0: u32,
}

/// The handshake between a queue pair and the control plane across a controller reset.
///
/// After a reset the device has no I/O queues. The control plane re-creates a queue pair's
/// queues only once that queue pair has seen the new epoch, failed what it held and rewound its
/// rings (`acked`); until the queues exist again (`live`), submissions are refused. Otherwise a
/// queue pair that read the old state just before the reset could ring its old tail into the
/// re-created queue and make the device execute stale SQEs.
#[derive(Debug)]
pub struct QueueSync {
    acked: AtomicU64,
    live: AtomicU64,
    /// The device reads this queue's doorbells from the shadow pages (Doorbell Buffer Config
    /// took, at the bring-up of the epoch in `live`); written before `live`.
    shadow: AtomicBool,
}

impl QueueSync {
    pub(crate) fn new(epoch: u64) -> QueueSync {
        QueueSync {
            acked: AtomicU64::new(epoch),
            live: AtomicU64::new(epoch),
            shadow: AtomicBool::new(false),
        }
    }

    /// The epoch the queue pair has rewound to.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// The epoch in which the device queues exist.
    #[inline]
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Acquire)
    }

    /// Whether the device uses shadow doorbells for the queue in the epoch of [`Self::live`].
    pub fn shadow(&self) -> bool {
        self.shadow.load(Ordering::Acquire)
    }

    /// Sets [`Self::shadow`]; before [`Self::set_live`] for the same epoch.
    pub(crate) fn set_shadow(&self, on: bool) {
        self.shadow.store(on, Ordering::Release);
    }

    pub(crate) fn set_live(&self, epoch: u64) {
        self.live.store(epoch, Ordering::Release);
    }

    pub(crate) fn set_acked(&self, epoch: u64) {
        self.acked.store(epoch, Ordering::Release);
    }
}

/// What a queue pair knows about the controller it belongs to (set at creation).
pub(crate) struct QueueSetup {
    pub shared: Arc<CtrlShared>,
    pub rings: Rings,
    pub domain: DomainId,
    pub pool: Arc<DmaPool>,
    pub mdts_bytes: u64,
    pub epoch: u64,
    pub opts: QueueOptions,
    /// Where the queue pair goes when it is dropped (the control plane deletes its queues).
    pub release: ReleaseList,
    /// Reset handshake with the control plane.
    pub sync: Arc<QueueSync>,
    /// The controller's shadow doorbell pages, if it has them; whether the device uses them
    /// changes with each bring-up ([`QueueSync::shadow`]).
    pub shadow_pages: Option<Arc<ShadowPages>>,
}

/// A polled I/O queue pair. See the module docs.
pub struct QueuePair<C = u64> {
    shared: Arc<CtrlShared>,
    rings: Rings,
    cids: CidTable<Tracker<C>>,
    domain: DomainId,
    pool: Arc<DmaPool>,
    prp_pages: Vec<DmaBuf>,
    prp_free: Vec<u16>,
    prp_next: Vec<u16>,
    groups: Vec<Group<C>>,
    groups_free: Vec<u16>,
    mdts_bytes: u64,
    epoch: u64,
    /// The epoch this queue pair last found its queues live in (the submission path's one
    /// compare); behind `epoch` after a reset until the slow path has caught up.
    ready_epoch: u64,
    shadow_pages: Option<Arc<ShadowPages>>,
    /// See [`QueuePair::keep_until_deleted`].
    kept: Vec<Box<dyn std::any::Any + Send>>,
    timeout_ns: u64,
    /// Command ids held back from submissions ([`QueuePair::limit_in_flight`]): a command is
    /// queued only while more than this many are free.
    reserve: usize,
    ticks: u32,
    next_scan_ns: u64,
    /// Commands completed by a reset or removal, delivered by the next poll.
    failed: Vec<Completion<C>>,
    release: ReleaseList,
    sync: Arc<QueueSync>,
    _not_sync: std::marker::PhantomData<std::cell::Cell<()>>,
}

/// What a dropped queue pair leaves for the control plane, which deletes its queues in the
/// device and only then frees their memory.
pub(crate) struct Dropped {
    /// The queue id.
    pub qid: u16,
    /// The PRP list pages: a command still in flight may have the device read one. Held only
    /// to be dropped after the queues are deleted.
    #[allow(dead_code)]
    pub prp_pages: Vec<DmaBuf>,
    /// What the owner asked to keep as long ([`QueuePair::keep_until_deleted`]).
    #[allow(dead_code)]
    pub kept: Vec<Box<dyn std::any::Any + Send>>,
}

/// Dropped queue pairs, waiting for the control plane.
pub(crate) type ReleaseList = Arc<std::sync::Mutex<Vec<Dropped>>>;

impl<C> Drop for QueuePair<C> {
    fn drop(&mut self) {
        let dropped = Dropped {
            qid: self.rings.qid(),
            prp_pages: std::mem::take(&mut self.prp_pages),
            kept: std::mem::take(&mut self.kept),
        };
        self.release
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dropped);
    }
}

const SCAN_INTERVAL_NS: u64 = 1_000_000;

/// Set in `Tracker::deadline_ns` while it holds the command's timeout, not yet its deadline.
const UNSTAMPED: u64 = 1 << 63;
/// `Tracker::deadline_ns` of a command reported for a reset: no deadline any more (without the
/// `UNSTAMPED` bit, or the next scan would stamp it again).
const NEVER: u64 = !UNSTAMPED;

/// How a command that timed out ended, when the device completed it after all: `TimedOut` if
/// the abort sent for it took effect, else what the device said (it was slow, not lost; calling
/// it timed out would have a caller resend a command that ran).
#[cold]
fn timed_out_outcome(status: Status) -> Outcome {
    if status.sct() == sct::GENERIC && status.sc() == generic::ABORT_REQUESTED {
        Outcome::TimedOut
    } else {
        Outcome::Status(status)
    }
}

/// The `init` of a command whose context is given by value: stores it.
#[inline(always)]
fn put<C>(tag: C) -> impl FnOnce(&mut C) {
    move |t| *t = tag
}

impl<C: Copy + Default> QueuePair<C> {
    pub(crate) fn new(s: QueueSetup) -> QueuePair<C> {
        let slots = s.rings.size() as usize - 1;
        QueuePair {
            shared: s.shared,
            rings: s.rings,
            cids: CidTable::new(slots),
            domain: s.domain,
            pool: s.pool,
            prp_pages: Vec::new(),
            prp_free: Vec::new(),
            prp_next: Vec::new(),
            groups: Vec::new(),
            groups_free: Vec::new(),
            mdts_bytes: s.mdts_bytes,
            epoch: s.epoch,
            ready_epoch: s.epoch,
            shadow_pages: s.shadow_pages,
            kept: Vec::new(),
            timeout_ns: s.opts.timeout_ms as u64 * 1_000_000,
            reserve: 0,
            ticks: 0,
            next_scan_ns: crate::clock::now_ns() + SCAN_INTERVAL_NS,
            failed: Vec::new(),
            release: s.release,
            sync: s.sync,
            _not_sync: std::marker::PhantomData,
        }
    }

    /// Queue id.
    pub fn qid(&self) -> u16 {
        self.rings.qid()
    }

    /// Controller name.
    pub fn ctrl_name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// The DMA domain buffers must be mapped into.
    pub fn domain(&self) -> DomainId {
        self.domain
    }

    /// Commands in flight.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.cids.in_flight()
    }

    /// True when polling would do nothing: no command in flight, none failed by a reset waiting
    /// to be delivered, and no reset to catch up with (a poll after a reset lets the control
    /// plane re-create this queue pair's queues). A caller polling many queue pairs may skip an
    /// idle one.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.cids.in_flight() == 0
            && self.failed.is_empty()
            && self.shared.load().epoch() == self.epoch
    }

    /// True if a command could be queued now: the controller is live and this queue pair's
    /// queues are in it (re-created since the last reset, which this queue pair has caught up
    /// with). A queue pair that has not yet seen a reset says false.
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.shared.load().is_live_in(self.epoch) && self.sync.live() == self.epoch
    }

    /// Keeps `what` (buffers of commands in flight, typically) alive until this queue pair's
    /// queues are deleted from the device after it is dropped: see the module docs, "Buffers
    /// belong to the device". Called while commands are in flight, before a drop.
    pub fn keep_until_deleted(&mut self, what: Box<dyn std::any::Any + Send>) {
        self.kept.push(what);
    }

    /// Most commands the queue can hold at once.
    pub fn capacity(&self) -> usize {
        self.cids.capacity()
    }

    /// Refuses submissions ([`SubmitError::QueueFull`]) that would put more than `max` commands
    /// in flight (counting each piece of a split transfer), until called again; `usize::MAX`
    /// lifts the limit. For a caller that bounds what it submits by a count of its own (a
    /// multipath channel's room for failover): the check the queue pair makes anyway then makes
    /// both, at no cost per command.
    pub fn limit_in_flight(&mut self, max: usize) {
        self.reserve = self.cids.capacity().saturating_sub(max);
    }

    /// Refuses submissions that would take more than `n` more command ids than are taken now
    /// (each piece of a split transfer takes one), until the limit is changed or lifted: the
    /// same limit as [`QueuePair::limit_in_flight`] with `in_flight() + n`, in fewer steps.
    #[inline]
    pub fn limit_new(&mut self, n: usize) {
        self.reserve = self.cids.free_count().saturating_sub(n);
    }

    /// Lifts a limit set by [`QueuePair::limit_in_flight`] or [`QueuePair::limit_new`].
    #[inline]
    pub fn lift_limit(&mut self) {
        self.reserve = 0;
    }

    /// True while a limit set by [`QueuePair::limit_in_flight`] or [`QueuePair::limit_new`]
    /// holds (one below the capacity).
    pub fn is_limited(&self) -> bool {
        self.reserve > 0
    }

    /// Largest transfer in bytes (MDTS), `u64::MAX` when unlimited.
    pub fn mdts_bytes(&self) -> u64 {
        self.mdts_bytes
    }

    /// Controller state as last published.
    pub fn ctrl_state(&self) -> CtrlState {
        self.shared.state()
    }

    /// Whether commands may be queued now: the controller live in this queue pair's epoch and
    /// its queues re-created since the last reset. The common case is two compares.
    #[inline(always)]
    fn check_ready(&mut self) -> Result<(), SubmitError> {
        let w = self.shared.load();
        if w.is_live_in(self.ready_epoch) && self.sync.live() == self.ready_epoch {
            return Ok(());
        }
        self.check_ready_slow(w)
    }

    /// The rest of [`QueuePair::check_ready`]: catches up with a reset, or says why not ready.
    #[cold]
    #[inline(never)]
    fn check_ready_slow(&mut self, w: StateWord) -> Result<(), SubmitError> {
        if w.epoch() != self.epoch {
            self.resync(w.epoch(), w.state());
        }
        match w.state() {
            CtrlState::Live if self.sync.live() == self.epoch => {
                // First use of queues re-created after a reset: the doorbells go where this
                // bring-up's Doorbell Buffer Config said (it may have been refused this time,
                // or taken only now).
                if self.ready_epoch != self.epoch {
                    let on = self.sync.shadow();
                    self.rings
                        .set_shadow(self.shadow_pages.clone().filter(|_| on));
                    self.ready_epoch = self.epoch;
                }
                Ok(())
            }
            // Live, but the control plane has not re-created this queue after a reset yet.
            CtrlState::Live => Err(SubmitError::NotReady {
                ctrl: self.shared.name.clone(),
                qid: self.qid(),
                state: CtrlState::Resetting,
            }),
            CtrlState::Removed => Err(SubmitError::DeviceGone {
                ctrl: self.shared.name.clone(),
                qid: self.qid(),
            }),
            state => Err(SubmitError::NotReady {
                ctrl: self.shared.name.clone(),
                qid: self.qid(),
                state,
            }),
        }
    }

    /// The controller's epoch changed: what was in flight is dead. Fail it all and start over.
    fn resync(&mut self, epoch: u64, state: CtrlState) {
        let busy: Vec<usize> = self.cids.busy_slots().collect();
        for slot in busy {
            let t = self.cids.free(slot);
            let outcome = if state == CtrlState::Removed {
                Outcome::Removed
            } else if t.timed_out {
                Outcome::TimedOut
            } else {
                Outcome::Reset
            };
            self.release_prps(t.prp_list);
            if let Some(c) = self.finish(t, outcome, 0) {
                self.failed.push(c);
            }
        }
        self.rings.reset();
        self.epoch = epoch;
        // Only now may the control plane re-create the queues in the device.
        self.sync.set_acked(epoch);
    }

    /// A [`SubmitError::BadBuffer`] for `opcode` on this queue.
    #[cold]
    fn bad_buffer(&self, opcode: u8, why: &'static str) -> SubmitError {
        SubmitError::BadBuffer {
            ctrl: self.shared.name.clone(),
            qid: self.qid(),
            opcode,
            why,
        }
    }

    /// Checks a data range and returns its IOVA.
    #[inline(always)]
    fn data_iova(&self, d: &DataRef<'_>, opcode: u8) -> Result<u64, SubmitError> {
        let bad = |why| self.bad_buffer(opcode, why);
        if d.len == 0 || d.offset.checked_add(d.len).is_none_or(|e| e > d.buf.len()) {
            return Err(bad("range outside the buffer"));
        }
        let iova = d
            .buf
            .iova(self.domain, d.offset)
            .ok_or_else(|| bad("buffer not mapped into this controller's DMA domain"))?;
        if iova.0 % 4 != 0 {
            return Err(bad("data must start dword-aligned"));
        }
        Ok(iova.0)
    }

    /// Takes the PRP list pages for `pages` data pages, returning the first page's index.
    fn take_prp_lists(&mut self, n: usize) -> Result<u16, SubmitError> {
        let mut head = NONE;
        for _ in 0..n {
            let idx = match self.prp_free.pop() {
                Some(i) => i,
                None => {
                    let page =
                        self.pool
                            .alloc(4096, 4096)
                            .map_err(|source| SubmitError::NoPrpMemory {
                                ctrl: self.shared.name.clone(),
                                qid: self.qid(),
                                source,
                            });
                    let page = match page {
                        Ok(p) => p,
                        Err(e) => {
                            self.release_prps(head);
                            return Err(e);
                        }
                    };
                    self.prp_pages.push(page);
                    self.prp_next.push(NONE);
                    (self.prp_pages.len() - 1) as u16
                }
            };
            // Prepend; build() then walks the chain in order through `list_index`.
            self.prp_next[idx as usize] = head;
            head = idx;
        }
        Ok(head)
    }

    /// Frees the PRP list chain starting at `idx` (none for transfers of one or two pages, the
    /// common case, which costs one compare here).
    #[inline(always)]
    fn release_prps(&mut self, idx: u16) {
        if idx != NONE {
            self.release_prp_chain(idx);
        }
    }

    #[cold]
    fn release_prp_chain(&mut self, mut idx: u16) {
        while idx != NONE {
            let next = self.prp_next[idx as usize];
            self.prp_next[idx as usize] = NONE;
            self.prp_free.push(idx);
            idx = next;
        }
    }

    /// Fills PRP1/PRP2 of `sqe` for `len` bytes at `iova`, taking list pages when needed.
    #[inline(always)]
    fn fill_prps(&mut self, sqe: &mut Sqe, iova: u64, len: u64) -> Result<u16, SubmitError> {
        let pages = prp::pages_spanned(iova, len);
        if pages <= 2 {
            sqe.prp1 = iova;
            sqe.prp2 = if pages == 2 {
                (iova & !(prp::PAGE_SIZE - 1)) + prp::PAGE_SIZE
            } else {
                0
            };
            return Ok(NONE);
        }
        // Out of line without the entry: an entry whose address escaped would live in memory
        // on every path (built on the stack, then copied into the SQ).
        let (prp1, prp2, head) = self.fill_prp_list(sqe.opcode(), iova, len, pages)?;
        sqe.prp1 = prp1;
        sqe.prp2 = prp2;
        Ok(head)
    }

    /// [`Self::fill_prps`] for transfers over more than two pages: builds a PRP list chain.
    /// Returns PRP1, PRP2 and the chain's first list page.
    #[cold]
    #[inline(never)]
    fn fill_prp_list(
        &mut self,
        opcode: u8,
        iova: u64,
        len: u64,
        pages: u64,
    ) -> Result<(u64, u64, u16), SubmitError> {
        let nlists = prp::list_pages_needed(pages);
        let head = self.take_prp_lists(nlists)?;
        // The list pages in chain order. Up to 16 of them (transfers to ~32 MiB) sit on the
        // stack, so the I/O path does not allocate; longer chains are rare enough for a Vec.
        let mut small = [NONE; 16];
        let mut large = Vec::new();
        let mut i = head;
        let mut k = 0;
        while i != NONE {
            if nlists <= small.len() {
                small[k] = i;
            } else {
                large.push(i);
            }
            k += 1;
            i = self.prp_next[i as usize];
        }
        let chain: &[u16] = if nlists <= small.len() {
            &small[..nlists]
        } else {
            &large
        };
        let domain = self.domain;
        let pages_ref = &self.prp_pages;
        let list_iova = |k: usize| {
            pages_ref[chain[k] as usize]
                .iova(domain, 0)
                .map_or(0, |v| v.0)
        };
        let r = prp::build(iova, len, list_iova, |k, slot, e| {
            pages_ref[chain[k] as usize].store_u64(slot * 8, e)
        });
        match r {
            Ok((p1, p2)) if p2 != 0 => Ok((p1, p2, head)),
            _ => {
                self.release_prps(head);
                Err(self.bad_buffer(
                    opcode,
                    "PRP list page not mapped into this controller's DMA domain",
                ))
            }
        }
    }

    /// Queues one SQE with optional data and metadata. The core of every submit helper, always
    /// inlined so that each helper is one function on the I/O path (left to itself, the compiler
    /// inlined it into `rw` in some callers and not others, a 57-instruction difference per I/O).
    #[inline(always)]
    fn queue(
        &mut self,
        mut sqe: Sqe,
        data: Option<&DataRef<'_>>,
        metadata: Option<&DataRef<'_>>,
        init: impl FnOnce(&mut C),
        group: u16,
        timeout_ms: u32,
    ) -> Result<(), SubmitError> {
        if self.cids.free_count() <= self.reserve || self.rings.sq_free() == 0 {
            return Err(SubmitError::QueueFull);
        }
        let opcode = sqe.opcode();
        let mut prp_list = NONE;
        if let Some(d) = data {
            let iova = self.data_iova(d, opcode)?;
            prp_list = self.fill_prps(&mut sqe, iova, d.len as u64)?;
        }
        if let Some(m) = metadata {
            match self.data_iova(m, opcode) {
                Ok(iova) => sqe.mptr = iova,
                Err(e) => {
                    self.release_prps(prp_list);
                    return Err(e);
                }
            }
        }
        // The command keeps its timeout; the first timeout scan after it was queued turns that
        // into a deadline (`check_timeouts`). So no clock is read per command, and a deadline is
        // never early: a clock reading kept from earlier could be arbitrarily old if the thread
        // was preempted, and an early deadline means a spurious abort and controller reset.
        let timeout_ns = if timeout_ms == 0 {
            self.timeout_ns
        } else {
            timeout_ms as u64 * 1_000_000
        };
        let deadline_ns = UNSTAMPED | timeout_ns;
        // Written field by field in place: a context built elsewhere and copied in whole was
        // stored in pieces and loaded in wider ones (a store-forwarding stall per command).
        let (cid, t) = self.cids.alloc_in_place().expect("checked not full above");
        t.deadline_ns = deadline_ns;
        t.prp_list = prp_list;
        t.group = group;
        t.opcode = opcode;
        t.timed_out = false;
        init(&mut t.tag);
        sqe.set_cid(cid);
        self.rings.push_with_room(&sqe);
        Ok(())
    }

    /// Submits a raw command. Data above MDTS is refused (a passthrough command is never split).
    ///
    /// # Errors
    /// [`SubmitError`]; nothing is queued on error.
    pub fn passthru(
        &mut self,
        cmd: &PassthruCmd,
        data: Option<DataRef<'_>>,
        metadata: Option<DataRef<'_>>,
        tag: C,
    ) -> Result<(), SubmitError> {
        self.check_ready()?;
        if cmd.flags & 0xc0 != 0 {
            return Err(self.bad_buffer(
                cmd.opcode,
                "SGLs (PSDT != 0) are not supported; the driver builds PRPs",
            ));
        }
        if let Some(d) = &data {
            if d.len as u64 > self.mdts_bytes {
                return Err(SubmitError::TooLarge {
                    ctrl: self.shared.name.clone(),
                    qid: self.qid(),
                    opcode: cmd.opcode,
                    len: d.len,
                    mdts: self.mdts_bytes,
                });
            }
        }
        self.queue(
            cmd.to_sqe(),
            data.as_ref(),
            metadata.as_ref(),
            put(tag),
            NONE,
            cmd.timeout_ms,
        )
    }

    /// Submits an already built SQE (command id and PRPs are filled in here).
    ///
    /// # Errors
    /// As [`QueuePair::passthru`].
    pub fn submit_sqe(
        &mut self,
        sqe: Sqe,
        data: Option<DataRef<'_>>,
        tag: C,
    ) -> Result<(), SubmitError> {
        self.check_ready()?;
        self.queue(sqe, data.as_ref(), None, put(tag), NONE, 0)
    }

    /// Reads `blocks` logical blocks at `lba` into `buf` from byte `buf_offset`. Transfers above
    /// MDTS are split into several commands that complete as one.
    ///
    /// # Errors
    /// [`SubmitError`]; nothing is queued on error.
    #[inline]
    pub fn read(
        &mut self,
        ns: &NsInfo,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf,
        buf_offset: usize,
        tag: C,
    ) -> Result<(), SubmitError> {
        self.read_with(ns, lba, blocks, buf, buf_offset, put(tag))
    }

    /// [`QueuePair::read`] whose context `init` writes in place, in the queue pair's record of
    /// the command: for a context larger than a register, cheaper than building it and copying
    /// it in. `init` is called only if the command is queued.
    ///
    /// # Errors
    /// As [`QueuePair::read`].
    #[inline(always)]
    pub fn read_with(
        &mut self,
        ns: &NsInfo,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf,
        buf_offset: usize,
        init: impl FnOnce(&mut C),
    ) -> Result<(), SubmitError> {
        self.rw(NvmOpcode::READ.0, ns, lba, blocks, buf, buf_offset, init)
    }

    /// Writes `blocks` logical blocks at `lba` from `buf`. Split above MDTS like [`Self::read`].
    ///
    /// # Errors
    /// [`SubmitError`]; nothing is queued on error.
    #[inline]
    pub fn write(
        &mut self,
        ns: &NsInfo,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf,
        buf_offset: usize,
        tag: C,
    ) -> Result<(), SubmitError> {
        self.write_with(ns, lba, blocks, buf, buf_offset, put(tag))
    }

    /// [`QueuePair::write`] with its context written in place, as [`QueuePair::read_with`].
    ///
    /// # Errors
    /// As [`QueuePair::write`].
    #[inline(always)]
    pub fn write_with(
        &mut self,
        ns: &NsInfo,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf,
        buf_offset: usize,
        init: impl FnOnce(&mut C),
    ) -> Result<(), SubmitError> {
        self.rw(NvmOpcode::WRITE.0, ns, lba, blocks, buf, buf_offset, init)
    }

    /// Compares `blocks` logical blocks at `lba` with `buf` (status Compare Failure on mismatch).
    ///
    /// # Errors
    /// [`SubmitError`]; nothing is queued on error.
    pub fn compare(
        &mut self,
        ns: &NsInfo,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf,
        buf_offset: usize,
        tag: C,
    ) -> Result<(), SubmitError> {
        self.rw(
            NvmOpcode::COMPARE.0,
            ns,
            lba,
            blocks,
            buf,
            buf_offset,
            put(tag),
        )
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn rw(
        &mut self,
        opcode: u8,
        ns: &NsInfo,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf,
        buf_offset: usize,
        init: impl FnOnce(&mut C),
    ) -> Result<(), SubmitError> {
        self.check_ready()?;
        let len = (blocks as u64) << ns.lba_shift;
        if blocks == 0 {
            return Err(self.bad_buffer(opcode, "zero blocks"));
        }
        let max_blocks = (self.mdts_bytes >> ns.lba_shift).min(1 << 16);
        if blocks as u64 <= max_blocks {
            let mut sqe = Sqe::read(ns.nsid, lba, (blocks - 1) as u16);
            sqe.set_opcode(opcode);
            let d = DataRef {
                buf,
                offset: buf_offset,
                len: len as usize,
            };
            return self.queue(sqe, Some(&d), None, init, NONE, 0);
        }
        let mut tag = C::default();
        init(&mut tag);
        self.rw_split(opcode, ns, lba, blocks, buf, buf_offset, tag, max_blocks)
    }

    /// [`QueuePair::rw`] above MDTS: one command per `max_blocks`, completed together as one.
    #[allow(clippy::too_many_arguments)]
    #[cold]
    #[inline(never)]
    fn rw_split(
        &mut self,
        opcode: u8,
        ns: &NsInfo,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf,
        buf_offset: usize,
        tag: C,
        max_blocks: u64,
    ) -> Result<(), SubmitError> {
        let len = (blocks as u64) << ns.lba_shift;
        if max_blocks == 0 {
            // One block is larger than the controller takes in one command.
            return Err(SubmitError::TooLarge {
                ctrl: self.shared.name.clone(),
                qid: self.qid(),
                opcode,
                len: len as usize,
                mdts: self.mdts_bytes,
            });
        }
        // Split: every piece must fit now, or nothing is queued.
        let pieces = (blocks as u64).div_ceil(max_blocks) as usize;
        if buf_offset
            .checked_add(len as usize)
            .is_none_or(|e| e > buf.len())
        {
            return Err(self.bad_buffer(opcode, "range outside the buffer"));
        }
        if pieces > self.cids.capacity() {
            // Would never fit: `QueueFull` would have the caller poll and retry for ever.
            return Err(self.bad_buffer(
                opcode,
                "split at MDTS, the transfer needs more commands than the queue holds",
            ));
        }
        if self.cids.free_count() < pieces + self.reserve
            || (self.rings.sq_free() as usize) < pieces
        {
            return Err(SubmitError::QueueFull);
        }
        let g = match self.groups_free.pop() {
            Some(g) => g,
            None => {
                self.groups.push(Group::default());
                (self.groups.len() - 1) as u16
            }
        };
        self.groups[g as usize] = Group {
            tag,
            left: pieces as u16,
            opcode,
            outcome: None,
            dw0: 0,
        };
        let mut done = 0u64;
        for i in 0..pieces {
            let n = (blocks as u64 - done).min(max_blocks);
            let mut sqe = Sqe::read(ns.nsid, lba + done, (n - 1) as u16);
            sqe.set_opcode(opcode);
            let d = DataRef {
                buf,
                offset: buf_offset + (done << ns.lba_shift) as usize,
                len: (n << ns.lba_shift) as usize,
            };
            if let Err(e) = self.queue(sqe, Some(&d), None, put(tag), g, 0) {
                // Only a PRP-memory or mapping error can get here; the pieces already queued
                // complete into the group, which reports this error for the whole transfer.
                let grp = &mut self.groups[g as usize];
                grp.left -= (pieces - i) as u16;
                if i == 0 {
                    self.groups_free.push(g);
                    return Err(e);
                }
                grp.outcome = Some(Outcome::Status(
                    Status::new(sct::GENERIC, generic::DATA_TRANSFER_ERROR).with_dnr(true),
                ));
                return Ok(());
            }
            done += n;
        }
        Ok(())
    }

    /// Flushes the volatile write cache of namespace `nsid`.
    ///
    /// # Errors
    /// [`SubmitError`].
    pub fn flush(&mut self, nsid: u32, tag: C) -> Result<(), SubmitError> {
        self.check_ready()?;
        self.queue(Sqe::flush(nsid), None, None, put(tag), NONE, 0)
    }

    /// Writes zeroes to `blocks` blocks at `lba` (at most 65536), optionally deallocating them.
    ///
    /// # Errors
    /// [`SubmitError`].
    pub fn write_zeroes(
        &mut self,
        ns: &NsInfo,
        lba: u64,
        blocks: u32,
        deallocate: bool,
        tag: C,
    ) -> Result<(), SubmitError> {
        self.check_ready()?;
        if blocks == 0 || blocks > 1 << 16 {
            return Err(self.bad_buffer(
                NvmOpcode::WRITE_ZEROES.0,
                "write zeroes takes 1 to 65536 blocks",
            ));
        }
        let sqe = Sqe::write_zeroes(ns.nsid, lba, (blocks - 1) as u16, deallocate);
        self.queue(sqe, None, None, put(tag), NONE, 0)
    }

    /// Deallocates (trims) up to 256 ranges of `(lba, blocks)` with Dataset Management. The range
    /// list is written into `ranges_buf` (16 bytes per range), which must stay untouched until
    /// the command completes.
    ///
    /// # Errors
    /// [`SubmitError`].
    pub fn deallocate(
        &mut self,
        ns: &NsInfo,
        ranges: &[(u64, u32)],
        ranges_buf: &DmaBuf,
        tag: C,
    ) -> Result<(), SubmitError> {
        self.check_ready()?;
        let opcode = NvmOpcode::DSM.0;
        if ranges.is_empty() || ranges.len() > 256 || ranges_buf.len() < ranges.len() * 16 {
            return Err(self.bad_buffer(
                opcode,
                "1 to 256 ranges, and a buffer of 16 bytes per range",
            ));
        }
        for (i, &(lba, blocks)) in ranges.iter().enumerate() {
            let mut e = [0u8; 16];
            e[4..8].copy_from_slice(&blocks.to_le_bytes());
            e[8..16].copy_from_slice(&lba.to_le_bytes());
            ranges_buf.write(i * 16, &e);
        }
        let sqe = Sqe::dsm(ns.nsid, (ranges.len() - 1) as u8, true);
        let d = DataRef {
            buf: ranges_buf,
            offset: 0,
            len: ranges.len() * 16,
        };
        self.queue(sqe, Some(&d), None, put(tag), NONE, 0)
    }

    /// Writes the SQ doorbell if commands were queued since the last one.
    #[inline]
    pub fn ring(&mut self) {
        if self.rings.sq_pending() {
            self.rings.ring_sq();
        }
    }

    /// Rings the SQ doorbell if needed, then delivers up to `max` completions to `f`. Also
    /// delivers commands failed by a controller reset or removal, and reports timed-out commands
    /// to the control plane (which aborts them, then resets the controller if that fails).
    ///
    /// # Errors
    /// [`QueueError::BadCompletion`] for a completion the device should not have posted; the
    /// entry is consumed, completions before it were delivered, and polling may go on.
    #[inline]
    pub fn poll(
        &mut self,
        max: usize,
        mut f: impl FnMut(Completion<C>),
    ) -> Result<usize, QueueError> {
        let w = self.shared.load();
        if w.epoch() != self.epoch {
            self.resync(w.epoch(), w.state());
        }
        let mut n = 0;
        while n < max {
            let Some(c) = self.failed.pop() else { break };
            f(c);
            n += 1;
        }
        self.ring();
        let mut result = Ok(());
        while n < max {
            let Some(cqe) = self.rings.peek_cqe() else {
                break;
            };
            self.rings.pop_cqe(cqe.sqhd);
            let slot = match self.cids.check(cqe.cid) {
                Ok(s) => s,
                Err(fault) => {
                    result = Err(QueueError::BadCompletion {
                        ctrl: self.shared.name.clone(),
                        qid: self.qid(),
                        cid: cqe.cid,
                        fault,
                    });
                    break;
                }
            };
            let t = self.cids.free_in_place(slot);
            // The common case (no PRP list to give back, no split group, no timeout) builds the
            // completion straight into the call from the record where it lies, with nothing
            // called in between: a context of several words is loaded into registers for `f`,
            // not loaded early and spilled across the calls the other cases make.
            if t.prp_list == NONE && t.group == NONE && !t.timed_out {
                f(Completion {
                    tag: t.tag,
                    outcome: Outcome::Status(cqe.status()),
                    dw0: cqe.dw0,
                    opcode: t.opcode,
                });
                n += 1;
                continue;
            }
            let t = *t;
            self.release_prps(t.prp_list);
            let outcome = if t.timed_out {
                timed_out_outcome(cqe.status())
            } else {
                Outcome::Status(cqe.status())
            };
            // No `Option` in between: with a context larger than a register, that cost a copy.
            if t.group == NONE {
                f(Completion {
                    tag: t.tag,
                    outcome,
                    dw0: cqe.dw0,
                    opcode: t.opcode,
                });
                n += 1;
            } else if let Some(c) = self.finish_group(t.group, outcome, cqe.dw0) {
                f(c);
                n += 1;
            }
        }
        self.rings.ring_cq();
        if n == 0 {
            self.rings.func().idle_poll();
        }
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(64) && self.cids.in_flight() > 0 {
            self.check_timeouts();
        }
        result.map(|()| n)
    }

    /// Turns a freed tracker into a completion, or folds it into its split group.
    #[inline]
    fn finish(&mut self, t: Tracker<C>, outcome: Outcome, dw0: u32) -> Option<Completion<C>> {
        if t.group == NONE {
            return Some(Completion {
                tag: t.tag,
                outcome,
                dw0,
                opcode: t.opcode,
            });
        }
        self.finish_group(t.group, outcome, dw0)
    }

    /// Folds a freed piece of a split transfer into its group; the group's completion once
    /// every piece is in.
    #[cold]
    #[inline(never)]
    fn finish_group(&mut self, group: u16, outcome: Outcome, dw0: u32) -> Option<Completion<C>> {
        let g = &mut self.groups[group as usize];
        if !outcome.is_success() && g.outcome.is_none() {
            g.outcome = Some(outcome);
        }
        g.dw0 = dw0;
        g.left -= 1;
        if g.left > 0 {
            return None;
        }
        let c = Completion {
            tag: g.tag,
            outcome: g.outcome.unwrap_or(Outcome::Status(Status::SUCCESS)),
            dw0: g.dw0,
            opcode: g.opcode,
        };
        self.groups_free.push(group);
        Some(c)
    }

    /// Every 64 polls with commands in flight, and at most once per millisecond: marks commands
    /// past their deadline and reports them to the control plane (which aborts them, and resets
    /// the controller if that fails). Runs whether or not completions are flowing, so that one
    /// dropped command among busy ones is still found.
    ///
    /// A command queued since the last scan gets its deadline here, its timeout from now: later
    /// than from its submission by at most the time between scans, and never earlier.
    ///
    /// Two stages, as Linux does: at its deadline a command is reported for an abort and given
    /// one more timeout (the abort may find it merely slow, and it may still complete, with its
    /// own status); if it is still in flight after that, it is reported for a controller reset.
    #[cold]
    fn check_timeouts(&mut self) {
        let now = crate::clock::now_ns();
        if now < self.next_scan_ns {
            return;
        }
        self.next_scan_ns = now + SCAN_INTERVAL_NS;
        let qid = self.qid();
        let grace = self.timeout_ns;
        let mut expired = Vec::new();
        // Abort requests the control plane has not taken yet.
        let waiting: Vec<u16> = self
            .shared
            .timeouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.qid == qid && !r.escalate)
            .map(|r| r.cid)
            .collect();
        for slot in 0..self.cids.capacity() {
            if !self.cids.is_busy(slot) {
                continue;
            }
            let cid = self.cids.cid_of(slot);
            let t = self.cids.get_mut(slot);
            if t.deadline_ns & UNSTAMPED != 0 {
                t.deadline_ns = now
                    .saturating_add(t.deadline_ns & !UNSTAMPED)
                    .min(NEVER - 1);
            } else if t.deadline_ns <= now {
                // First: abort, and one more timeout from when the control plane took the
                // request. Then: reset, and no more reports.
                let escalate = t.timed_out;
                if escalate && waiting.contains(&cid) {
                    t.deadline_ns = now.saturating_add(grace);
                    continue;
                }
                t.timed_out = true;
                t.deadline_ns = if escalate {
                    NEVER
                } else {
                    now.saturating_add(grace)
                };
                expired.push((slot, escalate));
            }
        }
        if expired.is_empty() {
            return;
        }
        let reports: Vec<TimeoutReport> = expired
            .into_iter()
            .map(|(slot, escalate)| {
                let cid = self.cids.cid_of(slot);
                log::warn!(
                    "{} qid {qid} cid {cid:#06x}: command timed out, asking for {}",
                    self.shared.name,
                    if escalate {
                        "a controller reset (an abort did not end it)"
                    } else {
                        "an abort"
                    }
                );
                TimeoutReport { qid, cid, escalate }
            })
            .collect();
        self.shared
            .timeouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(reports);
    }
}

#[cfg(test)]
mod tests;
