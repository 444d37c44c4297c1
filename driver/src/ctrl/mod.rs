//! Controller life cycle and the admin interface.
//!
//! [`Controller::open`] brings a controller up in the spec's order, every wait bounded by CAP.TO:
//! disable and wait for RDY=0, program the admin queue, enable and wait for RDY=1, Identify
//! Controller, Doorbell Buffer Config (shadow doorbells, when OACS offers them), Set Features
//! Number of Queues, Asynchronous Event Configuration and AERs, then the active namespaces.
//!
//! The admin queue belongs to the control plane. [`Controller::service`] is its periodic step:
//! it reaps admin completions and delivers async events, checks health (CSTS.CFS, all-ones reads,
//! removal requests), aborts timed-out commands reported by queue pairs and resets the controller
//! when an abort fails, and deletes the queues of dropped queue pairs. Call it from one thread
//! (a control-plane thread, see [`ControlPlane`]) every few milliseconds.
//!
//! A reset disables the controller (which deletes every queue inside the device — no Delete
//! command is sent to a controller being reset), starts a new epoch so that queue pairs fail what
//! they had in flight, brings the admin queue back and re-creates every I/O queue with the same
//! memory.

mod admin;
pub mod state;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use vfnvme_hugepages::{DmaBuf, DmaPool, DomainId};
use zerocopy::FromBytes;

use crate::pci::PciFunction;
use crate::qpair::ring::{Rings, ShadowPages, CQE_SIZE, SQE_SIZE};
use crate::qpair::{Dropped, NsInfo, QueueOptions, QueuePair, QueueSetup, QueueSync};
use crate::spec::features::{aec, fid, NumberOfQueues};
use crate::spec::identify::{
    cns, parse_ns_descriptors, parse_nsid_list, IdentifyController, IdentifyNamespace, NsIdentifier,
};
use crate::spec::log::AsyncEvent;
use crate::spec::regs::{self, offset, Aqa, Cap, Cc, Csts, ALL_ONES_32};
use crate::spec::{AdminOpcode, Sqe, Status};
use admin::{AdminQueue, Wait};
pub use state::{CtrlShared, CtrlState};

/// Errors from controller bring-up, admin commands and queue creation. Each names the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Registers read all-ones or the function reported removal.
    #[error("{ctrl}: device is gone")]
    DeviceGone {
        /// Controller.
        ctrl: Arc<str>,
    },
    /// A register handshake did not finish in time.
    #[error("{ctrl}: timed out after {waited_ms} ms waiting for {what}")]
    Timeout {
        /// Controller.
        ctrl: Arc<str>,
        /// What was awaited (e.g. "CSTS.RDY = 1").
        what: &'static str,
        /// How long.
        waited_ms: u64,
    },
    /// The controller reported a fatal status (CSTS.CFS).
    #[error("{ctrl}: controller fatal status (CSTS.CFS) during {during}")]
    Fatal {
        /// Controller.
        ctrl: Arc<str>,
        /// The step.
        during: &'static str,
    },
    /// An admin command completed with an error status.
    #[error("{ctrl}: admin {opcode} failed: {status}")]
    Admin {
        /// Controller.
        ctrl: Arc<str>,
        /// The command.
        opcode: AdminOpcode,
        /// Its status.
        status: Status,
    },
    /// An admin command got no completion in time.
    #[error("{ctrl}: admin {opcode} timed out after {timeout_ms} ms")]
    AdminTimeout {
        /// Controller.
        ctrl: Arc<str>,
        /// The command.
        opcode: AdminOpcode,
        /// The limit.
        timeout_ms: u64,
    },
    /// The controller is not in a state that allows the operation.
    #[error("{ctrl}: controller is {state}")]
    NotReady {
        /// Controller.
        ctrl: Arc<str>,
        /// Its state.
        state: CtrlState,
    },
    /// Every I/O queue id the controller granted is in use.
    #[error("{ctrl}: no free I/O queue (the controller granted {granted})")]
    NoQueues {
        /// Controller.
        ctrl: Arc<str>,
        /// Queues granted by Set Features Number of Queues.
        granted: u16,
    },
    /// The controller needs something vfnvme does not do.
    #[error("{ctrl}: not supported: {what}")]
    Unsupported {
        /// Controller.
        ctrl: Arc<str>,
        /// What the controller needs that vfnvme does not do.
        what: String,
    },
    /// The device returned data that does not parse.
    #[error("{ctrl}: malformed {what} from device")]
    BadData {
        /// Controller.
        ctrl: Arc<str>,
        /// What.
        what: &'static str,
    },
    /// DMA memory could not be allocated or mapped.
    #[error("{ctrl}: DMA memory")]
    Dma {
        /// Controller.
        ctrl: Arc<str>,
        /// The cause.
        #[source]
        source: vfnvme_hugepages::Error,
    },
    /// The bus backend failed.
    #[error(transparent)]
    Pci(#[from] crate::pci::Error),
}

/// Options for [`Controller::open`].
#[derive(Clone, Copy, Debug)]
pub struct ControllerOptions {
    /// Admin queue entries.
    pub admin_queue_size: u16,
    /// I/O queue pairs to ask for with Set Features Number of Queues.
    pub io_queues: u16,
    /// Use shadow doorbells when the controller offers Doorbell Buffer Config.
    pub shadow_doorbells: bool,
    /// Limit for one admin command.
    pub admin_timeout: Duration,
    /// Arm asynchronous event requests.
    pub async_events: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            admin_queue_size: 32,
            io_queues: 64,
            shadow_doorbells: true,
            admin_timeout: Duration::from_secs(10),
            async_events: true,
        }
    }
}

/// A namespace as the controller reports it.
#[derive(Clone, Debug)]
pub struct Namespace {
    /// What a queue pair needs.
    pub info: NsInfo,
    /// Identify Namespace data.
    pub identify: Arc<IdentifyNamespace>,
    /// Namespace identification descriptors (EUI64, NGUID, UUID, CSI).
    pub ids: Vec<NsIdentifier>,
}

