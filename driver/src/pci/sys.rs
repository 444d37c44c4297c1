//! Raw VFIO ioctls, file-descriptor I/O and eventfds: the system calls the VFIO backend makes
//! that `vfio-ioctls` does not wrap, or wraps in a way that loses the error.
//!
//! * `vfio-ioctls` has no no-IOMMU support, so the no-IOMMU container, group and device calls are
//!   here ([`set_iommu`], [`group_status`], [`group_set_container`], [`group_device_fd`]).
//! * `VFIO_IOMMU_GET_INFO` with its capability chain (the valid IOVA ranges) is not wrapped at all
//!   ([`iommu_info`]).
//! * `VfioDevice::reset` and `enable_irq` only log or drop the errno: [`device_reset`] and
//!   [`set_irq_eventfd`] return it.
//! * `vfio_dma_map` is an `unsafe fn`; [`dma_map_region`] is its safe form for a [`DmaRegion`],
//!   whose bytes are never reachable through a Rust reference.
//!
//! Request numbers are `_IO(';', 100 + n)` (`include/uapi/linux/vfio.h`).
//!
//! The `fake` module (tests only) stands in for a type1 IOMMU container.
#![expect(unsafe_code)]
// UNSAFETY: ioctl(2), pread(2)/pwrite(2) and eventfd(2) on file descriptors this module owns or
// borrows, with argument structs sized as the kernel expects; every block says why it is sound.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_iommu_type1_info, vfio_irq_info, vfio_irq_set,
    vfio_region_info, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
};
use vfnvme_hugepages::DmaRegion;

/// `_IO(';', 100 + n)`.
const fn vfio_io(n: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + n)
}

/// VFIO_GET_API_VERSION.
pub const VFIO_GET_API_VERSION: u64 = vfio_io(0);
/// VFIO_CHECK_EXTENSION.
pub const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
/// VFIO_SET_IOMMU.
pub const VFIO_SET_IOMMU: u64 = vfio_io(2);
/// VFIO_GROUP_GET_STATUS.
pub const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
/// VFIO_GROUP_SET_CONTAINER.
pub const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
/// VFIO_GROUP_GET_DEVICE_FD.
pub const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
/// VFIO_DEVICE_GET_INFO.
pub const VFIO_DEVICE_GET_INFO: u64 = vfio_io(7);
/// VFIO_DEVICE_GET_REGION_INFO.
pub const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
/// VFIO_DEVICE_GET_IRQ_INFO.
pub const VFIO_DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
/// VFIO_DEVICE_SET_IRQS.
pub const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
/// VFIO_DEVICE_RESET.
pub const VFIO_DEVICE_RESET: u64 = vfio_io(11);
/// VFIO_IOMMU_GET_INFO.
pub const VFIO_IOMMU_GET_INFO: u64 = vfio_io(12);

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `ioctl(fd, req, arg)` with an integer argument.
fn ioctl_val(fd: BorrowedFd<'_>, req: u64, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: these requests take their argument by value (no pointer); `fd` is open for the
    // duration of the call (borrowed).
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) })
}

/// `ioctl(fd, req, &mut *arg)` for a request whose argument is a `T` the kernel reads and writes.
///
/// # Safety
/// `req` must be a request whose argument is a pointer to a `T` (whose `argsz`, if any, is set
/// to at most `size_of::<T>()`).
unsafe fn ioctl_ptr<T>(fd: BorrowedFd<'_>, req: u64, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: the caller guarantees `req` takes a `*mut T`; `arg` is a live, exclusive `T`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) })
}

/// VFIO_GET_API_VERSION on a container.
///
/// # Errors
/// The ioctl's errno.
pub fn api_version(container: BorrowedFd<'_>) -> io::Result<i32> {
    ioctl_val(container, VFIO_GET_API_VERSION, 0)
}

/// VFIO_CHECK_EXTENSION: whether the container supports IOMMU type `ty`.
///
/// # Errors
/// The ioctl's errno.
pub fn check_extension(container: BorrowedFd<'_>, ty: u32) -> io::Result<bool> {
    Ok(ioctl_val(container, VFIO_CHECK_EXTENSION, ty as libc::c_ulong)? > 0)
}

/// VFIO_SET_IOMMU (type1v2, or `VFIO_NOIOMMU_IOMMU` = 8).
///
/// # Errors
/// The ioctl's errno.
pub fn set_iommu(container: BorrowedFd<'_>, ty: u32) -> io::Result<()> {
    ioctl_val(container, VFIO_SET_IOMMU, ty as libc::c_ulong).map(drop)
}

