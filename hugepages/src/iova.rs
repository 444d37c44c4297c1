//! I/O virtual addresses and DMA domains.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most DMA domains that may exist at once in a process. Regions keep a fixed table with one slot
/// per domain, so translation is one array load on the I/O path.
pub const MAX_DOMAINS: usize = 64;

/// An address as a device sees it: an I/O virtual address inside one DMA domain (or a physical
/// address in no-IOMMU mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Iova(pub u64);

impl Iova {
    /// The address `bytes` further on.
    #[inline]
    pub fn offset(self, bytes: u64) -> Iova {
        Iova(self.0 + bytes)
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// One IOVA space: a VFIO container, or one simulated controller. Small integers, handed out by
/// [`DomainId::allocate`] and given back by [`DomainId::release`] when the owner goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainId(u8);

/// Bit n set: domain n is in use.
static DOMAINS_IN_USE: AtomicU64 = AtomicU64::new(0);

impl DomainId {
    /// Takes a free domain id, or `None` when [`MAX_DOMAINS`] are in use.
    pub fn allocate() -> Option<DomainId> {
        let mut cur = DOMAINS_IN_USE.load(Ordering::Relaxed);
        loop {
            let free = (!cur).trailing_zeros() as usize;
            if free >= MAX_DOMAINS {
                return None;
            }
            match DOMAINS_IN_USE.compare_exchange_weak(
                cur,
                cur | (1 << free),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(DomainId(free as u8)),
                Err(now) => cur = now,
            }
        }
    }

    /// Gives the id back. The owner must have unmapped every region it mapped: a region still
    /// holding a translation for this slot would hand a stale IOVA to the next owner, which that
    /// owner's IOMMU (or the software controller) then refuses.
    pub fn release(self) {
        DOMAINS_IN_USE.fetch_and(!(1u64 << self.0), Ordering::AcqRel);
    }

    /// The slot index of this domain in a region's table.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dom{}", self.0)
    }
}
