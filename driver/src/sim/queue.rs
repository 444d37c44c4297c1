//! Submission and completion queue state of the device, and completion posting.
//!
//! Each queue id has a slot with a few atomics (the host's last doorbell value, the queue size,
//! the device's SQ head for SQHD) and a mutex around the queue's state. A doorbell write takes the
//! SQ's lock once for the whole batch it announces, then the CQ's lock once to post the batch.
//! Lock order: SQ locks (admin first) before CQ locks; the admin state lock is never held while a
//! CQ lock is taken.
//!
//! A CQE is written as three dwords, then the status/phase dword with Release ordering. A full
//! CQ keeps further completions pending, in order, until the host's head doorbell frees slots.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use vfnvme_hugepages::DmaRegion;

use crate::spec::Status;

use super::dma::DmaView;
use super::fault::SimStats;
use super::prp::Seg;

/// One completion the device owes the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Completion {
    pub(crate) dw0: u32,
    pub(crate) sqid: u16,
    pub(crate) cid: u16,
    pub(crate) status: Status,
}

/// Shadow doorbell (DBBUF) locations of one queue.
#[derive(Clone, Debug)]
pub(crate) struct Shadow {
    pub(crate) db: DmaRegion,
    pub(crate) db_off: usize,
    pub(crate) ei: DmaRegion,
    pub(crate) ei_off: usize,
}

/// Slot of a submission queue id.
#[derive(Debug, Default)]
pub(crate) struct SqSlot {
    /// Last tail the host wrote through MMIO.
    pub(crate) tail_db: AtomicU32,
    /// Queue size in entries; 0 = no queue.
    pub(crate) size: AtomicU32,
    /// Device head (next entry to fetch), for SQHD.
    pub(crate) head: AtomicU32,
    /// The CQ this SQ posts to.
    pub(crate) cqid: AtomicU16,
    pub(crate) state: Mutex<Option<Sq>>,
}

/// Slot of a completion queue id.
#[derive(Debug, Default)]
pub(crate) struct CqSlot {
    /// Last head the host wrote through MMIO.
    pub(crate) head_db: AtomicU32,
    /// Queue size in entries; 0 = no queue.
    pub(crate) size: AtomicU32,
    pub(crate) state: Mutex<Option<Cq>>,
}

/// A completion waiting in the device, with the time it may be posted.
pub(crate) type Batched = (Completion, Option<Instant>);

/// Device state of a submission queue.
#[derive(Debug)]
pub(crate) struct Sq {
    pub(crate) qid: u16,
    pub(crate) cqid: u16,
    pub(crate) size: u32,
    pub(crate) ring: DmaRegion,
    pub(crate) base: usize,
    pub(crate) head: u32,
    /// Memory page size for PRPs, log2 bytes.
    pub(crate) page_shift: u32,
    pub(crate) view: DmaView,
    pub(crate) segs: Vec<Seg>,
    pub(crate) batch: Vec<Batched>,
    pub(crate) stats: Box<SimStats>,
    pub(crate) shadow: Option<Shadow>,
}

impl Sq {
    pub(crate) fn new(
        qid: u16,
        cqid: u16,
        size: u32,
        ring: DmaRegion,
        base: usize,
        view: DmaView,
        page_shift: u32,
    ) -> Sq {
        Sq {
            qid,
            cqid,
            size,
            ring,
            base,
            head: 0,
            page_shift,
            view,
            segs: Vec::with_capacity(64),
            batch: Vec::with_capacity(64),
            stats: Box::default(),
            shadow: None,
        }
    }
}

/// Device state of a completion queue.
#[derive(Debug)]
pub(crate) struct Cq {
    pub(crate) size: u32,
    pub(crate) ring: DmaRegion,
    pub(crate) base: usize,
    pub(crate) tail: u32,
    pub(crate) phase: bool,
    /// The host's head as last seen by the device.
    pub(crate) head: u32,
    pub(crate) pending: VecDeque<Completion>,
    pub(crate) delayed: VecDeque<(Instant, Completion)>,
    pub(crate) sq_count: u32,
    pub(crate) shadow: Option<Shadow>,
}

impl Cq {
    pub(crate) fn new(size: u32, ring: DmaRegion, base: usize) -> Cq {
        Cq {
            size,
            ring,
            base,
            tail: 0,
            phase: true,
            head: 0,
            pending: VecDeque::new(),
            delayed: VecDeque::new(),
            sq_count: 0,
            shadow: None,
        }
    }

    #[inline]
    fn full(&self) -> bool {
        let next = if self.tail + 1 == self.size {
            0
        } else {
            self.tail + 1
        };
        next == self.head
    }

    #[inline]
    fn write(&mut self, c: Completion, sqhd: u16) {
        let off = self.base + self.tail as usize * 16;
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&c.dw0.to_le_bytes());
        b[8..10].copy_from_slice(&sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&c.sqid.to_le_bytes());
        self.ring.write(off, &b);
        let sp = ((c.status.0 & 0x7fff) << 1) | self.phase as u16;
        self.ring
            .store_u32_release(off + 12, u32::from(c.cid) | (u32::from(sp) << 16));
        self.tail += 1;
        if self.tail == self.size {
            self.tail = 0;
            self.phase = !self.phase;
        }
    }

    /// Posts `c` now, or queues it behind earlier completions when the CQ is full.
    #[inline]
    pub(crate) fn post(&mut self, c: Completion, sqs: &[SqSlot]) {
        if self.pending.is_empty() && !self.full() {
            let sqhd = sqhd(sqs, c.sqid);
            self.write(c, sqhd);
        } else {
            self.pending.push_back(c);
        }
    }

    /// Posts pending completions while there is room.
    pub(crate) fn flush(&mut self, sqs: &[SqSlot]) {
        while !self.full() {
            let Some(c) = self.pending.pop_front() else {
                break;
            };
            let sqhd = sqhd(sqs, c.sqid);
            self.write(c, sqhd);
        }
    }

    /// Moves delayed completions whose time has come to the CQ (in the order they were held).
    pub(crate) fn promote(&mut self, now: Instant, sqs: &[SqSlot]) {
        while self.delayed.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, c)) = self.delayed.pop_front() {
                self.post(c, sqs);
            }
        }
        // Entries with different delays may be out of order: pick up any later due ones.
        if self.delayed.iter().any(|(due, _)| *due <= now) {
            let mut keep = VecDeque::with_capacity(self.delayed.len());
            while let Some((due, c)) = self.delayed.pop_front() {
                if due <= now {
                    self.post(c, sqs);
                } else {
                    keep.push_back((due, c));
                }
            }
            self.delayed = keep;
        }
    }

    /// Posts a batch from one SQ: immediate ones in order, delayed ones held.
    pub(crate) fn post_batch(&mut self, batch: &mut Vec<Batched>, sqs: &[SqSlot]) {
        for (c, due) in batch.drain(..) {
            match due {
                None => self.post(c, sqs),
                Some(t) => self.delayed.push_back((t, c)),
            }
        }
    }

    /// True when the device still owes completions on this CQ.
    pub(crate) fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.delayed.is_empty()
    }

    /// Accepts a new head from the host.
    pub(crate) fn set_head(&mut self, head: u32) {
        if head < self.size {
            self.head = head;
        }
    }
}

#[inline]
fn sqhd(sqs: &[SqSlot], sqid: u16) -> u16 {
    sqs.get(sqid as usize)
        .map_or(0, |s| s.head.load(Ordering::Relaxed) as u16)
}
