//! A software NVMe controller and subsystem, with fault injection.
//!
//! [`SimSubsystem`] is an NVM subsystem with one or more [`SimController`]s (ports) that share
//! its namespaces. Each controller implements [`PciFunction`], so everything above the bus
//! boundary drives it exactly like a VFIO device: it programs registers, maps DMA memory through
//! [`PciFunction::dma_mapper`], writes SQEs into host memory and rings doorbells.
//!
//! The controller behaves like a device, not like a mock of the driver: it fetches SQEs from the
//! rings at the IOVAs the host programmed (ASQ/ACQ, Create I/O SQ/CQ PRP1), walks PRPs with the
//! spec's rules (`prp`), translates every address through its own DMA domain (`dma`, see
//! [`SimMapper`]; an IOVA of another controller or an unmapped one is a Data Transfer Error), and
//! posts CQEs with phase tags into the host's CQ ring. Registers and the enable, disable and
//! shutdown handshakes live in `regs`, queue state and completion posting in `queue`, command
//! execution in `engine`, `admin` and `io`, namespaces in `ns` and fault injection in `fault`
//! (see [`Faults`]).
//!
//! **Two ways to run.** Inline (the default): an SQ tail doorbell write processes the new entries
//! in the writer's thread and posts their completions before `write32` returns; a CQ head
//! doorbell write posts completions held back by a full CQ; [`PciFunction::idle_poll`] posts
//! delayed completions and reads shadow doorbells. Threaded (`inline(false)`): doorbell writes
//! only record the value, and one device thread per subsystem polls every doorbell of every
//! controller, spinning then sleeping briefly when idle; it stops when the subsystem is dropped.
//!
//! It does not model interrupts, the controller memory buffer, SGLs, metadata, end-to-end
//! protection, reservations, namespace management, firmware or power states, and it does not
//! enforce the keep-alive timeout.
//!
//! Follows NVMe Base 2.0 and NVM Command Set 2.0 (plus the 2.1 CQT field); where the spec leaves
//! a choice it behaves like QEMU 7.2's emulated controller (see the project's facts sheet).
#![forbid(unsafe_code)]

mod admin;
mod dma;
mod engine;
mod fault;
mod io;
mod ns;
mod prp;
mod queue;
mod regs;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vfnvme_hugepages::{DmaMapper, DomainId};

use crate::pci::{self, PciFunction};
use crate::spec::log::AnaState;

pub use dma::SimMapper;
pub use fault::{FaultMatch, Faults, SimStats};
pub use ns::{Backing, NsConfig};

use admin::AdminState;
use fault::FaultInjector;
use ns::Namespace;
use queue::{CqSlot, SqSlot};
use regs::RegFile;

/// Locks a mutex, ignoring poisoning (state stays consistent: no code panics while holding it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settings of a simulated subsystem; see [`SimBuilder`] for the defaults.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Controllers (ports) in the subsystem.
    pub controllers: usize,
    /// Namespaces, shared by every controller.
    pub namespaces: Vec<NsConfig>,
    /// CAP.MQES: largest queue, 0-based entries.
    pub mqes: u16,
    /// CAP.TO in 500 ms units.
    pub cap_to: u8,
    /// CAP.DSTRD: doorbell stride `4 << dstrd`.
    pub dstrd: u8,
    /// CAP.MPSMIN: smallest memory page `4 KiB << mpsmin`.
    pub mpsmin: u8,
    /// Identify MDTS: `2^mdts` pages of 4 KiB (0 = no limit).
    pub mdts: u8,
    /// I/O queue pairs a controller offers.
    pub max_io_queue_pairs: u16,
    /// Time from CC.EN 0→1 to CSTS.RDY = 1 (and 1→0 to RDY = 0; and shutdown to SHST complete).
    pub ready_delay: Duration,
    /// Identify CQT: command quiesce time in ms.
    pub cqt_ms: u16,
    /// Identify CRDT1..3 in 100 ms units.
    pub crdt: [u16; 3],
    /// ANA reporting: CMIC bit 3, one ANA group per namespace (group id = nsid).
    pub ana: bool,
    /// Doorbell Buffer Config advertised in OACS and accepted.
    pub dbbuf: bool,
    /// Process doorbells in the writer's thread (true) or on a device thread (false).
    pub inline: bool,
    /// Identify AERL: outstanding AERs allowed, 0-based.
    pub aerl: u8,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            controllers: 2,
            namespaces: Vec::new(),
            mqes: 1023,
            cap_to: 0x0f,
            dstrd: 0,
            mpsmin: 0,
            mdts: 5,
            max_io_queue_pairs: 64,
            ready_delay: Duration::ZERO,
            cqt_ms: 10,
            crdt: [1, 2, 5],
            ana: true,
            dbbuf: true,
            inline: true,
            aerl: 3,
        }
    }
}

