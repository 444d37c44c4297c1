//! The per-core channel of a multipath namespace.
//!
//! A [`Channel`] holds one queue pair per path and a slot per command it may have outstanding.
//! Every in-flight command keeps what it needs to be rebuilt. A read or write on a registered
//! buffer keeps it all (lba, length, buffer index, tag) in the context it carries in its queue
//! pair's own command-id record ([`vfnvme::Controller::io_queue_pair_with`]), so failover costs
//! the common path nothing but those few words, and it takes a slot only when it first fails.
//! Other commands keep their [`IoDesc`] (with its buffers, which the channel hands back anyway)
//! or their passthrough dwords in a slot from the start. When a completion calls for failover or
//! retry, the slot goes onto the bounded requeue ring; a later poll rebuilds the command on a
//! usable path: new command id, the nsid of that path's namespace, PRPs and metadata pointer in
//! that path's DMA domain. A command that keeps failing over gives up after the fast-fail time
//! (ANATT during an ANA transition).
//!
//! The common case — a registered-buffer read or write submitted while the path view is current,
//! and its successful completion — is inlined into the caller's loop; everything else is cold.
//!
//! Writes, and passthrough commands not marked idempotent, wait the failed controller's Command
//! Quiesce Time (CQT, or `ChannelOptions::default_cqt_ms` when it reports 0) before they are
//! resent, so that a copy still in flight on the old path cannot land after its replacement;
//! one that gives up failing over waits it too before it completes with its error. Reads go at
//! once.

use std::sync::{Arc, Mutex};

use vfnvme::qpair::{DataRef, SubmitError};
use vfnvme::spec::log::AnaState;
use vfnvme::spec::status::{path as path_sc, sct};
use vfnvme::spec::Status;
use vfnvme::{Completion, NsInfo, Outcome, PassthruCmd, QueueOptions, QueuePair};
use vfnvme_hugepages::DmaBuf;

use crate::desc::{IoDesc, IoKind};
use crate::disposition::{dispose, Disposition};
use crate::path::{PathInfo, PathStatus};
use crate::policy::{Policy, Selector, TurnCursor};
use crate::requeue::RequeueRing;
use crate::subsystem::{Inbox, MpNamespace};

/// Options for a channel.
#[derive(Clone, Copy, Debug)]
pub struct ChannelOptions {
    /// Queue pair options (per path).
    pub queue: QueueOptions,
    /// Path policy.
    pub policy: Policy,
    /// Commands the channel may hold (in flight plus waiting on the requeue ring); at most 2^28.
    pub slots: usize,
    /// Same-path retries for retryable, non-path errors.
    pub retries: u8,
    /// Failovers of one command before it completes with its last error: a cap against a path
    /// that flaps without end. The other bound is time: a command that has been failing over for
    /// longer than `fast_fail_ms` (or the controller's ANATT during an ANA transition) completes
    /// with its last error too. A write or non-idempotent passthrough that gives up completes
    /// only after the CQT of the path it last failed on, as it would have been resent.
    pub max_failovers: u16,
    /// How long a command waits for a path that may come back before completing with
    /// [`IoError::NoPath`].
    pub fast_fail_ms: u64,
    /// Quiesce time for non-idempotent commands when the controller reports CQT = 0.
    pub default_cqt_ms: u64,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            queue: QueueOptions::default(),
            policy: Policy::default(),
            slots: 1024,
            retries: 3,
            max_failovers: 1000,
            fast_fail_ms: 10_000,
            default_cqt_ms: 100,
        }
    }
}

/// Why a command failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// The device completed it with an error status.
    #[error("{ctrl}: {status}")]
    Status {
        /// The controller that answered last.
        ctrl: Arc<str>,
        /// Its status.
        status: Status,
    },
    /// No path could take it: none usable and none coming back, or the fast-fail timeout passed.
    #[error("no usable path to the namespace")]
    NoPath,
    /// It kept failing over: more than `max_failovers` times, or for longer than the fast-fail
    /// time (ANATT during an ANA transition).
    #[error("failed over {failovers} times in {failing_ms} ms; giving up (last: {last})")]
    TooManyFailovers {
        /// Failovers so far.
        failovers: u16,
        /// Milliseconds since its first failover.
        failing_ms: u64,
        /// The last failure.
        last: String,
    },
    /// The driver refused it (bad buffer, too large).
    #[error("{0}")]
    Refused(String),
}

/// A finished command: its tag, result (CQE dword 0 on success), and its buffers back. It is
/// lent to the callback of [`Channel::poll`]: take the buffers to keep with `Option::take`; what
/// is left is dropped when the callback returns.
#[derive(Debug)]
pub struct MpCompletion {
    /// Caller's tag.
    pub tag: u64,
    /// The result.
    pub result: Result<u32, IoError>,
    /// The data buffer.
    pub data: Option<DmaBuf>,
    /// The metadata buffer.
    pub metadata: Option<DmaBuf>,
    /// The registered buffer, for a command from [`Channel::submit_fixed`].
    pub buf_index: Option<u32>,
}

#[cold]
#[inline(never)]
fn drop_slow(c: MpCompletion) {
    drop(c);
}

/// A command refused at submission, with its descriptor back.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub reason: RefuseReason,
    /// The command, untouched.
    pub desc: IoDesc,
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefuseReason {
    /// Every slot is taken: poll, then retry.
    Full,
    /// No path is usable and none can come back.
    NoPath,
    /// The driver refused the command (bad buffer, above MDTS...). Boxed, so that a
    /// submission's `Result` is two words, returned in registers (a `String` made it three,
    /// returned through memory on every submission).
    Invalid(Box<String>),
}

/// Counters of what the channel did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Commands completed (successfully or not).
    pub completed: u64,
    /// Commands moved to another path.
    pub failovers: u64,
    /// Same-path retries.
    pub retries: u64,
    /// Commands that waited out a quiesce time before resending.
    pub quiesce_waits: u64,
    /// Commands completed with `NoPath`.
    pub no_path: u64,
    /// Bad completions reported by the device.
    pub bad_completions: u64,
}

/// What kind of command a [`Cmd`] is, and so where the rest of it is kept.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
#[repr(u8)]
enum CmdKind {
    /// A read on a registered buffer: the first `blocks` blocks of buffer `buf`. Needs no slot
    /// until it fails.
    #[default]
    FixedRead,
    /// A write on a registered buffer, as `FixedRead`.
    FixedWrite,
    /// A passthrough command on registered buffer `buf`; its dwords are in
    /// `Channel::fixed_cmds[slot]`.
    FixedPassthru,
    /// A descriptor that owns its buffers (given back in the completion), in
    /// `Channel::owned[slot]`.
    Owned,
}

impl CmdKind {
    /// A read or write on a registered buffer.
    #[inline(always)]
    fn fixed_rw(write: bool) -> CmdKind {
        if write {
            CmdKind::FixedWrite
        } else {
            CmdKind::FixedRead
        }
    }
}

/// What a command carries with it in its queue pair's command-id table, and gets back in its
/// completion: enough to rebuild it on another path. A read or write on a registered buffer is
/// whole in these 24 bytes, so the channel keeps no table of its own for it: failover costs the
/// common path only this record. Anything larger, and the retry and failover state of a command
/// that has failed once, lives in a slot, taken when first needed.
///
/// Written field by field straight into the queue pair's record ([`issue_fixed_rw`]), never
/// built on the stack and copied (a copy of mixed fields was stored field by field and then
/// loaded in 16-byte pieces, a store-forwarding stall). The block count and the index word are
/// two 32-bit stores of values the caller already holds: packing them into one word cost about
/// 4 instructions per I/O. Three words, not four: every word is a store at submission and a
/// load at completion (a fourth cost about 5 instructions per I/O and 8 bytes of each queue
/// pair's record).
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Cmd {
    /// Caller's tag.
    tag: u64,
    /// First block (registered reads and writes).
    lba: u64,
    /// Blocks (registered reads and writes).
    blocks: u32,
    /// An index, bits 0..28: the registered buffer, or the slot once the command has one
    /// ([`Cmd::SLOTTED`]; the buffer index is then in the slot's [`Entry`]); the [`CmdKind`],
    /// bits 28..30; idempotent, bit 30 (a passthrough command marked so, or an owned read; a
    /// registered read is idempotent by its kind, so a registered read or write sets no flag and
    /// its word is the buffer index and the kind alone); has a slot, bit 31.
    word: u32,
}

const _: () = assert!(std::mem::size_of::<Cmd>() == 24);
const _: () = assert!(std::mem::size_of::<Result<(), RefuseReason>>() == 16);

