//! Pinned DMA regions and the only code that touches device-shared memory.
//!
//! A [`DmaRegion`] is one mmap of populated memory. Its bytes are never reachable through a Rust
//! reference: reads and writes are atomic accesses (bulk copies in relaxed words and bytes),
//! always bounds-checked. The region also keeps a fixed table of its IOVA in each DMA domain it is mapped
//! into, so VA→IOVA is one load and an add.

use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
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
// goes through bounds-checked atomic accesses (bulk copies are relaxed words and bytes), which are
// defined from any number of threads at once (the bytes are plain memory a device may also
// write).
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
        // A child after fork() must not share (copy-on-write) pages a device writes: the
        // parent's first write would move its view to a new page while the device kept
        // writing the old one (in no-IOMMU mode, by physical address). Advice only: failure is
        // tolerated.
        // SAFETY: the mapping just made.
        let _ = unsafe { libc::madvise(va, len, libc::MADV_DONTFORK) };
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
        if offset.checked_add(len).is_none_or(|end| end > self.0.len) {
            out_of_bounds("DMA region", offset, len, self.0.len);
        }
    }

    #[inline(always)]
    fn check_aligned(&self, offset: usize, len: usize, align: usize) {
        self.check(offset, len);
        if !offset.is_multiple_of(align) {
            misaligned(offset);
        }
    }

    /// The byte at `offset` as an atomic (no alignment needed).
    #[inline(always)]
    fn atomic_u8(&self, offset: usize) -> &AtomicU8 {
        // SAFETY: callers check the range; an AtomicU8 has no alignment requirement and may be
        // shared with other writers, and lives as long as `self`.
        unsafe { &*(self.0.va.add(offset) as *const AtomicU8) }
    }

    /// Splits `[offset, offset + len)` into an unaligned head, whole 8-byte words, and a tail:
    /// `(head_end, words_end)`.
    #[inline(always)]
    fn spans(offset: usize, len: usize) -> (usize, usize) {
        let end = offset + len;
        let head_end = offset.next_multiple_of(8).min(end);
        let words_end = head_end + (end - head_end) / 8 * 8;
        (head_end, words_end)
    }

    // Bulk access is relaxed atomic words and bytes, never plain copies: a region is `Sync` and
    // may be read and written by several threads (and by the simulator's device threads) at
    // once, and plain copies racing would be undefined behaviour. On x86-64 and AArch64 these
    // are ordinary loads and stores, without the compiler's wide SIMD copies.

    /// Copies `dst.len()` bytes from the region at `offset` into `dst`.
    ///
    /// # Panics
    /// If the range is outside the region (a caller bug, never device input).
    #[inline(always)]
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        if offset.is_multiple_of(8) && dst.len().is_multiple_of(4) {
            // Whole words and at most one dword (every queue entry): inline, and unrolled when
            // the length is a constant.
            self.read_words(offset, dst);
        } else {
            self.read_unaligned(offset, dst);
        }
    }

    /// [`DmaRegion::read`] of a checked range at an 8-aligned `offset` whose length is a
    /// multiple of 4: whole words, then at most one dword.
    #[inline(always)]
    fn read_words(&self, offset: usize, dst: &mut [u8]) {
        let len = dst.len();
        let base = self.0.va.wrapping_add(offset) as *const AtomicU64;
        let mut words = dst.chunks_exact_mut(8);
        for (k, w) in words.by_ref().enumerate() {
            // SAFETY: word `k` of the checked range; 8-aligned (the mapping is page-aligned).
            let v = unsafe { &*base.add(k) }.load(Ordering::Relaxed);
            w.copy_from_slice(&v.to_ne_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let at = offset + len - 4;
            // SAFETY: the last dword of the checked range, 4-aligned.
            let v = unsafe { &*(self.0.va.add(at) as *const AtomicU32) }.load(Ordering::Relaxed);
            rest.copy_from_slice(&v.to_ne_bytes());
        }
    }

    /// [`DmaRegion::read`] of a range with an unaligned start or length (checked by the caller):
    /// bytes up to the first word, the words, and the bytes after them.
    #[inline(never)]
    fn read_unaligned(&self, offset: usize, dst: &mut [u8]) {
        let (head_end, words_end) = Self::spans(offset, dst.len());
        let (head, rest) = dst.split_at_mut(head_end - offset);
        let (words, tail) = rest.split_at_mut(words_end - head_end);
        for (k, b) in head.iter_mut().enumerate() {
            *b = self.atomic_u8(offset + k).load(Ordering::Relaxed);
        }
        self.read_words(head_end, words);
        for (k, b) in tail.iter_mut().enumerate() {
            *b = self.atomic_u8(words_end + k).load(Ordering::Relaxed);
        }
    }

    /// Copies `src` into the region at `offset`.
    ///
    /// # Panics
    /// If the range is outside the region.
    #[inline(always)]
    pub fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: the range was checked just above.
        unsafe { self.write_in_range(offset, src) }
    }

    /// [`DmaRegion::write`] without its range check, for a caller that has made it (a
    /// [`crate::DmaBuf`], whose own check covers it: one check per access, not two).
    ///
    /// # Safety
    /// `offset..offset + src.len()` must be inside the region.
    #[inline(always)]
    pub(crate) unsafe fn write_in_range(&self, offset: usize, src: &[u8]) {
        debug_assert!(offset
            .checked_add(src.len())
            .is_some_and(|end| end <= self.0.len));
        if offset.is_multiple_of(8) && src.len().is_multiple_of(4) {
            self.write_words(offset, src);
        } else {
            self.write_unaligned(offset, src);
        }
    }

    /// [`DmaRegion::write`] of a checked range at an 8-aligned `offset` whose length is a
    /// multiple of 4, as [`DmaRegion::read_words`].
    #[inline(always)]
    fn write_words(&self, offset: usize, src: &[u8]) {
        let base = self.0.va.wrapping_add(offset) as *const AtomicU64;
        let mut words = src.chunks_exact(8);
        for (k, w) in words.by_ref().enumerate() {
            let v = u64::from_ne_bytes(w.try_into().expect("chunks of 8"));
            // SAFETY: as in `read_words`.
            unsafe { &*base.add(k) }.store(v, Ordering::Relaxed);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let at = offset + src.len() - 4;
            let v = u32::from_ne_bytes(rest.try_into().expect("one dword"));
            // SAFETY: as in `read_words`.
            unsafe { &*(self.0.va.add(at) as *const AtomicU32) }.store(v, Ordering::Relaxed);
        }
    }

    /// Stores `words` at `offset`, in order, as relaxed 64-bit stores, for a caller that has
    /// checked the range (a [`crate::DmaBuf`]).
    ///
    /// # Safety
    /// `offset..offset + 8 * N` must be inside the region, and `offset` 8-aligned.
    #[inline(always)]
    pub(crate) unsafe fn store_words_in_range<const N: usize>(
        &self,
        offset: usize,
        words: &[u64; N],
    ) {
        debug_assert!(offset.is_multiple_of(8));
        debug_assert!(offset
            .checked_add(8 * N)
            .is_some_and(|end| end <= self.0.len));
        let base = self.0.va.wrapping_add(offset) as *const AtomicU64;
        for (k, &w) in words.iter().enumerate() {
            // SAFETY: word `k` of the range the caller checked, 8-aligned (the caller's offset
            // is, and the mapping is page-aligned).
            unsafe { &*base.add(k) }.store(w, Ordering::Relaxed);
        }
    }

    /// [`DmaRegion::write`] of a range with an unaligned start or length (checked by the caller),
    /// as [`DmaRegion::read_unaligned`].
    #[inline(never)]
    fn write_unaligned(&self, offset: usize, src: &[u8]) {
        let (head_end, words_end) = Self::spans(offset, src.len());
        let (head, rest) = src.split_at(head_end - offset);
        let (words, tail) = rest.split_at(words_end - head_end);
        for (k, &b) in head.iter().enumerate() {
            self.atomic_u8(offset + k).store(b, Ordering::Relaxed);
        }
        self.write_words(head_end, words);
        for (k, &b) in tail.iter().enumerate() {
            self.atomic_u8(words_end + k).store(b, Ordering::Relaxed);
        }
    }

    /// Fills `len` bytes at `offset` with `byte`.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check(offset, len);
        let (head_end, words_end) = Self::spans(offset, len);
        let w = u64::from_ne_bytes([byte; 8]);
        for o in (offset..head_end).chain(words_end..offset + len) {
            self.atomic_u8(o).store(byte, Ordering::Relaxed);
        }
        let base = self.0.va.wrapping_add(head_end) as *const AtomicU64;
        for k in 0..(words_end - head_end) / 8 {
            // SAFETY: as in `read_words`.
            unsafe { &*base.add(k) }.store(w, Ordering::Relaxed);
        }
    }

    /// Copies `len` bytes between two places in regions (either may be this one; ranges may
    /// overlap), through a bounce buffer: in pieces from the front, or from the back when the
    /// destination overlaps the source from above.
    ///
    /// # Panics
    /// If either range is outside its region.
    pub fn copy_to(&self, offset: usize, dst: &DmaRegion, dst_offset: usize, len: usize) {
        self.check(offset, len);
        dst.check(dst_offset, len);
        let same = Arc::ptr_eq(&self.0, &dst.0);
        if offset.is_multiple_of(8) && dst_offset.is_multiple_of(8) && len.is_multiple_of(8) {
            // Word to word, no bounce (every block the simulator moves): backwards when the
            // destination overlaps the source from above.
            let from = self.0.va.wrapping_add(offset) as *const AtomicU64;
            let to = dst.0.va.wrapping_add(dst_offset) as *const AtomicU64;
            let words = len / 8;
            let backwards = same && dst_offset > offset && dst_offset < offset + len;
            for k in 0..words {
                let k = if backwards { words - 1 - k } else { k };
                // SAFETY: word `k` of both checked ranges, 8-aligned (the mappings are
                // page-aligned); atomics, so overlap and other threads are defined.
                unsafe {
                    let v = (*from.add(k)).load(Ordering::Relaxed);
                    (*to.add(k)).store(v, Ordering::Relaxed);
                }
            }
            return;
        }
        const PIECE: usize = 512;
        let mut bounce = [0u8; PIECE];
        let backwards = same && dst_offset > offset && dst_offset < offset + len;
        let pieces = len.div_ceil(PIECE);
        for k in 0..pieces {
            let k = if backwards { pieces - 1 - k } else { k };
            let at = k * PIECE;
            let n = (len - at).min(PIECE);
            self.read(offset + at, &mut bounce[..n]);
            dst.write(dst_offset + at, &bounce[..n]);
        }
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
        // SAFETY: the range and the alignment were checked just above.
        unsafe { self.load_entry16_in_range(offset, ready) }
    }

    /// [`DmaRegion::load_entry16`] without its checks, for a caller that has made them (a
    /// [`crate::DmaBuf`]).
    ///
    /// # Safety
    /// `offset..offset + 16` must be inside the region, and `offset` 4-byte aligned.
    #[inline(always)]
    pub(crate) unsafe fn load_entry16_in_range(
        &self,
        offset: usize,
        ready: impl FnOnce(u32) -> bool,
    ) -> Option<[u32; 4]> {
        debug_assert!(offset + 16 <= self.0.len && offset.is_multiple_of(4));
        // SAFETY: the 16 bytes at `offset` are inside the live mapping and 4-byte aligned (the
        // caller's guarantee), so each of the four dwords is a valid AtomicU32 for as long as
        // `self`; they are only accessed atomically, and no plain reference into the mapping is
        // made.
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

/// The panic of a DMA access out of bounds, out of line: inlined, its message's arguments were
/// stored on every access (the hot path's checks are a compare and a branch).
#[cold]
#[inline(never)]
#[track_caller]
pub(crate) fn out_of_bounds(what: &str, offset: usize, len: usize, size: usize) -> ! {
    panic!("{what} access out of bounds: offset {offset} len {len} size {size}")
}

/// The panic of a misaligned DMA word access, out of line (see [`out_of_bounds`]).
#[cold]
#[inline(never)]
#[track_caller]
pub(crate) fn misaligned(offset: usize) -> ! {
    panic!("misaligned DMA word access at {offset}")
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
    fn word_wise_copies_match_a_byte_model_at_every_alignment_and_overlap() {
        // The bulk accessors split into byte heads and tails around aligned words, and copies
        // go through a bounce buffer in pieces, backwards when the destination overlaps the
        // source from above. A plain Vec is the model.
        let r = DmaRegion::allocate(8192, PagePolicy::Small).unwrap();
        let other = DmaRegion::allocate(8192, PagePolicy::Small).unwrap();
        let mut model: Vec<u8> = (0..8192u32).map(|i| (i * 7 + i / 251) as u8).collect();
        r.write(0, &model);
        let check = |r: &DmaRegion, model: &[u8]| {
            let mut got = vec![0u8; model.len()];
            r.read(0, &mut got);
            assert!(got == model, "region differs from the model");
        };
        check(&r, &model);
        for (src, dst, len) in [
            (3, 1000, 17),      // disjoint
            (1000, 3, 1500),    // overlaps from below, across pieces: forwards
            (100, 101, 1300),   // overlaps from above by one byte: backwards
            (2001, 2000, 1300), // overlaps from below by one byte
            (5, 5, 0),
            (4095, 4097, 7),
            (0, 64, 1024),     // aligned words, overlapping from above: backwards
            (1032, 1000, 800), // aligned words, overlapping from below
            (4096, 0, 4096),   // aligned words, disjoint
        ] {
            r.copy_to(src, &r, dst, len);
            model.copy_within(src..src + len, dst);
            check(&r, &model);
        }
        for (off, len, byte) in [(1, 3, 0x11), (7, 20, 0x22), (64, 64, 0x33), (8190, 2, 0x44)] {
            r.fill(off, len, byte);
            model[off..off + len].fill(byte);
            check(&r, &model);
        }
        r.copy_to(13, &other, 4001, 3000);
        let mut got = vec![0u8; 3000];
        other.read(4001, &mut got);
        assert_eq!(got, model[13..3013]);
        r.write(0, &[]);
        r.read(0, &mut []);
        r.fill(0, 0, 1);
        check(&r, &model);
        for off in 0..16 {
            let data: Vec<u8> = (0..37).map(|i| (i + off) as u8).collect();
            r.write(off, &data);
            let mut back = vec![0u8; 37];
            r.read(off, &mut back);
            assert_eq!(back, data, "offset {off}");
        }
    }

    #[test]
    fn concurrent_bulk_access_from_threads_is_defined() {
        // A region is Sync: threads may read and write it at once (a device model on one,
        // the application on another). With atomic accesses that is defined behaviour; each
        // word read is one that was written whole.
        let r = DmaRegion::allocate(4096, PagePolicy::Small).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..2000u64 {
                    r.write(0, &[(i % 2) as u8 * 0xff; 64]);
                }
            });
            s.spawn(|| {
                let mut b = [0u8; 64];
                for _ in 0..2000 {
                    r.read(0, &mut b);
                    for w in b.chunks(8) {
                        assert!(w.iter().all(|&x| x == w[0]), "a torn word: {w:?}");
                    }
                }
            });
        });
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
