//! The register file of a simulated controller (NVMe Base 2.0 §3.1.3) and the enable, disable
//! and shutdown handshakes.
//!
//! * CC.EN 0→1 validates the configuration like QEMU (ASQ/ACQ page aligned and mapped, AQA sizes
//!   nonzero, IOSQES 6, IOCQES 4, CSS and MPS supported, AMS 0); a bad one sets CSTS.CFS.
//!   Otherwise the admin queues are created and CSTS.RDY becomes 1 after the ready delay,
//!   evaluated lazily when CSTS is read or a doorbell is written.
//! * CC.EN 1→0 deletes every queue (admin included), drops outstanding AERs and queued events,
//!   turns DBBUF off, clears CFS and SHST; RDY reads 0 after the ready delay.
//! * CC.SHN 1 or 2 reports SHST "occurring", then "complete" after the ready delay; queues stay.
//! * Doorbells sit at `0x1000 + (2y [+1]) * (4 << DSTRD)`. A write to a queue that does not exist
//!   or a value past the queue's end is ignored, with an Error event (invalid doorbell register
//!   or value) if an AER is outstanding.
//! * After surprise removal every read returns all-ones and writes are ignored.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use crate::spec::log::{aer_error, aer_type, AsyncEvent};
use crate::spec::regs::{offset, shn, shst, Aqa, Cap, Cc, Csts, Vs, ALL_ONES_32};

use super::queue::{Cq, Sq};
use super::{lock, run, SimController};

/// CAP.CSS advertised: NVM command set (bit 0) and I/O command sets (bit 6).
const CAP_CSS: u8 = 0x41;
/// CAP.MPSMAX advertised: 64 KiB pages.
pub(crate) const MPSMAX: u8 = 4;
/// VS advertised: 2.0.0.
pub(crate) const VERSION: u32 = 0x0002_0000;

/// Register values that are plain storage.
#[derive(Debug, Default)]
pub(crate) struct RegFile {
    pub(crate) cc: u32,
    pub(crate) aqa: u32,
    pub(crate) asq: u64,
    pub(crate) acq: u64,
    pub(crate) intms: u32,
    pub(crate) shst: u8,
    /// RDY goes to 1 at this time.
    pub(crate) ready_at: Option<Instant>,
    /// RDY reads 1 until this time (after a disable).
    pub(crate) rdy_until: Option<Instant>,
    /// SHST goes to complete at this time.
    pub(crate) shutdown_at: Option<Instant>,
}

impl SimController {
    /// CAP as this controller reports it.
    pub(crate) fn cap(&self) -> Cap {
        let c = &self.shared.cfg;
        Cap::new()
            .with_mqes(c.mqes)
            .with_cqr(true)
            .with_to(c.cap_to)
            .with_dstrd(c.dstrd)
            .with_css(CAP_CSS)
            .with_mpsmin(c.mpsmin)
            .with_mpsmax(MPSMAX)
    }

    /// BAR0 size: 16 KiB, or what the doorbells of every queue need at a DSTRD up to 3; a larger
    /// DSTRD does not grow it (a device whose doorbells lie past its BAR, for tests).
    pub(crate) fn bar_len(&self) -> usize {
        let c = &self.shared.cfg;
        let need = offset::DOORBELL_BASE
            + 2 * (c.max_io_queue_pairs as usize + 1) * (4usize << c.dstrd.min(3));
        need.max(16 << 10)
    }

    /// Memory page size selected at enable, log2 bytes.
    pub(crate) fn page_shift(&self) -> u32 {
        self.page_shift.load(Ordering::Acquire).max(12)
    }

    fn gone(&self) -> bool {
        self.run.load(Ordering::Acquire) & run::GONE != 0
    }

    /// Applies time-based transitions (RDY after the ready delay, shutdown completion).
    pub(crate) fn tick_regs(&self, r: &mut RegFile) {
        let now = Instant::now();
        if r.ready_at.is_some_and(|t| now >= t) {
            r.ready_at = None;
            self.run.fetch_or(run::RDY, Ordering::AcqRel);
        }
        if r.rdy_until.is_some_and(|t| now >= t) {
            r.rdy_until = None;
        }
        if r.shutdown_at.is_some_and(|t| now >= t) {
            r.shutdown_at = None;
            r.shst = shst::COMPLETE;
        }
    }

    /// Slow path of the doorbell check: the ready delay may just have passed.
    pub(crate) fn running_slow(&self) -> bool {
        if self.running() {
            return true;
        }
        let mut r = lock(&self.regs);
        if r.ready_at.is_some() {
            self.tick_regs(&mut r);
        }
        drop(r);
        self.running()
    }

