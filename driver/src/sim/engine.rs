//! The command engine: fetches SQEs from host memory, applies faults, dispatches to the admin
//! and NVM command handlers, and posts completions; plus the idle poll, asynchronous event
//! delivery and the device thread of threaded mode.
//!
//! One SQ doorbell costs one SQ lock for the whole batch and one CQ lock to post it. A command
//! costs a 64-byte copy, a relaxed load for the fault check and whatever its handler does; it
//! allocates nothing once the queue's scratch vectors are warm.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vfnvme_hugepages::DmaRegion;
use zerocopy::{FromZeros, IntoBytes};

use crate::spec::log::{AsyncEvent, ErrorLogEntry};
use crate::spec::status::{generic, sct};
use crate::spec::{Sqe, Status};

use super::fault::Verdict;
use super::prp;
use super::queue::{Completion, Sq, SqSlot};
use super::{lock, SimController};

/// What a command handler decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Complete with DW0 and status.
    Done(u32, Status),
    /// The command completes later (an Asynchronous Event Request).
    Deferred,
}

impl Reply {
    pub(crate) const fn ok(dw0: u32) -> Reply {
        Reply::Done(dw0, Status::SUCCESS)
    }

    pub(crate) const fn err(status: Status) -> Reply {
        Reply::Done(0, status)
    }
}

/// Shorthand for a status with DNR set.
pub(crate) const fn dnr(sct: u8, sc: u8) -> Status {
    Status::new(sct, sc).with_dnr(true)
}

pub(crate) const INVALID_FIELD: Status = dnr(sct::GENERIC, generic::INVALID_FIELD);
pub(crate) const INVALID_OPCODE: Status = dnr(sct::GENERIC, generic::INVALID_OPCODE);
pub(crate) const INVALID_NS: Status = dnr(sct::GENERIC, generic::INVALID_NAMESPACE);

/// Walks the command's PRPs for `len` bytes and calls `f(region, offset, range)` for each host
/// segment in order, `range` being that segment's bytes within the transfer.
fn for_each_segment(
    sq: &mut Sq,
    sqe: &Sqe,
    len: usize,
    mut f: impl FnMut(&DmaRegion, usize, std::ops::Range<usize>),
) -> Result<(), Status> {
    prp::walk(
        &mut sq.view,
        sqe.prp1,
        sqe.prp2,
        len,
        sq.page_shift,
        &mut sq.segs,
    )?;
    let mut pos = 0;
    for s in &sq.segs {
        f(sq.view.region(s.loc), s.loc.offset, pos..pos + s.len);
        pos += s.len;
    }
    Ok(())
}

/// Copies `data` to the host buffer described by the command's PRPs.
pub(crate) fn dma_out(sq: &mut Sq, sqe: &Sqe, data: &[u8]) -> Result<(), Status> {
    for_each_segment(sq, sqe, data.len(), |r, off, range| {
        r.write(off, &data[range])
    })
}

/// Copies the host buffer described by the command's PRPs into `buf`.
pub(crate) fn dma_in(sq: &mut Sq, sqe: &Sqe, buf: &mut [u8]) -> Result<(), Status> {
    let len = buf.len();
    for_each_segment(sq, sqe, len, |r, off, range| r.read(off, &mut buf[range]))
}

impl SimController {
    /// The tail the device should fetch up to: the shadow doorbell when DBBUF is on, else the
    /// last MMIO write. `None` for a value past the end of the queue (ignored).
    #[inline]
    fn sq_tail(sq: &Sq, slot: &SqSlot) -> Option<u32> {
        let t = match &sq.shadow {
            Some(sh) => sh.db.load_u32_acquire(sh.db_off),
            None => slot.tail_db.load(Ordering::Acquire),
        };
        (t < sq.size).then_some(t)
    }

