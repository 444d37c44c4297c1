//! The per-core I/O loop.
//!
//! One pinned thread per core owns, for every namespace it runs on, `-P` queue pairs (or
//! multipath channels) and `-q` queue slots. Each slot has its DMA buffer, allocated once from
//! the core's [`DmaCache`]; its index is the command tag, so a completion finds its buffer and
//! submission time with one array index. The loop:
//!
//! 1. polls each namespace's queues; completions go into a preallocated array;
//! 2. if any arrived, reads the clock once: that is the completion time of the batch (latency =
//!    now − submission time, recorded into the core's histogram) and the submission time of the
//!    slots resubmitted right after;
//! 3. resubmits the freed slots (the doorbell is rung once, by the next poll).
//!
//! Nothing on this path allocates, locks, or divides: LBAs come from [`WyRand`] and a
//! multiply-shift, sequential cursors wrap with a compare, errors are counted into a table
//! indexed by (status code type, status code). Progress is published with one relaxed atomic
//! store per batch to a cache line owned by the core.
//!
//! `verify` also keeps, per I/O unit of the worker's disjoint LBA range, the generation last
//! written and an in-flight flag; after the timed phase it reads back every unit written and
//! checks it (see [`super::verify`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Barrier};

use hdrhistogram::Histogram;

use super::lathist::LatHist;
use vfnvme::qpair::SubmitError;
use vfnvme::spec::Status;
use vfnvme::{NsInfo, Outcome, QueueOptions, QueuePair};
use vfnvme_hugepages::{DmaBuf, DmaCache, DmaPool};
use vfnvme_mpath::channel::RefuseReason;
use vfnvme_mpath::{Channel, ChannelOptions, IoError, Policy, Run};

use super::args::Workload;
use super::rng::{mix, percent_threshold, WyRand};
use super::target::NsTarget;
use super::verify::{Mismatch, VerifyState};

/// Highest latency the histograms hold (longer ones are clamped): 100 s.
pub const HIST_MAX_NS: u64 = 100_000_000_000;

/// Longest wait for in-flight I/O after the run before giving up on it.
pub const DRAIN_LIMIT_NS: u64 = 60_000_000_000;

/// Run parameters shared by every core.
#[derive(Clone, Debug)]
pub struct WorkerParams {
    /// Slots per namespace.
    pub queue_depth: usize,
    /// Bytes per I/O.
    pub io_size: u64,
    /// Workload.
    pub workload: Workload,
    /// Percentage of reads.
    pub read_pct: u8,
    /// Queues (queue pairs or channels) per namespace.
    pub qpairs: usize,
    /// Entries per I/O queue.
    pub io_queue_size: u16,
    /// Command timeout.
    pub io_timeout_ms: u32,
    /// Multipath policy.
    pub policy: Policy,
    /// Warm-up, ns.
    pub warmup_ns: u64,
    /// Measuring time, ns (None: until the I/O budget is spent).
    pub duration_ns: Option<u64>,
    /// Measured I/Os per core.
    pub number_ios: Option<u64>,
    /// PRNG seed.
    pub seed: u64,
    /// Verify: units whose expected generation is corrupted before the read-back.
    pub inject_mismatch: u64,
}

/// One namespace of one core: where in the namespace it works.
#[derive(Clone)]
pub struct NsPlan {
    /// The namespace.
    pub target: NsTarget,
    /// First I/O unit (in units of one I/O) of the range.
    pub first_unit: u64,
    /// Units in the range.
    pub units: u64,
    /// Where a sequential workload starts, relative to `first_unit`.
    pub seq_start: u64,
    /// Global index of this (core, namespace) pair, for seeds and mismatch injection.
    pub worker_index: usize,
}

/// Progress counters of one core, on their own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct CoreProgress {
    /// Successful I/Os since the start (warm-up included).
    pub ios: AtomicU64,
    /// Failed I/Os since the start.
    pub errors: AtomicU64,
}

/// What the cores and the main thread share.
pub struct Shared {
    /// Per core, by core index.
    pub progress: Vec<CoreProgress>,
    /// Set by the main thread to stop every core (setup failed elsewhere, or interrupted).
    pub abort: AtomicBool,
    /// Start line: every core and the main thread.
    pub start: Barrier,
}

impl Shared {
    /// For `cores` worker threads plus the main thread.
    pub fn new(cores: usize) -> Shared {
        Shared {
            progress: (0..cores).map(|_| CoreProgress::default()).collect(),
            abort: AtomicBool::new(false),
            start: Barrier::new(cores + 1),
        }
    }
}