impl Cmd {
    const KIND_SHIFT: u32 = 28;
    const IDEMPOTENT: u32 = 1 << 30;
    const SLOTTED: u32 = 1 << 31;
    /// The largest registered-buffer index or slot a command can name (28 bits).
    const MAX_INDEX: u32 = (1 << 28) - 1;

    /// The index word of a command of `kind` on registered buffer (or slot) `index`, with no
    /// slot. `idempotent` is kept only where the kind does not say it.
    #[inline(always)]
    fn pack(kind: CmdKind, idempotent: bool, index: u32) -> u32 {
        debug_assert!(index <= Cmd::MAX_INDEX);
        let flag = match kind {
            CmdKind::FixedRead | CmdKind::FixedWrite => 0,
            CmdKind::FixedPassthru | CmdKind::Owned if idempotent => Cmd::IDEMPOTENT,
            CmdKind::FixedPassthru | CmdKind::Owned => 0,
        };
        index | (kind as u32) << Cmd::KIND_SHIFT | flag
    }

    /// A command of `kind` with no slot yet (`idempotent` ignored for registered reads and
    /// writes: a read is, a write is not).
    #[inline(always)]
    fn new(kind: CmdKind, idempotent: bool, tag: u64, lba: u64, blocks: u32, buf: u32) -> Cmd {
        Cmd {
            tag,
            lba,
            blocks,
            word: Cmd::pack(kind, idempotent, buf),
        }
    }

    /// The index word of a read or write on registered buffer `buf`, with no slot yet (as
    /// [`Cmd::fixed_rw`], for a command written in place: see [`issue_fixed_rw`]).
    #[inline(always)]
    fn fixed_rw_word(write: bool, buf: u32) -> u32 {
        Cmd::pack(CmdKind::fixed_rw(write), !write, buf)
    }

    /// A read or write on registered buffer `buf`, with no slot yet.
    fn fixed_rw(write: bool, lba: u64, blocks: u32, buf: u32, tag: u64) -> Cmd {
        Cmd::new(CmdKind::fixed_rw(write), !write, tag, lba, blocks, buf)
    }

    /// Blocks (registered reads and writes).
    #[inline(always)]
    fn blocks(&self) -> u32 {
        self.blocks
    }

    /// The index: the registered buffer, or the slot once it has one.
    #[inline(always)]
    fn index(&self) -> u32 {
        self.word & Cmd::MAX_INDEX
    }

    /// The command has a slot.
    #[inline(always)]
    fn has_slot(&self) -> bool {
        self.word & Cmd::SLOTTED != 0
    }

    /// The slot that holds the rest of the command, or [`NO_SLOT`].
    #[inline(always)]
    fn slot(&self) -> u32 {
        if self.has_slot() {
            self.index()
        } else {
            NO_SLOT
        }
    }

    /// The same command, kept in `slot` (its buffer index, if it had one, must be kept in the
    /// slot's entry: see [`Channel::take_slot`]).
    #[inline(always)]
    fn with_slot(self, slot: u32) -> Cmd {
        debug_assert!(slot <= Cmd::MAX_INDEX);
        Cmd {
            word: (self.word & !Cmd::MAX_INDEX) | slot | Cmd::SLOTTED,
            ..self
        }
    }

    #[inline(always)]
    fn kind(&self) -> CmdKind {
        match (self.word >> Cmd::KIND_SHIFT) & 3 {
            0 => CmdKind::FixedRead,
            1 => CmdKind::FixedWrite,
            2 => CmdKind::FixedPassthru,
            _ => CmdKind::Owned,
        }
    }

    /// Safe to resend at once after a path failure: a registered read, or a command marked so.
    #[inline(always)]
    fn idempotent(&self) -> bool {
        self.kind() == CmdKind::FixedRead || self.word & Cmd::IDEMPOTENT != 0
    }
}

/// `Cmd::slot` of a command that has no slot.
const NO_SLOT: u32 = u32::MAX;

/// Queues a read or write of the first `blocks` blocks of registered buffer `b` on `qp`, the
/// command (`tag`, `lba`, `blocks`, and its index `word`: see [`Cmd`]) written straight into the
/// queue pair's record of it, field by field.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn issue_fixed_rw(
    qp: &mut QueuePair<Cmd>,
    info: &NsInfo,
    b: &DmaBuf,
    write: bool,
    lba: u64,
    blocks: u32,
    tag: u64,
    word: u32,
) -> Result<(), SubmitError> {
    let init = |c: &mut Cmd| {
        c.tag = tag;
        c.lba = lba;
        c.blocks = blocks;
        c.word = word;
    };
    if write {
        qp.write_with(info, lba, blocks, b, 0, init)
    } else {
        qp.read_with(info, lba, blocks, b, 0, init)
    }
}

/// What a slot keeps for a command: the command itself (with its slot), where it last failed,
/// and its retry and failover state.
#[derive(Clone, Copy)]
struct Entry {
    cmd: Cmd,
    /// The registered buffer of a registered-buffer command (its `Cmd` names the slot instead).
    buf: u32,
    /// Path it last failed on ([`NO_PATH`] while it waits for its first path).
    path: u16,
    retries: u8,
    failovers: u16,
    /// When it first failed over (ns on `vfnvme::clock`); 0 while it has not.
    failing_since_ns: u64,
    /// Resend on this path (a same-path retry).
    retry_same: bool,
    /// Earliest resend time (ns on `vfnvme::clock`); set when the command is requeued.
    not_before_ns: u64,
    /// Fast-fail deadline while waiting for a path; set when the command is requeued.
    deadline_ns: u64,
    /// The failure a non-idempotent command gave up failing over on: it completes with
    /// [`IoError::TooManyFailovers`] once `not_before_ns` (its path's CQT) has passed.
    gave_up: Option<Outcome>,
}

impl Entry {
    /// A fresh record for `cmd` on registered buffer `buf` (if it has one): not failed yet.
    fn new(cmd: Cmd, buf: u32) -> Entry {
        Entry {
            cmd,
            buf,
            path: NO_PATH as u16,
            retries: 0,
            failovers: 0,
            failing_since_ns: 0,
            retry_same: false,
            not_before_ns: 0,
            deadline_ns: 0,
            gave_up: None,
        }
    }

    /// The error of a command that gave up failing over (`last` its last failure), at `now_ns`.
    fn too_many_failovers(&self, last: Outcome, now_ns: u64) -> IoError {
        IoError::TooManyFailovers {
            failovers: self.failovers,
            failing_ms: now_ns.saturating_sub(self.failing_since_ns) / 1_000_000,
            last: last.to_string(),
        }
    }
}

/// A run of registered-buffer reads and writes on one path of a [`Channel`], from
/// [`Channel::submitter`]. It borrows the channel: drop it to poll, or to submit what it did not
/// take.
///
/// The channel's room (its slots less what it holds) bounds the run through the queue pair's
/// own admission check ([`QueuePair::limit_new`], lifted when the run is dropped), so a
/// command costs no check of its own for it (about 4 instructions per I/O in the perf tool).
/// A run leaked with `mem::forget` leaves its limit on that queue pair: since a live run
/// borrows the channel, any limit the channel meets outside one is such a leftover, lifted
/// when it first refuses a command (which is then sent again) or by the next run; meanwhile
/// the queue pair takes fewer commands, never more, and the channel counts all it took.
pub struct Submitter<'a> {
    qp: &'a mut QueuePair<Cmd>,
    info: &'a NsInfo,
    bufs: &'a [DmaBuf],
    /// The channel's count of commands held.
    outstanding: &'a mut usize,
}

impl Drop for Submitter<'_> {
    fn drop(&mut self) {
        self.qp.lift_limit();
    }
}

/// A command a [`Submitter`] did not take: the channel is full, the buffer index is not
/// registered, or the path refused it. Submit it with [`Channel::submit_fixed`], which says
/// which (or sends it elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotTaken;

/// A run of registered-buffer reads and writes on a channel: a [`Submitter`] (one path) or
/// [`Turns`] (round-robin over several). A command the run does not take comes back as
/// [`NotTaken`]: submit it with [`Channel::submit_fixed`] once the run is dropped, which says
/// why (or sends it elsewhere).
pub trait Run {
    /// A read (`write` false) or write of the first `blocks` blocks of registered buffer `buf`,
    /// from or to `lba`, completed with `tag`.
    ///
    /// # Errors
    /// [`NotTaken`]: submit it with [`Channel::submit_fixed`] after the run.
    fn rw(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u32,
        buf: u32,
        tag: u64,
    ) -> Result<(), NotTaken>;

