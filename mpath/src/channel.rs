//! The per-core channel of a multipath namespace.
//!
//! A [`Channel`] holds one queue pair per path and a slot per command it may have outstanding.
//! Every in-flight command keeps its [`IoDesc`] (with its buffers) in its slot — the channel
//! needs it anyway to hand the buffers back — so failover costs the common path nothing. When a
//! completion calls for failover or retry, the slot goes onto the bounded requeue ring; a later
//! poll rebuilds the command on a usable path: new command id, the nsid of that path's namespace,
//! PRPs and metadata pointer in that path's DMA domain.
//!
//! Writes, and passthrough commands not marked idempotent, wait the failed controller's Command
//! Quiesce Time (CQT, or `ChannelOptions::default_cqt_ms` when it reports 0) before they are
//! resent, so that a copy still in flight on the old path cannot land after its replacement.
//! Reads go at once.

use std::sync::{Arc, Mutex};

use vfnvme::qpair::{DataRef, SubmitError};
use vfnvme::spec::log::AnaState;
use vfnvme::spec::status::{path as path_sc, sct};
use vfnvme::spec::Status;
use vfnvme::{Completion, NsInfo, Outcome, QueueOptions, QueuePair};
use vfnvme_hugepages::DmaBuf;

use crate::desc::{IoDesc, IoKind};
use crate::disposition::{dispose, Disposition};
use crate::path::PathStatus;
use crate::policy::{Policy, Selector};
use crate::requeue::RequeueRing;
use crate::subsystem::{Inbox, MpNamespace};

/// Options for a channel.
#[derive(Clone, Copy, Debug)]
pub struct ChannelOptions {
    /// Queue pair options (per path).
    pub queue: QueueOptions,
    /// Path policy.
    pub policy: Policy,
    /// Commands the channel may hold (in flight plus waiting on the requeue ring).
    pub slots: usize,
    /// Same-path retries for retryable, non-path errors.
    pub retries: u8,
    /// Failovers of one command before it completes with its last error.
    pub max_failovers: u8,
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
            max_failovers: 16,
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
    /// It failed over too many times.
    #[error("failed over {0} times; giving up (last: {1})")]
    TooManyFailovers(u8, String),
    /// The driver refused it (bad buffer, too large).
    #[error("{0}")]
    Refused(String),
}

/// A finished command: its tag, result (CQE dword 0 on success), and its buffers back.
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
    /// The driver refused the command (bad buffer, above MDTS...).
    Invalid(String),
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

/// What a slot retains to rebuild its command.
enum Held {
    /// The slot is free.
    Empty,
    /// A descriptor that owns its buffers (given back in the completion), kept in
    /// `Channel::owned` so that this enum stays small enough to be written without a `memcpy`.
    Owned,
    /// A command on a registered buffer (`Channel::register_buffers`): nothing moves in or out.
    Fixed {
        /// What to do.
        kind: IoKind,
        /// Index into the registered buffers.
        buf: u32,
        /// Caller's tag.
        tag: u64,
    },
}

impl Held {
    fn is_live(&self) -> bool {
        !matches!(self, Held::Empty)
    }
}

/// Per-command state beside the descriptor (kept apart so that the descriptor is moved once in
/// and once out, and this small part is rewritten in place).
#[derive(Clone, Copy, Default)]
struct Slot {
    /// Path it is on (or last failed on).
    path: u16,
    retries: u8,
    failovers: u8,
    /// Resend on this path (a same-path retry).
    retry_same: bool,
    /// Earliest resend time (ns on `vfnvme::clock`).
    not_before_ns: u64,
    /// Fast-fail deadline while waiting for a path.
    deadline_ns: u64,
}

/// A per-core handle on a multipath namespace. `Send`, not `Sync`.
pub struct Channel {
    ns: Arc<MpNamespace>,
    /// One queue pair per path, boxed so that `poll` can take one out while it delivers (moving
    /// a pointer, not the queue pair).
    qps: Vec<Option<Box<QueuePair>>>,
    params: Vec<PathParams>,
    status: Vec<PathStatus>,
    in_flight: Vec<usize>,
    generation: u64,
    slots: Vec<Slot>,
    /// The retained descriptor of each live slot.
    descs: Vec<Held>,
    /// Descriptors that own their buffers, by slot (`Held::Owned`).
    owned: Vec<Option<IoDesc>>,
    /// Buffers registered for `submit_fixed`.
    fixed_bufs: Arc<[DmaBuf]>,
    free: Vec<u32>,
    requeue: RequeueRing,
    selector: Selector,
    opts: ChannelOptions,
    inbox: Inbox,
    stats: ChannelStats,
    /// Paths of the best usable tier (optimized, else non-optimized), rebuilt when a status
    /// changes; the common-case pick reads only this.
    tier: Vec<usize>,
    tier_dirty: bool,
}

