//! Submission and completion rings of one queue, with their doorbells.
//!
//! The SQ tail doorbell is written once per batch ([`Rings::ring_sq`]) and only when the tail
//! moved; the CQ head doorbell once per poll that consumed entries. With shadow doorbells (Doorbell
//! Buffer Config) the values go to the shadow page and the MMIO is written only when the device's
//! EventIdx says it is waiting for one.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vfnvme_hugepages::DmaBuf;

use crate::pci::PciFunction;
use crate::spec::{Cqe, Sqe};

/// Bytes per SQE.
pub const SQE_SIZE: usize = 64;
/// Bytes per CQE.
pub const CQE_SIZE: usize = 16;

/// The shadow doorbell and EventIdx pages of a controller (Doorbell Buffer Config), shared by all
/// its queues; each queue touches only its own two slots.
pub struct ShadowPages {
    /// Shadow doorbell page: SQ y tail at 8y (in units of the doorbell stride), CQ y head after it.
    pub shadow: DmaBuf,
    /// EventIdx page, same layout, written by the device.
    pub eventidx: DmaBuf,
    /// Doorbell stride in bytes (4 << CAP.DSTRD).
    pub stride: usize,
}

impl ShadowPages {
    /// True if the doorbells of queues 0 to `last_qid` fit in the page.
    pub fn covers(&self, last_qid: u16) -> bool {
        self.cq_off(last_qid) + 4 <= 4096
    }

    fn sq_off(&self, qid: u16) -> usize {
        2 * qid as usize * self.stride
    }
    fn cq_off(&self, qid: u16) -> usize {
        (2 * qid as usize + 1) * self.stride
    }
}

