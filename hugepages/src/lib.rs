//! DMA memory for vfnvme.
//!
//! This crate owns the memory that an NVMe controller reads and writes:
//!
//! * [`region`]: pinned, populated memory regions — 2 MiB hugetlb pages when the machine has them
//!   reserved, or plain 4 KiB pages (valid only when an IOMMU translates, since the physical pages
//!   behind them are not contiguous).
//! * [`iova`]: I/O virtual addresses and DMA domains. A region can be mapped into several domains
//!   (one per IOMMU container, or one per simulated controller); VA→IOVA and IOVA→VA are arithmetic.
//! * [`DmaMapper`]: what a bus backend (VFIO, the software controller) implements to map regions.
//! * [`pool`]: `DmaBuf` allocation with alignment, with a per-core cache that takes no lock.
//! * [`pagemap`]: physical addresses from `/proc/self/pagemap`, for VFIO's no-IOMMU mode.
//! * [`sysfs`]: the hugepage reserve per NUMA node and hugetlbfs mounts, for the setup tool.
//!
//! Memory that a device may write is never reachable through a Rust reference, and every access
//! to it is atomic (relaxed words and bytes for bulk copies), so that threads sharing a region
//! never race in Rust's sense.
//!
//! It does not own the IOMMU itself (that is the bus backend in `vfnvme::pci`).
#![warn(missing_docs)]
#![expect(unsafe_code)]
// UNSAFETY: this crate maps memory with mmap and reads and writes memory shared with devices
// through raw pointers; every block documents the invariant it relies on.

#[cfg(target_endian = "big")]
compile_error!("vfnvme supports little-endian targets only");

pub mod iova;
pub mod pagemap;
pub mod pool;
pub mod region;
pub mod sysfs;

pub use iova::{DomainId, Iova, MAX_DOMAINS};
pub use pool::{DmaBuf, DmaCache, DmaPool};
pub use region::{DmaRegion, PageKind, PagePolicy};

/// Errors from DMA memory management.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Hugepages were required but the kernel could not supply them.
    #[error(
        "hugepages required but unavailable: needed {needed_pages} x 2 MiB, {free_pages} free \
         (reserve more with `vfnvme-setup hugepages N` or `echo N > /proc/sys/vm/nr_hugepages`)"
    )]
    HugepagesUnavailable {
        /// Pages the allocation needed.
        needed_pages: usize,
        /// Free 2 MiB pages the kernel reported at the time.
        free_pages: u64,
    },
    /// mmap of a DMA region failed.
    #[error("mmap of {len} bytes ({kind}) failed")]
    Mmap {
        /// Bytes requested.
        len: usize,
        /// Page kind requested.
        kind: PageKind,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A DMA mapping into a domain failed.
    #[error("mapping {len} bytes at va {va:#x} into DMA domain {domain} failed: {detail}")]
    Map {
        /// The domain.
        domain: DomainId,
        /// Region start.
        va: usize,
        /// Region length.
        len: usize,
        /// What the backend reported.
        detail: String,
    },
    /// The domain table of a region is full.
    #[error("too many DMA domains (at most {MAX_DOMAINS})")]
    TooManyDomains,
    /// An allocation request that can never be satisfied.
    #[error("invalid DMA allocation: {len} bytes aligned to {align}")]
    BadAllocation {
        /// Requested length.
        len: usize,
        /// Requested alignment.
        align: usize,
    },
    /// Reading or writing a procfs/sysfs file failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Implemented by a bus backend that can make memory reachable by a device: VFIO (one domain per
/// container) or the software controller (one domain per simulated controller).
pub trait DmaMapper: Send + Sync {
    /// The domain this mapper maps into. Two mappers with the same domain share one IOVA space.
    fn domain(&self) -> DomainId;

    /// Makes `len` bytes at `va` reachable by the device and returns the IOVA of the first byte.
    /// The backend picks the IOVA (IOVA = VA when its ranges allow it). `region` gives safe access
    /// to the bytes for a backend that must touch them (the software controller).
    ///
    /// # Errors
    /// Whatever the backend refuses, as [`Error::Map`].
    fn map(&self, region: &DmaRegion) -> Result<Iova>;

    /// Removes a mapping made by [`DmaMapper::map`].
    ///
    /// # Errors
    /// Whatever the backend refuses, as [`Error::Map`].
    fn unmap(&self, region: &DmaRegion, iova: Iova) -> Result<()>;
}