/// Builds a [`SimSubsystem`]. Defaults: 2 controllers, one 16 MiB RAM namespace (nsid 1, 512 B
/// blocks) unless namespaces are added, MQES 1023, CAP.TO 0Fh, DSTRD 0, MDTS 5 (128 KiB),
/// 64 I/O queue pairs, no ready delay, CQT 10 ms, CRDT 100/200/500 ms, ANA on, DBBUF on, inline.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct SimBuilder {
    cfg: SimConfig,
}

impl SimBuilder {
    /// Number of controllers (at least 1).
    pub fn controllers(mut self, n: usize) -> Self {
        self.cfg.controllers = n.max(1);
        self
    }
    /// Adds a namespace.
    pub fn namespace(mut self, ns: NsConfig) -> Self {
        self.cfg.namespaces.push(ns);
        self
    }
    /// CAP.MQES (0-based).
    pub fn mqes(mut self, mqes: u16) -> Self {
        self.cfg.mqes = mqes.max(1);
        self
    }
    /// CAP.TO (500 ms units).
    pub fn cap_to(mut self, to: u8) -> Self {
        self.cfg.cap_to = to;
        self
    }
    /// CAP.DSTRD (0..=15; values above 15 are clamped).
    pub fn dstrd(mut self, dstrd: u8) -> Self {
        self.cfg.dstrd = dstrd.min(15);
        self
    }
    /// Identify MDTS (`2^mdts` × 4 KiB; 0 = unlimited, capped internally at 2^10 pages).
    /// CAP.MPSMIN (0..=4).
    pub fn mpsmin(mut self, mpsmin: u8) -> Self {
        self.cfg.mpsmin = mpsmin.min(regs::MPSMAX);
        self
    }

    /// MDTS (see [`SimConfig::mdts`]).
    pub fn mdts(mut self, mdts: u8) -> Self {
        self.cfg.mdts = mdts.min(10);
        self
    }
    /// I/O queue pairs each controller offers (1..=1024).
    pub fn max_io_queue_pairs(mut self, n: u16) -> Self {
        self.cfg.max_io_queue_pairs = n.clamp(1, 1024);
        self
    }
    /// Delay from CC.EN changes to CSTS.RDY following (and from CC.SHN to SHST complete).
    pub fn ready_delay(mut self, d: Duration) -> Self {
        self.cfg.ready_delay = d;
        self
    }
    /// Identify CQT in ms.
    pub fn cqt_ms(mut self, ms: u16) -> Self {
        self.cfg.cqt_ms = ms;
        self
    }
    /// Identify CRDT1..3 in 100 ms units.
    pub fn crdt(mut self, crdt: [u16; 3]) -> Self {
        self.cfg.crdt = crdt;
        self
    }
    /// ANA reporting on or off.
    pub fn ana(mut self, on: bool) -> Self {
        self.cfg.ana = on;
        self
    }
    /// Doorbell Buffer Config support on or off.
    pub fn dbbuf(mut self, on: bool) -> Self {
        self.cfg.dbbuf = on;
        self
    }
    /// Inline (true, default) or threaded (false) processing.
    pub fn inline(mut self, on: bool) -> Self {
        self.cfg.inline = on;
        self
    }
    /// Identify AERL (0-based outstanding AER limit).
    pub fn aerl(mut self, aerl: u8) -> Self {
        self.cfg.aerl = aerl;
        self
    }

    /// Builds the subsystem.
    ///
    /// # Panics
    /// On an invalid configuration or when no DMA domain id is free; see [`SimBuilder::try_build`].
    pub fn build(self) -> SimSubsystem {
        match self.try_build() {
            Ok(s) => s,
            Err(e) => panic!("simulated subsystem: {e}"),
        }
    }