/// What the controller identified at bring-up.
#[derive(Clone)]
pub struct CtrlInfo {
    /// CAP register.
    pub cap: Cap,
    /// Identify Controller data.
    pub identify: Arc<IdentifyController>,
    /// Active namespaces.
    pub namespaces: Vec<Namespace>,
    /// Largest transfer in bytes (`u64::MAX` if unlimited).
    pub mdts_bytes: u64,
    /// I/O queue pairs granted.
    pub io_queues: u16,
    /// Shadow doorbells in use.
    pub shadow_doorbells: bool,
}

struct QueueRecord {
    qid: u16,
    size: u16,
    sq: Arc<DmaBuf>,
    cq: Arc<DmaBuf>,
    sync: Arc<QueueSync>,
}

#[derive(Default)]
struct Queues {
    live: Vec<QueueRecord>,
    /// Qids taken by `io_queue_pair` calls still creating their queues (so that two threads
    /// creating queue pairs at once never pick the same qid).
    creating: Vec<u16>,
}

type EventHandler = Box<dyn FnMut(AsyncEvent) + Send>;

struct Inner {
    func: Arc<dyn PciFunction>,
    pool: Arc<DmaPool>,
    domain: DomainId,
    shared: Arc<CtrlShared>,
    opts: ControllerOptions,
    cap: Cap,
    admin: Mutex<AdminQueue>,
    info: RwLock<Option<CtrlInfo>>,
    queues: Mutex<Queues>,
    shadow: Option<Arc<ShadowPages>>,
    on_event: Mutex<Option<EventHandler>>,
    events: Mutex<Vec<AsyncEvent>>,
    /// Dropped queue pairs, waiting for `service` to delete their queues.
    released: crate::qpair::ReleaseList,
    /// Queues re-created after resets (see `create_pending_queues`).
    queues_recreated: std::sync::atomic::AtomicU64,
}

/// An NVMe controller. Cheap to clone (a handle); the admin side is for the control plane.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

fn wait_for(
    func: &dyn PciFunction,
    name: &Arc<str>,
    what: &'static str,
    timeout: Duration,
    mut done: impl FnMut(Csts) -> Result<bool, Error>,
) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        let raw = func.read32(offset::CSTS);
        if raw == ALL_ONES_32 {
            return Err(Error::DeviceGone { ctrl: name.clone() });
        }
        if done(Csts::from(raw))? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                ctrl: name.clone(),
                what,
                waited_ms: timeout.as_millis() as u64,
            });
        }
        func.idle_poll();
        std::thread::sleep(Duration::from_micros(50));
    }
}

