//! The VFIO backend: NVMe controllers driven from userspace through `vfio-pci`.
//!
//! [`VfioSystem::open`] takes PCI addresses (`0000:01:00.0`, or SPDK's
//! `trtype:PCIe traddr:0000:01:00.0`), checks each function in sysfs (bound to vfio-pci, IOMMU
//! group, group node, permissions: every refusal says how to fix it), and opens them:
//!
//! * **type1** (an IOMMU translates): through `vfio-ioctls`. All functions go into ONE container
//!   when their groups allow it, so they share one IOVA space, one [`DomainId`] and one
//!   [`DmaMapper`]; a group that the container refuses gets a container of its own. DMA mappings
//!   use IOVA = VA when the IOMMU's valid ranges cover the region (see [`super::iommu`]).
//! * **no-IOMMU** (`/dev/vfio/noiommu-N`): through [`super::noiommu`]; IOVA = physical address,
//!   2 MiB hugepages only, root only, and a loud warning.
//!
//! Each [`VfioFunction`] mmaps BAR0 (guarded against SIGBUS by [`super::mmio`]), arms the
//! device-request IRQ on an eventfd ([`PciFunction::removal_requested`]), and sets bus mastering
//! through the config region. [`VfioFunction::release`] lets go of the device while other
//! threads may still hold the function: BAR0 is swapped for all-ones memory, then the device fd
//! is closed, so the kernel can finish a hot-unplug.
#![forbid(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioError, VfioOps};
use vfnvme_hugepages::{DmaMapper, DomainId};

use super::iommu::{parse_iommu_info, Type1Mapper};
use super::mmio::Bar;
use super::noiommu::{self, NoIommuContainer, NoIommuDevice, NoIommuMapper};
use super::sys::{self, EventFd};
use super::sysfs::{Bdf, GroupInfo, GroupKind, SysPaths};
use super::{Error, PciFunction};

/// PCI command register offset in config space, and its bits.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// Which VFIO IOMMU model to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IommuMode {
    /// Whatever the group nodes say: `/dev/vfio/N` is type1, `/dev/vfio/noiommu-N` no-IOMMU.
    #[default]
    Auto,
    /// A real IOMMU (type1v2 containers); refuse no-IOMMU groups.
    Type1,
    /// vfio's unsafe no-IOMMU mode; refuse real IOMMU groups.
    NoIommu,
}

/// Options of [`VfioSystem::open_with`].
#[derive(Clone, Debug)]
pub struct VfioOptions {
    /// IOMMU model.
    pub mode: IommuMode,
    /// Arm the device-request IRQ (hot-unplug notice) on an eventfd. Default true.
    pub arm_request_irq: bool,
    /// Where sysfs and `/dev/vfio` are (tests use a fake tree).
    pub paths: SysPaths,
}

impl Default for VfioOptions {
    fn default() -> Self {
        VfioOptions {
            mode: IommuMode::Auto,
            arm_request_irq: true,
            paths: SysPaths::default(),
        }
    }
}

/// Opens PCI functions through VFIO. See the module docs.
#[derive(Debug)]
pub struct VfioSystem;

impl VfioSystem {
    /// Opens every function in `addrs` with default options: one shared type1 container when
    /// the groups allow it, or no-IOMMU mode when the groups are `noiommu-N`.
    ///
    /// # Errors
    /// [`Error::Backend`] naming the function, what failed and how to fix it.
    pub fn open<S: AsRef<str>>(addrs: &[S]) -> Result<Vec<Arc<VfioFunction>>, Error> {
        Self::open_with(addrs, &VfioOptions::default())
    }