    /// Builds the subsystem.
    ///
    /// # Errors
    /// [`SimError`] for a bad namespace, duplicate NSIDs, memory that cannot be allocated or no
    /// free DMA domain id.
    pub fn try_build(mut self) -> Result<SimSubsystem, SimError> {
        static NEXT_SUBSYS: AtomicU32 = AtomicU32::new(1);
        let id = NEXT_SUBSYS.fetch_add(1, Ordering::Relaxed);
        if self.cfg.namespaces.is_empty() {
            self.cfg.namespaces.push(NsConfig::ram(1, 16 << 20));
        }
        let max_nsid = self
            .cfg
            .namespaces
            .iter()
            .map(|n| n.nsid)
            .max()
            .unwrap_or(1);
        if max_nsid > 4096 {
            return Err(SimError::Config(format!("nsid {max_nsid} above 4096")));
        }
        let mut namespaces: Vec<Option<Arc<Namespace>>> = vec![None; max_nsid as usize];
        for cfg in &self.cfg.namespaces {
            let ns = Namespace::new(cfg, id).map_err(SimError::Config)?;
            let slot = &mut namespaces[cfg.nsid as usize - 1];
            if slot.is_some() {
                return Err(SimError::Config(format!("duplicate nsid {}", cfg.nsid)));
            }
            *slot = Some(Arc::new(ns));
        }
        let shared = Arc::new(Shared {
            id,
            subnqn: format!("nqn.2026-11.io.vfnvme:sim-{id}"),
            serial: format!("VFNVMESIM{id:08}"),
            namespaces,
            cfg: self.cfg.clone(),
        });
        let mut ctrls = Vec::with_capacity(self.cfg.controllers);
        for index in 0..self.cfg.controllers {
            let Some(domain) = DomainId::allocate() else {
                return Err(SimError::NoDomain);
            };
            ctrls.push(Arc::new(SimController::new(shared.clone(), index, domain)));
        }
        let thread = if self.cfg.inline {
            None
        } else {
            let stop = Arc::new(AtomicBool::new(false));
            let handle = engine::spawn_device_thread(ctrls.clone(), stop.clone(), id)
                .map_err(|e| SimError::Config(format!("device thread: {e}")))?;
            Some((stop, handle))
        };
        Ok(SimSubsystem {
            shared,
            ctrls,
            thread,
        })
    }
}

/// Errors building a simulated subsystem.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration cannot be built.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Every DMA domain id of the process is taken.
    #[error("no free DMA domain id")]
    NoDomain,
}

/// What every controller of a subsystem shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: u32,
    pub(crate) subnqn: String,
    pub(crate) serial: String,
    /// Indexed by nsid - 1.
    pub(crate) namespaces: Vec<Option<Arc<Namespace>>>,
    pub(crate) cfg: SimConfig,
}

impl Shared {
    #[inline]
    pub(crate) fn ns(&self, nsid: u32) -> Option<&Arc<Namespace>> {
        self.namespaces
            .get((nsid as usize).wrapping_sub(1))
            .and_then(Option::as_ref)
    }

    pub(crate) fn nn(&self) -> u32 {
        self.namespaces.len() as u32
    }
}

/// A simulated NVM subsystem: controllers sharing namespaces. Dropping it stops the device
/// thread of a threaded subsystem, after which its controllers no longer process commands.
pub struct SimSubsystem {
    shared: Arc<Shared>,
    ctrls: Vec<Arc<SimController>>,
    thread: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl std::fmt::Debug for SimSubsystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSubsystem")
            .field("subnqn", &self.shared.subnqn)
            .field("controllers", &self.ctrls.len())
            .finish()
    }
}

impl SimSubsystem {
    /// A builder with the defaults.
    pub fn builder() -> SimBuilder {
        SimBuilder::default()
    }

    /// Controller `i` (0-based).
    ///
    /// # Panics
    /// If `i` is not below [`SimSubsystem::controller_count`].
    pub fn controller(&self, i: usize) -> Arc<SimController> {
        self.ctrls[i].clone()
    }

    /// Number of controllers.
    pub fn controller_count(&self) -> usize {
        self.ctrls.len()
    }

    /// The subsystem NQN every controller reports.
    pub fn subnqn(&self) -> &str {
        &self.shared.subnqn
    }

    /// The configuration the subsystem was built with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }
}

impl Drop for SimSubsystem {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.thread.take() {
            stop.store(true, Ordering::Release);
            let _ = handle.join();
        }
    }
}

/// Bits of [`SimController::run`].
pub(crate) mod run {
    /// CSTS.RDY is 1 internally: commands are processed.
    pub(crate) const RDY: u8 = 1;
    /// Controller Fatal Status.
    pub(crate) const CFS: u8 = 2;
    /// Surprise-removed.
    pub(crate) const GONE: u8 = 4;
    /// Bus mastering off.
    pub(crate) const NO_BM: u8 = 8;
}

/// One simulated controller (a port of the subsystem). Implements [`PciFunction`].
pub struct SimController {
    pub(crate) index: usize,
    pub(crate) cntlid: u16,
    pub(crate) name: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) mapper: Arc<SimMapper>,
    /// Processing state bits, see [`run`]; processing happens only when it equals `RDY`.
    pub(crate) run: AtomicU8,
    pub(crate) regs: Mutex<RegFile>,
    pub(crate) sqs: Box<[SqSlot]>,
    pub(crate) cqs: Box<[CqSlot]>,
    pub(crate) admin: Mutex<AdminState>,
    pub(crate) faults: FaultInjector,
    /// This controller's ANA state per group (index nsid - 1).
    pub(crate) ana: Box<[AtomicU8]>,
    pub(crate) dbbuf_on: AtomicBool,
    /// Memory page size chosen at enable (CC.MPS), log2 bytes.
    pub(crate) page_shift: AtomicU32,
    /// Some CQ has pending or delayed completions (or a head to pick up).
    pub(crate) work_hint: AtomicBool,
    pub(crate) totals: Mutex<SimStats>,
    pub(crate) removal_requested: AtomicBool,
}

