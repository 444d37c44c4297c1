//! Admin commands of the simulated controller (NVMe Base 2.0 §5): Identify, Get/Set Features,
//! Create/Delete I/O SQ and CQ, Get Log Page (Error, SMART, ANA), Asynchronous Event Request,
//! Abort, Keep Alive and Doorbell Buffer Config. Anything else is Invalid Command Opcode.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use zerocopy::{FromZeros, IntoBytes};

use crate::spec::cmd::AdminOpcode;
use crate::spec::features::{fid, sel};
use crate::spec::identify::{
    cmic, cns, encode_ns_descriptors, oacs, oaes, oncs, pad_ascii, IdentifyController,
};
use crate::spec::log::{
    aer_notice, aer_type, encode_ana_log, lid, AnaGroup, AnaState, AsyncEvent, ErrorLogEntry,
    SmartLog, ANA_LSP_RGO,
};
use crate::spec::status::{command_specific as cs, generic, path, sct};
use crate::spec::{Sqe, Status};

use super::engine::{dma_out, dnr, Reply, INVALID_FIELD, INVALID_NS, INVALID_OPCODE};
use super::prp::{DATA_TRANSFER_ERROR, PRP_OFFSET_INVALID};
use super::queue::{Cq, Shadow, Sq};
use super::{lock, SimConfig, SimController};

/// Error log entries kept (ELPE + 1).
const ERROR_LOG_ENTRIES: usize = 64;
/// Events queued at most while no AER waits.
const MAX_QUEUED_EVENTS: usize = 64;
/// Local status: Feature Identifier Not Saveable (SCT 1, SC 0Dh), not in `spec::status`.
const FEATURE_NOT_SAVEABLE: u8 = 0x0d;

/// Feature values (FIDs the controller supports).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Features {
    arbitration: u32,
    power_mgmt: u32,
    temp_threshold: u32,
    vwc: u32,
    int_coalescing: u32,
    aec: u32,
    kato: u32,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            arbitration: 0,
            power_mgmt: 0,
            temp_threshold: 0x157,
            vwc: 1,
            int_coalescing: 0,
            aec: 0,
            kato: 0,
        }
    }
}

/// DBBUF pages, once configured.
#[derive(Clone, Debug)]
pub(crate) struct Dbbuf {
    db: vfnvme_hugepages::DmaRegion,
    db_off: usize,
    ei: vfnvme_hugepages::DmaRegion,
    ei_off: usize,
    page: usize,
}

impl Dbbuf {
    /// Shadow locations of SQ (`cq = false`) or CQ `qid`; `None` past the page.
    fn shadow(&self, qid: u16, cq: bool, dstrd: u8) -> Option<Shadow> {
        let rel = (2 * qid as usize + cq as usize) * (4usize << dstrd);
        (rel + 4 <= self.page).then(|| Shadow {
            db: self.db.clone(),
            db_off: self.db_off + rel,
            ei: self.ei.clone(),
            ei_off: self.ei_off + rel,
        })
    }
}

/// Controller-wide admin state: AERs, events, features, error log, ANA change counts.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) aers: Vec<u16>,
    events: VecDeque<AsyncEvent>,
    aer_mask: u8,
    aer_limit: usize,
    feat: Features,
    queues_created: bool,
    nsqa: u16,
    ncqa: u16,
    max_q: u16,
    pub(crate) dbbuf: Option<Dbbuf>,
    ana_chgcnt: u64,
    group_chgcnt: Vec<u64>,
    pub(crate) error_count: u64,
    errors: VecDeque<ErrorLogEntry>,
}

impl AdminState {
    pub(crate) fn new(cfg: &SimConfig, ngroups: usize) -> AdminState {
        AdminState {
            aers: Vec::new(),
            events: VecDeque::new(),
            aer_mask: 0,
            aer_limit: cfg.aerl as usize + 1,
            feat: Features::default(),
            queues_created: false,
            nsqa: cfg.max_io_queue_pairs,
            ncqa: cfg.max_io_queue_pairs,
            max_q: cfg.max_io_queue_pairs,
            dbbuf: None,
            ana_chgcnt: 0,
            group_chgcnt: vec![0; ngroups],
            error_count: 0,
            errors: VecDeque::new(),
        }
    }