    /// Opens every function in `addrs`, in order.
    ///
    /// # Errors
    /// [`Error::Backend`] naming the function, what failed and how to fix it. Functions opened
    /// before the failure are released.
    pub fn open_with<S: AsRef<str>>(
        addrs: &[S],
        opts: &VfioOptions,
    ) -> Result<Vec<Arc<VfioFunction>>, Error> {
        let mut bdfs = Vec::with_capacity(addrs.len());
        for a in addrs {
            let a = a.as_ref();
            let bdf = Bdf::parse(a).map_err(|e| Error::Backend {
                function: a.to_string(),
                op: "parse PCI address",
                detail: e.to_string(),
            })?;
            if bdfs.contains(&bdf) {
                return Err(backend(bdf, "open", "address given twice".into()));
            }
            bdfs.push(bdf);
        }
        let want = match opts.mode {
            IommuMode::Auto => None,
            IommuMode::Type1 => Some(GroupKind::Iommu),
            IommuMode::NoIommu => Some(GroupKind::NoIommu),
        };
        let infos = bdfs
            .iter()
            .map(|&b| opts.paths.locate(b, want))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = infos.first() else {
            return Ok(Vec::new());
        };
        if let Some(odd) = infos.iter().find(|i| i.kind != first.kind) {
            return Err(backend(
                odd.bdf,
                "open",
                format!(
                    "mixed IOMMU modes: {} is {:?} but {} is {:?}; all functions of one open must \
                     use the same mode",
                    first.bdf, first.kind, odd.bdf, odd.kind
                ),
            ));
        }
        match first.kind {
            GroupKind::Iommu => open_type1(&infos, opts),
            GroupKind::NoIommu => open_noiommu(&infos, opts),
        }
    }
}

fn backend(bdf: Bdf, op: &'static str, detail: String) -> Error {
    Error::Backend {
        function: bdf.to_string(),
        op,
        detail,
    }
}

/// One type1 container being filled.
struct Type1Slot {
    container: Arc<VfioContainer>,
    mapper: Option<Arc<Type1Mapper>>,
    members: Vec<Bdf>,
}

fn vfio_error(paths: &SysPaths, info: &GroupInfo, e: VfioError) -> Error {
    match e {
        VfioError::OpenGroup(io, _) => paths.open_group_error(info, &io),
        VfioError::GroupViable => paths.not_viable_error(info),
        VfioError::OpenContainer(io) => backend(
            info.bdf,
            "open container",
            format!("open /dev/vfio/vfio: {io} (is vfio-pci loaded? are you root?)"),
        ),
        other => backend(info.bdf, "open device", other.to_string()),
    }
}

fn open_type1(infos: &[GroupInfo], opts: &VfioOptions) -> Result<Vec<Arc<VfioFunction>>, Error> {
    let mut slots: Vec<Type1Slot> = Vec::new();
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        let mut opened = None;
        // Try the containers we have (normally the first takes every group), then a new one.
        for idx in 0..=slots.len() {
            if idx == slots.len() {
                let c = VfioContainer::new(None).map_err(|e| vfio_error(&opts.paths, info, e))?;
                slots.push(Type1Slot {
                    container: Arc::new(c),
                    mapper: None,
                    members: Vec::new(),
                });
            }
            let ops: Arc<dyn VfioOps> = slots[idx].container.clone();
            match VfioDevice::new(&info.sysfs_dir, ops, false) {
                Ok(d) => {
                    opened = Some((idx, d));
                    break;
                }
                Err(VfioError::GroupSetContainer) => {
                    log::info!(
                        "{}: group {} does not fit the container of {:?}; trying another",
                        info.bdf,
                        info.group,
                        slots[idx].members
                    );
                    if slots[idx].members.is_empty() {
                        // A fresh container refused it: nothing else will take it.
                        return Err(backend(
                            info.bdf,
                            "open group",
                            format!("VFIO_GROUP_SET_CONTAINER refused group {}", info.group),
                        ));
                    }
                }
                Err(e) => return Err(vfio_error(&opts.paths, info, e)),
            }
        }
        let (idx, dev) = opened.expect("the loop opens or returns");
        let slot = &mut slots[idx];
        slot.members.push(info.bdf);
        if slot.mapper.is_none() {
            slot.mapper = Some(Arc::new(type1_mapper(&slot.container, info)?));
        }
        let mapper = slot.mapper.clone().expect("set above");
        let f = VfioFunction::new(info, Device::Type1(dev), mapper, opts)?;
        out.push(Arc::new(f));
    }
    if slots.len() > 1 {
        log::warn!(
            "{} VFIO containers were needed ({:?}): those functions do not share an IOVA space",
            slots.len(),
            slots.iter().map(|s| &s.members).collect::<Vec<_>>()
        );
    }
    Ok(out)
}