/// Why an I/O failed. `Copy` and small: stored per completion in the batch array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// It succeeded.
    None,
    /// The device returned this status (SCT and SC bits).
    Status(u16),
    /// Timed out (aborted or reset by the control plane).
    TimedOut,
    /// The controller was reset while it was in flight.
    Reset,
    /// The controller was removed while it was in flight.
    Removed,
    /// Multipath: no usable path.
    NoPath,
    /// Multipath: failed over too many times.
    TooManyFailovers,
    /// Refused by the driver at submission (bad buffer, too large).
    Refused,
    /// Submission refused: the controller is not live.
    NotReady,
    /// Submission refused: the device is gone.
    Gone,
    /// The device posted a completion for an unknown or stale command id.
    BadCompletion,
}

const OTHER_KINDS: [(Fail, &str); 9] = [
    (Fail::TimedOut, "command timed out"),
    (Fail::Reset, "controller reset while in flight"),
    (Fail::Removed, "controller removed while in flight"),
    (Fail::NoPath, "no usable path (multipath)"),
    (Fail::TooManyFailovers, "too many failovers (multipath)"),
    (Fail::Refused, "refused by the driver at submission"),
    (Fail::NotReady, "submission refused: controller not ready"),
    (Fail::Gone, "submission refused: device gone"),
    (
        Fail::BadCompletion,
        "bad completion from device (unknown command id)",
    ),
];

impl Fail {
    /// What `outcome` counts as: tested for success inline, the rest out of line (built inline,
    /// the two cases were merged branch-free, about 5 instructions per I/O on the bare loop).
    #[inline(always)]
    fn of(outcome: Outcome) -> Fail {
        if outcome.is_success() {
            Fail::None
        } else {
            Fail::of_error(outcome)
        }
    }

    #[cold]
    #[inline(never)]
    fn of_error(outcome: Outcome) -> Fail {
        match outcome {
            Outcome::Status(s) if s.is_success() => Fail::None,
            Outcome::Status(s) => Fail::Status(s.0 & 0x7ff),
            Outcome::TimedOut => Fail::TimedOut,
            Outcome::Reset => Fail::Reset,
            Outcome::Removed => Fail::Removed,
        }
    }

    #[inline]
    fn of_mp(r: &Result<u32, IoError>) -> Fail {
        match r {
            Ok(_) => Fail::None,
            Err(IoError::Status { status, .. }) => Fail::Status(status.0 & 0x7ff),
            Err(IoError::NoPath) => Fail::NoPath,
            Err(IoError::TooManyFailovers { .. }) => Fail::TooManyFailovers,
            Err(IoError::Refused(_)) => Fail::Refused,
        }
    }

    fn other_index(self) -> Option<usize> {
        OTHER_KINDS.iter().position(|(k, _)| *k == self)
    }
}

/// One line of the error summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorEntry {
    /// Decoded status or kind.
    pub label: String,
    /// (SCT, SC) for device statuses.
    pub code: Option<(u8, u8)>,
    /// How many.
    pub count: u64,
}

/// Error counts: a table indexed by (SCT, SC) (2048 entries, allocated once) plus the
/// non-status kinds. Written only when an I/O fails.
#[derive(Clone, Debug)]
pub struct ErrorCounts {
    status: Vec<u64>,
    other: [u64; OTHER_KINDS.len()],
}

impl Default for ErrorCounts {
    fn default() -> Self {
        ErrorCounts {
            status: vec![0; 2048],
            other: [0; OTHER_KINDS.len()],
        }
    }
}

impl ErrorCounts {
    /// Counts one failure.
    #[cold]
    pub fn add(&mut self, f: Fail) {
        match f {
            Fail::None => {}
            Fail::Status(s) => self.status[(s & 0x7ff) as usize] += 1,
            other => {
                if let Some(i) = other.other_index() {
                    self.other[i] += 1;
                }
            }
        }
    }

    /// Adds `o`'s counts.
    pub fn merge(&mut self, o: &ErrorCounts) {
        for (a, b) in self.status.iter_mut().zip(&o.status) {
            *a += b;
        }
        for (a, b) in self.other.iter_mut().zip(&o.other) {
            *a += b;
        }
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.status.iter().sum::<u64>() + self.other.iter().sum::<u64>()
    }

    /// Non-zero counts, decoded, largest first.
    pub fn entries(&self) -> Vec<ErrorEntry> {
        let mut v: Vec<ErrorEntry> = self
            .status
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| {
                let s = Status(i as u16);
                ErrorEntry {
                    label: s.to_string(),
                    code: Some((s.sct(), s.sc())),
                    count: *c,
                }
            })
            .chain(
                OTHER_KINDS
                    .iter()
                    .zip(&self.other)
                    .filter(|(_, c)| **c > 0)
                    .map(|((_, l), c)| ErrorEntry {
                        label: (*l).to_string(),
                        code: None,
                        count: *c,
                    }),
            )
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.count));
        v
    }
}