    /// Controller reset: AERs, events, features, queue counts and DBBUF go back to defaults.
    pub(crate) fn reset(&mut self, cfg: &SimConfig) {
        self.aers.clear();
        self.events.clear();
        self.aer_mask = 0;
        self.feat = Features::default();
        self.queues_created = false;
        self.nsqa = cfg.max_io_queue_pairs;
        self.ncqa = cfg.max_io_queue_pairs;
        self.dbbuf = None;
    }

    pub(crate) fn push_error(&mut self, e: ErrorLogEntry) {
        if self.errors.len() == ERROR_LOG_ENTRIES {
            self.errors.pop_back();
        }
        self.errors.push_front(e);
    }

    pub(crate) fn push_event(&mut self, ev: AsyncEvent) {
        if self.events.len() < MAX_QUEUED_EVENTS && !self.events.contains(&ev) {
            self.events.push_back(ev);
        }
    }

    /// An outstanding AER and an unmasked event to complete it with (masks the event's type).
    pub(crate) fn take_deliverable(&mut self) -> Option<(u16, AsyncEvent)> {
        if self.aers.is_empty() {
            return None;
        }
        let pos = self
            .events
            .iter()
            .position(|e| self.aer_mask & (1 << (e.event_type & 7)) == 0)?;
        let ev = self.events.remove(pos)?;
        self.aer_mask |= 1 << (ev.event_type & 7);
        Some((self.aers.remove(0), ev))
    }

    /// Reading a log page with RAE 0 unmasks its event type and drops its queued events.
    fn clear_events(&mut self, event_type: u8) {
        self.aer_mask &= !(1 << event_type);
        self.events.retain(|e| e.event_type != event_type);
    }
}

impl SimController {
    /// Executes an admin command.
    pub(crate) fn admin_cmd(&self, sq: &mut Sq, sqe: &Sqe) -> Reply {
        if sqe.fuse() != 0 || sqe.psdt() != 0 {
            return Reply::err(INVALID_FIELD);
        }
        match AdminOpcode(sqe.opcode()) {
            AdminOpcode::IDENTIFY => self.identify(sq, sqe),
            AdminOpcode::GET_FEATURES => self.get_features(sqe),
            AdminOpcode::SET_FEATURES => self.set_features(sqe),
            AdminOpcode::CREATE_IO_CQ => self.create_cq(sqe),
            AdminOpcode::CREATE_IO_SQ => self.create_sq(sqe),
            AdminOpcode::DELETE_IO_SQ => self.delete_sq(sqe),
            AdminOpcode::DELETE_IO_CQ => self.delete_cq(sqe),
            AdminOpcode::GET_LOG_PAGE => self.get_log_page(sq, sqe),
            AdminOpcode::ASYNC_EVENT_REQUEST => self.async_event_request(sqe),
            AdminOpcode::ABORT => self.abort(sqe),
            AdminOpcode::KEEP_ALIVE => Reply::ok(0),
            AdminOpcode::DOORBELL_BUFFER_CONFIG if self.shared.cfg.dbbuf => {
                self.doorbell_buffer_config(sq, sqe)
            }
            _ => Reply::err(INVALID_OPCODE),
        }
    }