/// VFIO_GROUP_GET_STATUS: the group's flags (`VFIO_GROUP_FLAGS_VIABLE`, `..._CONTAINER_SET`).
///
/// # Errors
/// The ioctl's errno.
pub fn group_status(group: BorrowedFd<'_>) -> io::Result<u32> {
    let mut st = vfio_group_status {
        argsz: size_of::<vfio_group_status>() as u32,
        flags: 0,
    };
    // SAFETY: VFIO_GROUP_GET_STATUS takes a `struct vfio_group_status *`, argsz set.
    unsafe { ioctl_ptr(group, VFIO_GROUP_GET_STATUS, &mut st)? };
    Ok(st.flags)
}

/// VFIO_GROUP_SET_CONTAINER.
///
/// # Errors
/// The ioctl's errno.
pub fn group_set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> io::Result<()> {
    let mut fd: libc::c_int = container.as_raw_fd();
    // SAFETY: VFIO_GROUP_SET_CONTAINER takes an `int *` holding the container fd.
    unsafe { ioctl_ptr(group, VFIO_GROUP_SET_CONTAINER, &mut fd)? };
    Ok(())
}

/// VFIO_GROUP_GET_DEVICE_FD: opens the device called `name` (its PCI address) in the group.
///
/// # Errors
/// The ioctl's errno; `InvalidInput` for a name with a NUL byte.
pub fn group_device_fd(group: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: VFIO_GROUP_GET_DEVICE_FD takes a NUL-terminated string, which `name` is and
    // outlives the call.
    let fd = check(unsafe {
        libc::ioctl(
            group.as_raw_fd(),
            VFIO_GROUP_GET_DEVICE_FD as _,
            name.as_ptr(),
        )
    })?;
    // SAFETY: on success the ioctl returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// VFIO_DEVICE_GET_INFO.
///
/// # Errors
/// The ioctl's errno.
pub fn device_info(device: BorrowedFd<'_>) -> io::Result<vfio_device_info> {
    let mut info = vfio_device_info {
        argsz: size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_INFO takes a `struct vfio_device_info *`, argsz set.
    unsafe { ioctl_ptr(device, VFIO_DEVICE_GET_INFO, &mut info)? };
    Ok(info)
}

/// VFIO_DEVICE_GET_REGION_INFO (without capabilities).
///
/// # Errors
/// The ioctl's errno.
pub fn region_info(device: BorrowedFd<'_>, index: u32) -> io::Result<vfio_region_info> {
    let mut info = vfio_region_info {
        argsz: size_of::<vfio_region_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_REGION_INFO takes a `struct vfio_region_info *`; with argsz the
    // size of the struct the kernel writes no capability chain past it.
    unsafe { ioctl_ptr(device, VFIO_DEVICE_GET_REGION_INFO, &mut info)? };
    Ok(info)
}

/// VFIO_DEVICE_GET_IRQ_INFO: how many interrupts of `index` the device has.
///
/// # Errors
/// The ioctl's errno.
pub fn irq_count(device: BorrowedFd<'_>, index: u32) -> io::Result<u32> {
    let mut info = vfio_irq_info {
        argsz: size_of::<vfio_irq_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_IRQ_INFO takes a `struct vfio_irq_info *`, argsz set.
    unsafe { ioctl_ptr(device, VFIO_DEVICE_GET_IRQ_INFO, &mut info)? };
    Ok(info.count)
}

/// `struct vfio_irq_set` followed by one `int` (an eventfd, or nothing when disabling).
#[repr(C)]
#[derive(Default)]
struct IrqSetOne {
    hdr: vfio_irq_set,
    fd: i32,
}

/// VFIO_DEVICE_SET_IRQS for vector 0 of `index`: trigger `eventfd`, or with `None` tear the
/// index down.
///
/// # Errors
/// The ioctl's errno (which `vfio-ioctls`' `enable_irq` drops).
pub fn set_irq_eventfd(
    device: BorrowedFd<'_>,
    index: u32,
    eventfd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut set = IrqSetOne::default();
    set.hdr.index = index;
    set.hdr.start = 0;
    match eventfd {
        Some(efd) => {
            set.hdr.argsz = size_of::<IrqSetOne>() as u32;
            set.hdr.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
            set.hdr.count = 1;
            set.fd = efd.as_raw_fd();
        }
        None => {
            set.hdr.argsz = size_of::<vfio_irq_set>() as u32;
            set.hdr.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
            set.hdr.count = 0;
        }
    }
    // SAFETY: VFIO_DEVICE_SET_IRQS takes a `struct vfio_irq_set *` followed by `count` ints;
    // `IrqSetOne` is that header plus one int and argsz says how much of it the kernel reads.
    unsafe { ioctl_ptr(device, VFIO_DEVICE_SET_IRQS, &mut set)? };
    Ok(())
}

/// VFIO_DEVICE_RESET (function-level or bus reset, whichever the kernel offers).
///
/// # Errors
/// The ioctl's errno (which `vfio-ioctls`' `reset` only logs).
pub fn device_reset(device: BorrowedFd<'_>) -> io::Result<()> {
    ioctl_val(device, VFIO_DEVICE_RESET, 0).map(drop)
}

/// VFIO_IOMMU_GET_INFO on a type1 container, returned as the raw bytes of
/// `struct vfio_iommu_type1_info` plus its capability chain (parsed by
/// [`crate::pci::iommu::parse_iommu_info`]).
///
/// # Errors
/// The ioctl's errno.
pub fn iommu_info(container: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    // First call with the bare struct: the kernel says how big the chain is in argsz.
    let mut info = vfio_iommu_type1_info {
        argsz: size_of::<vfio_iommu_type1_info>() as u32,
        ..Default::default()
    };
    // SAFETY: VFIO_IOMMU_GET_INFO takes a `struct vfio_iommu_type1_info *`; with argsz the size
    // of the struct the kernel writes nothing past it.
    unsafe { ioctl_ptr(container, VFIO_IOMMU_GET_INFO, &mut info)? };
    let want = (info.argsz as usize).max(size_of::<vfio_iommu_type1_info>());
    // A u64 buffer keeps the struct's 8-byte alignment.
    let mut buf = vec![0u64; want.div_ceil(8)];
    let hdr = vfio_iommu_type1_info {
        argsz: want as u32,
        ..Default::default()
    };
    // SAFETY: `buf` is at least `size_of::<vfio_iommu_type1_info>()` bytes, 8-aligned, and the
    // struct is plain data.
    unsafe { std::ptr::write(buf.as_mut_ptr().cast::<vfio_iommu_type1_info>(), hdr) };
    // SAFETY: the request takes a pointer to a buffer of `argsz` bytes starting with the struct;
    // `buf` is `want` bytes long (rounded up) and exclusively borrowed for the call.
    check(unsafe {
        libc::ioctl(
            container.as_raw_fd(),
            VFIO_IOMMU_GET_INFO as _,
            buf.as_mut_ptr(),
        )
    })?;
    let bytes: Vec<u8> = buf
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .take(want)
        .collect();
    Ok(bytes)
}

/// Maps `region` at `iova` into a type1 container for device reads and writes.
///
/// # Errors
/// What `vfio-ioctls` reports (EINVAL for an IOVA outside the IOMMU's ranges, ENOMEM at the
/// locked-memory limit, EEXIST for an overlap).
pub fn dma_map_region(
    container: &vfio_ioctls::VfioContainer,
    iova: u64,
    region: &DmaRegion,
) -> Result<(), vfio_ioctls::VfioError> {
    // SAFETY: `vfio_dma_map` requires that no Rust reference to the mapped bytes exist while the
    // mapping lives. `DmaRegion` never hands out references into its memory (only raw-pointer
    // copies, volatile and atomic accesses: see `vfnvme_hugepages::region`), and the range is
    // exactly the region's own mmap.
    unsafe { container.vfio_dma_map(iova, region.len(), region.va() as *mut u8) }
}

/// `pread` of exactly `buf.len()` bytes at `offset` of a device fd (a VFIO region).
///
/// # Errors
/// The OS error, or `UnexpectedEof` on a short read.
pub fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<()> {
    // SAFETY: `buf` is a valid, exclusive buffer of `buf.len()` bytes for the duration of the call.
    let n = unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
    }
    Ok(())
}

/// `pwrite` of exactly `buf.len()` bytes at `offset` of a device fd.
///
/// # Errors
/// The OS error, or `WriteZero` on a short write.
pub fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<()> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    let n = unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
    }
    Ok(())
}

/// The effective user id (no-IOMMU mode is for root only).
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A non-blocking eventfd: what VFIO signals the device-request IRQ on.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd with count 0, non-blocking and close-on-exec.
    ///
    /// # Errors
    /// The OS error.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd has no memory arguments.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: a new descriptor owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Reads and clears the counter: `Some(count)` if it was signalled, `None` if not.
    ///
    /// # Errors
    /// The OS error other than EAGAIN.
    pub fn try_read(&self) -> io::Result<Option<u64>> {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into `v`, a live u64.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(v))
    }

    /// Adds `v` to the counter (tests, and waking a waiter).
    ///
    /// # Errors
    /// The OS error.
    pub fn write(&self, v: u64) -> io::Result<()> {
        // SAFETY: writes the 8 bytes of `v`, a live u64.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&v as *const u64).cast(), 8) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The descriptor, for VFIO_DEVICE_SET_IRQS.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }
}