    /// A read of the first `blocks` blocks of registered buffer `buf`, from `lba`.
    ///
    /// # Errors
    /// [`NotTaken`]: submit it with [`Channel::submit_fixed`] after the run.
    #[inline(always)]
    fn read(&mut self, lba: u64, blocks: u32, buf: u32, tag: u64) -> Result<(), NotTaken> {
        self.rw(false, lba, blocks, buf, tag)
    }

    /// A write of the first `blocks` blocks of registered buffer `buf`, to `lba`.
    ///
    /// # Errors
    /// [`NotTaken`]: submit it with [`Channel::submit_fixed`] after the run.
    #[inline(always)]
    fn write(&mut self, lba: u64, blocks: u32, buf: u32, tag: u64) -> Result<(), NotTaken> {
        self.rw(true, lba, blocks, buf, tag)
    }
}

impl Run for Submitter<'_> {
    #[inline(always)]
    fn rw(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u32,
        buf: u32,
        tag: u64,
    ) -> Result<(), NotTaken> {
        let Some(b) = self.bufs.get(buf as usize) else {
            return Err(NotTaken);
        };
        take_fixed_rw(
            self.qp,
            self.info,
            b,
            self.outstanding,
            write,
            lba,
            blocks,
            buf,
            tag,
        )
    }
}

/// What a run ([`Submitter`], [`Turns`]) does with a command once it has its queue pair and
/// buffer: queues it as a slotless registered-buffer read or write and counts it among the
/// channel's `outstanding`; a refusal is [`NotTaken`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn take_fixed_rw(
    qp: &mut QueuePair<Cmd>,
    info: &NsInfo,
    b: &DmaBuf,
    outstanding: &mut usize,
    write: bool,
    lba: u64,
    blocks: u32,
    buf: u32,
    tag: u64,
) -> Result<(), NotTaken> {
    let word = Cmd::fixed_rw_word(write, buf);
    issue_fixed_rw(qp, info, b, write, lba, blocks, tag, word).map_err(|_| NotTaken)?;
    *outstanding += 1;
    Ok(())
}

/// Most paths a [`Turns`] run takes turns over (a dual-port SSD has two). Over more,
/// [`Channel::turns`] is `None` and commands go through [`Channel::submit_fixed`].
const TURN_PATHS: usize = 4;
const _: () = assert!(TURN_PATHS.is_power_of_two());

/// A path's queue pair (with its namespace) as a [`Turns`] run holds it, one word; `None` for a
/// path in the tier without one (its turn refuses the command, as `submit_fixed` would send it
/// elsewhere).
type TurnPath<'a> = Option<&'a mut PathQueue>;

/// A run of registered-buffer reads and writes that takes round-robin's turns over the usable
/// paths, from [`Channel::turns`]: the round-robin counterpart of [`Submitter`], for a channel
/// whose pick varies per command. It borrows the channel: drop it to poll, or to submit what it
/// did not take. Each command takes the next turn (at least `min_ios` per path), as
/// [`Channel::submit_fixed`] would: the queue pairs of the tier's paths are looked up once for
/// the run and the turns counted in the run ([`TurnCursor`]), handed back to the channel's
/// selector when it is dropped. The channel's count of what it holds bounds the run. It sets no
/// limit on a queue pair and counts every command as it takes it: a run leaked with
/// `mem::forget` only leaves the selector's turn where the run began.
pub struct Turns<'a> {
    paths: [TurnPath<'a>; TURN_PATHS],
    turns: TurnCursor,
    tier: &'a [usize],
    selector: &'a mut Selector,
    bufs: &'a [DmaBuf],
    /// The channel's count of commands held.
    outstanding: &'a mut usize,
    /// Commands the channel may hold (its slots): the run takes none past it.
    slots: usize,
}

impl Drop for Turns<'_> {
    fn drop(&mut self) {
        self.selector.end_turns(self.tier, &self.turns);
    }
}

impl Run for Turns<'_> {
    #[inline(always)]
    fn rw(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u32,
        buf: u32,
        tag: u64,
    ) -> Result<(), NotTaken> {
        if *self.outstanding >= self.slots {
            return Err(NotTaken);
        }
        let Some(b) = self.bufs.get(buf as usize) else {
            return Err(NotTaken);
        };
        // The cursor's index is below the tier's length, at most TURN_PATHS (a power of two):
        // the mask costs nothing and spares a bounds check.
        let Some(PathQueue { qp, info, .. }) =
            self.paths[self.turns.take_turn() & (TURN_PATHS - 1)].as_deref_mut()
        else {
            return Err(NotTaken);
        };
        take_fixed_rw(qp, info, b, self.outstanding, write, lba, blocks, buf, tag)
    }
}

/// A replacement queue pair waiting to be taken, with the path it was made on.
type Spare = (Arc<PathInfo>, Box<PathQueue>);

/// A path's queue pair, with the namespace as that path's controller reports it (nsid, block
/// size): boxed together, since the namespace changes only with the queue pair, so the common
/// case finds both behind one pointer.
struct PathQueue {
    qp: QueuePair<Cmd>,
    info: NsInfo,
    /// The path's index in the channel: read where the poll stages a completion, beside the
    /// queue pair it already holds, instead of a loop counter kept across the poll.
    path: usize,
}

impl PathQueue {
    /// `qp`, made on `path` (path `index` of namespace `ns`).
    fn new(ns: &MpNamespace, path: &PathInfo, index: usize, qp: QueuePair<Cmd>) -> Box<PathQueue> {
        let info = path
            .ctrl
            .namespace(ns.info.nsid)
            .map_or(ns.info, |n| n.info);
        Box::new(PathQueue {
            qp,
            info,
            path: index,
        })
    }
}

impl std::ops::Deref for PathQueue {
    type Target = QueuePair<Cmd>;
    fn deref(&self) -> &QueuePair<Cmd> {
        &self.qp
    }
}

impl std::ops::DerefMut for PathQueue {
    fn deref_mut(&mut self) -> &mut QueuePair<Cmd> {
        &mut self.qp
    }
}

/// A per-core handle on a multipath namespace. `Send`, not `Sync`.
pub struct Channel {
    ns: Arc<MpNamespace>,
    /// One queue pair per path, with its namespace (boxed: a replacement is moved in from
    /// `spare` as a pointer).
    qps: Vec<Option<Box<PathQueue>>>,
    /// Completions `poll` met that are not a registered-buffer success, with their path: left
    /// for [`Channel::dispose`] once every queue pair has delivered, so that the queue pairs
    /// are borrowed while they deliver (not taken out and put back). As many as there are slots,
    /// reserved.
    staged: Vec<(usize, Completion<Cmd>)>,
    /// The path (controller) each queue pair was made on, by path. A path re-attached since is
    /// `Waiting` until its replacement queue pair is taken.
    origin: Vec<Option<Arc<PathInfo>>>,
    /// Replacement queue pairs of re-attached paths, with the path they were made on, by path;
    /// taken once the old queue pair on that path has delivered everything it held. Meanwhile
    /// the path is `Waiting`.
    spare: Vec<Option<Spare>>,
    /// Some path has a replacement in `spare`: each poll tries to take it.
    replacing: bool,
    params: Vec<PathParams>,
    status: Vec<PathStatus>,
    in_flight: Vec<usize>,
    generation: u64,
    /// Commands held: in flight, or waiting on the requeue ring. At most `opts.slots`.
    outstanding: usize,
    /// One record per slot. There are as many slots as commands may be outstanding, so a command
    /// that needs one always finds one.
    entries: Vec<Entry>,
    /// Descriptors that own their buffers, by slot (`CmdKind::Owned`).
    owned: Vec<Option<IoDesc>>,
    /// Passthrough commands on registered buffers, by slot (`CmdKind::FixedPassthru`).
    fixed_cmds: Vec<PassthruCmd>,
    /// Buffers registered for `submit_fixed`.
    fixed_bufs: Arc<[DmaBuf]>,
    /// Free slots.
    free: Vec<u32>,
    requeue: RequeueRing,
    selector: Selector,
    opts: ChannelOptions,
    inbox: Inbox,
    stats: ChannelStats,
    /// Paths of the best usable tier (optimized, else non-optimized), rebuilt when a status
    /// changes; the common-case pick reads only this.
    tier: Vec<usize>,
    /// The path every common-case pick returns until the path view or the policy changes
    /// (active-passive, or a single usable path); [`VARIES`] when the pick varies per command;
    /// [`STALE`] when `tier` and this must be rebuilt first. One compare in the common case.
    sole: usize,
}