/// Measured results of one namespace on one core.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Successful I/Os.
    pub ios: u64,
    /// Of which reads.
    pub reads: u64,
    /// Sum of latencies, ns.
    pub lat_sum_ns: u64,
    /// Smallest latency, ns (`u64::MAX` when none).
    pub lat_min_ns: u64,
    /// Largest latency, ns.
    pub lat_max_ns: u64,
    /// Latency histogram, ns (see [`Stats::hist`] for percentiles).
    pub lat: LatHist,
    /// Failures.
    pub errors: ErrorCounts,
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Stats {
        Stats {
            ios: 0,
            reads: 0,
            lat_sum_ns: 0,
            lat_min_ns: u64::MAX,
            lat_max_ns: 0,
            lat: LatHist::new(HIST_MAX_NS),
            errors: ErrorCounts::default(),
        }
    }

    #[inline]
    fn record(&mut self, lat: u64, read: bool) {
        self.ios += 1;
        self.reads += read as u64;
        self.lat_sum_ns += lat;
        self.lat_min_ns = self.lat_min_ns.min(lat);
        self.lat_max_ns = self.lat_max_ns.max(lat);
        self.lat.record(lat);
    }

    fn reset(&mut self) {
        self.ios = 0;
        self.reads = 0;
        self.lat_sum_ns = 0;
        self.lat_min_ns = u64::MAX;
        self.lat_max_ns = 0;
        self.lat.reset();
        // Errors are kept: any failure, warm-up included, fails the run.
    }

    /// The latencies as an HDR histogram, for percentiles (built on each call: use it in
    /// reports, not per I/O).
    pub fn hist(&self) -> Histogram<u64> {
        self.lat.to_hdr()
    }

    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &Stats) {
        self.ios += o.ios;
        self.reads += o.reads;
        self.lat_sum_ns += o.lat_sum_ns;
        self.lat_min_ns = self.lat_min_ns.min(o.lat_min_ns);
        self.lat_max_ns = self.lat_max_ns.max(o.lat_max_ns);
        self.lat.add(&o.lat);
        self.errors.merge(&o.errors);
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// Verify outcome of one namespace on one core.
#[derive(Clone, Debug, Default)]
pub struct VerifySummary {
    /// Blocks checked (during the run and in the read-back).
    pub blocks_checked: u64,
    /// Reads of the read-back phase.
    pub readback_ios: u64,
    /// Mismatches by kind: wrong LBA, stale generation, bad checksum.
    pub by_kind: [u64; 3],
    /// The first few.
    pub examples: Vec<Mismatch>,
    /// Expected generations corrupted on purpose (`--inject-mismatch`).
    pub injected: u64,
}

impl VerifySummary {
    /// All mismatches.
    pub fn mismatches(&self) -> u64 {
        self.by_kind.iter().sum()
    }
}

/// Results of one namespace on one core.
#[derive(Clone, Debug)]
pub struct RowResult {
    /// Namespace name.
    pub label: String,
    /// Core id.
    pub core: usize,
    /// Measuring time of this core, ns.
    pub elapsed_ns: u64,
    /// Measured statistics.
    pub stats: Stats,
    /// Verify results.
    pub verify: Option<VerifySummary>,
}

/// Results of one core.
#[derive(Clone, Debug)]
pub struct CoreResult {
    /// Core id.
    pub core: usize,
    /// One per namespace.
    pub rows: Vec<RowResult>,
    /// I/Os still in flight when the drain limit ran out.
    pub abandoned: u64,
}

enum Queues {
    Direct { qps: Vec<QueuePair>, info: NsInfo },
    Mpath { chs: Vec<Channel> },
}

/// Which kinds of [`Queues`] a run loop is compiled for (its const parameter): each kind gets a
/// loop of its own, so that neither's code (and register allocation) is shaped by the other's.
type QueueKinds = u8;
/// Bare queue pairs only.
const DIRECT: QueueKinds = 1;
/// Multipath channels only.
const MPATH: QueueKinds = 2;
/// Both (namespaces of both kinds on one core).
const ANY: QueueKinds = DIRECT | MPATH;

enum SubmitFail {
    Full,
    /// A multipath run of submissions did not take it: submit it one by one.
    NotTaken,
    Hard(Fail),
}

/// One I/O to submit: a read or write of `blocks` blocks at `lba`, on the buffer of `slot` (and
/// tagged with it).
#[derive(Clone, Copy)]
struct Io {
    write: bool,
    lba: u64,
    blocks: u32,
    slot: u32,
}

/// `io` on a bare queue pair.
#[inline(always)]
fn submit_direct(
    qp: &mut QueuePair,
    info: &NsInfo,
    io: Io,
    bufs: &[DmaBuf],
) -> Result<(), SubmitFail> {
    let b = &bufs[io.slot as usize];
    let tag = io.slot as u64;
    let r = if io.write {
        qp.write(info, io.lba, io.blocks, b, 0, tag)
    } else {
        qp.read(info, io.lba, io.blocks, b, 0, tag)
    };
    r.map_err(|e| match e {
        SubmitError::QueueFull => SubmitFail::Full,
        SubmitError::NotReady { .. } => SubmitFail::Hard(Fail::NotReady),
        SubmitError::DeviceGone { .. } => SubmitFail::Hard(Fail::Gone),
        other => {
            log::error!("submission refused: {other}");
            SubmitFail::Hard(Fail::Refused)
        }
    })
}

impl Queues {
    /// The kinds of queues in `ctxs`.
    fn kinds(ctxs: &[NsCtx]) -> QueueKinds {
        ctxs.iter().fold(0, |k, c| {
            k | match c.queues {
                Queues::Direct { .. } => DIRECT,
                Queues::Mpath { .. } => MPATH,
            }
        })
    }

    /// Submits `io` on queue `q`.
    #[inline(always)]
    fn submit<const K: QueueKinds>(
        &mut self,
        q: usize,
        io: Io,
        bufs: &[DmaBuf],
    ) -> Result<(), SubmitFail> {
        match self {
            Queues::Direct { qps, info } if K & DIRECT != 0 => {
                submit_direct(&mut qps[q], info, io, bufs)
            }
            Queues::Mpath { chs } if K & MPATH != 0 => {
                let Io {
                    write,
                    lba,
                    blocks,
                    slot,
                } = io;
                let tag = slot as u64;
                chs[q]
                    .submit_rw(write, lba, blocks, slot, tag)
                    .map_err(|r| match r {
                        RefuseReason::Full => SubmitFail::Full,
                        RefuseReason::NoPath => SubmitFail::Hard(Fail::NoPath),
                        RefuseReason::Invalid(why) => {
                            log::error!("submission refused: {why}");
                            SubmitFail::Hard(Fail::Refused)
                        }
                    })
            }
            _ => unreachable!("a run loop for queues of kinds {K} met another"),
        }
    }
}

/// How [`NsCtx::submit_with`] submits: one by one on the queues, or as a run on a namespace's
/// one queue pair ([`DirectRun`]) or channel ([`Submitter`]).
trait Via {
    /// Submits `io` (for queue `q` of `queues`, when it goes one by one).
    fn submit(
        &mut self,
        queues: &mut Queues,
        q: usize,
        io: Io,
        bufs: &[DmaBuf],
    ) -> Result<(), SubmitFail>;
}

/// Each command on its queue pair or channel (of kinds `K`).
struct OneByOne<const K: QueueKinds>;

impl<const K: QueueKinds> Via for OneByOne<K> {
    #[inline(always)]
    fn submit(
        &mut self,
        queues: &mut Queues,
        q: usize,
        io: Io,
        bufs: &[DmaBuf],
    ) -> Result<(), SubmitFail> {
        queues.submit::<K>(q, io, bufs)
    }
}

/// A run on the one bare queue pair of a namespace: the queue pair and namespace looked up once.
struct DirectRun<'a> {
    qp: &'a mut QueuePair,
    info: &'a NsInfo,
}