    /// Fetches and executes every new entry of SQ `qid`, then posts the completions.
    /// `mmio` is the value of an admin doorbell write, mirrored into the shadow doorbell.
    /// Returns true if any command was fetched.
    pub(crate) fn process_sq(&self, qid: u16, mmio: Option<u32>) -> bool {
        let Some(slot) = self.sqs.get(qid as usize) else {
            return false;
        };
        let mut g = lock(&slot.state);
        let Some(sq) = g.as_mut() else {
            return false;
        };
        if let (Some(v), Some(sh), 0) = (mmio, &sq.shadow, qid) {
            sh.db.store_u32_release(sh.db_off, v);
        }
        self.mapper.refresh(&mut sq.view);
        let mut did = false;
        'fetch: while let Some(tail) = Self::sq_tail(sq, slot).filter(|&t| t != sq.head) {
            while sq.head != tail {
                if !self.running() {
                    break 'fetch;
                }
                let mut sqe = Sqe::new_zeroed();
                sq.ring
                    .read(sq.base + sq.head as usize * 64, sqe.as_mut_bytes());
                sq.head = if sq.head + 1 == sq.size {
                    0
                } else {
                    sq.head + 1
                };
                slot.head.store(sq.head, Ordering::Relaxed);
                self.execute(sq, &sqe);
                did = true;
            }
            if let Some(sh) = &sq.shadow {
                // EventIdx = consumed tail; then look at the shadow tail again (the host may
                // have moved it without ringing, having seen the old EventIdx).
                sh.ei.store_u32_release(sh.ei_off, sq.head);
                fence(Ordering::SeqCst);
            }
        }
        if !sq.batch.is_empty() || did {
            let cq_slot = &self.cqs[sq.cqid as usize];
            let mut cg = lock(&cq_slot.state);
            match cg.as_mut() {
                Some(cq) => {
                    cq.post_batch(&mut sq.batch, &self.sqs);
                    if !cq.delayed.is_empty() {
                        cq.promote(Instant::now(), &self.sqs);
                    }
                    if cq.has_work() {
                        self.work_hint.store(true, Ordering::Release);
                    }
                }
                None => sq.batch.clear(),
            }
        }
        did
    }

    /// Picks up the host's CQ head (MMIO or shadow), posts due delayed and pending completions.
    /// Returns true if the CQ still owes completions.
    pub(crate) fn service_cq(&self, qid: u16, mmio: Option<u32>) -> bool {
        let Some(slot) = self.cqs.get(qid as usize) else {
            return false;
        };
        let mut g = lock(&slot.state);
        let Some(cq) = g.as_mut() else {
            return false;
        };
        let head = match &cq.shadow {
            Some(sh) => {
                if let (Some(v), 0) = (mmio, qid) {
                    sh.db.store_u32_release(sh.db_off, v);
                }
                sh.db.load_u32_acquire(sh.db_off)
            }
            None => slot.head_db.load(Ordering::Acquire),
        };
        cq.set_head(head);
        if !cq.delayed.is_empty() {
            cq.promote(Instant::now(), &self.sqs);
        }
        if !cq.pending.is_empty() {
            cq.flush(&self.sqs);
        }
        let more = cq.has_work();
        if more {
            self.work_hint.store(true, Ordering::Release);
        }
        more
    }

    /// One round of device housekeeping: delayed and held-back completions, shadow doorbells.
    /// Returns true if any command was fetched.
    pub(crate) fn poll_once(&self) -> bool {
        if !self.running() && !self.running_slow() {
            return false;
        }
        let mut did = false;
        if self.work_hint.swap(false, Ordering::AcqRel) {
            for (qid, slot) in self.cqs.iter().enumerate() {
                if slot.size.load(Ordering::Acquire) != 0 {
                    self.service_cq(qid as u16, None);
                }
            }
        }
        if self.dbbuf_on.load(Ordering::Acquire) {
            did |= self.scan_sqs();
            for (qid, slot) in self.cqs.iter().enumerate() {
                if slot.size.load(Ordering::Acquire) != 0 {
                    self.service_cq(qid as u16, None);
                }
            }
        }
        did
    }

    /// Processes every SQ whose doorbell (MMIO or shadow) moved past the device head.
    fn scan_sqs(&self) -> bool {
        let mut did = false;
        for (qid, slot) in self.sqs.iter().enumerate() {
            if slot.size.load(Ordering::Acquire) == 0 {
                continue;
            }
            let moved = slot.tail_db.load(Ordering::Acquire) != slot.head.load(Ordering::Relaxed);
            if moved || self.dbbuf_on.load(Ordering::Relaxed) {
                did |= self.process_sq(qid as u16, None);
            }
        }
        did
    }

    /// The device thread's poll of this controller.
    fn poll_device(&self) -> bool {
        if !self.running() && !self.running_slow() {
            return false;
        }
        let did = self.scan_sqs();
        self.poll_once() | did
    }

    /// Executes one fetched command and queues its completion in the SQ's batch.
    fn execute(&self, sq: &mut Sq, sqe: &Sqe) {
        let op = sqe.opcode() as usize;
        sq.stats.commands += 1;
        if sq.qid == 0 {
            sq.stats.admin_opcodes[op] += 1;
        } else {
            sq.stats.io_opcodes[op] += 1;
        }
        let mut due = None;
        if self.faults.active() {
            match self.faults.verdict(sq.qid, sqe) {
                Verdict::Run => {}
                Verdict::Fail(status) => {
                    sq.stats.injected_failures += 1;
                    self.finish(sq, sqe, Reply::err(status), None);
                    return;
                }
                Verdict::Drop => {
                    sq.stats.dropped += 1;
                    return;
                }
                Verdict::Delay(d) => {
                    sq.stats.delayed += 1;
                    due = Some(Instant::now() + d);
                }
            }
        }
        let reply = if sq.qid == 0 {
            self.admin_cmd(sq, sqe)
        } else {
            self.io_cmd(sq, sqe)
        };
        self.finish(sq, sqe, reply, due);
    }

    fn finish(&self, sq: &mut Sq, sqe: &Sqe, reply: Reply, due: Option<Instant>) {
        let Reply::Done(dw0, status) = reply else {
            return;
        };
        if !status.is_success() {
            self.log_error(sq.qid, sqe, status);
        }
        sq.batch.push((
            Completion {
                dw0,
                sqid: sq.qid,
                cid: sqe.cid(),
                status,
            },
            due,
        ));
    }

    fn log_error(&self, sqid: u16, sqe: &Sqe, status: Status) {
        let mut a = lock(&self.admin);
        a.error_count += 1;
        let e = ErrorLogEntry {
            error_count: a.error_count,
            sqid,
            cid: sqe.cid(),
            status_field: status.0 << 1,
            param_error_location: 0xffff,
            lba: if sqid != 0 { sqe.slba() } else { 0 },
            nsid: sqe.nsid,
            ..ErrorLogEntry::default()
        };
        a.push_error(e);
    }

    /// Completes AERs with queued, unmasked events.
    pub(crate) fn deliver_events(&self) {
        let mut done = Vec::new();
        {
            let mut a = lock(&self.admin);
            while let Some((cid, ev)) = a.take_deliverable() {
                done.push(Completion {
                    dw0: ev.to_dw0(),
                    sqid: 0,
                    cid,
                    status: Status::SUCCESS,
                });
            }
        }
        if done.is_empty() {
            return;
        }
        let mut g = lock(&self.cqs[0].state);
        if let Some(cq) = g.as_mut() {
            for c in done {
                cq.post(c, &self.sqs);
            }
            if cq.has_work() {
                self.work_hint.store(true, Ordering::Release);
            }
        }
    }

    /// Queues an asynchronous event and delivers it if an AER waits.
    pub(crate) fn queue_event(&self, ev: AsyncEvent) {
        if !self.running() {
            return;
        }
        lock(&self.admin).push_event(ev);
        self.deliver_events();
    }

    /// Queues an error event only if an AER is outstanding (as QEMU does for bad doorbells).
    pub(crate) fn post_event_if_waiting(&self, ev: AsyncEvent) {
        if !lock(&self.admin).aers.is_empty() {
            self.queue_event(ev);
        }
    }
}

/// Starts the device thread of a threaded subsystem.
pub(crate) fn spawn_device_thread(
    ctrls: Vec<Arc<SimController>>,
    stop: Arc<AtomicBool>,
    id: u32,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vfnvme-sim{id}"))
        .spawn(move || {
            let mut idle = 0u32;
            while !stop.load(Ordering::Acquire) {
                let mut did = false;
                for c in &ctrls {
                    did |= c.poll_device();
                }
                if did {
                    idle = 0;
                    continue;
                }
                idle = idle.saturating_add(1);
                if idle < 64 {
                    std::hint::spin_loop();
                } else if idle < 256 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        })
}