/// Stages a completion for [`Channel::dispose`], passed in pieces (its context's fields) so
/// that the common case of [`Channel::poll`] keeps it in registers.
#[allow(clippy::too_many_arguments)]
#[cold]
#[inline(never)]
fn stage(
    staged: &mut Vec<(usize, Completion<Cmd>)>,
    p: usize,
    tag: u64,
    lba: u64,
    blocks: u32,
    word: u32,
    outcome: Outcome,
    dw0: u32,
) {
    let c = Completion {
        tag: Cmd {
            tag,
            lba,
            blocks,
            word,
        },
        outcome,
        dw0,
        opcode: 0,
    };
    staged.push((p, c));
}

/// No path: `Entry::path` while a command is parked.
const NO_PATH: usize = usize::MAX;
/// [`Channel::sole`] when the pick varies per command (round-robin or least-queue-depth over
/// more than one path, or no usable path).
const VARIES: usize = usize::MAX;
/// [`Channel::sole`] when the path view or the policy changed since the tier was built.
const STALE: usize = usize::MAX - 1;

/// What the channel needs to know about one path's controller (its namespace is in
/// [`PathQueue`]).
#[derive(Clone, Copy)]
struct PathParams {
    /// CRDT1..3 in ms.
    crdt: [u64; 3],
    /// Command Quiesce Time in ns (the configured default when the controller reports 0).
    cqt_ns: u64,
    /// ANA Transition Time in ns: how long an inaccessible or changing group may be waited for.
    anatt_ns: u64,
}

/// The parameters of `path` (the one a queue pair was made on, never a path that replaced it
/// since).
fn path_params(path: &PathInfo, opts: &ChannelOptions) -> PathParams {
    let id = path.ctrl.identify();
    let cqt = match id.cqt_ms() {
        0 => opts.default_cqt_ms,
        v => v,
    };
    PathParams {
        crdt: [id.crdt_ms(1), id.crdt_ms(2), id.crdt_ms(3)],
        cqt_ns: cqt * 1_000_000,
        anatt_ns: id.anatt as u64 * 1_000_000_000,
    }
}

impl Drop for Channel {
    /// Commands still in flight keep their buffers: the device may write them until the
    /// control plane has deleted their queue pairs' queues (see `vfnvme::qpair`, "Buffers belong
    /// to the device"). The registered buffers and the descriptors the channel holds go with
    /// every queue pair that is not idle, freed when the last of them is deleted.
    fn drop(&mut self) {
        let busy = self.qps.iter().flatten().any(|q| !q.is_idle());
        if !busy {
            return;
        }
        let owned: Arc<Vec<IoDesc>> =
            Arc::new(self.owned.iter_mut().filter_map(Option::take).collect());
        for q in self.qps.iter_mut().flatten().filter(|q| !q.is_idle()) {
            q.keep_until_deleted(Box::new((self.fixed_bufs.clone(), owned.clone())));
        }
    }
}

impl Channel {
    /// Creates a channel with a queue pair on every live path. Call on the thread that will use
    /// it; queue creation is an admin operation, done here (and, for a path that was down now,
    /// when it is published back).
    ///
    /// # Errors
    /// A controller error when no path could give a queue pair.
    pub fn new(ns: &Arc<MpNamespace>, opts: ChannelOptions) -> Result<Channel, crate::Error> {
        // The inbox first: a path re-attached from now on leaves this channel a queue pair, and
        // one re-attached before is seen below as its new controller.
        let inbox: Inbox = Arc::new(Mutex::new(Vec::new()));
        ns.register_inbox(&inbox, opts.queue);
        let paths = ns.paths();
        let n = paths.len();
        let mut qps = Vec::with_capacity(n);
        let mut origin = Vec::with_capacity(n);
        let mut params = Vec::with_capacity(n);
        let mut last_err = None;
        for (i, path) in paths.iter().enumerate() {
            params.push(path_params(path, &opts));
            match path.ctrl.io_queue_pair_with(opts.queue) {
                Ok(qp) => {
                    qps.push(Some(PathQueue::new(ns, path, i, qp)));
                    origin.push(Some(path.clone()));
                }
                Err(e) => {
                    log::warn!("channel: no queue pair on path {i}: {e}");
                    last_err = Some(e);
                    qps.push(None);
                    origin.push(None);
                }
            }
        }
        if qps.iter().all(|q| q.is_none()) {
            if let Some(e) = last_err {
                return Err(e.into());
            }
        }
        let slots = opts.slots.clamp(1, Cmd::MAX_INDEX as usize + 1);
        let mut ch = Channel {
            ns: ns.clone(),
            qps,
            staged: Vec::with_capacity(slots),
            origin,
            spare: (0..n).map(|_| None).collect(),
            replacing: false,
            params,
            status: vec![PathStatus::Waiting; n],
            in_flight: vec![0; n],
            generation: u64::MAX,
            outstanding: 0,
            entries: vec![Entry::new(Cmd::default(), 0); slots],
            owned: (0..slots).map(|_| None).collect(),
            fixed_cmds: vec![PassthruCmd::default(); slots],
            fixed_bufs: Arc::from(Vec::new()),
            free: (0..slots as u32).rev().collect(),
            requeue: RequeueRing::new(slots),
            selector: Selector::default(),
            opts,
            inbox,
            stats: ChannelStats::default(),
            tier: Vec::with_capacity(n),
            sole: STALE,
        };
        ch.refresh();
        Ok(ch)
    }

    /// The namespace.
    pub fn namespace(&self) -> &Arc<MpNamespace> {
        &self.ns
    }

    /// Switches the path policy.
    pub fn set_policy(&mut self, policy: Policy) {
        self.opts.policy = policy;
        self.sole = STALE;
    }

    /// What the channel did so far.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Commands held (in flight or waiting to be resent).
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Commands in flight on each path (for tests and tools).
    pub fn in_flight_per_path(&self) -> Vec<usize> {
        self.qps
            .iter()
            .map(|q| q.as_ref().map_or(0, |q| q.in_flight()))
            .collect()
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        vfnvme::clock::now_ns()
    }

    /// Re-reads path states (after the generation moved), takes queue pairs the control plane
    /// left for re-attached paths, and opens one on a path that had none and is usable now.
    fn refresh(&mut self) {
        self.generation = self.ns.generation();
        let arrived = std::mem::take(&mut *self.inbox.lock().unwrap());
        for (i, path, qp) in arrived {
            if let Some(spare) = self.spare.get_mut(i) {
                // A newer replacement supersedes one not taken yet.
                let q = PathQueue::new(&self.ns, &path, i, qp);
                *spare = Some((path, q));
                self.replacing = true;
            }
        }
        if self.replacing {
            self.adopt_replacements();
        }
        for (i, path) in self.ns.paths().iter().enumerate() {
            if self.qps[i].is_none() && self.spare[i].is_none() && path.status().usable() {
                // Down when this channel was created, back now: the control plane makes the
                // queue pair (an admin operation, never on this thread) and hands it over
                // through the inbox, as for a re-attached path.
                self.ns.want_queue_pair(&self.inbox, i);
            }
            let s = self.view(i, path);
            self.set_status(i, s);
        }
    }

    /// The channel's status for path `i`, whose current (published) path is `current`: its
    /// published status if this channel's queue pair on it was made on `current`; else
    /// `Waiting` — while the path is re-attached and its replacement queue pair is on its way or
    /// waits for the old one to deliver what it holds (commands then wait for the replacement
    /// instead of failing), or while the channel has no queue pair on it (unless it is gone).
    fn view(&self, i: usize, current: &Arc<PathInfo>) -> PathStatus {
        if self.spare[i].is_some() {
            return PathStatus::Waiting;
        }
        match &self.origin[i] {
            Some(o) if Arc::ptr_eq(o, current) => current.status(),
            Some(_) => PathStatus::Waiting,
            None if current.status() == PathStatus::Gone => PathStatus::Gone,
            None => PathStatus::Waiting,
        }
    }

    /// The path that this channel's queue pair `p` was made on (the one that answers on it).
    fn origin(&self, p: usize) -> Arc<PathInfo> {
        match &self.origin[p] {
            Some(o) => o.clone(),
            None => self.ns.path(p),
        }
    }

    /// Takes the replacement queue pair of every path whose old queue pair is idle (it has
    /// delivered everything it held: dropping it earlier would lose those commands).
    #[cold]
    #[inline(never)]
    fn adopt_replacements(&mut self) {
        let mut left = false;
        for i in 0..self.qps.len() {
            if self.spare[i].is_none() {
                continue;
            }
            if self.qps[i].as_ref().is_some_and(|q| !q.is_idle()) {
                left = true;
                continue;
            }
            let (path, qp) = self.spare[i].take().expect("checked above");
            self.params[i] = path_params(&path, &self.opts);
            self.qps[i] = Some(qp);
            self.origin[i] = Some(path);
            let s = self.view(i, &self.ns.path(i));
            self.set_status(i, s);
        }
        self.replacing = left;
    }