impl Via for DirectRun<'_> {
    #[inline(always)]
    fn submit(
        &mut self,
        _: &mut Queues,
        _: usize,
        io: Io,
        bufs: &[DmaBuf],
    ) -> Result<(), SubmitFail> {
        submit_direct(self.qp, self.info, io, bufs)
    }
}

/// A channel's run, on one path ([`Submitter`]) or over round-robin's turns ([`Turns`]).
impl<R: Run> Via for R {
    #[inline(always)]
    fn submit(&mut self, _: &mut Queues, _: usize, io: Io, _: &[DmaBuf]) -> Result<(), SubmitFail> {
        let tag = io.slot as u64;
        let r = if io.write {
            self.write(io.lba, io.blocks, io.slot, tag)
        } else {
            self.read(io.lba, io.blocks, io.slot, tag)
        };
        r.map_err(|_| SubmitFail::NotTaken)
    }
}

#[derive(Clone, Copy, Default)]
struct SlotInfo {
    unit: u64,
    lba: u64,
    ts: u64,
    gen: u32,
    write: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mix {
    AllRead,
    AllWrite,
    Mixed(u64),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Run,
    ReadBack { next: u64 },
}

/// One namespace of one core while running.
struct NsCtx {
    label: String,
    queues: Queues,
    slot_q: Vec<u16>,
    /// One buffer per slot; with multipath they are registered with every channel
    /// (`Channel::register_buffers`) and commands name them by index.
    bufs: Arc<[DmaBuf]>,
    slots: Vec<SlotInfo>,
    ready: Vec<u32>,
    done: Vec<(u32, Fail)>,
    in_flight: usize,
    rng: WyRand,
    random: bool,
    mix: Mix,
    units: u64,
    cursor: u64,
    first_lba: u64,
    blocks: u32,
    phase: Phase,
    verify: Option<VerifyState>,
    readback_ios: u64,
    exhausted: bool,
    injected: u64,
    worker_index: usize,
    stats: Stats,
    completed: u64,
    failed: u64,
}

impl NsCtx {
    fn new(plan: &NsPlan, p: &WorkerParams, cache: &mut DmaCache) -> Result<NsCtx, String> {
        let info = plan.target.info();
        let qopts = QueueOptions {
            size: p.io_queue_size,
            timeout_ms: p.io_timeout_ms,
        };
        let per_queue = p.queue_depth.div_ceil(p.qpairs);
        let queues = match &plan.target {
            NsTarget::Direct { ctrl, info, label } => {
                let mut qps = Vec::with_capacity(p.qpairs);
                for _ in 0..p.qpairs {
                    let qp = ctrl
                        .io_queue_pair(qopts)
                        .map_err(|e| format!("{label}: creating a queue pair: {e}"))?;
                    if qp.capacity() < per_queue {
                        return Err(format!(
                            "{label}: the queue holds {} commands, fewer than the {per_queue} \
                             needed (the controller limits queue size: lower -q or raise -P)",
                            qp.capacity()
                        ));
                    }
                    qps.push(qp);
                }
                Queues::Direct { qps, info: *info }
            }
            NsTarget::Mpath { ns, label } => {
                let mut chs = Vec::with_capacity(p.qpairs);
                for _ in 0..p.qpairs {
                    let ch = Channel::new(
                        ns,
                        ChannelOptions {
                            queue: qopts,
                            policy: p.policy,
                            slots: per_queue,
                            ..ChannelOptions::default()
                        },
                    )
                    .map_err(|e| format!("{label}: creating a multipath channel: {e}"))?;
                    chs.push(ch);
                }
                Queues::Mpath { chs }
            }
        };
        let q = p.queue_depth;
        let mut bufs = Vec::with_capacity(q);
        for _ in 0..q {
            let b = cache
                .alloc(p.io_size as usize, 4096)
                .map_err(|e| format!("allocating I/O buffers: {e}"))?;
            if p.workload.writes() {
                b.fill(0, b.len(), 0xa5);
            }
            bufs.push(b);
        }
        let bufs: Arc<[DmaBuf]> = Arc::from(bufs);
        let mut queues = queues;
        if let Queues::Mpath { chs } = &mut queues {
            for ch in chs.iter_mut() {
                ch.register_buffers(bufs.clone())
                    .map_err(|e| format!("registering I/O buffers: {e:?}"))?;
            }
        }
        let blocks = (p.io_size >> info.lba_shift) as u32;
        let verify = (p.workload == Workload::Verify).then(|| {
            VerifyState::new(
                plan.units as usize,
                p.io_size as usize,
                info.lba_size() as usize,
            )
        });
        let mix_mode = match p.read_pct {
            100 => Mix::AllRead,
            0 => Mix::AllWrite,
            pct => Mix::Mixed(percent_threshold(pct)),
        };
        Ok(NsCtx {
            label: plan.target.label().to_string(),
            queues,
            slot_q: (0..q).map(|i| (i % p.qpairs) as u16).collect(),
            bufs,
            slots: vec![SlotInfo::default(); q],
            ready: (0..q as u32).rev().collect(),
            done: Vec::with_capacity(q + 16),
            in_flight: 0,
            rng: WyRand::new(mix(p.seed ^ mix(plan.worker_index as u64))),
            random: p.workload.random(),
            mix: mix_mode,
            units: plan.units,
            cursor: plan.seq_start.min(plan.units - 1),
            first_lba: plan.first_unit * blocks as u64,
            blocks,
            phase: Phase::Run,
            verify,
            readback_ios: 0,
            exhausted: false,
            injected: 0,
            worker_index: plan.worker_index,
            stats: Stats::new(),
            completed: 0,
            failed: 0,
        })
    }