/// True if moving a doorbell from `old` to `new` crosses the device's EventIdx `ei`, so the MMIO
/// write is needed (Linux's `nvme_dbbuf_need_event`).
#[inline]
pub fn need_event(ei: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(ei).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The two rings of one queue and their doorbell state.
pub struct Rings {
    func: Arc<dyn PciFunction>,
    qid: u16,
    size: u16,
    sq: Arc<DmaBuf>,
    cq: Arc<DmaBuf>,
    sq_tail: u16,
    sq_rung: u16,
    /// SQ head as last reported by the device in a CQE.
    sq_head: u16,
    cq_head: u16,
    cq_rung: u16,
    phase: bool,
    sq_db: usize,
    cq_db: usize,
    shadow: Option<Arc<ShadowPages>>,
    /// Write the MMIO doorbell even when the shadow says it is not needed (the admin queue).
    always_mmio: bool,
}

impl Rings {
    /// Rings of `size` entries over `sq` and `cq` memory (zeroed here), with doorbell offsets.
    /// The admin queue (qid 0) always writes its MMIO doorbells, shadow or not.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        func: Arc<dyn PciFunction>,
        qid: u16,
        size: u16,
        sq: Arc<DmaBuf>,
        cq: Arc<DmaBuf>,
        sq_db: usize,
        cq_db: usize,
        shadow: Option<Arc<ShadowPages>>,
    ) -> Rings {
        debug_assert!(sq.len() >= size as usize * SQE_SIZE);
        debug_assert!(cq.len() >= size as usize * CQE_SIZE);
        let mut r = Rings {
            func,
            qid,
            size,
            sq,
            cq,
            sq_tail: 0,
            sq_rung: 0,
            sq_head: 0,
            cq_head: 0,
            cq_rung: 0,
            phase: true,
            sq_db,
            cq_db,
            shadow,
            always_mmio: qid == 0,
        };
        r.reset();
        r
    }

    /// Back to the state of a freshly created queue: indices 0, phase 1, CQ memory zeroed (so no
    /// old entry can look new), shadow slots cleared.
    pub fn reset(&mut self) {
        self.sq_tail = 0;
        self.sq_rung = 0;
        self.sq_head = 0;
        self.cq_head = 0;
        self.cq_rung = 0;
        self.phase = true;
        self.cq.fill(0, self.cq.len(), 0);
        if let Some(s) = &self.shadow {
            s.shadow.store_u32(s.sq_off(self.qid), 0);
            s.shadow.store_u32(s.cq_off(self.qid), 0);
        }
    }

    /// Queue id.
    #[inline]
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Entries per ring.
    #[inline]
    pub fn size(&self) -> u16 {
        self.size
    }

    /// SQ memory (for Create I/O SQ).
    pub fn sq_mem(&self) -> &DmaBuf {
        &self.sq
    }

    /// CQ memory (for Create I/O CQ).
    pub fn cq_mem(&self) -> &DmaBuf {
        &self.cq
    }

    /// Uses (or stops using) shadow doorbells, e.g. after Doorbell Buffer Config succeeded.
    pub fn set_shadow(&mut self, shadow: Option<Arc<ShadowPages>>) {
        self.shadow = shadow;
    }

    /// The function the doorbells belong to.
    pub fn func(&self) -> &Arc<dyn PciFunction> {
        &self.func
    }

    /// Free SQ entries, by the device's last reported head.
    #[inline]
    pub fn sq_free(&self) -> u16 {
        // Both are below `size` (`pop_cqe` ignores a head past the ring): a compare, not a
        // division, per submission.
        let used = if self.sq_tail >= self.sq_head {
            self.sq_tail - self.sq_head
        } else {
            self.sq_tail + self.size - self.sq_head
        };
        self.size - 1 - used
    }

    /// Writes `sqe` at the tail and advances it (no doorbell). Returns false if the SQ is full.
    #[inline(always)]
    pub fn push(&mut self, sqe: &Sqe) -> bool {
        if self.sq_free() == 0 {
            return false;
        }
        self.push_with_room(sqe);
        true
    }

    /// [`Rings::push`] for a caller that has checked [`Rings::sq_free`] already (the queue pair
    /// does, before it takes a command id), without checking again: a push on a full SQ would
    /// overwrite an entry the device has not fetched yet.
    #[inline(always)]
    pub fn push_with_room(&mut self, sqe: &Sqe) {
        debug_assert!(self.sq_free() > 0, "push on a full SQ");
        self.sq
            .store_words(self.sq_tail as usize * SQE_SIZE, &sqe.to_words());
        self.sq_tail += 1;
        if self.sq_tail == self.size {
            self.sq_tail = 0;
        }
    }

    /// True if entries were pushed since the last doorbell.
    #[inline]
    pub fn sq_pending(&self) -> bool {
        self.sq_tail != self.sq_rung
    }

    /// Writes the SQ tail doorbell if the tail moved.
    #[inline]
    pub fn ring_sq(&mut self) {
        if self.sq_tail == self.sq_rung {
            return;
        }
        let old = self.sq_rung;
        self.sq_rung = self.sq_tail;
        // The SQEs must be visible before the device can see the new tail.
        fence(Ordering::Release);
        if let Some(s) = &self.shadow {
            s.shadow.store_u32(s.sq_off(self.qid), self.sq_tail as u32);
            fence(Ordering::SeqCst);
            let ei = s.eventidx.load_u32(s.sq_off(self.qid)) as u16;
            if !self.always_mmio && !need_event(ei, self.sq_tail, old) {
                return;
            }
        }
        self.func.write32(self.sq_db, self.sq_tail as u32);
    }

    /// The CQE at the head if the device has posted it (phase matches), without consuming it.
    #[inline(always)]
    pub fn peek_cqe(&self) -> Option<Cqe> {
        let off = self.cq_head as usize * CQE_SIZE;
        let phase = self.phase;
        let [dw0, dw1, dw2, dw3] = self
            .cq
            .load_entry16(off, |dw3| ((dw3 >> 16) & 1 == 1) == phase)?;
        Some(Cqe {
            dw0,
            dw1,
            sqhd: dw2 as u16,
            sqid: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            status_phase: (dw3 >> 16) as u16,
        })
    }

    /// Consumes the head CQE and records the SQ head it reported. A head that does not make
    /// sense (past the ring) is ignored, so a bad device value cannot corrupt the free count.
    #[inline]
    pub fn pop_cqe(&mut self, sqhd: u16) {
        if sqhd < self.size {
            self.sq_head = sqhd;
        }
        self.cq_head += 1;
        if self.cq_head == self.size {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
    }

    /// Writes the CQ head doorbell if entries were consumed since the last one.
    #[inline]
    pub fn ring_cq(&mut self) {
        if self.cq_head == self.cq_rung {
            return;
        }
        let old = self.cq_rung;
        self.cq_rung = self.cq_head;
        if let Some(s) = &self.shadow {
            s.shadow.store_u32(s.cq_off(self.qid), self.cq_head as u32);
            fence(Ordering::SeqCst);
            let ei = s.eventidx.load_u32(s.cq_off(self.qid)) as u16;
            if !self.always_mmio && !need_event(ei, self.cq_head, old) {
                return;
            }
        }
        self.func.write32(self.cq_db, self.cq_head as u32);
    }
}

#[cfg(test)]
impl Rings {
    /// Test hook: rewrites the command id of the CQE the device posted at the head, as a
    /// misbehaving device would have written it. Returns false if nothing is posted there.
    pub(crate) fn corrupt_head_cid_for_test(&mut self, cid: u16) -> bool {
        if self.peek_cqe().is_none() {
            return false;
        }
        let off = self.cq_head as usize * CQE_SIZE + 12;
        let dw3 = self.cq.load_u32(off);
        self.cq.store_u32(off, (dw3 & 0xffff_0000) | cid as u32);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn event_index_rule() {
        // Device waits for the doorbell at index 5: moving 3 -> 6 crosses it, 6 -> 8 does not.
        assert!(need_event(5, 6, 3));
        assert!(!need_event(5, 8, 6));
        // Exactly reaching ei + 1.
        assert!(need_event(5, 6, 5));
        // Wrap-around of the 16-bit index space.
        assert!(need_event(0xffff, 1, 0xfffe));
        assert!(!need_event(0xfff0, 0xfff5, 0xfff2));
    }
}