    fn identify_controller(&self) -> IdentifyController {
        let cfg = &self.shared.cfg;
        let mut id = IdentifyController::new_zeroed();
        id.vid = 0x1b36;
        id.ssvid = 0x1af4;
        pad_ascii(&self.shared.serial, &mut id.sn, b' ');
        pad_ascii("vfnvme simulated controller", &mut id.mn, b' ');
        pad_ascii(env!("CARGO_PKG_VERSION"), &mut id.fr, b' ');
        id.cmic = cmic::MULTI_PORT | cmic::MULTI_CTRL | if cfg.ana { cmic::ANA } else { 0 };
        id.mdts = cfg.mdts;
        id.cntlid = self.cntlid;
        id.ver = super::regs::VERSION;
        id.oaes = if cfg.ana { oaes::ANA_CHANGE } else { 0 };
        id.cntrltype = 1;
        id.crdt1 = cfg.crdt[0];
        id.crdt2 = cfg.crdt[1];
        id.crdt3 = cfg.crdt[2];
        id.oacs = if cfg.dbbuf { oacs::DBBUF } else { 0 };
        id.acl = 3;
        id.aerl = cfg.aerl;
        id.lpa = 0x04;
        id.elpe = (ERROR_LOG_ENTRIES - 1) as u8;
        id.wctemp = 0x157;
        id.cctemp = 0x175;
        id.kas = 1;
        if cfg.ana {
            let n = self.shared.nn();
            id.anatt = 10;
            // Optimized, non-optimized, inaccessible, persistent loss, change; static ANAGRPID.
            id.anacap = 0x1f | 0x40;
            id.anagrpmax = n;
            id.nanagrpid = n;
        }
        id.cqt = cfg.cqt_ms;
        id.sqes = 0x66;
        id.cqes = 0x44;
        id.nn = self.shared.nn();
        id.oncs = oncs::COMPARE | oncs::DSM | oncs::WRITE_ZEROES;
        id.vwc = 0x07;
        id.sgls = 0;
        pad_ascii(&self.shared.subnqn, &mut id.subnqn, 0);
        id
    }