    /// Polls every queue; completions land in `self.done`.
    #[inline(always)]
    fn poll<const K: QueueKinds>(&mut self) -> usize {
        let done = &mut self.done;
        let max = self.bufs.len();
        match &mut self.queues {
            Queues::Direct { qps, .. } if K & DIRECT != 0 => {
                for qp in qps.iter_mut() {
                    if let Err(e) = qp.poll(max, |c| done.push((c.tag as u32, Fail::of(c.outcome))))
                    {
                        log::error!("{e}");
                        self.stats.errors.add(Fail::BadCompletion);
                        self.failed += 1;
                    }
                }
            }
            Queues::Mpath { chs } if K & MPATH != 0 => {
                for ch in chs.iter_mut() {
                    ch.poll(max, |c| done.push((c.tag as u32, Fail::of_mp(&c.result))));
                }
            }
            _ => unreachable!("a run loop for queues of kinds {K} met another"),
        }
        self.done.len()
    }

    /// Accounts for the completions in `self.done`, all completed at `now`. Called once per
    /// batch, so not inlined: inside the run loop it crowded the loop's registers (about 9
    /// instructions per I/O on the channel's loop, by callgrind).
    #[inline(never)]
    fn process(&mut self, now: u64, measuring: bool) {
        for i in 0..self.done.len() {
            let (tag, fail) = self.done[i];
            let s = self.slots[tag as usize];
            self.in_flight -= 1;
            if fail == Fail::None {
                self.completed += 1;
                if measuring {
                    self.stats.record(now.saturating_sub(s.ts), !s.write);
                }
            } else {
                self.failed += 1;
                self.stats.errors.add(fail);
            }
            if let Some(v) = self.verify.as_mut() {
                let u = s.unit as usize;
                v.busy[u] = false;
                if s.write {
                    v.gen[u] = if fail == Fail::None { s.gen } else { 0 };
                } else if fail == Fail::None && v.gen[u] != 0 {
                    self.bufs[tag as usize].read(0, &mut v.scratch);
                    v.check(s.lba, v.gen[u] as u64);
                }
                if let Phase::ReadBack { .. } = self.phase {
                    self.readback_ios += 1;
                }
            }
            self.ready.push(tag);
        }
        self.done.clear();
    }

