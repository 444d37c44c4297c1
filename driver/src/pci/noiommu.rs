//! VFIO's unsafe no-IOMMU mode: groups are `/dev/vfio/noiommu-N`, the container's IOMMU type is
//! `VFIO_NOIOMMU_IOMMU` (8), there are no DMA map ioctls, and the device sees physical
//! addresses. `vfio-ioctls` only does type1, so this is a thin layer over [`super::sys`].
//!
//! DMA memory must be 2 MiB hugepages: each is physically contiguous, so a 2 MiB region has one
//! physical address range; anything larger is not contiguous and is refused.
//!
//! The device can DMA anywhere in memory. Opening a no-IOMMU system prints a warning once.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, Once};

use vfio_bindings::bindings::vfio::{
    VFIO_API_VERSION, VFIO_GROUP_FLAGS_VIABLE, VFIO_NOIOMMU_IOMMU,
};
use vfnvme_hugepages::region::{PageKind, HUGE_PAGE_SIZE};
use vfnvme_hugepages::{DmaMapper, DmaRegion, DomainId, Iova};

use super::sys;

static WARN: Once = Once::new();

/// Warns, once per process, that no-IOMMU mode gives devices unrestricted DMA: through the
/// application's logger when it shows warnings, else on stderr, so that it is never lost.
pub fn warn_once() {
    WARN.call_once(|| {
        let msg = "vfnvme: VFIO no-IOMMU mode: the NVMe controllers can DMA to ANY physical \
                   memory of this machine (no IOMMU protection); use it only on test machines";
        if log::log_enabled!(log::Level::Warn) {
            log::warn!("{msg}");
        } else {
            eprintln!("WARNING: {msg}");
        }
    });
}

/// Why a no-IOMMU group could not be added.
#[derive(Debug)]
pub enum AddGroupError {
    /// Opening the node failed.
    Open(io::Error),
    /// The group is not viable.
    NotViable,
    /// An ioctl failed.
    Ioctl(&'static str, io::Error),
}

/// A no-IOMMU container and the groups attached to it.
#[derive(Debug)]
pub struct NoIommuContainer {
    container: File,
    /// (group id, group fd); closed after every device (devices hold an `Arc` of the container).
    groups: Mutex<Vec<(u32, Arc<OwnedFd>)>>,
}

impl NoIommuContainer {
    /// Opens `/dev/vfio/vfio` under `dev_vfio` and checks the API version and no-IOMMU support.
    ///
    /// # Errors
    /// The open error, or `Unsupported` when the kernel's vfio lacks no-IOMMU support.
    pub fn open(dev_vfio: &Path) -> io::Result<NoIommuContainer> {
        let container = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev_vfio.join("vfio"))?;
        let v = sys::api_version(container.as_fd())?;
        if v != VFIO_API_VERSION as i32 {
            return Err(io::Error::other(format!(
                "VFIO API version {v}, want {VFIO_API_VERSION}"
            )));
        }
        if !sys::check_extension(container.as_fd(), VFIO_NOIOMMU_IOMMU)? {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel's vfio has no no-IOMMU support (CONFIG_VFIO_NOIOMMU off, or \
                 enable_unsafe_noiommu_mode=0)",
            ));
        }
        Ok(NoIommuContainer {
            container,
            groups: Mutex::new(Vec::new()),
        })
    }

    /// Attaches group `id` (node `node`) if not yet attached; sets the IOMMU type after the first.
    ///
    /// # Errors
    /// [`AddGroupError`].
    pub fn add_group(&self, id: u32, node: &Path) -> Result<Arc<OwnedFd>, AddGroupError> {
        let mut groups = self.groups.lock().unwrap();
        if let Some((_, fd)) = groups.iter().find(|(g, _)| *g == id) {
            return Ok(fd.clone());
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(node)
            .map_err(AddGroupError::Open)?;
        let fd: OwnedFd = f.into();
        let st = sys::group_status(fd.as_fd())
            .map_err(|e| AddGroupError::Ioctl("VFIO_GROUP_GET_STATUS", e))?;
        if st & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(AddGroupError::NotViable);
        }
        sys::group_set_container(fd.as_fd(), self.container.as_fd())
            .map_err(|e| AddGroupError::Ioctl("VFIO_GROUP_SET_CONTAINER", e))?;
        if groups.is_empty() {
            sys::set_iommu(self.container.as_fd(), VFIO_NOIOMMU_IOMMU)
                .map_err(|e| AddGroupError::Ioctl("VFIO_SET_IOMMU(NOIOMMU)", e))?;
        }
        let fd = Arc::new(fd);
        groups.push((id, fd.clone()));
        Ok(fd)
    }
}