    fn identify(&self, sq: &mut Sq, sqe: &Sqe) -> Reply {
        let mut buf = [0u8; 4096];
        let nsid = sqe.nsid;
        match (sqe.cdw10 & 0xff) as u8 {
            cns::NAMESPACE => match self.shared.ns(nsid) {
                Some(ns) => {
                    let grp = if self.shared.cfg.ana { ns.nsid } else { 0 };
                    buf.copy_from_slice(ns.identify(grp).as_bytes());
                }
                // An inactive NSID in range reads as zeroes.
                None if nsid != 0 && nsid <= self.shared.nn() => {}
                None => return Reply::err(INVALID_NS),
            },
            cns::CONTROLLER => buf.copy_from_slice(self.identify_controller().as_bytes()),
            cns::ACTIVE_NSID_LIST => {
                if nsid >= 0xffff_fffe {
                    return Reply::err(INVALID_NS);
                }
                let ids = self
                    .shared
                    .namespaces
                    .iter()
                    .flatten()
                    .map(|n| n.nsid)
                    .filter(|&n| n > nsid)
                    .take(1024);
                for (i, id) in ids.enumerate() {
                    buf[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
                }
            }
            cns::NS_DESCRIPTORS => match self.shared.ns(nsid) {
                Some(ns) => {
                    encode_ns_descriptors(&ns.descriptors(), &mut buf);
                }
                None => return Reply::err(INVALID_NS),
            },
            _ => return Reply::err(INVALID_FIELD),
        }
        match dma_out(sq, sqe, &buf) {
            Ok(()) => Reply::ok(0),
            Err(s) => Reply::err(s),
        }
    }

    fn get_features(&self, sqe: &Sqe) -> Reply {
        let f = (sqe.cdw10 & 0xff) as u8;
        let select = ((sqe.cdw10 >> 8) & 7) as u8;
        let a = lock(&self.admin);
        let feat = match select {
            sel::DEFAULT => Features::default(),
            sel::SUPPORTED => {
                return match f {
                    fid::ARBITRATION
                    | fid::POWER_MGMT
                    | fid::TEMP_THRESHOLD
                    | fid::VOLATILE_WC
                    | fid::NUMBER_OF_QUEUES
                    | fid::INTERRUPT_COALESCING
                    | 0x09
                    | 0x0a
                    | fid::ASYNC_EVENT_CONFIG
                    | fid::KEEP_ALIVE_TIMER => Reply::ok(0b100),
                    _ => Reply::err(INVALID_FIELD),
                }
            }
            sel::CURRENT | sel::SAVED => a.feat,
            _ => return Reply::err(INVALID_FIELD),
        };
        match f {
            fid::ARBITRATION => Reply::ok(feat.arbitration),
            fid::POWER_MGMT => Reply::ok(feat.power_mgmt),
            fid::TEMP_THRESHOLD => Reply::ok(feat.temp_threshold),
            fid::VOLATILE_WC => Reply::ok(feat.vwc),
            fid::NUMBER_OF_QUEUES => {
                let (nsq, ncq) = if select == sel::DEFAULT {
                    (a.max_q, a.max_q)
                } else {
                    (a.nsqa, a.ncqa)
                };
                Reply::ok(u32::from(nsq - 1) | (u32::from(ncq - 1) << 16))
            }
            fid::INTERRUPT_COALESCING => Reply::ok(feat.int_coalescing),
            // Interrupt Vector Configuration: the vector, coalescing disabled.
            0x09 => Reply::ok((sqe.cdw11 & 0xffff) | (1 << 16)),
            // Write Atomicity Normal.
            0x0a => Reply::ok(0),
            fid::ASYNC_EVENT_CONFIG => Reply::ok(feat.aec),
            fid::KEEP_ALIVE_TIMER => Reply::ok(feat.kato),
            _ => Reply::err(INVALID_FIELD),
        }
    }

    fn set_features(&self, sqe: &Sqe) -> Reply {
        let f = (sqe.cdw10 & 0xff) as u8;
        if sqe.cdw10 & (1 << 31) != 0 {
            return Reply::err(dnr(sct::COMMAND_SPECIFIC, FEATURE_NOT_SAVEABLE));
        }
        let v = sqe.cdw11;
        let mut a = lock(&self.admin);
        match f {
            fid::ARBITRATION => a.feat.arbitration = v,
            fid::POWER_MGMT => {
                if v & 0x1f != 0 {
                    return Reply::err(INVALID_FIELD);
                }
                a.feat.power_mgmt = v;
            }
            fid::TEMP_THRESHOLD => a.feat.temp_threshold = v & 0xffff,
            fid::VOLATILE_WC => a.feat.vwc = v & 1,
            fid::NUMBER_OF_QUEUES => {
                let nsqr = v & 0xffff;
                let ncqr = v >> 16;
                if nsqr == 0xffff || ncqr == 0xffff {
                    return Reply::err(INVALID_FIELD);
                }
                if a.queues_created {
                    return Reply::err(dnr(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR));
                }
                a.nsqa = (nsqr + 1).min(u32::from(a.max_q)) as u16;
                a.ncqa = (ncqr + 1).min(u32::from(a.max_q)) as u16;
                return Reply::ok(u32::from(a.nsqa - 1) | (u32::from(a.ncqa - 1) << 16));
            }
            fid::INTERRUPT_COALESCING => a.feat.int_coalescing = v & 0xffff,
            0x09 => {}
            0x0a => {}
            fid::ASYNC_EVENT_CONFIG => a.feat.aec = v,
            fid::KEEP_ALIVE_TIMER => a.feat.kato = v,
            _ => return Reply::err(INVALID_FIELD),
        }
        Reply::ok(0)
    }

    /// Checks a queue base: page aligned (0/13) and mapped for `len` bytes (0/04).
    fn queue_ring(
        &self,
        prp1: u64,
        len: usize,
    ) -> Result<(vfnvme_hugepages::DmaRegion, usize), Status> {
        let page_shift = self.page_shift();
        if prp1 & ((1u64 << page_shift) - 1) != 0 {
            return Err(PRP_OFFSET_INVALID);
        }
        self.mapper
            .view()
            .resolve(prp1, len)
            .ok_or(DATA_TRANSFER_ERROR)
    }

    fn create_cq(&self, sqe: &Sqe) -> Reply {
        let qid = sqe.cdw10 as u16;
        let qsize = sqe.cdw10 >> 16;
        let pc = sqe.cdw11 & 1 != 0;
        let ien = sqe.cdw11 & 2 != 0;
        let iv = sqe.cdw11 >> 16;
        let (ncqa, dbbuf) = {
            let a = lock(&self.admin);
            (a.ncqa, a.dbbuf.clone())
        };
        let Some(slot) = self.cqs.get(qid as usize) else {
            return Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_QID));
        };
        if qid == 0 || qid > ncqa || slot.size.load(Ordering::Acquire) != 0 {
            return Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_QID));
        }
        if qsize == 0 || qsize > u32::from(self.shared.cfg.mqes) {
            return Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_QUEUE_SIZE));
        }
        let size = qsize + 1;
        let (ring, base) = match self.queue_ring(sqe.prp1, size as usize * 16) {
            Ok(r) => r,
            Err(s) => return Reply::err(s),
        };
        if !pc {
            return Reply::err(INVALID_FIELD);
        }
        if ien && iv as usize >= self.cqs.len() {
            return Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_INTERRUPT_VECTOR));
        }
        let mut cq = Cq::new(size, ring, base);
        if let Some(d) = &dbbuf {
            cq.shadow = d.shadow(qid, true, self.shared.cfg.dstrd);
            if let Some(sh) = &cq.shadow {
                sh.db.store_u32(sh.db_off, 0);
                sh.ei.store_u32(sh.ei_off, 0);
            }
        }
        *lock(&slot.state) = Some(cq);
        slot.head_db.store(0, Ordering::Relaxed);
        slot.size.store(size, Ordering::Release);
        lock(&self.admin).queues_created = true;
        Reply::ok(0)
    }

    fn create_sq(&self, sqe: &Sqe) -> Reply {
        let qid = sqe.cdw10 as u16;
        let qsize = sqe.cdw10 >> 16;
        let pc = sqe.cdw11 & 1 != 0;
        let cqid = (sqe.cdw11 >> 16) as u16;
        let (nsqa, dbbuf) = {
            let a = lock(&self.admin);
            (a.nsqa, a.dbbuf.clone())
        };
        let cq_ok = cqid != 0
            && self
                .cqs
                .get(cqid as usize)
                .is_some_and(|s| s.size.load(Ordering::Acquire) != 0);
        if !cq_ok {
            return Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_CQ));
        }
        let Some(slot) = self.sqs.get(qid as usize) else {
            return Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_QID));
        };
        if qid == 0 || qid > nsqa || slot.size.load(Ordering::Acquire) != 0 {
            return Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_QID));
        }
        if qsize == 0 || qsize > u32::from(self.shared.cfg.mqes) {
            return Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_QUEUE_SIZE));
        }
        let size = qsize + 1;
        let (ring, base) = match self.queue_ring(sqe.prp1, size as usize * 64) {
            Ok(r) => r,
            Err(s) => return Reply::err(s),
        };
        if !pc {
            return Reply::err(INVALID_FIELD);
        }
        {
            let mut cg = lock(&self.cqs[cqid as usize].state);
            match cg.as_mut() {
                Some(cq) => cq.sq_count += 1,
                None => return Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_CQ)),
            }
        }
        let mut sq = Sq::new(
            qid,
            cqid,
            size,
            ring,
            base,
            self.mapper.view(),
            self.page_shift(),
        );
        if let Some(d) = &dbbuf {
            sq.shadow = d.shadow(qid, false, self.shared.cfg.dstrd);
            if let Some(sh) = &sq.shadow {
                sh.db.store_u32(sh.db_off, 0);
                sh.ei.store_u32(sh.ei_off, 0);
            }
        }
        *lock(&slot.state) = Some(sq);
        slot.cqid.store(cqid, Ordering::Relaxed);
        slot.tail_db.store(0, Ordering::Relaxed);
        slot.head.store(0, Ordering::Relaxed);
        slot.size.store(size, Ordering::Release);
        lock(&self.admin).queues_created = true;
        Reply::ok(0)
    }

    fn delete_sq(&self, sqe: &Sqe) -> Reply {
        let qid = sqe.cdw10 as u16;
        let invalid = Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_QID));
        if qid == 0 {
            return invalid;
        }
        let Some(slot) = self.sqs.get(qid as usize) else {
            return invalid;
        };
        let sq = {
            let mut g = lock(&slot.state);
            slot.size.store(0, Ordering::Release);
            g.take()
        };
        let Some(sq) = sq else { return invalid };
        let mut stats = *sq.stats;
        let mut cg = lock(&self.cqs[sq.cqid as usize].state);
        if let Some(cq) = cg.as_mut() {
            // Commands still held in the device complete as aborted, before the delete does.
            let mut keep = VecDeque::with_capacity(cq.delayed.len());
            while let Some((due, mut c)) = cq.delayed.pop_front() {
                if c.sqid == qid {
                    c.status = Status::new(sct::GENERIC, generic::ABORTED_SQ_DELETION);
                    stats.aborted += 1;
                    cq.post(c, &self.sqs);
                } else {
                    keep.push_back((due, c));
                }
            }
            cq.delayed = keep;
            cq.sq_count = cq.sq_count.saturating_sub(1);
        }
        drop(cg);
        lock(&self.totals).add(&stats);
        Reply::ok(0)
    }

    fn delete_cq(&self, sqe: &Sqe) -> Reply {
        let qid = sqe.cdw10 as u16;
        let invalid = Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_QID));
        if qid == 0 {
            return invalid;
        }
        let Some(slot) = self.cqs.get(qid as usize) else {
            return invalid;
        };
        let mut g = lock(&slot.state);
        match g.as_ref() {
            None => invalid,
            Some(cq) if cq.sq_count > 0 => {
                Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_QUEUE_DELETION))
            }
            Some(_) => {
                slot.size.store(0, Ordering::Release);
                *g = None;
                Reply::ok(0)
            }
        }
    }

    fn smart_log(&self, sq: &Sq) -> SmartLog {
        let st = self.stats_with(Some(sq));
        let mut s = SmartLog::new_zeroed();
        s.temperature = 0x13au16.to_le_bytes();
        s.avail_spare = 100;
        s.spare_thresh = 10;
        let units = |bytes: u64| u128::from((bytes / 512).div_ceil(1000));
        s.data_units_read = units(st.bytes_read).to_le_bytes();
        s.data_units_written = units(st.bytes_written).to_le_bytes();
        s.host_reads = u128::from(st.host_reads).to_le_bytes();
        s.host_writes = u128::from(st.host_writes).to_le_bytes();
        s.power_cycles = 1u128.to_le_bytes();
        s.num_err_log_entries = u128::from(lock(&self.admin).error_count).to_le_bytes();
        s
    }

    fn ana_log(&self, rgo: bool) -> Vec<u8> {
        let a = lock(&self.admin);
        let groups: Vec<AnaGroup> = self
            .shared
            .namespaces
            .iter()
            .flatten()
            .map(|ns| {
                let g = ns.nsid as usize - 1;
                AnaGroup {
                    grpid: ns.nsid,
                    state: AnaState(self.ana[g].load(Ordering::Relaxed)),
                    chgcnt: a.group_chgcnt[g],
                    nsids: if rgo { Vec::new() } else { vec![ns.nsid] },
                }
            })
            .collect();
        let mut out = vec![0u8; crate::spec::log::ana_log_len(&groups)];
        encode_ana_log(a.ana_chgcnt, &groups, &mut out);
        out
    }

    fn get_log_page(&self, sq: &mut Sq, sqe: &Sqe) -> Reply {
        let log_id = (sqe.cdw10 & 0xff) as u8;
        let lsp = ((sqe.cdw10 >> 8) & 0x7f) as u8;
        let rae = sqe.cdw10 & (1 << 15) != 0;
        let numd = ((sqe.cdw10 >> 16) | ((sqe.cdw11 & 0xffff) << 16)) as u64 + 1;
        let len = numd * 4;
        let offset = u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32);
        if offset & 3 != 0 {
            return Reply::err(INVALID_FIELD);
        }
        // Log pages here are small; an unlimited MDTS still caps a transfer at 4 MiB.
        if len > self.mdts_bytes().min(4 << 20) {
            return Reply::err(INVALID_FIELD);
        }
        let (page, event_type): (Vec<u8>, Option<u8>) = match log_id {
            lid::ERROR => {
                let a = lock(&self.admin);
                let mut v = vec![0u8; ERROR_LOG_ENTRIES * 64];
                for (i, e) in a.errors.iter().enumerate() {
                    v[i * 64..i * 64 + 64].copy_from_slice(e.as_bytes());
                }
                (v, Some(aer_type::ERROR))
            }
            lid::SMART => (
                self.smart_log(sq).as_bytes().to_vec(),
                Some(aer_type::SMART),
            ),
            lid::ANA if self.shared.cfg.ana => {
                (self.ana_log(lsp & ANA_LSP_RGO != 0), Some(aer_type::NOTICE))
            }
            _ => return Reply::err(dnr(sct::COMMAND_SPECIFIC, cs::INVALID_LOG_PAGE)),
        };
        if offset > page.len() as u64 {
            return Reply::err(INVALID_FIELD);
        }
        let mut out = vec![0u8; len as usize];
        let from = &page[offset as usize..];
        let n = from.len().min(out.len());
        out[..n].copy_from_slice(&from[..n]);
        if let Err(s) = dma_out(sq, sqe, &out) {
            return Reply::err(s);
        }
        if !rae {
            if let Some(t) = event_type {
                lock(&self.admin).clear_events(t);
                self.deliver_events();
            }
        }
        Reply::ok(0)
    }

    fn async_event_request(&self, sqe: &Sqe) -> Reply {
        let mut a = lock(&self.admin);
        if a.aers.len() >= a.aer_limit {
            return Reply::err(Status::new(sct::COMMAND_SPECIFIC, cs::AER_LIMIT_EXCEEDED));
        }
        a.aers.push(sqe.cid());
        match a.take_deliverable() {
            Some((_, ev)) => Reply::ok(ev.to_dw0()),
            None => Reply::Deferred,
        }
    }

    fn abort(&self, sqe: &Sqe) -> Reply {
        const NOT_ABORTED: Reply = Reply::ok(1);
        let sqid = sqe.cdw10 as u16;
        let cid = (sqe.cdw10 >> 16) as u16;
        if self.faults.was_dropped(sqid, cid) {
            return NOT_ABORTED;
        }
        let Some(slot) = self.sqs.get(sqid as usize) else {
            return NOT_ABORTED;
        };
        if slot.size.load(Ordering::Acquire) == 0 {
            return NOT_ABORTED;
        }
        let cqid = slot.cqid.load(Ordering::Relaxed);
        let mut cg = lock(&self.cqs[cqid as usize].state);
        let Some(cq) = cg.as_mut() else {
            return NOT_ABORTED;
        };
        let Some(pos) = cq
            .delayed
            .iter()
            .position(|(_, c)| c.sqid == sqid && c.cid == cid)
        else {
            return NOT_ABORTED;
        };
        let Some((_, mut c)) = cq.delayed.remove(pos) else {
            return NOT_ABORTED;
        };
        c.dw0 = 0;
        c.status = Status::new(sct::GENERIC, generic::ABORT_REQUESTED);
        cq.post(c, &self.sqs);
        drop(cg);
        lock(&self.totals).aborted += 1;
        Reply::ok(0)
    }

    fn doorbell_buffer_config(&self, sq: &mut Sq, sqe: &Sqe) -> Reply {
        let page_shift = self.page_shift();
        let page = 1usize << page_shift;
        let mask = page as u64 - 1;
        if sqe.prp1 == 0 || sqe.prp2 == 0 || sqe.prp1 & mask != 0 || sqe.prp2 & mask != 0 {
            return Reply::err(INVALID_FIELD);
        }
        let mut view = self.mapper.view();
        let (Some((db, db_off)), Some((ei, ei_off))) =
            (view.resolve(sqe.prp1, page), view.resolve(sqe.prp2, page))
        else {
            return Reply::err(DATA_TRANSFER_ERROR);
        };
        let d = Dbbuf {
            db,
            db_off,
            ei,
            ei_off,
            page,
        };
        let dstrd = self.shared.cfg.dstrd;
        // Existing queues start from their current doorbell values (the admin SQ is ours).
        sq.shadow = d.shadow(0, false, dstrd);
        if let Some(sh) = &sq.shadow {
            sh.db
                .store_u32(sh.db_off, self.sqs[0].tail_db.load(Ordering::Acquire));
            sh.ei.store_u32(sh.ei_off, sq.head);
        }
        for (qid, slot) in self.sqs.iter().enumerate().skip(1) {
            if let Some(s) = lock(&slot.state).as_mut() {
                s.shadow = d.shadow(qid as u16, false, dstrd);
                if let Some(sh) = &s.shadow {
                    sh.db
                        .store_u32(sh.db_off, slot.tail_db.load(Ordering::Acquire));
                    sh.ei.store_u32(sh.ei_off, s.head);
                }
            }
        }
        for (qid, slot) in self.cqs.iter().enumerate() {
            if let Some(c) = lock(&slot.state).as_mut() {
                c.shadow = d.shadow(qid as u16, true, dstrd);
                if let Some(sh) = &c.shadow {
                    sh.db.store_u32(sh.db_off, c.head);
                    sh.ei.store_u32(sh.ei_off, 0);
                }
            }
        }
        lock(&self.admin).dbbuf = Some(d);
        self.dbbuf_on.store(true, Ordering::Release);
        Reply::ok(0)
    }

    /// MDTS in bytes (`u64::MAX` when unlimited).
    pub(crate) fn mdts_bytes(&self) -> u64 {
        match self.shared.cfg.mdts {
            0 => u64::MAX,
            m => 4096u64 << m,
        }
    }

    /// Changes this controller's ANA state for a group and raises the change notice.
    pub(crate) fn set_ana_state(&self, grpid: u32, state: AnaState) {
        let Some(g) = (grpid as usize).checked_sub(1) else {
            return;
        };
        if self.shared.ns(grpid).is_none() {
            return;
        }
        self.ana[g].store(state.0, Ordering::Release);
        let notify = {
            let mut a = lock(&self.admin);
            a.ana_chgcnt += 1;
            a.group_chgcnt[g] = a.ana_chgcnt;
            self.shared.cfg.ana && a.feat.aec & crate::spec::features::aec::ANA_CHANGE != 0
        };
        if notify {
            self.queue_event(AsyncEvent {
                event_type: aer_type::NOTICE,
                info: aer_notice::ANA_CHANGE,
                log_page: lid::ANA,
            });
        }
    }

    /// The path status for I/O to a namespace of `grpid` in this controller's ANA state.
    #[inline]
    pub(crate) fn ana_status(&self, grpid: u32) -> Option<Status> {
        let s = self
            .ana
            .get((grpid as usize).wrapping_sub(1))?
            .load(Ordering::Relaxed);
        match AnaState(s) {
            AnaState::OPTIMIZED | AnaState::NON_OPTIMIZED => None,
            AnaState::INACCESSIBLE => Some(Status::new(sct::PATH, path::ANA_INACCESSIBLE)),
            AnaState::PERSISTENT_LOSS => Some(Status::new(sct::PATH, path::ANA_PERSISTENT_LOSS)),
            _ => Some(Status::new(sct::PATH, path::ANA_TRANSITION)),
        }
    }
}