fn type1_mapper(container: &Arc<VfioContainer>, info: &GroupInfo) -> Result<Type1Mapper, Error> {
    let raw = sys::iommu_info(sys::container_fd(container))
        .map_err(|e| backend(info.bdf, "VFIO_IOMMU_GET_INFO", e.to_string()))?;
    let parsed = parse_iommu_info(&raw)
        .map_err(|e| backend(info.bdf, "VFIO_IOMMU_GET_INFO", e.to_string()))?;
    let ranges = parsed.ranges.unwrap_or_else(|| {
        log::warn!(
            "{}: the IOMMU reports no IOVA ranges (kernel before 5.4?); assuming all of them",
            info.bdf
        );
        vec![(0, u64::MAX)]
    });
    log::info!(
        "{}: type1 container: IOVA page sizes {:#x}, valid IOVA ranges {:x?}",
        info.bdf,
        parsed.iova_pgsizes,
        ranges
    );
    let ops: Arc<dyn sys::Type1Ops> = container.clone();
    Type1Mapper::new(ops, ranges, format!("vfio container of {}", info.bdf)).map_err(|source| {
        Error::Dma {
            function: info.bdf.to_string(),
            source,
        }
    })
}

fn open_noiommu(infos: &[GroupInfo], opts: &VfioOptions) -> Result<Vec<Arc<VfioFunction>>, Error> {
    let first = infos[0].bdf;
    if sys::euid() != 0 {
        return Err(backend(
            first,
            "open (no-IOMMU)",
            "no-IOMMU mode is for root only (it needs CAP_SYS_RAWIO for the group and \
             CAP_SYS_ADMIN for physical addresses from /proc/self/pagemap)"
                .into(),
        ));
    }
    match vfnvme_hugepages::sysfs::total_hugepages() {
        Ok(0) | Err(_) => {
            return Err(backend(
                first,
                "open (no-IOMMU)",
                "no-IOMMU mode needs 2 MiB hugepages for DMA and none are reserved: reserve some \
                 with `vfnvme-setup hugepages N` (or `echo N > /proc/sys/vm/nr_hugepages`)"
                    .into(),
            ))
        }
        Ok(_) => {}
    }
    noiommu::warn_once();
    let container = Arc::new(NoIommuContainer::open(&opts.paths.dev_vfio).map_err(|e| {
        backend(
            first,
            "open container (no-IOMMU)",
            format!("{}: {e}", opts.paths.dev_vfio.join("vfio").display()),
        )
    })?);
    let mapper: Arc<dyn DmaMapper> =
        Arc::new(NoIommuMapper::new().map_err(|source| Error::Dma {
            function: first.to_string(),
            source,
        })?);
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        let group = container
            .add_group(info.group, &info.node)
            .map_err(|e| match e {
                noiommu::AddGroupError::Open(io) => opts.paths.open_group_error(info, &io),
                noiommu::AddGroupError::NotViable => opts.paths.not_viable_error(info),
                noiommu::AddGroupError::Ioctl(op, io) => backend(info.bdf, op, io.to_string()),
            })?;
        let dev = NoIommuDevice::open(container.clone(), group, &info.bdf.to_string())
            .map_err(|e| backend(info.bdf, "VFIO_GROUP_GET_DEVICE_FD", e.to_string()))?;
        let f = VfioFunction::new(info, Device::NoIommu(dev), mapper.clone(), opts)?;
        out.push(Arc::new(f));
    }
    Ok(out)
}