    /// CSTS as the host reads it.
    pub(crate) fn csts(&self) -> Csts {
        let mut r = lock(&self.regs);
        self.tick_regs(&mut r);
        let bits = self.run.load(Ordering::Acquire);
        Csts::new()
            .with_rdy(bits & run::RDY != 0 || r.rdy_until.is_some())
            .with_cfs(bits & run::CFS != 0)
            .with_shst(r.shst)
    }

    pub(crate) fn reg_read32(&self, off: usize) -> u32 {
        if self.gone() {
            return ALL_ONES_32;
        }
        let cap = u64::from(self.cap());
        match off {
            offset::CAP => cap as u32,
            o if o == offset::CAP + 4 => (cap >> 32) as u32,
            offset::VS => u32::from(Vs::from(VERSION)),
            offset::INTMS | offset::INTMC => lock(&self.regs).intms,
            offset::CC => lock(&self.regs).cc,
            offset::CSTS => u32::from(self.csts()),
            offset::AQA => lock(&self.regs).aqa,
            offset::ASQ => lock(&self.regs).asq as u32,
            o if o == offset::ASQ + 4 => (lock(&self.regs).asq >> 32) as u32,
            offset::ACQ => lock(&self.regs).acq as u32,
            o if o == offset::ACQ + 4 => (lock(&self.regs).acq >> 32) as u32,
            // NSSR, CMBLOC, CMBSZ (no CMB), reserved space and doorbells read as zero.
            _ => 0,
        }
    }

    pub(crate) fn reg_write32(&self, off: usize, v: u32) {
        if self.gone() {
            return;
        }
        if off >= offset::DOORBELL_BASE {
            if off + 4 <= self.bar_len() {
                self.doorbell_write(off, v);
            }
            return;
        }
        match off {
            offset::INTMS => lock(&self.regs).intms |= v,
            offset::INTMC => lock(&self.regs).intms &= !v,
            offset::CC => self.write_cc(v),
            offset::AQA => lock(&self.regs).aqa = v,
            offset::ASQ => set_lo(&mut lock(&self.regs).asq, v),
            o if o == offset::ASQ + 4 => set_hi(&mut lock(&self.regs).asq, v),
            offset::ACQ => set_lo(&mut lock(&self.regs).acq, v),
            o if o == offset::ACQ + 4 => set_hi(&mut lock(&self.regs).acq, v),
            // NSSR: CAP.NSSRS is 0, so writes have no effect. Other registers are read-only.
            _ => {}
        }
    }

    fn write_cc(&self, v: u32) {
        let mut r = lock(&self.regs);
        let old = Cc::from(r.cc);
        let new = Cc::from(v);
        r.cc = v;
        let delay = self.shared.cfg.ready_delay;
        if new.en() && !old.en() {
            if self.enable(&mut r, new).is_err() {
                self.run.fetch_or(run::CFS, Ordering::AcqRel);
            }
        } else if !new.en() && old.en() {
            drop(r);
            self.reset_state();
            let mut r = lock(&self.regs);
            r.shst = shst::NORMAL;
            r.shutdown_at = None;
            r.ready_at = None;
            r.rdy_until = (!delay.is_zero()).then(|| Instant::now() + delay);
            return;
        }
        if new.shn() != shn::NONE && old.shn() == shn::NONE {
            r.shst = shst::OCCURRING;
            r.shutdown_at = Some(Instant::now() + delay);
            self.tick_regs(&mut r);
        } else if new.shn() == shn::NONE && old.shn() != shn::NONE {
            r.shst = shst::NORMAL;
            r.shutdown_at = None;
        }
    }

    /// CC.EN 0→1: validate, create the admin queues, schedule RDY.
    fn enable(&self, r: &mut RegFile, cc: Cc) -> Result<(), ()> {
        let bits = self.run.load(Ordering::Acquire);
        if bits & run::CFS != 0 {
            return Err(());
        }
        if cc.mps() > MPSMAX
            || !matches!(cc.css(), 0 | 6)
            || cc.iosqes() != 6
            || cc.iocqes() != 4
            || cc.ams() != 0
        {
            return Err(());
        }
        let page_shift = 12 + u32::from(cc.mps());
        let mask = (1u64 << page_shift) - 1;
        let aqa = Aqa::from(r.aqa);
        if aqa.asqs() == 0 || aqa.acqs() == 0 {
            return Err(());
        }
        if r.asq == 0 || r.acq == 0 || r.asq & mask != 0 || r.acq & mask != 0 {
            return Err(());
        }
        let sq_size = u32::from(aqa.asqs()) + 1;
        let cq_size = u32::from(aqa.acqs()) + 1;
        let mut view = self.mapper.view();
        let (sq_ring, sq_base) = view.resolve(r.asq, sq_size as usize * 64).ok_or(())?;
        let (cq_ring, cq_base) = view.resolve(r.acq, cq_size as usize * 16).ok_or(())?;
        self.page_shift.store(page_shift, Ordering::Release);
        {
            let slot = &self.cqs[0];
            let mut cq = Cq::new(cq_size, cq_ring, cq_base);
            cq.sq_count = 1;
            *lock(&slot.state) = Some(cq);
            slot.head_db.store(0, Ordering::Relaxed);
            slot.size.store(cq_size, Ordering::Release);
        }
        {
            let slot = &self.sqs[0];
            *lock(&slot.state) = Some(Sq::new(0, 0, sq_size, sq_ring, sq_base, view, page_shift));
            slot.tail_db.store(0, Ordering::Relaxed);
            slot.head.store(0, Ordering::Relaxed);
            slot.size.store(sq_size, Ordering::Release);
        }
        r.rdy_until = None;
        let delay = self.shared.cfg.ready_delay;
        if delay.is_zero() {
            self.run.fetch_or(run::RDY, Ordering::AcqRel);
        } else {
            r.ready_at = Some(Instant::now() + delay);
        }
        Ok(())
    }

