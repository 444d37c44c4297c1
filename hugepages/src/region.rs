//! Pinned DMA regions and the only code that touches device-shared memory.
//!
//! A [`DmaRegion`] is one mmap of populated memory. Its bytes are never reachable through a Rust
//! reference: reads and writes are raw-pointer copies, volatile word accesses or atomics, always
//! bounds-checked. The region also keeps a fixed table of its IOVA in each DMA domain it is mapped
//! into, so VA→IOVA is one load and an add.

use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::iova::{DomainId, Iova, MAX_DOMAINS};
use crate::{Error, Result};

/// Size of a hugetlb page this crate uses.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;
/// Size of a small page.
pub const SMALL_PAGE_SIZE: usize = 4096;

/// Which pages back a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// 2 MiB hugetlb pages: physically contiguous per page, usable without an IOMMU.
    Huge2M,
    /// 4 KiB pages: only valid for DMA when an IOMMU translates.
    Small4K,
}

impl fmt::Display for PageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageKind::Huge2M => "2 MiB hugepages",
            PageKind::Small4K => "4 KiB pages",
        })
    }
}

/// What pages a caller accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PagePolicy {
    /// Hugepages or an error (no-IOMMU mode needs them).
    RequireHuge,
    /// Hugepages when reserved, otherwise 4 KiB pages.
    #[default]
    PreferHuge,
    /// 4 KiB pages only.
    Small,
}

/// Slot value meaning "not mapped in this domain".
const UNMAPPED: u64 = u64::MAX;

struct Inner {
    va: *mut u8,
    len: usize,
    kind: PageKind,
    locked: bool,
    iova: [AtomicU64; MAX_DOMAINS],
}

// SAFETY: `va` points to an mmap owned by this struct for its whole life; all access to the bytes
// goes through bounds-checked raw-pointer copies, volatile accesses and atomics, which are valid
// from any thread (the bytes are plain memory a device may also write).
unsafe impl Send for Inner {}
// SAFETY: as above; no method hands out a reference into the mapping.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: `va`/`len` are exactly the mapping made in `DmaRegion::allocate`, unmapped once.
        unsafe {
            libc::munmap(self.va.cast(), self.len);
        }
    }
}

/// A pinned, populated memory region shared with devices. Cloning is cheap (reference count).
#[derive(Clone)]
pub struct DmaRegion(Arc<Inner>);

impl fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaRegion")
            .field("va", &format_args!("{:#x}", self.va()))
            .field("len", &self.len())
            .field("kind", &self.kind())
            .finish()
    }
}