/// A device opened through a no-IOMMU group. Keeps its group and container open.
#[derive(Debug)]
pub struct NoIommuDevice {
    fd: OwnedFd,
    _group: Arc<OwnedFd>,
    _container: Arc<NoIommuContainer>,
}

impl NoIommuDevice {
    /// Opens device `name` (its PCI address) in `group`.
    ///
    /// # Errors
    /// VFIO_GROUP_GET_DEVICE_FD's errno.
    pub fn open(
        container: Arc<NoIommuContainer>,
        group: Arc<OwnedFd>,
        name: &str,
    ) -> io::Result<NoIommuDevice> {
        let fd = sys::group_device_fd(group.as_fd(), name)?;
        Ok(NoIommuDevice {
            fd,
            _group: group,
            _container: container,
        })
    }

    /// The device fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The mapper of no-IOMMU mode: IOVA = physical address, 2 MiB hugepage regions only.
#[derive(Debug)]
pub struct NoIommuMapper {
    domain: DomainId,
}

impl NoIommuMapper {
    /// Takes a domain id (one per no-IOMMU system; all devices see physical addresses).
    ///
    /// # Errors
    /// [`vfnvme_hugepages::Error::TooManyDomains`].
    pub fn new() -> Result<NoIommuMapper, vfnvme_hugepages::Error> {
        Ok(NoIommuMapper {
            domain: DomainId::allocate().ok_or(vfnvme_hugepages::Error::TooManyDomains)?,
        })
    }
}

impl Drop for NoIommuMapper {
    fn drop(&mut self) {
        self.domain.release();
    }
}

/// Checks that a region can be given to a device without an IOMMU.
///
/// # Errors
/// A message naming the fix.
pub fn check_region(kind: PageKind, len: usize) -> Result<(), String> {
    if kind != PageKind::Huge2M {
        return Err(format!(
            "no-IOMMU mode needs 2 MiB hugepage regions, got {kind} (allocate with \
             PagePolicy::RequireHuge and reserve hugepages: `vfnvme-setup hugepages N`)"
        ));
    }
    if len != HUGE_PAGE_SIZE {
        return Err(format!(
            "no-IOMMU mode maps one 2 MiB hugepage per region (only a single hugepage is \
             physically contiguous), got a {len}-byte region"
        ));
    }
    Ok(())
}

impl DmaMapper for NoIommuMapper {
    fn domain(&self) -> DomainId {
        self.domain
    }

    fn map(&self, region: &DmaRegion) -> vfnvme_hugepages::Result<Iova> {
        let err = |detail: String| vfnvme_hugepages::Error::Map {
            domain: self.domain,
            va: region.va(),
            len: region.len(),
            detail,
        };
        check_region(region.kind(), region.len()).map_err(err)?;
        let pa = vfnvme_hugepages::pagemap::virt_to_phys(region.va())
            .map_err(|e| err(format!("physical address from /proc/self/pagemap: {e}")))?;
        if pa % HUGE_PAGE_SIZE as u64 != 0 {
            return Err(err(format!(
                "hugepage at unaligned physical address {pa:#x}"
            )));
        }
        Ok(Iova(pa))
    }

    fn unmap(&self, _region: &DmaRegion, _iova: Iova) -> vfnvme_hugepages::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_hugepages_are_accepted() {
        assert!(check_region(PageKind::Huge2M, HUGE_PAGE_SIZE).is_ok());
        let e = check_region(PageKind::Small4K, 4096).unwrap_err();
        assert!(e.contains("RequireHuge"), "{e}");
        let e = check_region(PageKind::Huge2M, 2 * HUGE_PAGE_SIZE).unwrap_err();
        assert!(e.contains("physically contiguous"), "{e}");
    }

    #[test]
    fn small_regions_are_refused_by_the_mapper() {
        let m = NoIommuMapper::new().unwrap();
        let r = DmaRegion::allocate(4096, vfnvme_hugepages::PagePolicy::Small).unwrap();
        let e = m.map(&r).unwrap_err().to_string();
        assert!(e.contains("2 MiB hugepage"), "{e}");
    }
}