    /// Path `p` refused a command as not ready (its controller resetting, or its queues not yet
    /// re-created): `Waiting` until the control plane publishes that it is back, which it does
    /// only after it is. A queue pair that is ready again by now (it may have become so just
    /// after refusing, its publication already seen) keeps the path's status.
    #[cold]
    fn not_ready(&mut self, p: usize) {
        if !self.qps[p].as_ref().is_some_and(|q| q.is_ready()) {
            self.set_status(p, PathStatus::Waiting);
        }
    }

    /// Path `p`'s controller is gone (a removal completion or refusal): `Gone`, unless the path
    /// was re-attached (then `Waiting`, so that what it held waits for the replacement).
    #[cold]
    fn path_lost(&mut self, p: usize) {
        let current = self.ns.path(p);
        let replaced = self.spare[p].is_some()
            || self.origin[p]
                .as_ref()
                .is_some_and(|o| !Arc::ptr_eq(o, &current));
        let s = if replaced {
            PathStatus::Waiting
        } else {
            PathStatus::Gone
        };
        self.set_status(p, s);
    }

    #[cold]
    #[inline(never)]
    fn rebuild_tier(&mut self) {
        self.tier.clear();
        let best = if self.status.contains(&PathStatus::Optimized) {
            PathStatus::Optimized
        } else {
            PathStatus::NonOptimized
        };
        self.tier
            .extend((0..self.status.len()).filter(|&i| self.status[i] == best));
        // Active-passive picks the same path until a status changes; so does any policy when
        // one path is usable (round-robin's turn restarts on it).
        self.sole = match self.opts.policy {
            Policy::ActivePassive { .. } => self.pick(None).unwrap_or(VARIES),
            _ if self.tier.len() == 1 => {
                self.selector.restart_on(self.tier[0]);
                self.tier[0]
            }
            _ => VARIES,
        };
    }

    /// The common-case pick: no path to avoid. A pick that cannot vary until the path view
    /// changes is cached (`sole`); round-robin and least-queue-depth work over the cached tier
    /// without looking at anything else.
    #[inline]
    fn pick_any(&mut self) -> Option<usize> {
        if self.sole < STALE {
            return Some(self.sole);
        }
        self.pick_varying()
    }

    /// The cached pick ([`Channel::sole`]), rebuilt first if it is stale: a path, or [`VARIES`].
    #[inline]
    fn current_sole(&mut self) -> usize {
        if self.sole == STALE {
            self.rebuild_tier();
        }
        self.sole
    }

    /// [`Channel::pick_any`] when the cached pick is stale or varies per command.
    #[inline]
    fn pick_varying(&mut self) -> Option<usize> {
        let sole = self.current_sole();
        if sole != VARIES {
            return Some(sole);
        }
        if let Policy::RoundRobin { min_ios } = self.opts.policy {
            return self.selector.round_robin(&self.tier, min_ios);
        }
        self.pick_other()
    }

    /// The common-case pick of least-queue-depth over more than one path, or of active-passive
    /// with no usable path. Out of line: inlined, it made the other cases' code worse.
    #[inline(never)]
    fn pick_other(&mut self) -> Option<usize> {
        match self.opts.policy {
            Policy::LeastQueueDepth => self.least_queue_depth(),
            _ => self.pick(None),
        }
    }

    /// Least queue depth over the cached tier: the first path with the fewest commands in flight
    /// (what [`Selector::pick`] chooses, without rebuilding the tier).
    #[inline]
    fn least_queue_depth(&self) -> Option<usize> {
        let mut best = None;
        let mut depth = usize::MAX;
        for &i in &self.tier {
            let d = self.qps[i].as_ref().map_or(usize::MAX, |q| q.in_flight());
            if d < depth || best.is_none() {
                best = Some(i);
                depth = d;
            }
        }
        best
    }

    /// The general pick. A pick that avoids a path may move the selector's turn, so the cached
    /// `sole` is recomputed before the next common-case pick.
    fn pick(&mut self, exclude: Option<usize>) -> Option<usize> {
        if exclude.is_some() {
            self.sole = STALE;
        }
        if matches!(self.opts.policy, Policy::LeastQueueDepth) {
            for (i, q) in self.qps.iter().enumerate() {
                self.in_flight[i] = q.as_ref().map_or(0, |q| q.in_flight());
            }
        }
        self.selector
            .pick(self.opts.policy, &self.status, &self.in_flight, exclude)
    }

    /// Changes the channel's view of one path.
    #[inline]
    fn set_status(&mut self, p: usize, s: PathStatus) {
        if self.status[p] != s {
            self.status[p] = s;
            self.sole = STALE;
        }
    }

    /// How long a command may wait for a path: the fast-fail timeout, or ANATT when a path's
    /// group is inaccessible or changing (it may settle within ANATT).
    fn hold_ns(&self) -> u64 {
        let mut wait = self.opts.fast_fail_ms * 1_000_000;
        for (i, p) in self.ns.paths().iter().enumerate() {
            if matches!(p.ana(), AnaState::INACCESSIBLE | AnaState::CHANGE) {
                wait = wait.max(self.params[i].anatt_ns);
            }
        }
        wait
    }

    fn any_waiting(&self) -> bool {
        self.status.contains(&PathStatus::Waiting)
    }

    /// Builds and queues `cmd` on path `p`: a new command id, the nsid of this path's namespace,
    /// PRPs in this path's DMA domain. A read or write on a registered buffer is passed as its
    /// fields, not a [`Cmd`]: the command is built right where the queue pair stores it, which
    /// keeps it out of a stack copy (stored field by field, then loaded whole: a
    /// store-forwarding stall).
    #[inline(always)]
    fn send(&mut self, p: usize, cmd: &Cmd) -> Result<(), SubmitError> {
        match cmd.kind() {
            kind @ (CmdKind::FixedRead | CmdKind::FixedWrite) => {
                let buf = self.buf_of(cmd);
                let q = self.qps[p].as_mut().expect("picked path has a queue pair");
                issue_fixed_rw(
                    &mut q.qp,
                    &q.info,
                    &self.fixed_bufs[buf as usize],
                    kind == CmdKind::FixedWrite,
                    cmd.lba,
                    cmd.blocks(),
                    cmd.tag,
                    cmd.word,
                )
            }
            _ => self.send_held(p, *cmd),
        }
    }

    /// [`Channel::send`] for a command kept in a slot: a passthrough command or a descriptor
    /// that owns its buffers.
    #[inline(never)]
    fn send_held(&mut self, p: usize, cmd: Cmd) -> Result<(), SubmitError> {
        let q = self.qps[p].as_mut().expect("picked path has a queue pair");
        let (qp, info) = (&mut q.qp, &q.info);
        let slot = cmd.slot() as usize;
        match cmd.kind() {
            CmdKind::FixedPassthru => {
                let pc = self.fixed_cmds[slot];
                let data = self.fixed_bufs.get(self.entries[slot].buf as usize);
                Self::issue_passthru(qp, info, pc, data, None, cmd)
            }
            CmdKind::Owned => {
                let d = self.owned[slot].as_ref().expect("owned slot");
                let (data, md) = (d.data.as_ref(), d.metadata.as_ref());
                match d.kind {
                    IoKind::Read { lba, blocks } => {
                        qp.read(info, lba, blocks, data.expect("read has a buffer"), 0, cmd)
                    }
                    IoKind::Write { lba, blocks } => {
                        qp.write(info, lba, blocks, data.expect("write has a buffer"), 0, cmd)
                    }
                    IoKind::Passthru { cmd: pc, .. } => {
                        Self::issue_passthru(qp, info, pc, data, md, cmd)
                    }
                }
            }
            CmdKind::FixedRead | CmdKind::FixedWrite => unreachable!("sent by Channel::send"),
        }
    }

    /// Queues a passthrough command with the nsid of this path's namespace.
    fn issue_passthru(
        qp: &mut QueuePair<Cmd>,
        info: &NsInfo,
        mut pc: PassthruCmd,
        data: Option<&DmaBuf>,
        md: Option<&DmaBuf>,
        cmd: Cmd,
    ) -> Result<(), SubmitError> {
        if pc.nsid != 0 && pc.nsid != u32::MAX {
            pc.nsid = info.nsid;
        }
        qp.passthru(&pc, data.map(DataRef::whole), md.map(DataRef::whole), cmd)
    }

