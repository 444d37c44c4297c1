//! Tests of the simulated controller, driven by a tiny hand-written host: it maps a `DmaPool`
//! into the controller's domain, programs the admin queue registers, writes SQEs into rings in
//! DMA memory, rings doorbells and follows phase tags, without `ctrl` or `qpair`.

mod admin;
mod faults;
mod io;
mod random;
mod regs;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfnvme_hugepages::{DmaBuf, DmaMapper, DmaPool, PagePolicy};
use zerocopy::IntoBytes;

use crate::pci::PciFunction;
use crate::spec::regs::{cq_head_doorbell, offset, sq_tail_doorbell, Aqa, Cc, Csts};
use crate::spec::{Cqe, Sqe, Status};

use super::{SimController, SimSubsystem};

/// How long the harness waits for anything (only reached when a test fails).
const DEADLINE: Duration = Duration::from_secs(5);

/// One host-side queue pair: rings in DMA memory and the host's indexes.
pub(super) struct Ring {
    pub(super) sq: DmaBuf,
    pub(super) cq: DmaBuf,
    pub(super) sq_size: u32,
    pub(super) cq_size: u32,
    pub(super) sq_tail: u32,
    pub(super) cq_head: u32,
    pub(super) phase: bool,
}

impl Ring {
    fn new(pool: &Arc<DmaPool>, sq_size: u32, cq_size: u32) -> Ring {
        Ring {
            sq: pool.alloc(sq_size as usize * 64, 4096).unwrap(),
            cq: pool.alloc(cq_size as usize * 16, 4096).unwrap(),
            sq_size,
            cq_size,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
        }
    }
}

/// A test host bound to one controller.
pub(super) struct Host {
    pub(super) ctrl: Arc<SimController>,
    pub(super) pool: Arc<DmaPool>,
    pub(super) rings: HashMap<u16, Ring>,
    pub(super) next_cid: u16,
    /// Ring the CQ head doorbell after each reaped entry.
    pub(super) auto_cq_doorbell: bool,
    /// PRP list pages built by the harness, kept alive until the host goes.
    keep: Vec<DmaBuf>,
    dstrd: u8,
}

impl Host {
    /// Maps a fresh pool into `ctrl` and brings the controller up with a 32-entry admin queue.
    pub(super) fn new(ctrl: Arc<SimController>) -> Host {
        let pool = DmaPool::new(PagePolicy::Small);
        Self::with_pool(ctrl, pool)
    }

    pub(super) fn with_pool(ctrl: Arc<SimController>, pool: Arc<DmaPool>) -> Host {
        pool.add_mapper(ctrl.dma_mapper()).unwrap();
        let dstrd = ctrl.cap().dstrd();
        let mut h = Host {
            ctrl,
            pool,
            rings: HashMap::new(),
            next_cid: 1,
            auto_cq_doorbell: true,
            keep: Vec::new(),
            dstrd,
        };
        h.enable(32);
        h
    }

    /// Programs AQA/ASQ/ACQ for a fresh admin queue pair, sets CC.EN and waits for RDY.
    pub(super) fn enable(&mut self, size: u32) {
        let ring = Ring::new(&self.pool, size, size);
        let aqa = Aqa::new()
            .with_asqs(size as u16 - 1)
            .with_acqs(size as u16 - 1);
        self.ctrl.write32(offset::AQA, aqa.into());
        self.ctrl.write64(offset::ASQ, self.iova(&ring.sq, 0));
        self.ctrl.write64(offset::ACQ, self.iova(&ring.cq, 0));
        self.rings.insert(0, ring);
        self.ctrl.write32(offset::CC, cc_enabled().into());
        self.wait_ready(true);
    }

    /// Clears CC.EN, waits for RDY = 0 and forgets every ring.
    pub(super) fn disable(&mut self) {
        self.ctrl.write32(offset::CC, 0);
        self.wait_ready(false);
        self.rings.clear();
    }

    pub(super) fn csts(&self) -> Csts {
        Csts::from(self.ctrl.read32(offset::CSTS))
    }