/// What the channel needs to know about one path's controller.
#[derive(Clone, Copy)]
struct PathParams {
    /// The namespace as this controller reports it (nsid, block size).
    info: NsInfo,
    /// CRDT1..3 in ms.
    crdt: [u64; 3],
    /// Command Quiesce Time in ns (the configured default when the controller reports 0).
    cqt_ns: u64,
    /// ANA Transition Time in ns: how long an inaccessible or changing group may be waited for.
    anatt_ns: u64,
}

fn path_params(ns: &MpNamespace, i: usize, opts: &ChannelOptions) -> PathParams {
    let p = ns.path(i);
    let id = p.ctrl.identify();
    let cqt = match id.cqt_ms() {
        0 => opts.default_cqt_ms,
        v => v,
    };
    PathParams {
        info: p.ctrl.namespace(ns.info.nsid).map_or(ns.info, |n| n.info),
        crdt: [id.crdt_ms(1), id.crdt_ms(2), id.crdt_ms(3)],
        cqt_ns: cqt * 1_000_000,
        anatt_ns: id.anatt as u64 * 1_000_000_000,
    }
}

impl Channel {
    /// Creates a channel with a queue pair on every live path. Call on the thread that will use
    /// it; queue creation is an admin operation, done once here.
    ///
    /// # Errors
    /// A controller error when no path could give a queue pair.
    pub fn new(ns: &Arc<MpNamespace>, opts: ChannelOptions) -> Result<Channel, crate::Error> {
        let n = ns.path_count();
        let mut qps = Vec::with_capacity(n);
        let mut params = Vec::with_capacity(n);
        let mut last_err = None;
        for i in 0..n {
            params.push(path_params(ns, i, &opts));
            match ns.path(i).ctrl.io_queue_pair(opts.queue) {
                Ok(qp) => qps.push(Some(Box::new(qp))),
                Err(e) => {
                    log::warn!("channel: no queue pair on path {i}: {e}");
                    last_err = Some(e);
                    qps.push(None);
                }
            }
        }
        if qps.iter().all(|q| q.is_none()) {
            if let Some(e) = last_err {
                return Err(e.into());
            }
        }
        let inbox: Inbox = Arc::new(Mutex::new(Vec::new()));
        ns.register_inbox(&inbox, opts.queue);
        let slots = opts.slots.max(1);
        let mut ch = Channel {
            ns: ns.clone(),
            qps,
            params,
            status: vec![PathStatus::Waiting; n],
            in_flight: vec![0; n],
            generation: u64::MAX,
            slots: vec![Slot::default(); slots],
            descs: (0..slots).map(|_| Held::Empty).collect(),
            owned: (0..slots).map(|_| None).collect(),
            fixed_bufs: Arc::from(Vec::new()),
            free: (0..slots as u32).rev().collect(),
            requeue: RequeueRing::new(slots),
            selector: Selector::default(),
            opts,
            inbox,
            stats: ChannelStats::default(),
            tier: Vec::with_capacity(n),
            tier_dirty: true,
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
    }

    /// What the channel did so far.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Commands held (in flight or waiting to be resent).
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
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

    /// Re-reads path states (after the generation moved) and takes queue pairs the control plane
    /// left for re-attached paths.
    fn refresh(&mut self) {
        self.generation = self.ns.generation();
        let mut inbox = self.inbox.lock().unwrap();
        for (i, qp) in inbox.drain(..) {
            if i < self.qps.len() {
                self.params[i] = path_params(&self.ns, i, &self.opts);
                // Commands on the old queue pair were failed when its controller went away.
                self.qps[i] = Some(Box::new(qp));
            }
        }
        drop(inbox);
        for (i, s) in self.ns.statuses().into_iter().enumerate() {
            let s = if self.qps[i].is_some() || s == PathStatus::Gone {
                s
            } else {
                PathStatus::Waiting
            };
            self.set_status(i, s);
        }
    }

    fn rebuild_tier(&mut self) {
        self.tier_dirty = false;
        self.tier.clear();
        let best = if self.status.contains(&PathStatus::Optimized) {
            PathStatus::Optimized
        } else {
            PathStatus::NonOptimized
        };
        self.tier
            .extend((0..self.status.len()).filter(|&i| self.status[i] == best));
    }

    /// The common-case pick: no path to avoid. Round-robin rotates over the cached tier without
    /// looking at anything else; the other policies take the general path.
    #[inline]
    fn pick_any(&mut self) -> Option<usize> {
        if self.tier_dirty {
            self.rebuild_tier();
        }
        if let Policy::RoundRobin { min_ios } = self.opts.policy {
            return self.selector.round_robin(&self.tier, min_ios);
        }
        self.pick(None)
    }

    fn pick(&mut self, exclude: Option<usize>) -> Option<usize> {
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
            self.tier_dirty = true;
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

    /// Builds and queues the command of `slot` on path `p`.
    #[inline]
    fn issue(&mut self, p: usize, slot: u32) -> Result<(), SubmitError> {
        let (kind, data, md) = match &self.descs[slot as usize] {
            Held::Owned => {
                let d = self.owned[slot as usize].as_ref().expect("owned slot");
                (d.kind, d.data.as_ref(), d.metadata.as_ref())
            }
            Held::Fixed { kind, buf, .. } => (*kind, self.fixed_bufs.get(*buf as usize), None),
            Held::Empty => unreachable!("issued slot is live"),
        };
        let qp = self.qps[p].as_mut().expect("picked path has a queue pair");
        let info = &self.params[p].info;
        let tag = slot as u64;
        let r = match kind {
            IoKind::Read { lba, blocks } => {
                let buf = data.expect("read has a buffer");
                qp.read(info, lba, blocks, buf, 0, tag)
            }
            IoKind::Write { lba, blocks } => {
                let buf = data.expect("write has a buffer");
                qp.write(info, lba, blocks, buf, 0, tag)
            }
            IoKind::Passthru { mut cmd, .. } => {
                if cmd.nsid != 0 && cmd.nsid != u32::MAX {
                    cmd.nsid = info.nsid;
                }
                qp.passthru(&cmd, data.map(DataRef::whole), md.map(DataRef::whole), tag)
            }
        };
        if r.is_ok() {
            self.slots[slot as usize].path = p as u16;
        }
        r
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
        let Some(slot) = self.free.pop() else {
            return Err(Box::new(Refused {
                reason: RefuseReason::Full,
                desc,
            }));
        };
        self.owned[slot as usize] = Some(desc);
        self.descs[slot as usize] = Held::Owned;
        self.start(slot).map_err(|reason| {
            self.descs[slot as usize] = Held::Empty;
            let desc = self.owned[slot as usize].take().expect("just stored");
            Box::new(Refused { reason, desc })
        })
    }

    /// Registers buffers for [`Channel::submit_fixed`], like io_uring's fixed buffers: the caller
    /// keeps its own handle on them (to fill and check data), commands name them by index, and
    /// nothing is moved in or out per command. Replaces an earlier set.
    ///
    /// # Errors
    /// [`RefuseReason::Invalid`] while commands on registered buffers are outstanding.
    pub fn register_buffers(&mut self, bufs: Arc<[DmaBuf]>) -> Result<(), RefuseReason> {
        if self.descs.iter().any(|d| matches!(d, Held::Fixed { .. })) {
            return Err(RefuseReason::Invalid(
                "registered buffers are in use by outstanding commands".into(),
            ));
        }
        self.fixed_bufs = bufs;
        Ok(())
    }

    /// Submits a command on registered buffer `buf` (the whole buffer for passthrough; the first
    /// `blocks` blocks for reads and writes). It fails over like any other command; its
    /// completion carries `buf_index` and no buffers.
    ///
    /// # Errors
    /// [`RefuseReason::Full`] (poll and retry), `NoPath`, or `Invalid` (including an index past
    /// the registered buffers).
    #[inline]
    pub fn submit_fixed(&mut self, kind: IoKind, buf: u32, tag: u64) -> Result<(), RefuseReason> {
        if self.generation != self.ns.generation() {
            self.refresh();
        }
        if buf as usize >= self.fixed_bufs.len() {
            return Err(RefuseReason::Invalid(format!(
                "buffer {buf} is not registered ({} are)",
                self.fixed_bufs.len()
            )));
        }
        let Some(slot) = self.free.pop() else {
            return Err(RefuseReason::Full);
        };
        self.descs[slot as usize] = Held::Fixed { kind, buf, tag };
        self.start(slot).inspect_err(|_| {
            self.descs[slot as usize] = Held::Empty;
        })
    }

    /// Sends a freshly stored slot to a path, or parks it on the requeue ring when no path is
    /// usable but one may come back. On refusal the slot is freed (the caller takes its
    /// descriptor back first).
    #[inline]
    fn start(&mut self, slot: u32) -> Result<(), RefuseReason> {
        self.slots[slot as usize] = Slot::default();
        let r = loop {
            let Some(p) = self.pick_any() else {
                if self.any_waiting() {
                    // Wait on the ring for a path to come back.
                    let now = self.now_ns();
                    let wait = self.hold_ns();
                    let s = &mut self.slots[slot as usize];
                    s.deadline_ns = now + wait;
                    self.requeue.push(slot);
                    return Ok(());
                }
                break RefuseReason::NoPath;
            };
            match self.issue(p, slot) {
                Ok(()) => return Ok(()),
                Err(SubmitError::QueueFull) => break RefuseReason::Full,
                Err(SubmitError::NotReady { .. }) => self.set_status(p, PathStatus::Waiting),
                Err(SubmitError::DeviceGone { .. }) => self.set_status(p, PathStatus::Gone),
                Err(e) => break RefuseReason::Invalid(e.to_string()),
            }
        };
        self.free.push(slot);
        Err(r)
    }

    /// Rings every path's doorbell for commands submitted since the last poll.
    pub fn ring(&mut self) {
        for q in self.qps.iter_mut().flatten() {
            q.ring();
        }
    }

    /// Polls every path, decides the fate of each completion, resends what is due from the
    /// requeue ring, and hands up to `max` finished commands to `f`.
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(MpCompletion)) -> usize {
        if self.generation != self.ns.generation() {
            self.refresh();
        }
        let mut n = 0;
        for p in 0..self.qps.len() {
            // Take the queue pair out while it delivers, so that each completion is disposed of
            // as it comes (no staging copy).
            let Some(mut q) = self.qps[p].take() else {
                continue;
            };
            loop {
                let r = q.poll(max, |c| {
                    if self.dispose(p, c, &mut f) {
                        n += 1;
                    }
                });
                match r {
                    Ok(_) => break,
                    Err(e) => {
                        self.stats.bad_completions += 1;
                        log::warn!("{e}");
                    }
                }
            }
            self.qps[p] = Some(q);
        }
        if !self.requeue.is_empty() {
            n += self.drain_requeue(&mut f);
        }
        n
    }

    /// Applies the disposition rules to one completion. Returns true if it completed.
    #[inline]
    fn dispose(&mut self, p: usize, c: Completion, f: &mut impl FnMut(MpCompletion)) -> bool {
        let slot = c.tag as u32;
        if !self.descs.get(slot as usize).is_some_and(Held::is_live) {
            log::error!("completion for unknown channel slot {slot}");
            return false;
        }
        if let Outcome::Status(st) = c.outcome {
            if st.is_success() {
                self.complete(slot, Ok(c.dw0), f);
                return true;
            }
        }
        let retries_left = self.slots[slot as usize].retries < self.opts.retries;
        let d = dispose(c.outcome, retries_left, self.params[p].crdt);
        if d == Disposition::Complete {
            let result = match c.outcome {
                Outcome::Status(st) if st.is_success() => Ok(c.dw0),
                Outcome::Status(st) => Err(IoError::Status {
                    ctrl: self.ns.path(p).ctrl.name().clone(),
                    status: st,
                }),
                other => Err(IoError::Refused(other.to_string())),
            };
            self.complete(slot, result, f);
            return true;
        }
        // Learn from the failure before resending.
        match c.outcome {
            Outcome::Status(st) if st.sct() == sct::PATH => {
                let path = self.ns.path(p);
                path.ana_stale
                    .store(true, std::sync::atomic::Ordering::Release);
                let s = if st.sc() == path_sc::ANA_PERSISTENT_LOSS {
                    PathStatus::Gone
                } else {
                    PathStatus::Waiting
                };
                self.set_status(p, s);
            }
            Outcome::Reset => self.set_status(p, PathStatus::Waiting),
            Outcome::Removed => self.set_status(p, PathStatus::Gone),
            _ => {}
        }
        let now = self.now_ns();
        let idempotent = match &self.descs[slot as usize] {
            Held::Empty => false,
            Held::Owned => self.owned[slot as usize]
                .as_ref()
                .is_some_and(|d| d.idempotent()),
            Held::Fixed { kind, .. } => match kind {
                IoKind::Read { .. } => true,
                IoKind::Write { .. } => false,
                IoKind::Passthru { idempotent, .. } => *idempotent,
            },
        };
        let s = &mut self.slots[slot as usize];
        match d {
            Disposition::Retry { delay_ms } => {
                s.retries += 1;
                s.retry_same = true;
                s.not_before_ns = now + delay_ms * 1_000_000;
                self.stats.retries += 1;
            }
            Disposition::Failover => {
                s.failovers += 1;
                if s.failovers > self.opts.max_failovers {
                    let last = format!("{}", c.outcome);
                    let n = s.failovers;
                    self.complete(slot, Err(IoError::TooManyFailovers(n, last)), f);
                    return true;
                }
                s.retry_same = false;
                s.not_before_ns = if idempotent {
                    now
                } else {
                    self.stats.quiesce_waits += 1;
                    now + self.params[p].cqt_ns
                };
                self.stats.failovers += 1;
            }
            Disposition::Complete => unreachable!(),
        }
        // An ANA transition or inaccessible group may take up to ANATT to settle: wait at least
        // that long for a usable path before failing fast.
        let mut wait_ns = self.opts.fast_fail_ms * 1_000_000;
        if let Outcome::Status(st) = c.outcome {
            if st.sct() == sct::PATH
                && (st.sc() == path_sc::ANA_TRANSITION || st.sc() == path_sc::ANA_INACCESSIBLE)
            {
                wait_ns = wait_ns.max(self.params[p].anatt_ns);
            }
        }
        s.deadline_ns = s.not_before_ns + wait_ns;
        let pushed = self.requeue.push(slot);
        debug_assert!(pushed, "the ring holds every slot");
        false
    }

    fn complete(
        &mut self,
        slot: u32,
        result: Result<u32, IoError>,
        f: &mut impl FnMut(MpCompletion),
    ) {
        // A fixed command's fields are copied out and the slot marked empty in place; only an
        // owned descriptor is moved out of `owned` (its buffers go back to the caller).
        let fixed = match self.descs[slot as usize] {
            Held::Fixed { buf, tag, .. } => Some((buf, tag)),
            _ => None,
        };
        let (tag, data, metadata, buf_index) = match fixed {
            Some((buf, tag)) => {
                self.descs[slot as usize] = Held::Empty;
                (tag, None, None, Some(buf))
            }
            None => {
                self.descs[slot as usize] = Held::Empty;
                let d = self.owned[slot as usize]
                    .take()
                    .expect("completed slot is live");
                (d.tag, d.data, d.metadata, None)
            }
        };
        self.free.push(slot);
        self.stats.completed += 1;
        if matches!(result, Err(IoError::NoPath)) {
            self.stats.no_path += 1;
        }
        f(MpCompletion {
            tag,
            result,
            data,
            metadata,
            buf_index,
        });
    }

    /// Resends what is due from the requeue ring. Returns how many completed (with errors).
    #[cold]
    fn drain_requeue(&mut self, f: &mut impl FnMut(MpCompletion)) -> usize {
        let now = self.now_ns();
        let mut done = 0;
        for _ in 0..self.requeue.len() {
            let slot = self.requeue.pop().expect("len checked");
            let s = self.slots[slot as usize];
            if s.not_before_ns > now {
                self.requeue.push(slot);
                continue;
            }
            let (last, retry_same, deadline_ns) = (s.path as usize, s.retry_same, s.deadline_ns);
            let target = if retry_same && self.status[last].usable() {
                Some(last)
            } else {
                self.pick(Some(last))
            };
            let Some(p) = target else {
                if self.any_waiting() && now < deadline_ns {
                    self.requeue.push(slot);
                } else {
                    self.complete(slot, Err(IoError::NoPath), f);
                    done += 1;
                }
                continue;
            };
            match self.issue(p, slot) {
                Ok(()) => {}
                Err(SubmitError::QueueFull) => {
                    self.requeue.push(slot);
                }
                Err(SubmitError::NotReady { .. }) => {
                    self.set_status(p, PathStatus::Waiting);
                    self.requeue.push(slot);
                }
                Err(SubmitError::DeviceGone { .. }) => {
                    self.set_status(p, PathStatus::Gone);
                    self.requeue.push(slot);
                }
                Err(e) => {
                    self.complete(slot, Err(IoError::Refused(e.to_string())), f);
                    done += 1;
                }
            }
        }
        done
    }
}