    /// Takes a free slot for a command that needs one, with a fresh record. There is always one:
    /// there are as many slots as commands may be outstanding.
    fn take_slot(&mut self, cmd: Cmd) -> Cmd {
        let slot = self
            .free
            .pop()
            .expect("a slot for every outstanding command");
        debug_assert!(!cmd.has_slot());
        let buf = cmd.index();
        let cmd = cmd.with_slot(slot);
        self.entries[slot as usize] = Entry::new(cmd, buf);
        cmd
    }

    /// The registered buffer of a registered-buffer command.
    #[inline]
    fn buf_of(&self, cmd: &Cmd) -> u32 {
        if cmd.has_slot() {
            self.entries[cmd.index() as usize].buf
        } else {
            cmd.index()
        }
    }

    /// `cmd` with a slot: its own, or a new one for a registered read or write that has none yet
    /// (it gets one when it must wait or has failed).
    fn slotted(&mut self, cmd: Cmd) -> Cmd {
        if !cmd.has_slot() {
            self.take_slot(cmd)
        } else {
            cmd
        }
    }

    /// Gives back the slot of a command that is done, if it had one.
    #[inline]
    fn release_slot(&mut self, cmd: Cmd) {
        if cmd.has_slot() {
            self.free.push(cmd.index());
        }
    }

    /// Submits a command. On refusal the descriptor comes back untouched.
    ///
    /// # Errors
    /// [`Refused`] with [`RefuseReason::Full`] (poll and retry), `NoPath`, or `Invalid`.
    #[inline]
    pub fn submit(&mut self, desc: IoDesc) -> Result<(), Box<Refused>> {
        if self.generation != self.ns.generation() {
            self.refresh();
        }
        if self.outstanding >= self.entries.len() {
            return Err(Box::new(Refused {
                reason: RefuseReason::Full,
                desc,
            }));
        }
        let cmd = self.take_slot(Cmd::new(
            CmdKind::Owned,
            desc.idempotent(),
            desc.tag,
            0,
            0,
            0,
        ));
        self.owned[cmd.slot() as usize] = Some(desc);
        self.start(cmd).map_err(|reason| {
            let desc = self.owned[cmd.slot() as usize].take().expect("just stored");
            Box::new(Refused { reason, desc })
        })
    }

    /// Registers buffers for [`Channel::submit_fixed`], like io_uring's fixed buffers: the caller
    /// keeps its own handle on them (to fill and check data), commands name them by index, and
    /// nothing is moved in or out per command. Replaces an earlier set.
    ///
    /// # Errors
    /// [`RefuseReason::Invalid`] while any command is outstanding (one may be on a registered
    /// buffer: the channel does not keep count of which are, to keep their path short).
    pub fn register_buffers(&mut self, bufs: Arc<[DmaBuf]>) -> Result<(), RefuseReason> {
        if bufs.len() > Cmd::MAX_INDEX as usize + 1 {
            return Err(RefuseReason::Invalid(Box::new(format!(
                "{} buffers: at most {} can be registered",
                bufs.len(),
                Cmd::MAX_INDEX as u64 + 1
            ))));
        }
        if self.outstanding > 0 {
            return Err(RefuseReason::Invalid(Box::new(format!(
                "buffers can be registered only while no command is outstanding ({} are)",
                self.outstanding
            ))));
        }
        self.fixed_bufs = bufs;
        Ok(())
    }

    /// Submits a command on registered buffer `buf` (the whole buffer for passthrough; the first
    /// `blocks` blocks for reads and writes). It fails over like any other command; its
    /// completion carries `buf_index` and no buffers. A read or write goes by the path view of
    /// the last [`Channel::poll`]: path changes published since are taken up by the next one.
    ///
    /// # Errors
    /// [`RefuseReason::Full`] (poll and retry), `NoPath`, or `Invalid` (including an index past
    /// the registered buffers).
    #[inline(always)]
    pub fn submit_fixed(&mut self, kind: IoKind, buf: u32, tag: u64) -> Result<(), RefuseReason> {
        match kind {
            IoKind::Read { lba, blocks } => self.submit_rw(false, lba, blocks, buf, tag),
            IoKind::Write { lba, blocks } => self.submit_rw(true, lba, blocks, buf, tag),
            IoKind::Passthru { .. } => self.submit_fixed_slow(kind, buf, tag),
        }
    }

    /// A read (`write` false) or write of the first `blocks` blocks of registered buffer `buf`,
    /// from or to `lba`, completed with `tag`: [`Channel::submit_fixed`] of an
    /// [`IoKind::Read`] or [`IoKind::Write`], in the shape of [`Run::rw`]. Taking the fields, not
    /// an `IoKind` (which a passthrough command makes 80 bytes), spares the caller building
    /// one in memory for the refusal path (about 4 instructions per I/O).
    ///
    /// # Errors
    /// As [`Channel::submit_fixed`].
    #[inline(always)]
    pub fn submit_rw(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u32,
        buf: u32,
        tag: u64,
    ) -> Result<(), RefuseReason> {
        // The common case, small enough to inline into the caller's loop: room in the channel,
        // and the picked path takes it. The command needs no slot: all of it travels in its
        // queue pair's command-id table. The path view is the one the last poll saw (a new
        // generation is taken up there, as the design has it): a command sent to a path that
        // has failed since is refused by its queue pair or fails over like any other.
        if self.outstanding < self.entries.len() {
            if let Some(p) = self.pick_any() {
                // The buffer is looked up once, here, after the pick (which may rebuild the
                // channel's view, so a length checked before it would be checked again).
                if let (Some(Some(q)), Some(b)) =
                    (self.qps.get_mut(p), self.fixed_bufs.get(buf as usize))
                {
                    let PathQueue { qp, info, .. } = &mut **q;
                    let word = Cmd::fixed_rw_word(write, buf);
                    return match issue_fixed_rw(qp, info, b, write, lba, blocks, tag, word) {
                        Ok(()) => {
                            self.outstanding += 1;
                            Ok(())
                        }
                        Err(e) => {
                            let cmd = Cmd::fixed_rw(write, lba, blocks, buf, tag);
                            self.start_slow(cmd, Some((p, e)))
                        }
                    };
                }
            }
            // No usable path now, or a bad buffer index: the slow path parks the command, or
            // refuses it.
        }
        self.submit_rw_slow(write, lba, blocks, buf, tag)
    }

    /// [`Channel::submit_rw`] off the common path, as [`Channel::submit_fixed`] of the same
    /// read or write.
    #[cold]
    #[inline(never)]
    fn submit_rw_slow(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u32,
        buf: u32,
        tag: u64,
    ) -> Result<(), RefuseReason> {
        let kind = if write {
            IoKind::Write { lba, blocks }
        } else {
            IoKind::Read { lba, blocks }
        };
        self.submit_fixed_slow(kind, buf, tag)
    }