    pub(super) fn wait_ready(&self, rdy: bool) {
        let deadline = Instant::now() + DEADLINE;
        while self.csts().rdy() != rdy {
            assert!(Instant::now() < deadline, "CSTS.RDY never became {rdy}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// IOVA of `buf[off]` in this controller's domain.
    pub(super) fn iova(&self, buf: &DmaBuf, off: usize) -> u64 {
        buf.iova(self.ctrl.mapper.domain(), off).unwrap().0
    }

    pub(super) fn buf(&self, len: usize) -> DmaBuf {
        let b = self.pool.alloc(len, 4096).unwrap();
        b.fill(0, len, 0);
        b
    }

    /// Writes `sqe` (with a fresh CID) at the SQ tail without ringing. Returns the CID.
    pub(super) fn push(&mut self, qid: u16, mut sqe: Sqe) -> u16 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        sqe.set_cid(cid);
        let r = self.rings.get_mut(&qid).expect("queue exists");
        r.sq.write(r.sq_tail as usize * 64, sqe.as_bytes());
        r.sq_tail = (r.sq_tail + 1) % r.sq_size;
        cid
    }

    /// Rings the SQ tail doorbell of `qid` with the host's tail.
    pub(super) fn ring_sq(&self, qid: u16) {
        let tail = self.rings[&qid].sq_tail;
        self.ctrl.write32(sq_tail_doorbell(qid, self.dstrd), tail);
    }

    pub(super) fn ring_cq(&self, qid: u16) {
        let head = self.rings[&qid].cq_head;
        self.ctrl.write32(cq_head_doorbell(qid, self.dstrd), head);
    }

    /// Submits one command and returns its CID.
    pub(super) fn submit(&mut self, qid: u16, sqe: Sqe) -> u16 {
        let cid = self.push(qid, sqe);
        self.ring_sq(qid);
        cid
    }

    /// Takes the next CQE of `qid` if its phase tag says it is new.
    pub(super) fn reap(&mut self, qid: u16) -> Option<Cqe> {
        let auto = self.auto_cq_doorbell;
        let r = self.rings.get_mut(&qid)?;
        let off = r.cq_head as usize * 16;
        let dw3 = r.cq.load_u32_acquire(off + 12);
        if ((dw3 >> 16) & 1 != 0) != r.phase {
            return None;
        }
        let mut cqe = Cqe::default();
        r.cq.read(off, cqe.as_mut_bytes());
        r.cq_head += 1;
        if r.cq_head == r.cq_size {
            r.cq_head = 0;
            r.phase = !r.phase;
        }
        if auto {
            self.ring_cq(qid);
        }
        Some(cqe)
    }

    /// Waits for the CQE of `cid` on `qid` (other completions, e.g. AERs, are skipped).
    pub(super) fn wait(&mut self, qid: u16, cid: u16) -> Cqe {
        self.try_wait(qid, cid, DEADLINE)
            .unwrap_or_else(|| panic!("no completion for cid {cid} on queue {qid}"))
    }

    pub(super) fn try_wait(&mut self, qid: u16, cid: u16, timeout: Duration) -> Option<Cqe> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.reap(qid) {
                Some(c) if c.cid == cid => return Some(c),
                Some(_) => {}
                None => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    self.ctrl.idle_poll();
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Submits and waits.
    pub(super) fn cmd(&mut self, qid: u16, sqe: Sqe) -> Cqe {
        let cid = self.submit(qid, sqe);
        let c = self.wait(qid, cid);
        assert_eq!(c.sqid, qid);
        c
    }

    pub(super) fn admin(&mut self, sqe: Sqe) -> Cqe {
        self.cmd(0, sqe)
    }

    /// Admin command expected to succeed.
    pub(super) fn admin_ok(&mut self, sqe: Sqe) -> Cqe {
        let c = self.admin(sqe);
        assert!(
            c.status().is_success(),
            "admin opcode {:#x}: {:?}",
            sqe.opcode(),
            c.status()
        );
        c
    }

    /// Creates I/O CQ and SQ `qid` with `size` entries each.
    pub(super) fn create_pair(&mut self, qid: u16, size: u32) {
        self.create_pair_sized(qid, size, size);
    }

    pub(super) fn create_pair_sized(&mut self, qid: u16, sq_size: u32, cq_size: u32) {
        let ring = Ring::new(&self.pool, sq_size, cq_size);
        let cq_iova = self.iova(&ring.cq, 0);
        let sq_iova = self.iova(&ring.sq, 0);
        self.rings.insert(qid, ring);
        self.admin_ok(Sqe::create_io_cq(
            qid,
            cq_size as u16 - 1,
            cq_iova,
            0,
            false,
        ));
        self.admin_ok(Sqe::create_io_sq(qid, sq_size as u16 - 1, sq_iova, qid, 0));
    }

    /// Read/write/compare of `nlb` blocks with PRPs built by the harness for `buf`.
    pub(super) fn io(
        &mut self,
        qid: u16,
        mut sqe: Sqe,
        buf: &DmaBuf,
        off: usize,
        len: usize,
    ) -> Cqe {
        let (p1, p2) = self.prps(buf, off, len);
        sqe.prp1 = p1;
        sqe.prp2 = p2;
        self.cmd(qid, sqe)
    }

    /// PRP1/PRP2 for `len` bytes at `buf[off]`; builds a PRP list (in a new buffer kept alive
    /// by leaking it into the pool's lifetime) when needed.
    pub(super) fn prps(&mut self, buf: &DmaBuf, off: usize, len: usize) -> (u64, u64) {
        let page = 4096;
        let p1 = self.iova(buf, off);
        let first = (page - (p1 as usize % page)).min(len);
        let rest = len - first;
        if rest == 0 {
            return (p1, 0);
        }
        let start = off + first;
        if rest <= page {
            return (p1, self.iova(buf, start));
        }
        let pages: Vec<u64> = (0..rest.div_ceil(page))
            .map(|i| self.iova(buf, start + i * page))
            .collect();
        let list = self.prp_list(&pages);
        (p1, list)
    }

    /// Builds chained PRP list pages for `pages`, returning the first list's IOVA.
    pub(super) fn prp_list(&mut self, pages: &[u64]) -> u64 {
        let per = 512;
        let nlists = if pages.len() <= per {
            1
        } else {
            (pages.len() - 1).div_ceil(per - 1)
        };
        let lists = self.buf(nlists * 4096);
        let mut idx = 0;
        for l in 0..nlists {
            let base = l * 4096;
            let left = pages.len() - idx;
            let mut slot = 0;
            while slot < per && idx < pages.len() {
                if slot == per - 1 && left - slot > 1 {
                    let next = self.iova(&lists, base + 4096);
                    lists.store_u64(base + slot * 8, next);
                    break;
                }
                lists.store_u64(base + slot * 8, pages[idx]);
                idx += 1;
                slot += 1;
            }
        }
        let iova = self.iova(&lists, 0);
        self.keep.push(lists);
        iova
    }
}

/// CC with EN, 4 KiB pages, NVM command set, 64/16-byte entries.
pub(super) fn cc_enabled() -> Cc {
    Cc::new().with_en(true).with_iosqes(6).with_iocqes(4)
}

/// A subsystem with `n` controllers and one RAM namespace (nsid 1, `mib` MiB, 512 B blocks).
pub(super) fn subsystem(n: usize, mib: u64) -> SimSubsystem {
    SimSubsystem::builder()
        .controllers(n)
        .namespace(super::NsConfig::ram(1, mib << 20))
        .build()
}

pub(super) fn st(sct: u8, sc: u8) -> (u8, u8) {
    (sct, sc)
}

/// (SCT, SC) of a completion.
pub(super) fn sc(c: &Cqe) -> (u8, u8) {
    let s: Status = c.status();
    (s.sct(), s.sc())
}

pub(super) fn fill_pattern(buf: &DmaBuf, seed: u8) {
    let v: Vec<u8> = (0..buf.len())
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    buf.write(0, &v);
}