/// The open device behind a function.
enum Device {
    Type1(VfioDevice),
    NoIommu(NoIommuDevice),
}

impl Device {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Device::Type1(d) => sys::vfio_device_fd(d),
            Device::NoIommu(d) => d.fd(),
        }
    }

    /// (offset, size, flags) of a region.
    fn region(&self, index: u32) -> std::io::Result<(u64, u64, u32)> {
        match self {
            Device::Type1(d) => Ok((
                d.get_region_offset(index),
                d.get_region_size(index),
                d.get_region_flags(index),
            )),
            Device::NoIommu(d) => {
                let r = sys::region_info(d.fd(), index)?;
                Ok((r.offset, r.size, r.flags))
            }
        }
    }

    fn irq_count(&self, index: u32) -> u32 {
        match self {
            Device::Type1(d) => d.get_irq_info(index).map_or(0, |i| i.count),
            Device::NoIommu(d) => sys::irq_count(d.fd(), index).unwrap_or(0),
        }
    }
}

/// Closes a device. `vfio-ioctls`' `VfioDevice::drop` reads the function's sysfs `iommu_group`
/// link and unwraps; after a hot-unplug that link can vanish as soon as the fd is closed, so a
/// panic there is caught and logged (the fd is closed by then).
fn close_device(name: &str, dev: Device) {
    match dev {
        Device::Type1(d) => {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(d))).is_err() {
                log::error!("{name}: vfio-ioctls panicked while releasing the device (after removal?); the fd is closed");
            }
        }
        Device::NoIommu(d) => drop(d),
    }
}

/// A PCI function opened through VFIO. See the module docs.
pub struct VfioFunction {
    name: String,
    bdf: Bdf,
    group: u32,
    kind: GroupKind,
    bar: Bar,
    device: Mutex<Option<Device>>,
    config_offset: u64,
    reset_supported: bool,
    req: Option<EventFd>,
    removal: AtomicBool,
    mapper: Arc<dyn DmaMapper>,
}

impl std::fmt::Debug for VfioFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioFunction")
            .field("bdf", &self.name)
            .field("group", &self.group)
            .field("kind", &self.kind)
            .field("bar0_len", &self.bar.len())
            .field("domain", &self.mapper.domain())
            .finish()
    }
}

impl VfioFunction {
    fn new(
        info: &GroupInfo,
        dev: Device,
        mapper: Arc<dyn DmaMapper>,
        opts: &VfioOptions,
    ) -> Result<VfioFunction, Error> {
        let bdf = info.bdf;
        let name = bdf.to_string();
        let flags = sys::device_info(dev.fd())
            .map_err(|e| backend(bdf, "VFIO_DEVICE_GET_INFO", e.to_string()))?
            .flags;
        let (bar_off, bar_len, bar_flags) = dev
            .region(VFIO_PCI_BAR0_REGION_INDEX)
            .map_err(|e| backend(bdf, "BAR0 region info", e.to_string()))?;
        if bar_len < 0x2000 || bar_flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(backend(
                bdf,
                "map BAR0",
                format!(
                    "BAR0 is {bar_len:#x} bytes, flags {bar_flags:#x}: not an mmappable NVMe BAR \
                     (is this an NVMe controller?)"
                ),
            ));
        }
        let (config_offset, _, _) = dev
            .region(VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(|e| backend(bdf, "config region info", e.to_string()))?;
        let bar = Bar::map(dev.fd(), bar_off, bar_len as usize)
            .map_err(|e| backend(bdf, "map BAR0", e.to_string()))?;
        let mut req = None;
        if opts.arm_request_irq {
            if dev.irq_count(VFIO_PCI_REQ_IRQ_INDEX) > 0 {
                let efd = EventFd::new().map_err(|e| backend(bdf, "eventfd", e.to_string()))?;
                sys::set_irq_eventfd(dev.fd(), VFIO_PCI_REQ_IRQ_INDEX, Some(efd.as_fd()))
                    .map_err(|e| backend(bdf, "arm device-request IRQ", e.to_string()))?;
                req = Some(efd);
            } else {
                log::warn!("{name}: no device-request IRQ: orderly removal will not be noticed");
            }
        }
        let f = VfioFunction {
            name,
            bdf,
            group: info.group,
            kind: info.kind,
            bar,
            device: Mutex::new(Some(dev)),
            config_offset,
            reset_supported: flags & VFIO_DEVICE_FLAGS_RESET != 0,
            req,
            removal: AtomicBool::new(false),
            mapper,
        };
        // BAR access needs memory decoding; vfio-pci usually leaves it on, but make sure.
        f.update_command(|c| c | PCI_COMMAND_MEMORY, "enable memory decoding")?;
        Ok(f)
    }