    /// Starts a run of registered-buffer reads and writes on the path the policy picks for every
    /// command until a path's state changes (active-passive, or a single usable path), as an
    /// application submits after each poll: the path, its queue pair and the buffers are looked
    /// up once for the run instead of once per command. `None` when the pick varies per command
    /// (round-robin or least-queue-depth over several paths) or no path is usable: then use
    /// [`Channel::submit_fixed`]. A command the run cannot take comes back as [`NotTaken`]:
    /// submit it with `submit_fixed` once the run is dropped, which sends it to another path,
    /// parks it, or refuses it, as for any command.
    #[inline(always)]
    pub fn submitter(&mut self) -> Option<Submitter<'_>> {
        let p = self.current_sole();
        let room = self.entries.len().saturating_sub(self.outstanding);
        let PathQueue { qp, info, .. } = self.qps.get_mut(p)?.as_deref_mut()?;
        qp.limit_new(room);
        Some(Submitter {
            qp,
            info,
            bufs: &self.fixed_bufs,
            outstanding: &mut self.outstanding,
        })
    }

    /// Lifts the limit a [`Submitter`] leaked with `mem::forget` left on path `p`'s queue pair
    /// (only a leaked one can have: a live run borrows the channel). True if there was one.
    #[cold]
    fn lift_leaked_limit(&mut self, p: usize) -> bool {
        match self.qps.get_mut(p).and_then(|q| q.as_deref_mut()) {
            Some(q) if q.is_limited() => {
                q.lift_limit();
                true
            }
            _ => false,
        }
    }

    /// Starts a run of registered-buffer reads and writes taking round-robin's turns over the
    /// usable paths: where [`Channel::submitter`] is `None` because the policy is round-robin
    /// over more than one usable path. `None` otherwise (then use `submitter`, or
    /// [`Channel::submit_fixed`]). What the run cannot take comes back as [`NotTaken`], for
    /// `submit_fixed` once it is dropped.
    #[inline(always)]
    pub fn turns(&mut self) -> Option<Turns<'_>> {
        let Policy::RoundRobin { min_ios } = self.opts.policy else {
            return None;
        };
        if self.current_sole() != VARIES || !(2..=TURN_PATHS).contains(&self.tier.len()) {
            return None;
        }
        // The tier is ascending: its paths' queue pairs in one pass.
        let mut paths: [TurnPath<'_>; TURN_PATHS] = Default::default();
        let mut n = 0;
        for (i, q) in self.qps.iter_mut().enumerate() {
            if self.tier.get(n) == Some(&i) {
                paths[n] = q.as_deref_mut();
                n += 1;
            }
        }
        Some(Turns {
            paths,
            turns: self.selector.begin_turns(&self.tier, min_ios),
            tier: &self.tier,
            selector: &mut self.selector,
            slots: self.entries.len(),
            bufs: &self.fixed_bufs,
            outstanding: &mut self.outstanding,
        })
    }

    /// Everything [`Channel::submit_fixed`] does not do inline: a stale path view, a bad buffer
    /// index, a full channel, no usable path, and passthrough commands.
    #[cold]
    #[inline(never)]
    fn submit_fixed_slow(&mut self, kind: IoKind, buf: u32, tag: u64) -> Result<(), RefuseReason> {
        if self.generation != self.ns.generation() {
            self.refresh();
        }
        if buf as usize >= self.fixed_bufs.len() {
            return Err(RefuseReason::Invalid(Box::new(format!(
                "buffer {buf} is not registered ({} are)",
                self.fixed_bufs.len()
            ))));
        }
        if self.outstanding >= self.entries.len() {
            return Err(RefuseReason::Full);
        }
        let cmd = match kind {
            IoKind::Read { lba, blocks } | IoKind::Write { lba, blocks } => {
                let write = matches!(kind, IoKind::Write { .. });
                Cmd::fixed_rw(write, lba, blocks, buf, tag)
            }
            IoKind::Passthru { cmd, idempotent } => {
                let c =
                    self.take_slot(Cmd::new(CmdKind::FixedPassthru, idempotent, tag, 0, 0, buf));
                self.fixed_cmds[c.slot() as usize] = cmd;
                c
            }
        };
        self.start(cmd)
    }

    /// Sends a new command to a path, or parks it on the requeue ring when no path is usable but
    /// one may come back; either way it is now outstanding. On refusal its slot, if it has one,
    /// is freed (an owned descriptor stays in `owned` for the caller to take back).
    #[inline]
    fn start(&mut self, cmd: Cmd) -> Result<(), RefuseReason> {
        let first = match self.pick_any() {
            Some(p) => match self.send(p, &cmd) {
                Ok(()) => {
                    self.outstanding += 1;
                    return Ok(());
                }
                Err(e) => Some((p, e)),
            },
            None => None,
        };
        self.start_slow(cmd, first)
    }

    /// The rest of [`Channel::start`], off the common path: learns from the first path's refusal
    /// (`first`), then tries the other paths or parks the command on the requeue ring; on
    /// refusal, frees its slot.
    #[cold]
    #[inline(never)]
    fn start_slow(
        &mut self,
        cmd: Cmd,
        mut first: Option<(usize, SubmitError)>,
    ) -> Result<(), RefuseReason> {
        let r = loop {
            let (p, err) = match first.take() {
                Some(f) => f,
                None => {
                    let Some(p) = self.pick_any() else {
                        if self.any_waiting() {
                            // Wait on the ring for a path to come back.
                            let cmd = self.slotted(cmd);
                            let now = self.now_ns();
                            let wait = self.hold_ns();
                            let e = &mut self.entries[cmd.slot() as usize];
                            e.path = NO_PATH as u16; // on no path yet: none to avoid
                            e.not_before_ns = now;
                            e.deadline_ns = now + wait;
                            self.requeue.push(cmd.slot());
                            self.outstanding += 1;
                            return Ok(());
                        }
                        break RefuseReason::NoPath;
                    };
                    match self.send(p, &cmd) {
                        Ok(()) => {
                            self.outstanding += 1;
                            return Ok(());
                        }
                        Err(e) => (p, e),
                    }
                }
            };
            match err {
                SubmitError::QueueFull if self.lift_leaked_limit(p) => {} // and again
                SubmitError::QueueFull => break RefuseReason::Full,
                SubmitError::NotReady { .. } => self.not_ready(p),
                SubmitError::DeviceGone { .. } => self.path_lost(p),
                e => break RefuseReason::Invalid(Box::new(e.to_string())),
            }
        };
        self.release_slot(cmd);
        Err(r)
    }

    /// Rings every path's doorbell for commands submitted since the last poll.
    pub fn ring(&mut self) {
        for q in self.qps.iter_mut().flatten() {
            q.ring();
        }
    }

    /// Polls every path, decides the fate of each completion, resends what is due from the
    /// requeue ring, and lends up to `max` finished commands to `f` (which takes the buffers it
    /// keeps, see [`MpCompletion`]).
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(&mut MpCompletion)) -> usize {
        if self.generation != self.ns.generation() {
            self.refresh();
        }
        // Successes counted once per poll, not once each.
        let mut ok = 0;
        let staged = &mut self.staged;
        for q in self.qps.iter_mut() {
            // An idle queue pair has nothing to deliver (a path active-passive does not use).
            let Some(q) = q.as_deref_mut().filter(|q| !q.is_idle()) else {
                continue;
            };
            let PathQueue { qp, path, .. } = q;
            loop {
                let r = qp.poll(max, |c| {
                    // Taken apart, and passed to the slow path in pieces: a completion passed
                    // whole to a call lives in memory on every path (10 instructions per I/O).
                    let Completion {
                        tag: cmd,
                        outcome,
                        dw0,
                        ..
                    } = c;
                    // The common case, inline: a registered-buffer read or write (the only
                    // commands without a slot) that succeeded.
                    if outcome.is_success() && !cmd.has_slot() {
                        ok += 1;
                        // Nothing to drop unless the callback put something there: a completion
                        // moved into `mem::forget` or drop glue lived in memory (10 instructions).
                        let mut done = std::mem::ManuallyDrop::new(MpCompletion {
                            tag: cmd.tag,
                            result: Ok(dw0),
                            data: None,
                            metadata: None,
                            buf_index: Some(cmd.index()),
                        });
                        f(&mut done);
                        if done.result.is_err() || done.data.is_some() || done.metadata.is_some() {
                            drop_slow(std::mem::ManuallyDrop::into_inner(done));
                        }
                        return;
                    }
                    let Cmd {
                        tag,
                        lba,
                        blocks,
                        word,
                    } = cmd;
                    stage(staged, *path, tag, lba, blocks, word, outcome, dw0);
                });
                match r {
                    Ok(_) => break,
                    Err(e) => {
                        self.stats.bad_completions += 1;
                        log::warn!("{e}");
                    }
                }
            }
        }
        self.outstanding -= ok;
        self.stats.completed += ok as u64;
        // One test for the three kinds of work the common case has none of.
        if !self.staged.is_empty() | self.replacing | !self.requeue.is_empty() {
            return ok + self.poll_slow(&mut f);
        }
        ok
    }

    /// What [`Channel::poll`] does after its queue pairs have delivered, when there is more than
    /// successes: disposes of each staged completion in the order they came, takes replacement
    /// queue pairs, and resends what is due from the requeue ring. Returns how many completed.
    #[cold]
    #[inline(never)]
    fn poll_slow(&mut self, f: &mut dyn FnMut(&mut MpCompletion)) -> usize {
        let mut n = 0;
        if !self.staged.is_empty() {
            // Taken out while disposing (dispose needs the channel), and put back with its
            // capacity.
            let mut staged = std::mem::take(&mut self.staged);
            for (p, c) in staged.drain(..) {
                if self.dispose(p, c, f) {
                    n += 1;
                }
            }
            self.staged = staged;
        }
        if self.replacing {
            // An old queue pair may have delivered its last command just now: take its
            // replacement before resending what it held.
            self.adopt_replacements();
        }
        if !self.requeue.is_empty() {
            n += self.drain_requeue(f);
        }
        n
    }

    /// Applies the disposition rules to one completion from path `p`. Returns true if it
    /// completed.
    fn dispose(
        &mut self,
        p: usize,
        c: Completion<Cmd>,
        f: &mut dyn FnMut(&mut MpCompletion),
    ) -> bool {
        let cmd = c.tag;
        let retries = match cmd.slot() {
            NO_SLOT => 0,
            s => self.entries[s as usize].retries,
        };
        let d = dispose(c.outcome, retries < self.opts.retries, self.params[p].crdt);
        if d == Disposition::Complete {
            let result = match c.outcome {
                Outcome::Status(st) if st.is_success() => Ok(c.dw0),
                Outcome::Status(st) => Err(IoError::Status {
                    ctrl: self.origin(p).ctrl.name().clone(),
                    status: st,
                }),
                other => Err(IoError::Refused(other.to_string())),
            };
            self.complete(cmd, result, f);
            return true;
        }
        // Learn from the failure before resending.
        match c.outcome {
            Outcome::Status(st) if st.sct() == sct::PATH => {
                let path = self.origin(p);
                path.ana_stale
                    .store(true, std::sync::atomic::Ordering::Release);
                let s = if st.sc() == path_sc::ANA_PERSISTENT_LOSS {
                    PathStatus::Gone
                } else {
                    PathStatus::Waiting
                };
                self.set_status(p, s);
            }
            // A reset says nothing about now: the path may be back already, and the publication
            // that said so consumed by an earlier refresh (nothing would publish again). If it is
            // not back, resending finds out (a NotReady refusal marks it Waiting).
            Outcome::Reset => {}
            Outcome::Removed => self.path_lost(p),
            _ => {}
        }
        let now = self.now_ns();
        // An ANA transition or inaccessible group may take up to ANATT to settle: wait at least
        // that long for a usable path (and keep failing over at least that long) before giving up.
        let mut wait_ns = self.opts.fast_fail_ms * 1_000_000;
        if let Outcome::Status(st) = c.outcome {
            if st.sct() == sct::PATH
                && (st.sc() == path_sc::ANA_TRANSITION || st.sc() == path_sc::ANA_INACCESSIBLE)
            {
                wait_ns = wait_ns.max(self.params[p].anatt_ns);
            }
        }
        // A registered read or write gets its slot at its first failure.
        let cmd = self.slotted(cmd);
        let s = &mut self.entries[cmd.slot() as usize];
        s.path = p as u16;
        match d {
            Disposition::Retry { delay_ms } => {
                s.retries += 1;
                s.retry_same = true;
                s.not_before_ns = now + delay_ms * 1_000_000;
                self.stats.retries += 1;
            }
            Disposition::Failover => {
                s.failovers = s.failovers.saturating_add(1);
                if s.failing_since_ns == 0 {
                    s.failing_since_ns = now;
                }
                let failing_ns = now - s.failing_since_ns;
                if s.failovers > self.opts.max_failovers || failing_ns > wait_ns {
                    if cmd.idempotent() {
                        let err = s.too_many_failovers(c.outcome, now);
                        self.complete(cmd, Err(err), f);
                        return true;
                    }
                    // A copy may still be in flight on the path it failed on until that path's
                    // CQT has passed: "failed" before then could be overtaken by it (a retry by
                    // the application, say). Held until then; drain_requeue completes it.
                    s.gave_up = Some(c.outcome);
                    s.not_before_ns = now + self.params[p].cqt_ns;
                    wait_ns = 0;
                    self.stats.quiesce_waits += 1;
                } else {
                    s.retry_same = false;
                    s.not_before_ns = if cmd.idempotent() {
                        now
                    } else {
                        self.stats.quiesce_waits += 1;
                        now + self.params[p].cqt_ns
                    };
                    self.stats.failovers += 1;
                }
            }
            Disposition::Complete => unreachable!(),
        }
        s.deadline_ns = s.not_before_ns + wait_ns;
        let pushed = self.requeue.push(cmd.slot());
        debug_assert!(pushed, "the ring holds every slot");
        false
    }

    /// Finishes `cmd`: frees its slot and hands its result and buffers to `f`.
    fn complete(
        &mut self,
        cmd: Cmd,
        result: Result<u32, IoError>,
        f: &mut dyn FnMut(&mut MpCompletion),
    ) {
        let (data, metadata, buf_index) = match cmd.kind() {
            CmdKind::Owned => {
                let d = self.owned[cmd.slot() as usize]
                    .take()
                    .expect("an owned command keeps its descriptor");
                (d.data, d.metadata, None)
            }
            _ => (None, None, Some(self.buf_of(&cmd))),
        };
        self.release_slot(cmd);
        self.outstanding -= 1;
        self.stats.completed += 1;
        if matches!(result, Err(IoError::NoPath)) {
            self.stats.no_path += 1;
        }
        f(&mut MpCompletion {
            tag: cmd.tag,
            result,
            data,
            metadata,
            buf_index,
        });
    }

    /// Resends what is due from the requeue ring. Returns how many completed (with errors).
    #[cold]
    fn drain_requeue(&mut self, f: &mut dyn FnMut(&mut MpCompletion)) -> usize {
        let now = self.now_ns();
        let mut done = 0;
        for _ in 0..self.requeue.len() {
            let slot = self.requeue.pop().expect("len checked");
            let s = self.entries[slot as usize];
            if s.not_before_ns > now {
                self.requeue.push(slot);
                continue;
            }
            if let Some(outcome) = s.gave_up {
                // A non-idempotent command that gave up, its CQT now passed.
                self.complete(s.cmd, Err(s.too_many_failovers(outcome, now)), f);
                done += 1;
                continue;
            }
            let (last, retry_same, deadline_ns) = (s.path as usize, s.retry_same, s.deadline_ns);
            let target = if retry_same && self.status.get(last).is_some_and(|s| s.usable()) {
                Some(last)
            } else {
                self.pick(Some(last))
            };
            let Some(p) = target else {
                if self.any_waiting() && now < deadline_ns {
                    self.requeue.push(slot);
                } else {
                    self.complete(s.cmd, Err(IoError::NoPath), f);
                    done += 1;
                }
                continue;
            };
            match self.send(p, &s.cmd) {
                Ok(()) => {}
                Err(SubmitError::QueueFull) => {
                    self.lift_leaked_limit(p);
                    self.requeue.push(slot);
                }
                Err(SubmitError::NotReady { .. }) => {
                    self.not_ready(p);
                    self.requeue.push(slot);
                }
                Err(SubmitError::DeviceGone { .. }) => {
                    self.path_lost(p);
                    self.requeue.push(slot);
                }
                Err(e) => {
                    self.complete(s.cmd, Err(IoError::Refused(e.to_string())), f);
                    done += 1;
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_keeps_its_fields_through_packing_and_taking_a_slot() {
        let max = Cmd::MAX_INDEX;
        for (cmd, kind, idempotent, buf) in [
            (
                Cmd::fixed_rw(false, 7, 8, 3, 99),
                CmdKind::FixedRead,
                true,
                3,
            ),
            (
                Cmd::fixed_rw(true, u64::MAX, u32::MAX, max, 1),
                CmdKind::FixedWrite,
                false,
                max,
            ),
            (
                Cmd::new(CmdKind::FixedPassthru, true, 5, 0, 0, 2),
                CmdKind::FixedPassthru,
                true,
                2,
            ),
            (
                Cmd::new(CmdKind::Owned, false, 6, 0, 0, 0),
                CmdKind::Owned,
                false,
                0,
            ),
            (
                Cmd::new(CmdKind::Owned, true, 6, 0, 0, max),
                CmdKind::Owned,
                true,
                max,
            ),
            (
                Cmd::new(CmdKind::FixedPassthru, false, 5, 0, 0, 1),
                CmdKind::FixedPassthru,
                false,
                1,
            ),
            // A registered read or write is idempotent by its kind, whatever it was built with.
            (
                Cmd::new(CmdKind::FixedWrite, true, 5, 9, 1, 4),
                CmdKind::FixedWrite,
                false,
                4,
            ),
            (
                Cmd::new(CmdKind::FixedRead, false, 5, 9, 1, 4),
                CmdKind::FixedRead,
                true,
                4,
            ),
        ] {
            assert_eq!(cmd.kind(), kind);
            assert_eq!(cmd.idempotent(), idempotent);
            assert!(!cmd.has_slot());
            assert_eq!(cmd.slot(), NO_SLOT);
            assert_eq!(cmd.index(), buf);
            for slot in [0, 1, max] {
                let s = cmd.with_slot(slot);
                assert!(s.has_slot());
                assert_eq!(s.slot(), slot);
                assert_eq!(
                    (s.kind(), s.idempotent(), s.blocks(), s.tag, s.lba),
                    (kind, idempotent, cmd.blocks(), cmd.tag, cmd.lba),
                    "taking slot {slot} changes nothing else"
                );
            }
        }
        let w = Cmd::fixed_rw(true, u64::MAX, u32::MAX, max, 1);
        assert_eq!((w.blocks(), w.lba, w.tag), (u32::MAX, u64::MAX, 1));
    }
}