    /// Picks the next I/O: (unit, write, generation). None when the read-back is finished.
    #[inline(always)]
    fn pick(&mut self) -> Option<(u64, bool, u32)> {
        if let Phase::ReadBack { next } = &mut self.phase {
            let v = self.verify.as_ref()?;
            while *next < self.units {
                let u = *next;
                *next += 1;
                if v.gen[u as usize] != 0 {
                    return Some((u, false, 0));
                }
            }
            return None;
        }
        let mut unit = if self.random {
            self.rng.below(self.units)
        } else {
            let u = self.cursor;
            self.cursor += 1;
            if self.cursor == self.units {
                self.cursor = 0;
            }
            u
        };
        let want_write = match self.mix {
            Mix::AllRead => false,
            Mix::AllWrite => true,
            Mix::Mixed(t) => !self.rng.chance(t),
        };
        let Some(v) = self.verify.as_ref() else {
            return Some((unit, want_write, 0));
        };
        // One I/O per unit at a time: probe forward from a busy unit (fewer than half are busy).
        while v.busy[unit as usize] {
            unit += 1;
            if unit == self.units {
                unit = 0;
            }
        }
        let g = v.gen[unit as usize];
        if g == 0 || want_write {
            let next = if g == u32::MAX { 1 } else { g + 1 };
            Some((unit, true, next))
        } else {
            Some((unit, false, 0))
        }
    }

    /// Submits ready slots while the budget lasts and the queues take them: on a namespace with
    /// one queue pair or channel as a run on it, otherwise one by one.
    #[inline]
    fn submit_ready<const K: QueueKinds>(&mut self, now: u64, budget: &mut u64) {
        let one = match &self.queues {
            Queues::Direct { qps, .. } => qps.len() == 1,
            Queues::Mpath { chs } => chs.len() == 1,
        };
        // A run for one command costs more than `submit_fixed` does.
        let run = one && self.ready.len() > 1;
        if run {
            self.submit_ready_run::<K>(now, budget);
        }
        // A channel's run hands back what it does not take (or takes nothing: no run), for
        // `submit_fixed` to send, one by one; a bare queue pair's run stopped where one by one
        // would.
        if !run || matches!(self.queues, Queues::Mpath { .. }) {
            self.submit_with(now, budget, &mut OneByOne::<K>);
        }
    }