impl std::fmt::Debug for SimController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimController")
            .field("name", &self.name)
            .field("cntlid", &self.cntlid)
            .finish()
    }
}

impl SimController {
    fn new(shared: Arc<Shared>, index: usize, domain: DomainId) -> SimController {
        let name = format!("sim{}.{}", shared.id, index);
        let salt = (index as u64 + 1) << 48;
        let nq = shared.cfg.max_io_queue_pairs as usize + 1;
        let ngroups = shared.namespaces.len();
        SimController {
            index,
            cntlid: index as u16 + 1,
            mapper: Arc::new(SimMapper::new(domain, salt, name.clone())),
            name,
            run: AtomicU8::new(0),
            regs: Mutex::new(RegFile::default()),
            sqs: (0..nq).map(|_| SqSlot::default()).collect(),
            cqs: (0..nq).map(|_| CqSlot::default()).collect(),
            admin: Mutex::new(AdminState::new(&shared.cfg, ngroups)),
            faults: FaultInjector::default(),
            ana: (0..ngroups)
                .map(|_| AtomicU8::new(AnaState::OPTIMIZED.0))
                .collect(),
            dbbuf_on: AtomicBool::new(false),
            page_shift: AtomicU32::new(12),
            work_hint: AtomicBool::new(false),
            totals: Mutex::new(SimStats::default()),
            removal_requested: AtomicBool::new(false),
            shared,
        }
    }

    /// Position of this controller in its subsystem.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The controller id reported in Identify Controller (index + 1).
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// This controller's DMA mapper (the same object as [`PciFunction::dma_mapper`]).
    pub fn mapper(&self) -> Arc<SimMapper> {
        self.mapper.clone()
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> Faults<'_> {
        Faults { ctrl: self }
    }

    /// Counters over live and deleted queues.
    pub fn stats(&self) -> SimStats {
        self.stats_with(None)
    }

    /// Counters, taking the admin SQ's from `admin_sq` when the caller holds its lock.
    pub(crate) fn stats_with(&self, admin_sq: Option<&queue::Sq>) -> SimStats {
        let mut s = lock(&self.totals).clone();
        for (qid, slot) in self.sqs.iter().enumerate() {
            match admin_sq {
                Some(sq) if qid == 0 => s.add(&sq.stats),
                _ => {
                    if let Some(sq) = lock(&slot.state).as_ref() {
                        s.add(&sq.stats);
                    }
                }
            }
        }
        s
    }

    /// CSTS.SHST as the host would read it now.
    pub fn shutdown_state(&self) -> u8 {
        self.csts().shst()
    }

    /// CC.EN.
    pub fn is_enabled(&self) -> bool {
        crate::spec::regs::Cc::from(lock(&self.regs).cc).en()
    }

    /// This controller's ANA state for group `grpid`.
    pub fn ana_state(&self, grpid: u32) -> Option<AnaState> {
        self.ana
            .get((grpid as usize).wrapping_sub(1))
            .map(|a| AnaState(a.load(Ordering::Relaxed)))
    }

    #[inline]
    pub(crate) fn running(&self) -> bool {
        self.run.load(Ordering::Acquire) == run::RDY
    }
}

impl PciFunction for SimController {
    fn name(&self) -> &str {
        &self.name
    }

    fn bar_len(&self) -> Option<usize> {
        Some(self.bar_len())
    }

    fn read32(&self, offset: usize) -> u32 {
        self.reg_read32(offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        self.reg_write32(offset, value)
    }

    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.mapper.clone()
    }

    fn reset_function(&self) -> Result<(), pci::Error> {
        if self.run.load(Ordering::Acquire) & run::GONE != 0 {
            return Err(pci::Error::DeviceGone {
                function: self.name.clone(),
            });
        }
        self.function_reset();
        Ok(())
    }

    fn set_bus_master(&self, enable: bool) -> Result<(), pci::Error> {
        if enable {
            self.run.fetch_and(!run::NO_BM, Ordering::AcqRel);
        } else {
            self.run.fetch_or(run::NO_BM, Ordering::AcqRel);
        }
        Ok(())
    }

    fn removal_requested(&self) -> bool {
        self.removal_requested.load(Ordering::Acquire)
    }

    fn idle_poll(&self) {
        if self.shared.cfg.inline {
            self.poll_once();
        }
    }
}