/// The device fd of a `vfio-ioctls` device, borrowed for as long as the device is.
pub fn vfio_device_fd(device: &vfio_ioctls::VfioDevice) -> BorrowedFd<'_> {
    // SAFETY: `VfioDevice` owns its fd and closes it only in its Drop, which cannot run while
    // `device` is borrowed for the returned lifetime.
    unsafe { BorrowedFd::borrow_raw(device.as_raw_fd()) }
}

/// The fd of a `vfio-ioctls` container, borrowed for as long as the container is.
pub fn container_fd(container: &vfio_ioctls::VfioContainer) -> BorrowedFd<'_> {
    // SAFETY: `VfioContainer` owns its fd and closes it only in its Drop, which cannot run while
    // `container` is borrowed for the returned lifetime.
    unsafe { BorrowedFd::borrow_raw(container.as_raw_fd()) }
}

/// What a type1 DMA mapper needs from its container. The real container is
/// [`vfio_ioctls::VfioContainer`]; tests use `fake::FakeIommu`.
pub trait Type1Ops: Send + Sync {
    /// Maps `region` at `iova`.
    ///
    /// # Errors
    /// A description of what the kernel refused.
    fn map(&self, iova: u64, region: &DmaRegion) -> Result<(), String>;
    /// Unmaps `len` bytes at `iova`.
    ///
    /// # Errors
    /// A description of what the kernel refused.
    fn unmap(&self, iova: u64, len: usize) -> Result<(), String>;
}