    /// The run of [`NsCtx::submit_ready`] on a namespace's one queue pair or channel, which it
    /// looks up once (a channel's through [`Channel::submitter`]). The queues are taken out of
    /// `self` for it, so that the run can hold them while the workload picks its next I/O.
    #[inline(never)]
    fn submit_ready_run<const K: QueueKinds>(&mut self, now: u64, budget: &mut u64) {
        let mut queues = std::mem::replace(&mut self.queues, Queues::Mpath { chs: Vec::new() });
        match &mut queues {
            Queues::Direct { qps, info } if K & DIRECT != 0 => {
                let mut run = DirectRun {
                    qp: &mut qps[0],
                    info,
                };
                self.submit_with(now, budget, &mut run);
            }
            Queues::Mpath { chs } if K & MPATH != 0 => {
                // A run on the one path the policy picks, or round-robin's turns over several.
                let ran = if let Some(mut run) = chs[0].submitter() {
                    self.submit_with(now, budget, &mut run);
                    true
                } else {
                    false
                };
                if !ran {
                    if let Some(mut run) = chs[0].turns() {
                        self.submit_with(now, budget, &mut run);
                    }
                }
            }
            _ => unreachable!("a run loop for queues of kinds {K} met another"),
        }
        // The placeholder owns nothing (an empty Vec has not allocated): forgotten rather than
        // dropped, which was a call of 30 instructions per run.
        std::mem::forget(std::mem::replace(&mut self.queues, queues));
    }

    /// The loop of [`NsCtx::submit_ready`], submitting through `via`.
    #[inline(always)]
    fn submit_with(&mut self, now: u64, budget: &mut u64, via: &mut impl Via) {
        while let Some(&tag) = self.ready.last() {
            if *budget == 0 {
                return;
            }
            let Some((unit, write, gen)) = self.pick() else {
                self.exhausted = true;
                return;
            };
            let lba = self.first_lba + unit * self.blocks as u64;
            let t = tag as usize;
            if write {
                if let Some(v) = self.verify.as_mut() {
                    v.stamp(lba, gen as u64);
                    self.bufs[t].write(0, &v.scratch);
                }
            }
            let q = self.slot_q[t] as usize;
            let io = Io {
                write,
                lba,
                blocks: self.blocks,
                slot: t as u32,
            };
            match via.submit(&mut self.queues, q, io, &self.bufs) {
                Ok(()) => {
                    self.ready.pop();
                    self.in_flight += 1;
                    *budget -= 1;
                    self.slots[t] = SlotInfo {
                        unit,
                        lba,
                        ts: now,
                        gen,
                        write,
                    };
                    if let Some(v) = self.verify.as_mut() {
                        v.busy[unit as usize] = true;
                    }
                }
                Err(SubmitFail::Full | SubmitFail::NotTaken) => {
                    // Picked again by the next loop (what a run hands back goes one by one).
                    if let Phase::ReadBack { next } = &mut self.phase {
                        *next = unit;
                    }
                    return;
                }
                Err(SubmitFail::Hard(f)) => {
                    // Counted as a failed I/O (it uses up budget, so -d runs end).
                    self.stats.errors.add(f);
                    self.failed += 1;
                    *budget -= 1;
                    if let Phase::ReadBack { next } = &mut self.phase {
                        *next = unit + 1;
                    }
                    return;
                }
            }
        }
    }