impl Controller {
    /// Brings up the controller behind `func`, mapping `pool` into its DMA domain.
    ///
    /// Waits are bounded by CAP.TO (for RDY) and `opts.admin_timeout` (per admin command).
    ///
    /// # Errors
    /// [`Error::DeviceGone`] for all-ones registers, [`Error::Timeout`] for a handshake that does
    /// not finish, [`Error::Fatal`] for CSTS.CFS, [`Error::Admin`]/[`Error::AdminTimeout`] for a
    /// failed identify or feature command, [`Error::Dma`] for memory.
    pub fn open(
        func: Arc<dyn PciFunction>,
        pool: Arc<DmaPool>,
        opts: ControllerOptions,
    ) -> Result<Controller, Error> {
        let name: Arc<str> = func.name().into();
        let dma = |source| Error::Dma {
            ctrl: name.clone(),
            source,
        };
        let mapper = func.dma_mapper();
        let domain = mapper.domain();
        pool.add_mapper(mapper).map_err(dma)?;
        func.set_bus_master(true)?;
        let cap_raw = func.read64(offset::CAP);
        if cap_raw == u64::MAX {
            return Err(Error::DeviceGone { ctrl: name });
        }
        let cap = Cap::from(cap_raw);
        if cap.mps_min_bytes() > 4096 {
            // CC.MPS is always 0: PRPs, queues and buffers are laid out in 4 KiB pages.
            return Err(Error::Unsupported {
                ctrl: name,
                what: format!(
                    "the controller's smallest memory page is {} KiB (CAP.MPSMIN); vfnvme uses \
                     4 KiB pages",
                    cap.mps_min_bytes() >> 10
                ),
            });
        }
        let dstrd = cap.dstrd();
        doorbells_in_bar(func.as_ref(), &name, 0, dstrd)?;
        let asize = opts
            .admin_queue_size
            .clamp(2, (cap.mqes() as u32 + 1).min(4096) as u16);
        let asq = pool.alloc(asize as usize * SQE_SIZE, 4096).map_err(dma)?;
        let acq = pool.alloc(asize as usize * CQE_SIZE, 4096).map_err(dma)?;
        let rings = Rings::new(
            func.clone(),
            0,
            asize,
            Arc::new(asq),
            Arc::new(acq),
            regs::sq_tail_doorbell(0, dstrd),
            regs::cq_head_doorbell(0, dstrd),
            None,
        );
        let shadow = if opts.shadow_doorbells {
            let pages = ShadowPages {
                shadow: pool.alloc(4096, 4096).map_err(dma)?,
                eventidx: pool.alloc(4096, 4096).map_err(dma)?,
                stride: cap.doorbell_stride_bytes(),
            };
            let last_qid = opts.io_queues.max(1);
            if pages.covers(last_qid) {
                Some(Arc::new(pages))
            } else {
                // Each buffer is one page (NVMe 2.0, Doorbell Buffer Config): with this doorbell
                // stride, the doorbells of the last queues would lie past it.
                log::info!(
                    "{name}: the shadow doorbell page cannot hold {last_qid} queues' doorbells at \
                     CAP.DSTRD {dstrd}; using MMIO doorbells"
                );
                None
            }
        } else {
            None
        };
        let ctrl = Controller {
            inner: Arc::new(Inner {
                func,
                pool,
                domain,
                shared: Arc::new(CtrlShared::new(name)),
                opts,
                cap,
                admin: Mutex::new(AdminQueue::new(rings)),
                info: RwLock::new(None),
                queues: Mutex::new(Queues::default()),
                shadow,
                on_event: Mutex::new(None),
                events: Mutex::new(Vec::new()),
                released: Arc::new(Mutex::new(Vec::new())),
                queues_recreated: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        match ctrl.bring_up(true) {
            Ok(()) => {
                ctrl.inner.shared.transition(CtrlState::Live, false);
                Ok(ctrl)
            }
            Err(e) => {
                ctrl.mark_failed(&e);
                Err(e)
            }
        }
    }

    /// Controller name (PCI address or simulated name).
    pub fn name(&self) -> &Arc<str> {
        &self.inner.shared.name
    }

    /// Current state.
    pub fn state(&self) -> CtrlState {
        self.inner.shared.state()
    }

    /// The state shared with queue pairs (for the multipath layer).
    pub fn shared(&self) -> &Arc<CtrlShared> {
        &self.inner.shared
    }

    /// The PCI function.
    pub fn function(&self) -> &Arc<dyn PciFunction> {
        &self.inner.func
    }

    /// The DMA domain of this controller.
    pub fn domain(&self) -> DomainId {
        self.inner.domain
    }

    /// The DMA pool mapped into this controller.
    pub fn pool(&self) -> &Arc<DmaPool> {
        &self.inner.pool
    }

    /// What bring-up identified.
    ///
    /// # Panics
    /// Never after a successful `open`.
    pub fn info(&self) -> CtrlInfo {
        self.inner
            .info
            .read()
            .unwrap()
            .clone()
            .expect("set by open")
    }

    /// Identify Controller data.
    pub fn identify(&self) -> Arc<IdentifyController> {
        self.info().identify
    }

    /// Active namespaces.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.info().namespaces
    }

    /// Namespace `nsid`, if active.
    pub fn namespace(&self, nsid: u32) -> Option<Namespace> {
        self.namespaces().into_iter().find(|n| n.info.nsid == nsid)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.inner.cap.timeout_ms().max(500))
    }

    fn csts(&self) -> Result<Csts, Error> {
        let raw = self.inner.func.read32(offset::CSTS);
        if raw == ALL_ONES_32 {
            return Err(Error::DeviceGone {
                ctrl: self.name().clone(),
            });
        }
        Ok(Csts::from(raw))
    }

    /// Clears CC.EN and waits for RDY=0. Every queue in the device is gone afterwards.
    fn disable(&self) -> Result<(), Error> {
        let f = &self.inner.func;
        let cc = Cc::from(f.read32(offset::CC));
        if u32::from(cc) == ALL_ONES_32 {
            return Err(Error::DeviceGone {
                ctrl: self.name().clone(),
            });
        }
        if cc.en() {
            f.write32(offset::CC, u32::from(cc.with_en(false).with_shn(0)));
        }
        wait_for(f.as_ref(), self.name(), DISABLED, self.timeout(), |c| {
            Ok(!c.rdy())
        })
    }

    /// Disable, admin queue, enable, identify, features, AERs; and at first bring-up, the
    /// namespaces. At a reset, the I/O queues are re-created too.
    fn bring_up(&self, first: bool) -> Result<(), Error> {
        let f = self.inner.func.clone();
        let name = self.name().clone();
        // Off if a failure could not disable the controller (`mark_failed`).
        f.set_bus_master(true)?;
        self.disable()?;
        let mut admin = self.inner.admin.lock().unwrap();
        admin.reset();
        admin.rings.set_shadow(None);
        let size = admin.rings.size();
        let dom = self.inner.domain;
        let asq = admin.rings.sq_mem().iova(dom, 0);
        let acq = admin.rings.cq_mem().iova(dom, 0);
        let (Some(asq), Some(acq)) = (asq, acq) else {
            return Err(Error::BadData {
                ctrl: name,
                what: "admin queue memory mapping (not in this controller's DMA domain)",
            });
        };
        f.write32(
            offset::AQA,
            u32::from(Aqa::new().with_asqs(size - 1).with_acqs(size - 1)),
        );
        f.write64(offset::ASQ, asq.0);
        f.write64(offset::ACQ, acq.0);
        let cc = Cc::new()
            .with_en(true)
            .with_css(0)
            .with_mps(0)
            .with_ams(0)
            .with_iosqes(6)
            .with_iocqes(4);
        f.write32(offset::CC, u32::from(cc));
        wait_for(f.as_ref(), &name, "CSTS.RDY = 1", self.timeout(), |c| {
            if c.cfs() {
                return Err(Error::Fatal {
                    ctrl: name.clone(),
                    during: "enable",
                });
            }
            Ok(c.rdy())
        })?;
        drop(admin);

        // Identify Controller.
        let buf = self.alloc_dma(4096)?;
        self.admin_data(Sqe::identify(cns::CONTROLLER, 0, 0), Some(&buf))?;
        let id =
            IdentifyController::read_from_bytes(&buf.to_vec()).map_err(|_| Error::BadData {
                ctrl: name.clone(),
                what: "identify controller",
            })?;
        let mps_min = self.inner.cap.mps_min_bytes();
        let mdts_bytes = id.mdts_bytes(mps_min).unwrap_or(u64::MAX);

        // Shadow doorbells.
        let mut shadow_on = false;
        if let Some(sh) = &self.inner.shadow {
            if id.supports_dbbuf() {
                sh.shadow.fill(0, 4096, 0);
                sh.eventidx.fill(0, 4096, 0);
                let (Some(s), Some(e)) = (sh.shadow.iova(dom, 0), sh.eventidx.iova(dom, 0)) else {
                    return Err(Error::BadData {
                        ctrl: name,
                        what: "shadow doorbell mapping",
                    });
                };
                match self.admin(Sqe::doorbell_buffer_config(s.0, e.0)) {
                    Ok(_) => shadow_on = true,
                    Err(Error::Admin { status, .. }) => {
                        log::info!("{name}: Doorbell Buffer Config refused ({status}); using MMIO doorbells");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if shadow_on {
            self.inner
                .admin
                .lock()
                .unwrap()
                .rings
                .set_shadow(self.inner.shadow.clone());
        }

        // Number of Queues. QEMU refuses this once I/O queues exist; at a reset they don't.
        let want = NumberOfQueues {
            nsq: self.inner.opts.io_queues.max(1),
            ncq: self.inner.opts.io_queues.max(1),
        };
        let dw0 = self.admin(Sqe::set_features(
            fid::NUMBER_OF_QUEUES,
            want.to_cdw11(),
            false,
        ))?;
        let got = NumberOfQueues::from_dw0(dw0);
        let io_queues = got.nsq.min(got.ncq).min(want.nsq);

        // Async events.
        if self.inner.opts.async_events {
            let mut bits = aec::SMART;
            if id.oaes & (1 << 8) != 0 {
                bits |= aec::NS_ATTR;
            }
            if id.oaes & (1 << 11) != 0 {
                bits |= aec::ANA_CHANGE;
            }
            if let Err(e) = self.admin(Sqe::set_features(fid::ASYNC_EVENT_CONFIG, bits, false)) {
                log::info!("{name}: async event configuration refused: {e}");
            }
            let n = (id.aerl as u32 + 1).min(4);
            let mut admin = self.inner.admin.lock().unwrap();
            for _ in 0..n {
                if !admin.submit_aer() {
                    break;
                }
            }
        }

        let namespaces = if first {
            self.scan_namespaces(&buf)?
        } else {
            self.info().namespaces
        };
        *self.inner.info.write().unwrap() = Some(CtrlInfo {
            cap: self.inner.cap,
            identify: Arc::new(id),
            namespaces,
            mdts_bytes,
            io_queues,
            shadow_doorbells: shadow_on,
        });
        if !first {
            // Queue pairs that already rewound to this epoch get their queues back now; the
            // others when they have (`create_pending_queues`, on the control plane's next step).
            self.create_pending_queues()?;
        }
        Ok(())
    }

    fn scan_namespaces(&self, buf: &DmaBuf) -> Result<Vec<Namespace>, Error> {
        let name = self.name().clone();
        self.admin_data(Sqe::identify(cns::ACTIVE_NSID_LIST, 0, 0), Some(buf))?;
        let nsids = parse_nsid_list(&buf.to_vec());
        let mut out = Vec::new();
        for nsid in nsids {
            self.admin_data(Sqe::identify(cns::NAMESPACE, nsid, 0), Some(buf))?;
            let idns =
                IdentifyNamespace::read_from_bytes(&buf.to_vec()).map_err(|_| Error::BadData {
                    ctrl: name.clone(),
                    what: "identify namespace",
                })?;
            let lba = idns.lba_size_bytes();
            if lba == 0 || !lba.is_power_of_two() {
                log::warn!("{name}: namespace {nsid} has an unusable LBA format; skipped");
                continue;
            }
            if idns.metadata_size() != 0 {
                // Reads and writes move data only: on such a format the device would transfer
                // metadata too (interleaved past the data PRPs, or to a metadata pointer of 0).
                log::warn!(
                    "{name}: namespace {nsid} is formatted with {} bytes of {} metadata per \
                     block, which vfnvme's reads and writes do not transfer; skipped (raw \
                     commands on a queue pair still reach it)",
                    idns.metadata_size(),
                    if idns.extended_metadata() {
                        "interleaved"
                    } else {
                        "separate"
                    }
                );
                continue;
            }
            buf.fill(0, 4096, 0);
            let ids = match self.admin_data(Sqe::identify(cns::NS_DESCRIPTORS, nsid, 0), Some(buf))
            {
                Ok(_) => parse_ns_descriptors(&buf.to_vec()).map_err(|_| Error::BadData {
                    ctrl: name.clone(),
                    what: "namespace descriptor list",
                })?,
                Err(Error::Admin { .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            out.push(Namespace {
                info: NsInfo {
                    nsid,
                    lba_shift: lba.trailing_zeros(),
                    nsze: idns.nsze,
                },
                identify: Arc::new(idns),
                ids,
            });
        }
        Ok(out)
    }

    fn alloc_dma(&self, len: usize) -> Result<DmaBuf, Error> {
        self.inner
            .pool
            .alloc(len, 4096)
            .map_err(|source| Error::Dma {
                ctrl: self.name().clone(),
                source,
            })
    }

    /// Runs an admin command without data and returns CQE dword 0.
    ///
    /// Bounded by `admin_timeout`.
    ///
    /// # Errors
    /// [`Error::Admin`] for an error status, [`Error::AdminTimeout`], [`Error::DeviceGone`].
    pub fn admin(&self, sqe: Sqe) -> Result<u32, Error> {
        self.admin_data(sqe, None)
    }

    /// Runs an admin command with a data buffer of at most two pages (PRP1/PRP2 are set here).
    ///
    /// Bounded by `admin_timeout`.
    ///
    /// # Errors
    /// As [`Controller::admin`]; [`Error::BadData`] if the buffer is not mapped for this
    /// controller or longer than 8 KiB.
    pub fn admin_data(&self, mut sqe: Sqe, buf: Option<&DmaBuf>) -> Result<u32, Error> {
        let name = self.name().clone();
        let opcode = AdminOpcode(sqe.opcode());
        if let Some(b) = buf {
            let Some(iova) = b.iova(self.inner.domain, 0) else {
                return Err(Error::BadData {
                    ctrl: name,
                    what: "admin buffer (not mapped for this controller)",
                });
            };
            if b.len() > 8192 {
                return Err(Error::BadData {
                    ctrl: name,
                    what: "admin buffer longer than 8 KiB",
                });
            }
            sqe.prp1 = iova.0;
            sqe.prp2 = if crate::qpair::prp::pages_spanned(iova.0, b.len() as u64) > 1 {
                (iova.0 & !4095) + 4096
            } else {
                0
            };
        }
        let func = self.inner.func.clone();
        let timeout = self.inner.opts.admin_timeout;
        let r = {
            let mut admin = self.inner.admin.lock().unwrap();
            let r = admin.execute(sqe, timeout, || func.read32(offset::CSTS) != ALL_ONES_32);
            self.take_events(&mut admin);
            r
        };
        self.deliver_events();
        match r {
            Wait::Done(status, dw0) if status.is_success() => Ok(dw0),
            Wait::Done(status, _) => Err(Error::Admin {
                ctrl: name,
                opcode,
                status,
            }),
            Wait::TimedOut => Err(Error::AdminTimeout {
                ctrl: name,
                opcode,
                timeout_ms: timeout.as_millis() as u64,
            }),
            Wait::Gone => Err(Error::DeviceGone { ctrl: name }),
        }
    }

    /// Reads `len` bytes of log page `lid` from byte `offset` (any page, with offset).
    ///
    /// # Errors
    /// As [`Controller::admin_data`]; a length that is 0, not a dword multiple or above 8 KiB is
    /// [`Error::BadData`].
    pub fn get_log_page(
        &self,
        lid: u8,
        nsid: u32,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, Error> {
        if len == 0 || !len.is_multiple_of(4) || len > 8192 {
            return Err(Error::BadData {
                ctrl: self.name().clone(),
                what: "log page length (must be 4..8192 bytes, a dword multiple)",
            });
        }
        let buf = self.alloc_dma(len)?;
        let sqe = Sqe::get_log_page(lid, nsid, (len / 4 - 1) as u32, offset, 0, false);
        self.admin_data(sqe, Some(&buf))?;
        Ok(buf.to_vec())
    }

    /// Get Features: returns CQE dword 0.
    ///
    /// # Errors
    /// As [`Controller::admin`].
    pub fn get_features(&self, fid: u8, cdw11: u32) -> Result<u32, Error> {
        self.admin(Sqe::get_features(fid, 0, cdw11))
    }

    /// Set Features: returns CQE dword 0.
    ///
    /// # Errors
    /// As [`Controller::admin`].
    pub fn set_features(&self, fid: u8, cdw11: u32) -> Result<u32, Error> {
        self.admin(Sqe::set_features(fid, cdw11, false))
    }

    /// Sends Abort for command `cid` on `sqid`. Returns true if the controller aborted it (it then
    /// completes with Abort Requested on its own queue).
    ///
    /// # Errors
    /// As [`Controller::admin`].
    pub fn abort(&self, sqid: u16, cid: u16) -> Result<bool, Error> {
        Ok(self.admin(Sqe::abort(sqid, cid))? & 1 == 0)
    }

    /// Sets the handler for asynchronous events; it runs on the thread calling `service` (or any
    /// admin command).
    pub fn on_async_event(&self, f: impl FnMut(AsyncEvent) + Send + 'static) {
        *self.inner.on_event.lock().unwrap() = Some(Box::new(f));
    }

    fn take_events(&self, admin: &mut AdminQueue) {
        // Re-arm one AER per event received.
        let n = admin.events.len();
        if self.state() == CtrlState::Live || self.state() == CtrlState::Init {
            for _ in 0..n {
                admin.submit_aer();
            }
        }
        let ev: Vec<AsyncEvent> = admin.events.drain(..).collect();
        self.inner.pending_events().extend(ev);
    }

    fn deliver_events(&self) {
        // The handler may issue admin commands (reading the ANA log), which come back here: the
        // inner call finds the handler busy and leaves its events for the outer loop.
        let Ok(mut handler) = self.inner.on_event.try_lock() else {
            return;
        };
        loop {
            let ev: Vec<AsyncEvent> = self.inner.pending_events().drain(..).collect();
            if ev.is_empty() {
                return;
            }
            for e in ev {
                log::info!("{}: async event {e:?}", self.name());
                if let Some(h) = handler.as_mut() {
                    h(e);
                }
            }
        }
    }

    /// Creates an I/O queue pair (one per thread). It holds `opts.size` entries, clamped to the
    /// controller's CAP.MQES.
    ///
    /// # Errors
    /// [`Error::NotReady`], [`Error::NoQueues`], [`Error::Dma`], or the admin errors of Create
    /// I/O CQ/SQ.
    pub fn io_queue_pair(&self, opts: QueueOptions) -> Result<QueuePair, Error> {
        self.io_queue_pair_with(opts)
    }

    /// [`Controller::io_queue_pair`] whose commands carry a context of type `C` instead of a
    /// `u64` tag: the queue pair keeps it with the command (in its command-id table) and hands it
    /// back in the [`Completion`](crate::Completion), so that a caller that must remember more
    /// than a tag per command needs no table of its own. Keep `C` small: it is copied in at
    /// submission and out at completion.
    ///
    /// # Errors
    /// As [`Controller::io_queue_pair`].
    pub fn io_queue_pair_with<C: Copy + Default>(
        &self,
        opts: QueueOptions,
    ) -> Result<QueuePair<C>, Error> {
        let name = self.name().clone();
        let state = self.state();
        if state != CtrlState::Live {
            return Err(Error::NotReady { ctrl: name, state });
        }
        let info = self.info();
        let size = opts
            .size
            .clamp(2, (self.inner.cap.mqes() as u32 + 1).min(4096) as u16);
        let qid = {
            let mut q = self.inner.queues.lock().unwrap();
            let qid = (1..=info.io_queues)
                .find(|id| !q.live.iter().any(|r| r.qid == *id) && !q.creating.contains(id))
                .ok_or(Error::NoQueues {
                    ctrl: name.clone(),
                    granted: info.io_queues,
                })?;
            q.creating.push(qid);
            qid
        };
        let r = self.new_queue_pair(qid, size, &info, opts);
        self.inner
            .queues
            .lock()
            .unwrap()
            .creating
            .retain(|&id| id != qid);
        r
    }

    fn new_queue_pair<C: Copy + Default>(
        &self,
        qid: u16,
        size: u16,
        info: &CtrlInfo,
        opts: QueueOptions,
    ) -> Result<QueuePair<C>, Error> {
        doorbells_in_bar(
            self.inner.func.as_ref(),
            self.name(),
            qid,
            self.inner.cap.dstrd(),
        )?;
        // The epoch is read before the queues are created: if a reset slips in between, the
        // queue pair starts in the old epoch, rewinds on first use, and gets its queues back
        // from the control plane like every other.
        let epoch = self.inner.shared.load().epoch();
        let rec = QueueRecord {
            qid,
            size,
            sq: Arc::new(self.alloc_dma(size as usize * SQE_SIZE)?),
            cq: Arc::new(self.alloc_dma(size as usize * CQE_SIZE)?),
            sync: Arc::new(QueueSync::new(epoch)),
        };
        rec.sync.set_shadow(info.shadow_doorbells);
        let dstrd = self.inner.cap.dstrd();
        let shadow = if info.shadow_doorbells {
            self.inner.shadow.clone()
        } else {
            None
        };
        // The rings zero the CQ before the device sees it.
        let rings = Rings::new(
            self.inner.func.clone(),
            qid,
            size,
            rec.sq.clone(),
            rec.cq.clone(),
            regs::sq_tail_doorbell(qid, dstrd),
            regs::cq_head_doorbell(qid, dstrd),
            shadow,
        );
        self.create_queues_in_device(&rec)?;
        let sync = rec.sync.clone();
        self.inner.queues.lock().unwrap().live.push(rec);
        Ok(QueuePair::<C>::new(QueueSetup {
            shared: self.inner.shared.clone(),
            rings,
            domain: self.inner.domain,
            pool: self.inner.pool.clone(),
            mdts_bytes: info.mdts_bytes,
            epoch,
            opts,
            release: self.inner.released.clone(),
            sync,
            shadow_pages: self.inner.shadow.clone(),
        }))
    }

    /// Re-creates, after a reset, the queues of every queue pair that has rewound to the current
    /// epoch (see [`QueueSync`]). Returns how many were created.
    fn create_pending_queues(&self) -> Result<usize, Error> {
        let epoch = self.inner.shared.load().epoch();
        let shadow = self.info().shadow_doorbells;
        let queues = self.inner.queues.lock().unwrap();
        let mut n = 0;
        for q in &queues.live {
            if q.sync.live() != epoch && q.sync.acked() == epoch {
                self.create_queues_in_device(q)?;
                q.sync.set_shadow(shadow);
                q.sync.set_live(epoch);
                n += 1;
            }
        }
        if n > 0 {
            self.inner
                .queues_recreated
                .fetch_add(n as u64, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(n)
    }

    /// How many queues the control plane has re-created after resets so far. The multipath
    /// layer watches it to tell channels that a path takes I/O again.
    pub fn queues_recreated(&self) -> u64 {
        self.inner
            .queues_recreated
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn create_queues_in_device(&self, q: &QueueRecord) -> Result<(), Error> {
        let dom = self.inner.domain;
        let (Some(sq), Some(cq)) = (q.sq.iova(dom, 0), q.cq.iova(dom, 0)) else {
            return Err(Error::BadData {
                ctrl: self.name().clone(),
                what: "queue memory mapping",
            });
        };
        self.admin(Sqe::create_io_cq(q.qid, q.size - 1, cq.0, 0, false))?;
        if let Err(e) = self.admin(Sqe::create_io_sq(q.qid, q.size - 1, sq.0, q.qid, 0)) {
            let _ = self.admin(Sqe::delete_io_cq(q.qid));
            return Err(e);
        }
        Ok(())
    }

    /// Queue ids whose device queues exist now: created in the current reset epoch.
    fn device_qids(&self) -> Vec<u16> {
        let epoch = self.inner.shared.load().epoch();
        self.inner
            .queues
            .lock()
            .unwrap()
            .live
            .iter()
            .filter(|q| q.sync.live() == epoch)
            .map(|q| q.qid)
            .collect()
    }

    /// Deletes the device's I/O queue pair `qid`: the SQ first, then its CQ.
    fn delete_device_queue(&self, qid: u16) -> Result<(), Error> {
        self.admin(Sqe::delete_io_sq(qid))?;
        self.admin(Sqe::delete_io_cq(qid))?;
        Ok(())
    }

    /// Puts dropped queue pairs back for a later step: their memory is not freed now.
    fn hold_dropped(&self, d: Dropped, rest: impl Iterator<Item = Dropped>) {
        let mut released = self.inner.released.lock().unwrap();
        released.push(d);
        released.extend(rest);
    }

    /// Deletes the device queues of dropped queue pairs (SQ first, then CQ).
    fn delete_dropped_queues(&self) {
        if self.state() == CtrlState::Resetting {
            // A reset on another thread has not disabled the device yet: it may still run the
            // dropped queues. The next step, after the reset, frees them.
            return;
        }
        let dropped = std::mem::take(&mut *self.inner.released.lock().unwrap());
        if dropped.is_empty() {
            return;
        }
        let on_device = self.device_qids();
        let mut rest = dropped.into_iter();
        while let Some(d) = rest.next() {
            let qid = d.qid;
            if self.state() == CtrlState::Resetting {
                // A reset began on another thread meanwhile: as above, free nothing yet.
                self.hold_dropped(d, rest);
                return;
            }
            if on_device.contains(&qid) && self.state() == CtrlState::Live {
                match self.delete_device_queue(qid) {
                    // Refused with a status: the device answered, and does not run the queue.
                    Ok(()) | Err(Error::Admin { .. }) => {}
                    Err(e) => {
                        // No answer: the device may still use the queues. Keep their memory
                        // and reset the controller (which drops every queue in the device);
                        // the next step frees it.
                        log::warn!("{}: deleting queue {qid}: {e}; resetting", self.name());
                        self.hold_dropped(d, rest);
                        let _ = self.reset();
                        return;
                    }
                }
            }
            // Memory is freed only now, after the device let go of it: the queues and the
            // PRP list pages of what was in flight (dropped with `d`).
            self.inner
                .queues
                .lock()
                .unwrap()
                .live
                .retain(|r| r.qid != qid);
        }
    }

    /// One step of the control plane: reap admin completions and deliver async events, check
    /// health (removal, CSTS.CFS, all-ones reads), abort timed-out commands (resetting the
    /// controller when an abort fails), and delete the queues of dropped queue pairs.
    ///
    /// Returns the state afterwards.
    pub fn service(&self) -> CtrlState {
        let state = self.state();
        if state == CtrlState::Removed {
            return state;
        }
        // Health.
        if self.inner.func.removal_requested() {
            log::warn!(
                "{}: removal requested by the platform; releasing",
                self.name()
            );
            self.mark_removed();
            return CtrlState::Removed;
        }
        match self.csts() {
            Err(_) => {
                log::warn!("{}: registers read all-ones: device gone", self.name());
                self.mark_removed();
                return CtrlState::Removed;
            }
            Ok(c) if c.cfs() && state == CtrlState::Live => {
                log::warn!("{}: controller fatal status; resetting", self.name());
                let _ = self.reset();
                return self.state();
            }
            Ok(_) => {}
        }
        if state != CtrlState::Live {
            return state;
        }
        {
            let mut admin = self.inner.admin.lock().unwrap();
            admin.reap();
            self.take_events(&mut admin);
        }
        self.deliver_events();
        // Timeouts: abort, and reset if the abort does not take.
        let reports: Vec<state::TimeoutReport> =
            std::mem::take(&mut *self.inner.shared.timeouts.lock().unwrap());
        for r in reports {
            let (qid, cid) = (r.qid, r.cid);
            if r.escalate {
                log::warn!(
                    "{}: qid {qid} cid {cid:#06x} still outstanding after its abort; resetting \
                     the controller",
                    self.name()
                );
                let _ = self.reset();
                return self.state();
            }
            match self.abort(qid, cid) {
                Ok(true) => log::warn!("{}: aborted qid {qid} cid {cid:#06x}", self.name()),
                // Not found, or too far along: it may still complete. A second timeout resets.
                Ok(false) => log::warn!(
                    "{}: qid {qid} cid {cid:#06x} not aborted; waiting one more timeout",
                    self.name()
                ),
                Err(e) => {
                    log::warn!(
                        "{}: abort of qid {qid} cid {cid:#06x} failed ({e}); resetting the \
                         controller",
                        self.name()
                    );
                    let _ = self.reset();
                    return self.state();
                }
            }
        }
        self.delete_dropped_queues();
        if self.state() != CtrlState::Live {
            // That step reset the controller, and the reset failed: nothing to re-create.
            return self.state();
        }
        // Queues of queue pairs that have rewound since a reset.
        if let Err(e) = self.create_pending_queues() {
            log::warn!("{}: re-creating queues after a reset: {e}", self.name());
            self.mark_failed(&e);
        }
        self.state()
    }

    /// The controller is gone (removal requested, or registers read all-ones): new epoch in the
    /// Removed state (queue pairs fail what they had in flight with `Outcome::Removed` and refuse
    /// new commands), bus mastering off while config space still answers, then the function is
    /// released so the platform can finish the removal. Nothing touches the BAR afterwards except
    /// all-ones reads and ignored writes.
    ///
    /// Bus mastering goes off before the new epoch: on an orderly removal request the device is
    /// still alive, and a command failed back (and perhaps resent elsewhere at once) must not
    /// have its data moved afterwards.
    fn mark_removed(&self) {
        let _ = self.inner.func.set_bus_master(false);
        self.inner.shared.transition(CtrlState::Removed, true);
        self.inner.func.release();
    }

    /// Declares the controller gone for good, as a removal would: bus mastering off, a new epoch
    /// in the [`CtrlState::Removed`] state (its queue pairs fail what they had in flight with
    /// [`crate::Outcome::Removed`] and refuse new commands), the function released. For a
    /// controller that the application replaces (a port re-attached as a new `Controller`), so
    /// that what was in flight on the old one completes, whether or not anything still services
    /// it. Does nothing to a controller already removed.
    pub fn retire(&self) {
        if self.state() != CtrlState::Removed {
            self.mark_removed();
        }
    }

    /// Resets the controller: disable (the device drops every queue; no Delete commands are
    /// sent), new epoch (queue pairs fail what they had in flight), then admin queue, identify,
    /// features and every I/O queue again, with the same memory.
    ///
    /// Bounded by CAP.TO per register handshake and `admin_timeout` per admin command.
    ///
    /// # Errors
    /// As bring-up; the controller is then [`CtrlState::Failed`] (or `Removed`).
    pub fn reset(&self) -> Result<(), Error> {
        let sh = &self.inner.shared;
        if !sh.transition(CtrlState::Resetting, false) {
            return Err(Error::NotReady {
                ctrl: self.name().clone(),
                state: self.state(),
            });
        }
        let r = self.disable().and_then(|()| {
            // Everything in flight is dead now: let queue pairs fail it and rewind their rings.
            sh.bump_epoch();
            self.inner.shared.timeouts.lock().unwrap().clear();
            self.bring_up(false)
        });
        match r {
            Ok(()) => {
                sh.transition(CtrlState::Live, false);
                Ok(())
            }
            Err(e) => {
                self.mark_failed(&e);
                Err(e)
            }
        }
    }

    /// After a failed bring-up or reset: a device that is gone is released (so that a removal
    /// can complete); anything else leaves the controller failed, for the control plane to retry.
    ///
    /// The new epoch fails back every command in flight, so the device is stopped first: a
    /// controller that failed to re-create one queue pair's queues still runs the others', and
    /// a command failed back while the device still runs it could move data into or out of a
    /// buffer its owner has reused. If it will not disable, bus mastering goes off (no DMA at
    /// all; the next bring-up turns it on again).
    fn mark_failed(&self, e: &Error) {
        if matches!(
            e,
            Error::DeviceGone { .. } | Error::Pci(crate::pci::Error::DeviceGone { .. })
        ) {
            self.mark_removed();
            return;
        }
        // A disable that just timed out is not tried again (a second CAP.TO of waiting).
        let disable_timed_out = matches!(e, Error::Timeout { what: DISABLED, .. });
        let why = if disable_timed_out {
            Some(e.to_string())
        } else {
            self.disable().err().map(|d| d.to_string())
        };
        if let Some(why) = why {
            log::warn!(
                "{}: will not disable ({why}); bus mastering off",
                self.name()
            );
            let _ = self.inner.func.set_bus_master(false);
        }
        self.inner.shared.transition(CtrlState::Failed, true);
    }

    /// Detaches a set of controllers that share `pool` (the end of a tool's or an application's
    /// run): shuts each down ([`Controller::shutdown`], failures logged, the others still shut
    /// down), then unmaps the pool's DMA memory from their DMA domains while their VFIO
    /// containers are still open. Call after every queue pair on them is gone.
    pub fn detach_all(ctrls: &[Controller], pool: &DmaPool) {
        for c in ctrls {
            if let Err(e) = c.shutdown() {
                log::warn!("{}: shutdown: {e}", c.name());
            }
        }
        let mut domains: Vec<DomainId> = Vec::new();
        for c in ctrls {
            if !domains.contains(&c.domain()) {
                domains.push(c.domain());
            }
        }
        for d in domains {
            if let Err(e) = pool.remove_mapper(d) {
                log::debug!("unmapping DMA memory from {d:?}: {e}");
            }
        }
    }

    /// Orderly shutdown: delete the I/O queues, then CC.SHN = normal and wait for SHST = complete
    /// (bounded by CAP.TO, or RTD3E when it is longer). Dropping the last handle of a live
    /// controller does the CC.SHN part too; calling this first deletes the queues and reports
    /// errors.
    ///
    /// # Errors
    /// [`Error::Timeout`] if SHST does not reach complete; [`Error::DeviceGone`].
    pub fn shutdown(&self) -> Result<(), Error> {
        if self.state() == CtrlState::Live {
            for qid in self.device_qids() {
                let _ = self.delete_device_queue(qid);
            }
        }
        self.inner.shutdown_handshake()
    }
}

/// Runs [`Controller::service`] for a set of controllers on its own thread every `interval`,
/// until dropped. This is the control plane of the design: admin work never runs on I/O cores.
pub struct ControlPlane {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    /// Starts the thread.
    pub fn spawn(ctrls: Vec<Controller>, interval: Duration) -> ControlPlane {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vfnvme-ctrl".into())
            .spawn(move || {
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    for c in &ctrls {
                        c.service();
                    }
                    std::thread::sleep(interval);
                }
            })
            .expect("spawning the control-plane thread");
        ControlPlane {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Inner {
    fn pending_events(&self) -> std::sync::MutexGuard<'_, Vec<AsyncEvent>> {
        self.events.lock().unwrap()
    }

    /// CC.SHN = normal, then wait for CSTS.SHST = complete (bounded by CAP.TO, or RTD3E when it
    /// is longer); the state becomes `ShutDown`.
    fn shutdown_handshake(&self) -> Result<(), Error> {
        let f = &self.func;
        let name = &self.shared.name;
        let cc = Cc::from(f.read32(offset::CC));
        if u32::from(cc) == ALL_ONES_32 {
            return Err(Error::DeviceGone { ctrl: name.clone() });
        }
        f.write32(offset::CC, u32::from(cc.with_shn(regs::shn::NORMAL)));
        let rtd3e = self
            .info
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |i| i.identify.rtd3e as u64 / 1000);
        let timeout = Duration::from_millis(self.cap.timeout_ms().max(500).max(rtd3e));
        wait_for(f.as_ref(), name, "CSTS.SHST = complete", timeout, |c| {
            Ok(c.shst() == regs::shst::COMPLETE)
        })?;
        self.shared.transition(CtrlState::ShutDown, true);
        Ok(())
    }
}

impl Drop for Inner {
    /// The last handle on a live controller is gone without [`Controller::shutdown`]: shut it
    /// down anyway (CC.SHN), so that its volatile write cache is flushed and it stops using host
    /// memory before that memory can be reused. A failed, removed or already shut down
    /// controller is left alone.
    fn drop(&mut self) {
        if self.shared.state() != CtrlState::Live {
            return;
        }
        log::debug!("{}: dropped while live; shutting down", self.shared.name);
        if let Err(e) = self.shutdown_handshake() {
            // Its memory goes back to the pool now: make sure it can no longer reach it.
            log::warn!(
                "{}: shutdown on drop: {e}; bus mastering off",
                self.shared.name
            );
            let _ = self.func.set_bus_master(false);
        }
    }
}

/// What [`Controller::disable`] waits for (and names when it times out).
const DISABLED: &str = "CSTS.RDY = 0";

/// Checks that queue `qid`'s doorbells lie inside BAR0: their offsets follow from CAP.DSTRD,
/// a device value, and ringing past the BAR would be an out-of-bounds access.
fn doorbells_in_bar(
    func: &dyn PciFunction,
    name: &Arc<str>,
    qid: u16,
    dstrd: u8,
) -> Result<(), Error> {
    let end = regs::cq_head_doorbell(qid, dstrd) + 4;
    match func.bar_len() {
        Some(len) if end > len => Err(Error::Unsupported {
            ctrl: name.clone(),
            what: format!(
                "queue {qid}'s doorbells lie past the end of BAR0 ({end:#x} > {len:#x} bytes \
                 at CAP.DSTRD {dstrd})"
            ),
        }),
        _ => Ok(()),
    }
}