    /// The PCI address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The IOMMU group number.
    pub fn iommu_group(&self) -> u32 {
        self.group
    }

    /// True in no-IOMMU mode.
    pub fn is_noiommu(&self) -> bool {
        self.kind == GroupKind::NoIommu
    }

    /// The DMA domain (shared by every function of one container).
    pub fn domain(&self) -> DomainId {
        self.mapper.domain()
    }

    /// Size of the BAR0 mapping.
    pub fn bar0_len(&self) -> usize {
        self.bar.len()
    }

    /// True if the device-request IRQ is armed on an eventfd.
    pub fn request_irq_armed(&self) -> bool {
        self.req.is_some()
    }

    /// True once BAR0 became all-ones memory: a SIGBUS was caught (the device vanished) or the
    /// function was released.
    pub fn is_gone(&self) -> bool {
        self.bar.is_gone()
    }

    /// True once [`VfioFunction::release`] ran.
    pub fn is_released(&self) -> bool {
        self.device.lock().unwrap().is_none()
    }

    /// Lets go of the device (idempotent): tears down the request IRQ, swaps BAR0 for all-ones
    /// memory (other threads may keep reading it safely), and closes the device fd, which lets
    /// the kernel finish a hot-unplug. Config-space calls then fail with [`Error::DeviceGone`].
    /// The DMA mapper stays usable (mappings belong to the container).
    pub fn release(&self) {
        let Some(dev) = self.device.lock().unwrap().take() else {
            return;
        };
        if self.req.is_some() {
            if let Err(e) = sys::set_irq_eventfd(dev.fd(), VFIO_PCI_REQ_IRQ_INDEX, None) {
                log::debug!("{}: disarming the device-request IRQ: {e}", self.name);
            }
        }
        if let Err(e) = self.bar.detach() {
            log::error!(
                "{}: could not unmap BAR0 ({e}); the kernel cannot finish removing the device \
                 until this process exits",
                self.name
            );
        }
        close_device(&self.name, dev);
        log::info!("{}: released", self.name);
    }

    /// Turns memory decoding (PCI command bit 1) on or off. With it off, vfio-pci answers any
    /// BAR access with SIGBUS, which the guard turns into all-ones reads: a way to rehearse
    /// surprise removal on a live device. BAR0 stays all-ones afterwards (reopen the function).
    ///
    /// # Errors
    /// [`Error::Backend`] when the config access fails, [`Error::DeviceGone`] after release.
    pub fn set_memory_decoding(&self, enable: bool) -> Result<(), Error> {
        self.update_command(
            |c| {
                if enable {
                    c | PCI_COMMAND_MEMORY
                } else {
                    c & !PCI_COMMAND_MEMORY
                }
            },
            "set memory decoding",
        )
    }