    /// Controller reset: every queue, AER, event and DBBUF setting goes; RDY and CFS clear.
    pub(crate) fn reset_state(&self) {
        self.run.fetch_and(!(run::RDY | run::CFS), Ordering::AcqRel);
        self.dbbuf_on.store(false, Ordering::Release);
        for slot in self.sqs.iter() {
            let mut g = lock(&slot.state);
            slot.size.store(0, Ordering::Release);
            if let Some(sq) = g.take() {
                lock(&self.totals).add(&sq.stats);
            }
        }
        for slot in self.cqs.iter() {
            let mut g = lock(&slot.state);
            slot.size.store(0, Ordering::Release);
            *g = None;
        }
        lock(&self.admin).reset(&self.shared.cfg);
    }

    /// Function-level reset: registers back to their reset values.
    pub(crate) fn function_reset(&self) {
        self.reset_state();
        let mut r = lock(&self.regs);
        *r = super::regs::RegFile::default();
    }

    pub(crate) fn set_cfs(&self) {
        self.run.fetch_or(run::CFS, Ordering::AcqRel);
    }

    pub(crate) fn surprise_remove(&self) {
        self.run.fetch_or(run::GONE, Ordering::AcqRel);
    }

    pub(crate) fn restore(&self) {
        self.function_reset();
        self.faults.clear();
        for a in self.ana.iter() {
            a.store(crate::spec::log::AnaState::OPTIMIZED.0, Ordering::Relaxed);
        }
        self.removal_requested.store(false, Ordering::Release);
        self.run.store(0, Ordering::Release);
    }

    fn doorbell_write(&self, off: usize, v: u32) {
        let stride = 4usize << self.shared.cfg.dstrd;
        let rel = off - offset::DOORBELL_BASE;
        if rel & (stride - 1) != 0 {
            return;
        }
        let idx = rel / stride;
        let qid = idx / 2;
        if !self.running() && !self.running_slow() {
            return;
        }
        if idx & 1 == 0 {
            let Some(slot) = self.sqs.get(qid) else {
                return self.bad_doorbell(aer_error::INVALID_DOORBELL_REGISTER);
            };
            if !self.doorbell_value_ok(&slot.size, v) {
                return;
            }
            slot.tail_db.store(v, Ordering::Release);
            if self.shared.cfg.inline {
                self.process_sq(qid as u16, Some(v));
            }
        } else {
            let Some(slot) = self.cqs.get(qid) else {
                return self.bad_doorbell(aer_error::INVALID_DOORBELL_REGISTER);
            };
            if !self.doorbell_value_ok(&slot.size, v) {
                return;
            }
            slot.head_db.store(v, Ordering::Release);
            if self.shared.cfg.inline {
                self.service_cq(qid as u16, Some(v));
            } else {
                self.work_hint.store(true, Ordering::Release);
            }
        }
    }

    /// Checks a doorbell write of `v` for a queue of `size` entries (0: no such queue); on a bad
    /// one, reports it as the spec's error event and returns false.
    fn doorbell_value_ok(&self, size: &AtomicU32, v: u32) -> bool {
        let size = size.load(Ordering::Acquire);
        if size == 0 {
            self.bad_doorbell(aer_error::INVALID_DOORBELL_REGISTER);
            return false;
        }
        if v >= size {
            self.bad_doorbell(aer_error::INVALID_DOORBELL_VALUE);
            return false;
        }
        true
    }

    fn bad_doorbell(&self, info: u8) {
        self.post_event_if_waiting(AsyncEvent {
            event_type: aer_type::ERROR,
            info,
            log_page: crate::spec::log::lid::ERROR,
        });
    }
}

fn set_lo(r: &mut u64, v: u32) {
    *r = (*r & !0xffff_ffff) | u64::from(v);
}

fn set_hi(r: &mut u64, v: u32) {
    *r = (*r & 0xffff_ffff) | (u64::from(v) << 32);
}