impl DmaRegion {
    /// Maps `len` bytes (rounded up to the page size), populated and, where the limit allows,
    /// locked. With [`PagePolicy::PreferHuge`] this tries 2 MiB pages and falls back to 4 KiB.
    ///
    /// # Errors
    /// [`Error::HugepagesUnavailable`] when hugepages are required and not available;
    /// [`Error::Mmap`] when even small pages cannot be mapped.
    pub fn allocate(len: usize, policy: PagePolicy) -> Result<DmaRegion> {
        if len == 0 {
            return Err(Error::BadAllocation { len, align: 1 });
        }
        if policy != PagePolicy::Small {
            let huge_len = len.div_ceil(HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
            match Self::mmap(huge_len, PageKind::Huge2M) {
                Ok(r) => return Ok(r),
                Err(e) if policy == PagePolicy::RequireHuge => {
                    if let Error::Mmap { source, .. } = &e {
                        if source.raw_os_error() != Some(libc::ENOMEM) {
                            return Err(e);
                        }
                    }
                    return Err(Error::HugepagesUnavailable {
                        needed_pages: huge_len / HUGE_PAGE_SIZE,
                        free_pages: crate::sysfs::free_hugepages_total().unwrap_or(0),
                    });
                }
                Err(_) => {}
            }
        }
        Self::mmap(
            len.div_ceil(SMALL_PAGE_SIZE) * SMALL_PAGE_SIZE,
            PageKind::Small4K,
        )
    }

    fn mmap(len: usize, kind: PageKind) -> Result<DmaRegion> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        if kind == PageKind::Huge2M {
            flags |= libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
        }
        // SAFETY: anonymous mapping with no fixed address: it cannot alias existing memory.
        let va = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if va == libc::MAP_FAILED {
            return Err(Error::Mmap {
                len,
                kind,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `va`/`len` is the mapping just made. Failure to lock is tolerated: VFIO pins
        // pages itself when it maps them, and the software controller needs no pinning.
        let locked = unsafe { libc::mlock(va, len) } == 0;
        Ok(DmaRegion(Arc::new(Inner {
            va: va.cast(),
            len,
            kind,
            locked,
            iova: std::array::from_fn(|_| AtomicU64::new(UNMAPPED)),
        })))
    }

    /// Start address in this process.
    #[inline]
    pub fn va(&self) -> usize {
        self.0.va as usize
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// Always false: regions are never empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Which pages back the region.
    pub fn kind(&self) -> PageKind {
        self.0.kind
    }

    /// Whether `mlock` succeeded (it can fail under RLIMIT_MEMLOCK; VFIO pins on map anyway).
    pub fn locked(&self) -> bool {
        self.0.locked
    }

    /// True if both handles name the same region.
    pub fn same(&self, other: &DmaRegion) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Maps the region into `mapper`'s domain and records the IOVA.
    ///
    /// # Errors
    /// The mapper's error.
    pub fn map_into(&self, mapper: &dyn crate::DmaMapper) -> Result<Iova> {
        let iova = mapper.map(self)?;
        self.0.iova[mapper.domain().index()].store(iova.0, Ordering::Release);
        Ok(iova)
    }

    /// Removes the region from `mapper`'s domain (no-op if it was not mapped there).
    ///
    /// # Errors
    /// The mapper's error; the slot is cleared either way.
    pub fn unmap_from(&self, mapper: &dyn crate::DmaMapper) -> Result<()> {
        let old = self.0.iova[mapper.domain().index()].swap(UNMAPPED, Ordering::AcqRel);
        if old == UNMAPPED {
            return Ok(());
        }
        mapper.unmap(self, Iova(old))
    }

    /// IOVA of the region's first byte in `domain`, if mapped there.
    #[inline(always)]
    pub fn iova_base(&self, domain: DomainId) -> Option<Iova> {
        let v = self.0.iova[domain.index()].load(Ordering::Relaxed);
        (v != UNMAPPED).then_some(Iova(v))
    }

    /// IOVA of byte `offset` in `domain`.
    #[inline]
    pub fn iova_at(&self, domain: DomainId, offset: usize) -> Option<Iova> {
        if offset >= self.0.len {
            return None;
        }
        self.iova_base(domain).map(|b| b.offset(offset as u64))
    }

    /// Offset inside the region of `iova` in `domain` (IOVA→VA is `va() + offset`), if it falls
    /// inside the region.
    #[inline]
    pub fn offset_of_iova(&self, domain: DomainId, iova: Iova) -> Option<usize> {
        let base = self.iova_base(domain)?;
        let off = iova.0.checked_sub(base.0)?;
        (off < self.0.len as u64).then_some(off as usize)
    }

    #[inline(always)]
    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.0.len),
            "DMA region access out of bounds: offset {offset} len {len} region {}",
            self.0.len
        );
    }

    #[inline(always)]
    fn check_aligned(&self, offset: usize, len: usize, align: usize) {
        self.check(offset, len);
        assert!(
            offset.is_multiple_of(align),
            "misaligned DMA word access at {offset}"
        );
    }

    /// Copies `dst.len()` bytes from the region at `offset` into `dst`.
    ///
    /// # Panics
    /// If the range is outside the region (a caller bug, never device input).
    #[inline]
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: the range is inside the live mapping (checked above), `dst` is a distinct Rust
        // buffer, and no reference into the mapping is created.
        unsafe { std::ptr::copy_nonoverlapping(self.0.va.add(offset), dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `src` into the region at `offset`.
    ///
    /// # Panics
    /// If the range is outside the region.
    #[inline]
    pub fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.va.add(offset), src.len()) }
    }