impl Type1Ops for vfio_ioctls::VfioContainer {
    fn map(&self, iova: u64, region: &DmaRegion) -> Result<(), String> {
        dma_map_region(self, iova, region).map_err(|e| e.to_string())
    }
    fn unmap(&self, iova: u64, len: usize) -> Result<(), String> {
        self.vfio_dma_unmap(iova, len).map_err(|e| e.to_string())
    }
}

/// Test doubles for the system calls.
#[cfg(test)]
pub mod fake {
    use std::sync::Mutex;

    use super::*;

    /// A type1 container that records mappings and refuses IOVAs outside its ranges or
    /// overlapping an existing mapping, as the kernel does.
    #[derive(Default)]
    pub struct FakeIommu {
        /// Valid IOVA ranges, inclusive ends.
        pub ranges: Vec<(u64, u64)>,
        /// Live mappings (iova, len).
        pub maps: Mutex<Vec<(u64, usize)>>,
    }

    impl Type1Ops for FakeIommu {
        fn map(&self, iova: u64, region: &DmaRegion) -> Result<(), String> {
            let end = iova + region.len() as u64 - 1;
            if !self.ranges.iter().any(|&(s, e)| s <= iova && end <= e) {
                return Err(format!("EINVAL: iova {iova:#x} outside the ranges"));
            }
            let mut m = self.maps.lock().unwrap();
            if m.iter().any(|&(i, l)| iova < i + l as u64 && i <= end) {
                return Err("EEXIST".into());
            }
            m.push((iova, region.len()));
            Ok(())
        }
        fn unmap(&self, iova: u64, len: usize) -> Result<(), String> {
            let mut m = self.maps.lock().unwrap();
            let pos = m.iter().position(|&x| x == (iova, len)).ok_or("ENOENT")?;
            m.remove(pos);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_linux() {
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
        assert_eq!(VFIO_IOMMU_GET_INFO, 0x3b70);
        assert_eq!(size_of::<IrqSetOne>(), 24);
    }

    #[test]
    fn eventfd_latches_and_clears() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.try_read().unwrap(), None);
        e.write(1).unwrap();
        e.write(1).unwrap();
        assert_eq!(e.try_read().unwrap(), Some(2));
        assert_eq!(e.try_read().unwrap(), None);
    }
}

/// Reads the CPU's time-stamp counter (x86_64), for [`crate::clock`].
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64 (every x86_64 CPU has it; it reads a counter
    // and touches no memory). The intrinsic is `unsafe` only for historical reasons.
    unsafe { core::arch::x86_64::_rdtsc() }
}