    fn with_device<R>(&self, f: impl FnOnce(&Device) -> Result<R, Error>) -> Result<R, Error> {
        let g = self.device.lock().unwrap();
        match g.as_ref() {
            Some(d) => f(d),
            None => Err(Error::DeviceGone {
                function: self.name.clone(),
            }),
        }
    }

    fn update_command(&self, f: impl FnOnce(u16) -> u16, op: &'static str) -> Result<(), Error> {
        self.with_device(|d| {
            let off = self.config_offset + PCI_COMMAND;
            let mut b = [0u8; 2];
            sys::pread_exact(d.fd(), &mut b, off)
                .map_err(|e| backend(self.bdf, op, format!("config read: {e}")))?;
            let cur = u16::from_le_bytes(b);
            if cur == 0xffff {
                return Err(Error::DeviceGone {
                    function: self.name.clone(),
                });
            }
            let new = f(cur);
            if new != cur {
                sys::pwrite_all(d.fd(), &new.to_le_bytes(), off)
                    .map_err(|e| backend(self.bdf, op, format!("config write: {e}")))?;
            }
            Ok(())
        })
    }
}

impl Drop for VfioFunction {
    fn drop(&mut self) {
        self.release();
    }
}

impl PciFunction for VfioFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn bar_len(&self) -> Option<usize> {
        Some(self.bar.len())
    }

    #[inline]
    fn read32(&self, offset: usize) -> u32 {
        self.bar.read32(offset)
    }

    #[inline]
    fn write32(&self, offset: usize, value: u32) {
        self.bar.write32(offset, value)
    }

    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.mapper.clone()
    }

    fn reset_function(&self) -> Result<(), Error> {
        if !self.reset_supported {
            return Err(backend(
                self.bdf,
                "function reset",
                "no function reset: the kernel offers no reset method (FLR, PM or bus reset) for \
                 this function; use a controller reset (CC.EN) instead"
                    .into(),
            ));
        }
        self.with_device(|d| {
            sys::device_reset(d.fd())
                .map_err(|e| backend(self.bdf, "function reset", e.to_string()))
        })
    }

    fn set_bus_master(&self, enable: bool) -> Result<(), Error> {
        self.update_command(
            |c| {
                if enable {
                    c | PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY
                } else {
                    c & !PCI_COMMAND_MASTER
                }
            },
            if enable {
                "enable bus mastering"
            } else {
                "disable bus mastering"
            },
        )
    }

    fn release(&self) {
        VfioFunction::release(self);
    }

    fn removal_requested(&self) -> bool {
        if self.removal.load(Ordering::Acquire) {
            return true;
        }
        if let Some(efd) = &self.req {
            match efd.try_read() {
                Ok(Some(_)) => {
                    log::warn!(
                        "{}: the platform asks for the device back (device request)",
                        self.name
                    );
                    self.removal.store(true, Ordering::Release);
                    return true;
                }
                Ok(None) => {}
                Err(e) => log::error!("{}: reading the device-request eventfd: {e}", self.name),
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(e: Error) -> String {
        match e {
            Error::Backend { detail, .. } => detail,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn open_refuses_bad_and_duplicate_addresses() {
        let e = VfioSystem::open(&["0000:01:00"]).unwrap_err();
        assert!(detail(e).contains("bad PCI address"));
        let opts = VfioOptions {
            paths: SysPaths {
                sys: "/nonexistent-vfnvme/sys".into(),
                dev_vfio: "/nonexistent-vfnvme/dev".into(),
            },
            ..Default::default()
        };
        let e = VfioSystem::open_with(&["01:00.0", "trtype:PCIe traddr:0000:01:00.0"], &opts)
            .unwrap_err();
        assert!(detail(e).contains("twice"));
        let e = VfioSystem::open_with(&["01:00.0"], &opts).unwrap_err();
        assert!(detail(e).contains("no PCI function 0000:01:00.0"));
        assert!(VfioSystem::open_with::<&str>(&[], &opts)
            .unwrap()
            .is_empty());
    }
}