    /// Fills `len` bytes at `offset` with `byte`.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check(offset, len);
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_bytes(self.0.va.add(offset), byte, len) }
    }

    /// Copies `len` bytes between two places in regions (either may be this one; ranges may
    /// overlap).
    ///
    /// # Panics
    /// If either range is outside its region.
    pub fn copy_to(&self, offset: usize, dst: &DmaRegion, dst_offset: usize, len: usize) {
        self.check(offset, len);
        dst.check(dst_offset, len);
        // SAFETY: both ranges are inside live mappings; `copy` allows overlap.
        unsafe { std::ptr::copy(self.0.va.add(offset), dst.0.va.add(dst_offset), len) }
    }

    /// Compares `len` bytes at `offset` with `other` at `other_offset`.
    ///
    /// # Panics
    /// If either range is outside its region.
    pub fn equal(&self, offset: usize, other: &DmaRegion, other_offset: usize, len: usize) -> bool {
        self.check(offset, len);
        other.check(other_offset, len);
        let mut a = [0u8; 256];
        let mut b = [0u8; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(256);
            self.read(offset + done, &mut a[..n]);
            other.read(other_offset + done, &mut b[..n]);
            if a[..n] != b[..n] {
                return false;
            }
            done += n;
        }
        true
    }

    #[inline(always)]
    fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        self.check_aligned(offset, 4, 4);
        // SAFETY: in bounds and 4-byte aligned (checked); an AtomicU32 may be shared with other
        // writers, including a device, and lives as long as `self`.
        unsafe { &*(self.0.va.add(offset) as *const AtomicU32) }
    }

    #[inline(always)]
    fn atomic_u16(&self, offset: usize) -> &AtomicU16 {
        self.check_aligned(offset, 2, 2);
        // SAFETY: as in `atomic_u32`, with 2-byte alignment.
        unsafe { &*(self.0.va.add(offset) as *const AtomicU16) }
    }

    #[inline(always)]
    fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        self.check_aligned(offset, 8, 8);
        // SAFETY: as in `atomic_u32`, with 8-byte alignment.
        unsafe { &*(self.0.va.add(offset) as *const AtomicU64) }
    }

    /// Reads a 16-byte entry that a device publishes by writing its last dword last (an NVMe
    /// completion queue entry, whose last dword holds the phase bit): loads the last dword with
    /// Acquire ordering and, only if `ready` accepts it, the other three. One bounds check covers
    /// the four loads. Returns `[dw0, dw1, dw2, dw3]`.
    ///
    /// # Panics
    /// If `offset..offset + 16` is outside the region or `offset` is not 4-byte aligned.
    #[inline(always)]
    pub fn load_entry16(&self, offset: usize, ready: impl FnOnce(u32) -> bool) -> Option<[u32; 4]> {
        self.check_aligned(offset, 16, 4);
        // SAFETY: the 16 bytes at `offset` are inside the live mapping and 4-byte aligned
        // (checked above), so each of the four dwords is a valid AtomicU32 for as long as `self`;
        // they are only accessed atomically, and no plain reference into the mapping is made.
        let dw = |i: usize| unsafe { &*(self.0.va.add(offset + 4 * i) as *const AtomicU32) };
        let dw3 = dw(3).load(Ordering::Acquire);
        if !ready(dw3) {
            return None;
        }
        Some([
            dw(0).load(Ordering::Relaxed),
            dw(1).load(Ordering::Relaxed),
            dw(2).load(Ordering::Relaxed),
            dw3,
        ])
    }

    /// Loads a `u32` with Acquire ordering (a CQE's status dword before the rest of the entry).
    #[inline(always)]
    pub fn load_u32_acquire(&self, offset: usize) -> u32 {
        self.atomic_u32(offset).load(Ordering::Acquire)
    }

    /// Loads a `u32` (relaxed).
    #[inline(always)]
    pub fn load_u32(&self, offset: usize) -> u32 {
        self.atomic_u32(offset).load(Ordering::Relaxed)
    }

    /// Stores a `u32` with Release ordering (publishing a CQE's status dword last).
    #[inline(always)]
    pub fn store_u32_release(&self, offset: usize, v: u32) {
        self.atomic_u32(offset).store(v, Ordering::Release)
    }

    /// Stores a `u32` (relaxed).
    #[inline(always)]
    pub fn store_u32(&self, offset: usize, v: u32) {
        self.atomic_u32(offset).store(v, Ordering::Relaxed)
    }

    /// Loads a `u16` (relaxed).
    #[inline(always)]
    pub fn load_u16(&self, offset: usize) -> u16 {
        self.atomic_u16(offset).load(Ordering::Relaxed)
    }

    /// Loads a `u64` (relaxed).
    #[inline(always)]
    pub fn load_u64(&self, offset: usize) -> u64 {
        self.atomic_u64(offset).load(Ordering::Relaxed)
    }

    /// Stores a `u64` (relaxed).
    #[inline(always)]
    pub fn store_u64(&self, offset: usize, v: u64) {
        self.atomic_u64(offset).store(v, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_region_reads_back_what_was_written() {
        let r = DmaRegion::allocate(10_000, PagePolicy::Small).unwrap();
        assert_eq!(r.kind(), PageKind::Small4K);
        assert_eq!(r.len(), 12288);
        assert_eq!(r.va() % SMALL_PAGE_SIZE, 0);
        r.write(4090, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut b = [0u8; 8];
        r.read(4090, &mut b);
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
        r.store_u32_release(8, 0xdead_beef);
        assert_eq!(r.load_u32_acquire(8), 0xdead_beef);
        assert_eq!(r.load_u16(8), 0xbeef);
        r.store_u64(16, u64::MAX - 1);
        assert_eq!(r.load_u64(16), u64::MAX - 1);
        r.fill(100, 10, 0xaa);
        assert!(r.equal(100, &r, 101, 9));
        assert!(!r.equal(99, &r, 100, 2));
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn out_of_bounds_access_panics_instead_of_touching_memory() {
        let r = DmaRegion::allocate(4096, PagePolicy::Small).unwrap();
        r.write(4095, &[0, 0]);
    }

    #[test]
    fn a_16_byte_entry_is_read_only_when_its_last_dword_says_ready() {
        let r = DmaRegion::allocate(4096, PagePolicy::Small).unwrap();
        for (i, v) in [10u32, 11, 12, 0x0001_0000].iter().enumerate() {
            r.store_u32(32 + 4 * i, *v);
        }
        let phase = |dw3: u32| dw3 >> 16 & 1 == 1;
        assert_eq!(r.load_entry16(32, phase), Some([10, 11, 12, 0x0001_0000]));
        // Not ready: the caller learns nothing, whatever the other dwords hold.
        r.store_u32(44, 0);
        assert_eq!(r.load_entry16(32, phase), None);
        // The last 16 bytes of the region are in bounds.
        assert_eq!(r.load_entry16(4080, |_| true), Some([0, 0, 0, 0]));
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_16_byte_entry_past_the_end_panics() {
        let r = DmaRegion::allocate(4096, PagePolicy::Small).unwrap();
        r.load_entry16(4084, |_| true);
    }

    #[test]
    #[should_panic(expected = "misaligned")]
    fn a_misaligned_16_byte_entry_panics() {
        let r = DmaRegion::allocate(4096, PagePolicy::Small).unwrap();
        r.load_entry16(2, |_| true);
    }

    #[test]
    fn zero_length_is_refused() {
        assert!(matches!(
            DmaRegion::allocate(0, PagePolicy::Small),
            Err(Error::BadAllocation { .. })
        ));
    }
}