    /// Corrupts the expected generation of up to `n` written units (`--inject-mismatch`).
    fn inject(&mut self, n: u64) {
        let Some(v) = self.verify.as_mut() else {
            return;
        };
        for g in v.gen.iter_mut().filter(|g| **g != 0).take(n as usize) {
            *g = if *g == u32::MAX { 1 } else { *g + 1 };
            self.injected += 1;
        }
    }
}

/// Nanoseconds since `origin` on the driver's TSC clock (`vfnvme::clock`): one instruction, where
/// `Instant::now()` can be a system call and an emulated device read inside a VM.
#[inline]
fn now_ns(origin: &u64) -> u64 {
    vfnvme::clock::now_ns().saturating_sub(*origin)
}

/// Runs `ctxs` until the deadline or budget, then drains. Returns (measure start, end, abandoned).
fn run_loop<const K: QueueKinds>(
    ctxs: &mut [NsCtx],
    p: &WorkerParams,
    progress: &CoreProgress,
    abort: &AtomicBool,
    readback: bool,
) -> (u64, u64, u64) {
    let clock = vfnvme::clock::now_ns();
    let warmup = if readback { 0 } else { p.warmup_ns };
    let end = match (readback, p.duration_ns) {
        (false, Some(d)) => warmup.saturating_add(d),
        _ => u64::MAX,
    };
    let mut measuring = !readback && warmup == 0;
    let full_budget = if readback {
        u64::MAX
    } else {
        p.number_ios.unwrap_or(u64::MAX)
    };
    let mut budget = if warmup == 0 { full_budget } else { u64::MAX };
    let mut measure_start = 0u64;
    let mut now = 0u64;
    let mut stopping = false;
    let mut stop_at = 0u64;
    let mut idle = 0u32;
    for c in ctxs.iter_mut() {
        c.submit_ready::<K>(now, &mut budget);
    }
    loop {
        let mut got = 0;
        for c in ctxs.iter_mut() {
            let n = c.poll::<K>();
            if n > 0 {
                now = now_ns(&clock);
                c.process(now, measuring);
                got += n;
            }
            if !stopping && !c.ready.is_empty() {
                c.submit_ready::<K>(now, &mut budget);
            }
        }
        if got == 0 {
            idle = idle.wrapping_add(1);
            if idle & 63 != 0 {
                continue;
            }
            now = now_ns(&clock);
        }
        if !readback {
            let (ok, bad) = ctxs
                .iter()
                .fold((0, 0), |(a, b), c| (a + c.completed, b + c.failed));
            progress.ios.store(ok, Ordering::Relaxed);
            progress.errors.store(bad, Ordering::Relaxed);
        }
        if !measuring && !readback && now >= warmup {
            measuring = true;
            measure_start = now;
            // What warm-up left in flight completes while measuring, and is counted: it comes
            // out of the budget, so that `-d N` measures N I/Os.
            let in_flight: u64 = ctxs.iter().map(|c| c.in_flight as u64).sum();
            budget = full_budget.saturating_sub(in_flight);
            for c in ctxs.iter_mut() {
                c.stats.reset();
            }
        }
        if !stopping {
            let readback_done = readback && ctxs.iter().all(|c| c.exhausted && c.in_flight == 0);
            if now >= end
                || (measuring && budget == 0)
                || readback_done
                || abort.load(Ordering::Relaxed)
            {
                stopping = true;
                stop_at = now;
            }
        }
        if stopping {
            let in_flight: usize = ctxs.iter().map(|c| c.in_flight).sum();
            if in_flight == 0 {
                return (measure_start, now.max(measure_start + 1), 0);
            }
            if now - stop_at > DRAIN_LIMIT_NS {
                log::error!(
                    "{in_flight} I/Os still in flight after the drain limit; giving up on them"
                );
                return (measure_start, now, in_flight as u64);
            }
        }
    }
}

/// What one core runs.
pub struct CoreJob {
    /// Core id.
    pub core: usize,
    /// Index of the core in the core list (for the progress counters).
    pub core_index: usize,
    /// Where to pin the thread (None: do not pin).
    pub pin: Option<core_affinity::CoreId>,
    /// Its namespaces.
    pub plans: Vec<NsPlan>,
}

/// The body of one core's thread: pin, set up (reporting the outcome on `ready`), wait for the
/// start, run, read back (verify), and return the results.
pub fn run_core(
    job: CoreJob,
    p: WorkerParams,
    pool: Arc<DmaPool>,
    shared: Arc<Shared>,
    ready: Sender<Result<(), String>>,
) -> CoreResult {
    let CoreJob {
        core,
        core_index,
        pin,
        plans,
    } = job;
    if let Some(id) = pin {
        if !core_affinity::set_for_current(id) {
            log::warn!("core {core}: could not pin the thread; running unpinned");
        }
    }
    let mut cache = DmaCache::new(&pool);
    let setup: Result<Vec<NsCtx>, String> = plans
        .iter()
        .map(|pl| NsCtx::new(pl, &p, &mut cache))
        .collect();
    let (mut ctxs, ok) = match setup {
        Ok(c) => (c, Ok(())),
        Err(e) => (Vec::new(), Err(format!("core {core}: {e}"))),
    };
    let failed = ok.is_err();
    let _ = ready.send(ok);
    shared.start.wait();
    let empty = CoreResult {
        core,
        rows: Vec::new(),
        abandoned: 0,
    };
    if failed || shared.abort.load(Ordering::Relaxed) {
        return empty;
    }
    let progress = &shared.progress[core_index];
    let run = match Queues::kinds(&ctxs) {
        DIRECT => run_loop::<DIRECT>,
        MPATH => run_loop::<MPATH>,
        _ => run_loop::<ANY>,
    };
    let (start, end, mut abandoned) = run(&mut ctxs, &p, progress, &shared.abort, false);
    if p.workload == Workload::Verify && abandoned == 0 {
        for c in ctxs.iter_mut() {
            if c.worker_index == 0 && p.inject_mismatch > 0 {
                c.inject(p.inject_mismatch);
            }
            c.phase = Phase::ReadBack { next: 0 };
        }
        let (_, _, a) = run(&mut ctxs, &p, progress, &shared.abort, true);
        abandoned += a;
    }
    let rows = ctxs
        .into_iter()
        .map(|c| RowResult {
            verify: c.verify.as_ref().map(|v| VerifySummary {
                blocks_checked: v.blocks_checked,
                readback_ios: c.readback_ios,
                by_kind: v.by_kind,
                examples: v.examples.clone(),
                injected: c.injected,
            }),
            label: c.label,
            core,
            elapsed_ns: end - start,
            stats: c.stats,
        })
        .collect();
    CoreResult {
        core,
        rows,
        abandoned,
    }
}
