//! DMA buffer allocation: a shared [`DmaPool`] that grows by regions and maps each new region
//! into every registered DMA domain, and a per-core [`DmaCache`] that hands buffers out without a
//! lock.
//!
//! Sizes are rounded up to a power-of-two class between 4 KiB and 2 MiB; a block is aligned to
//! its class size inside its chunk, and every chunk is at least 4 KiB aligned. Larger requests get
//! a region of their own.

use std::sync::{Arc, Mutex};

use crate::iova::{DomainId, Iova};
use crate::region::{DmaRegion, PagePolicy, HUGE_PAGE_SIZE, SMALL_PAGE_SIZE};
use crate::{DmaMapper, Error, Result};

const MIN_CLASS_SHIFT: u32 = 12;
const MAX_CLASS_SHIFT: u32 = 21;
const NCLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;
/// Marks a buffer with a region of its own.
const OWN_REGION: u8 = u8::MAX;
/// How many blocks a cache takes from the pool at once.
const CACHE_BATCH: usize = 16;
/// A cache gives half its blocks back above this many per class.
const CACHE_HIGH_WATER: usize = 64;

fn class_of(len: usize) -> Option<usize> {
    if len > HUGE_PAGE_SIZE {
        return None;
    }
    let shift = len
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_CLASS_SHIFT);
    Some((shift - MIN_CLASS_SHIFT) as usize)
}

fn class_size(class: usize) -> usize {
    1 << (class as u32 + MIN_CLASS_SHIFT)
}

struct Block {
    region: DmaRegion,
    offset: usize,
}

struct State {
    regions: Vec<DmaRegion>,
    free: [Vec<Block>; NCLASSES],
    mappers: Vec<Arc<dyn DmaMapper>>,
}

/// A process-wide source of DMA buffers. Every region it creates is mapped into every domain
/// registered with [`DmaPool::add_mapper`].
pub struct DmaPool {
    policy: PagePolicy,
    state: Mutex<State>,
}

impl std::fmt::Debug for DmaPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock().unwrap();
        f.debug_struct("DmaPool")
            .field("policy", &self.policy)
            .field("regions", &s.regions.len())
            .field("domains", &s.mappers.len())
            .finish()
    }
}

impl DmaPool {
    /// An empty pool that takes pages as `policy` says.
    pub fn new(policy: PagePolicy) -> Arc<DmaPool> {
        Arc::new(DmaPool {
            policy,
            state: Mutex::new(State {
                regions: Vec::new(),
                free: std::array::from_fn(|_| Vec::new()),
                mappers: Vec::new(),
            }),
        })
    }

    /// The page policy this pool allocates with.
    pub fn policy(&self) -> PagePolicy {
        self.policy
    }

    /// Registers a DMA domain: maps every region the pool has now, and every later one.
    ///
    /// # Errors
    /// The first mapping the backend refuses; the mappings made so far stay recorded and are
    /// undone by [`DmaPool::remove_mapper`].
    pub fn add_mapper(&self, mapper: Arc<dyn DmaMapper>) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        if s.mappers.iter().any(|m| m.domain() == mapper.domain()) {
            return Ok(());
        }
        s.mappers.push(mapper.clone());
        for r in &s.regions {
            r.map_into(mapper.as_ref())?;
        }
        Ok(())
    }

    /// Unmaps every region from `domain` and forgets its mapper.
    ///
    /// # Errors
    /// The first unmap the backend refuses (the rest are still attempted).
    pub fn remove_mapper(&self, domain: DomainId) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        let Some(pos) = s.mappers.iter().position(|m| m.domain() == domain) else {
            return Ok(());
        };
        let mapper = s.mappers.remove(pos);
        let mut first_err = None;
        for r in &s.regions {
            if let Err(e) = r.unmap_from(mapper.as_ref()) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn new_region(&self, s: &mut State, len: usize) -> Result<DmaRegion> {
        let r = DmaRegion::allocate(len, self.policy)?;
        for m in &s.mappers {
            if let Err(e) = r.map_into(m.as_ref()) {
                for m in &s.mappers {
                    let _ = r.unmap_from(m.as_ref());
                }
                return Err(e);
            }
        }
        s.regions.push(r.clone());
        Ok(r)
    }

    fn take_blocks(&self, class: usize, n: usize, out: &mut Vec<Block>) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        if s.free[class].len() < n {
            let r = self.new_region(&mut s, HUGE_PAGE_SIZE)?;
            let size = class_size(class);
            let mut off = 0;
            while off + size <= r.len() {
                s.free[class].push(Block {
                    region: r.clone(),
                    offset: off,
                });
                off += size;
            }
        }
        let at = s.free[class].len().saturating_sub(n);
        out.extend(s.free[class].drain(at..));
        Ok(())
    }

    fn give_blocks(&self, class: usize, blocks: impl Iterator<Item = Block>) {
        self.state.lock().unwrap().free[class].extend(blocks);
    }

    /// Allocates `len` bytes aligned to `align` (at most 4096), taking the pool's lock. Use a
    /// [`DmaCache`] on I/O cores.
    ///
    /// # Errors
    /// [`Error::BadAllocation`] for a zero length or an alignment above 4096; the region errors
    /// when memory runs out.
    pub fn alloc(self: &Arc<Self>, len: usize, align: usize) -> Result<DmaBuf> {
        check_request(len, align)?;
        match class_of(len) {
            Some(class) => {
                let mut v = Vec::with_capacity(1);
                self.take_blocks(class, 1, &mut v)?;
                let b = v.pop().expect("take_blocks returns what it was asked for");
                Ok(DmaBuf::from_block(b, len, class as u8, self))
            }
            None => {
                let r = {
                    let mut s = self.state.lock().unwrap();
                    self.new_region(&mut s, len)?
                };
                let d = DmaBuf {
                    region: r,
                    offset: 0,
                    len,
                    class: OWN_REGION,
                    pool: self.clone(),
                };
                debug_assert!(d.in_region());
                Ok(d)
            }
        }
    }

    /// Number of regions the pool holds (for tests and status).
    pub fn region_count(&self) -> usize {
        self.state.lock().unwrap().regions.len()
    }

    fn release_own_region(&self, region: &DmaRegion) {
        let mut s = self.state.lock().unwrap();
        if let Some(pos) = s.regions.iter().position(|r| r.same(region)) {
            let r = s.regions.swap_remove(pos);
            for m in &s.mappers {
                if let Err(e) = r.unmap_from(m.as_ref()) {
                    log::warn!("unmapping a released DMA region failed: {e}");
                }
            }
        }
    }
}

impl Drop for DmaPool {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for r in &s.regions {
            for m in &s.mappers {
                // At teardown the domain is often gone already (a VFIO container whose groups
                // were released drops every mapping with its IOMMU context, and then refuses the
                // unmap with EINVAL). Nothing is unsafe either way: VFIO keeps the pages it
                // pinned until the mapping goes, so the device cannot reach reused memory.
                if let Err(e) = r.unmap_from(m.as_ref()) {
                    log::debug!("unmapping DMA region at drop: {e}");
                }
            }
        }
    }
}

fn check_request(len: usize, align: usize) -> Result<()> {
    if len == 0 || !align.is_power_of_two() || align > SMALL_PAGE_SIZE {
        return Err(Error::BadAllocation { len, align });
    }
    Ok(())
}

/// A DMA buffer: `len` bytes of a [`DmaRegion`], mapped into every domain of its pool. The bytes
/// are reached only through copies and volatile accesses; dropping the buffer gives it back.
pub struct DmaBuf {
    region: DmaRegion,
    offset: usize,
    len: usize,
    class: u8,
    pool: Arc<DmaPool>,
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("va", &format_args!("{:#x}", self.va()))
            .field("len", &self.len)
            .finish()
    }
}

impl DmaBuf {
    fn from_block(b: Block, len: usize, class: u8, pool: &Arc<DmaPool>) -> DmaBuf {
        let d = DmaBuf {
            region: b.region,
            offset: b.offset,
            len,
            class,
            pool: pool.clone(),
        };
        debug_assert!(d.in_region());
        d
    }

    /// The invariant the unchecked region accesses rely on: the buffer lies inside its region
    /// at a page-aligned offset. A block of a class (at least a page, carved at multiples of its
    /// size, no longer than the class) or a region of its own (offset 0) always does.
    fn in_region(&self) -> bool {
        self.offset.is_multiple_of(SMALL_PAGE_SIZE)
            && self
                .offset
                .checked_add(self.len)
                .is_some_and(|end| end <= self.region.len())
    }

    /// Length in bytes, as requested.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer (never, since zero-length allocations are refused).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of the first byte in this process.
    #[inline]
    pub fn va(&self) -> usize {
        self.region.va() + self.offset
    }

    /// The region holding the buffer.
    #[inline]
    pub fn region(&self) -> &DmaRegion {
        &self.region
    }

    /// Offset of the buffer inside its region.
    #[inline]
    pub fn region_offset(&self) -> usize {
        self.offset
    }

    /// IOVA of byte `offset` of the buffer in `domain`; `None` if the buffer is not mapped there or
    /// `offset` is past its end.
    #[inline]
    pub fn iova(&self, domain: DomainId, offset: usize) -> Option<Iova> {
        if offset >= self.len {
            return None;
        }
        self.region.iova_at(domain, self.offset + offset)
    }

    #[inline(always)]
    fn check(&self, offset: usize, len: usize) {
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            crate::region::out_of_bounds("DmaBuf", offset, len, self.len);
        }
    }

    /// Copies from the buffer at `offset` into `dst`.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    #[inline]
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        self.region.read(self.offset + offset, dst)
    }

    /// Copies `src` into the buffer at `offset`.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    #[inline(always)]
    pub fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: the range is inside the buffer (checked just above) and the buffer inside its
        // region (the invariant of every `DmaBuf`, see `DmaBuf::in_region`).
        unsafe { self.region.write_in_range(self.offset + offset, src) }
    }

    /// Stores `words` at an 8-aligned `offset` as relaxed 64-bit stores (little-endian, the
    /// only byte order vfnvme builds for), one range check for all of them: an entry built in
    /// registers (an NVMe submission queue entry) goes to DMA memory from them, not through a
    /// copy of its bytes.
    ///
    /// # Panics
    /// If the range is outside the buffer or `offset` is not 8-aligned in the region.
    #[inline(always)]
    pub fn store_words<const N: usize>(&self, offset: usize, words: &[u64; N]) {
        self.check(offset, 8 * N);
        let at = self.offset + offset;
        if !at.is_multiple_of(8) {
            crate::region::misaligned(at);
        }
        // SAFETY: the range is inside the buffer (checked just above), the buffer inside its
        // region (the invariant of every `DmaBuf`, see `DmaBuf::in_region`), and `at` 8-aligned
        // (checked just above).
        unsafe { self.region.store_words_in_range(at, words) }
    }

    /// Fills `len` bytes at `offset` with `byte`.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check(offset, len);
        self.region.fill(self.offset + offset, len, byte)
    }

    /// Loads a little-endian `u64` at an 8-aligned `offset`.
    ///
    /// # Panics
    /// If out of bounds or misaligned.
    #[inline(always)]
    pub fn load_u64(&self, offset: usize) -> u64 {
        self.check(offset, 8);
        self.region.load_u64(self.offset + offset)
    }

    /// Stores a `u64` at an 8-aligned `offset`.
    ///
    /// # Panics
    /// If out of bounds or misaligned.
    #[inline(always)]
    pub fn store_u64(&self, offset: usize, v: u64) {
        self.check(offset, 8);
        self.region.store_u64(self.offset + offset, v)
    }

    /// Reads a 16-byte entry whose last dword a device writes last (see
    /// [`DmaRegion::load_entry16`]): the last dword with Acquire ordering, and the other three
    /// only if `ready` accepts it.
    ///
    /// # Panics
    /// If out of bounds or misaligned.
    #[inline(always)]
    pub fn load_entry16(&self, offset: usize, ready: impl FnOnce(u32) -> bool) -> Option<[u32; 4]> {
        self.check(offset, 16);
        if !offset.is_multiple_of(4) {
            crate::region::misaligned(offset);
        }
        // SAFETY: the range is inside the buffer (checked just above) and the buffer inside its
        // region, at a page-aligned offset (the invariant of every `DmaBuf`, see
        // `DmaBuf::in_region`), so the region offset is 4-aligned as `offset` is.
        unsafe {
            self.region
                .load_entry16_in_range(self.offset + offset, ready)
        }
    }

    /// Loads a `u32` at a 4-aligned `offset` with Acquire ordering.
    ///
    /// # Panics
    /// If out of bounds or misaligned.
    #[inline(always)]
    pub fn load_u32_acquire(&self, offset: usize) -> u32 {
        self.check(offset, 4);
        self.region.load_u32_acquire(self.offset + offset)
    }

    /// Loads a `u32` at a 4-aligned `offset`.
    ///
    /// # Panics
    /// If out of bounds or misaligned.
    #[inline(always)]
    pub fn load_u32(&self, offset: usize) -> u32 {
        self.check(offset, 4);
        self.region.load_u32(self.offset + offset)
    }

    /// Stores a `u32` at a 4-aligned `offset`.
    ///
    /// # Panics
    /// If out of bounds or misaligned.
    #[inline(always)]
    pub fn store_u32(&self, offset: usize, v: u32) {
        self.check(offset, 4);
        self.region.store_u32(self.offset + offset, v)
    }

    /// True if `len` bytes at `offset` equal `other`'s at `other_offset`.
    ///
    /// # Panics
    /// If either range is out of bounds.
    pub fn equal(&self, offset: usize, other: &DmaBuf, other_offset: usize, len: usize) -> bool {
        self.check(offset, len);
        other.check(other_offset, len);
        self.region.equal(
            self.offset + offset,
            &other.region,
            other.offset + other_offset,
            len,
        )
    }

    /// Copies the whole buffer into a new `Vec` (for tests and tools).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.read(0, &mut v);
        v
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if self.class == OWN_REGION {
            self.pool.release_own_region(&self.region);
        } else {
            let b = Block {
                region: self.region.clone(),
                offset: self.offset,
            };
            self.pool
                .give_blocks(self.class as usize, std::iter::once(b));
        }
    }
}

/// A per-core front for a [`DmaPool`]: `alloc` and `free` touch only local lists and take the
/// pool's lock once per batch. `Send` but not `Sync`: one per thread.
pub struct DmaCache {
    pool: Arc<DmaPool>,
    local: [Vec<Block>; NCLASSES],
    _not_sync: std::marker::PhantomData<std::cell::Cell<()>>,
}

impl DmaCache {
    /// A cache in front of `pool`.
    pub fn new(pool: &Arc<DmaPool>) -> DmaCache {
        DmaCache {
            pool: pool.clone(),
            local: std::array::from_fn(|_| Vec::new()),
            _not_sync: std::marker::PhantomData,
        }
    }

    /// The pool behind this cache.
    pub fn pool(&self) -> &Arc<DmaPool> {
        &self.pool
    }

    /// Allocates like [`DmaPool::alloc`], from the local lists when they have a block.
    ///
    /// # Errors
    /// As [`DmaPool::alloc`].
    pub fn alloc(&mut self, len: usize, align: usize) -> Result<DmaBuf> {
        check_request(len, align)?;
        let Some(class) = class_of(len) else {
            return self.pool.alloc(len, align);
        };
        if self.local[class].is_empty() {
            self.pool
                .take_blocks(class, CACHE_BATCH, &mut self.local[class])?;
        }
        let b = self.local[class]
            .pop()
            .expect("take_blocks returns what it was asked for");
        Ok(DmaBuf::from_block(b, len, class as u8, &self.pool))
    }

    /// Returns a buffer to the local lists (a buffer from another pool goes back to its own).
    pub fn free(&mut self, buf: DmaBuf) {
        if buf.class == OWN_REGION || !Arc::ptr_eq(&buf.pool, &self.pool) {
            drop(buf);
            return;
        }
        let class = buf.class as usize;
        let offset = buf.offset;
        let buf = std::mem::ManuallyDrop::new(buf);
        // SAFETY: `buf` is wrapped in ManuallyDrop and never touched again, so each of its two
        // owning fields is moved out exactly once and DmaBuf's Drop (which would hand the block to
        // the shared pool) does not run.
        let (region, pool) = unsafe { (std::ptr::read(&buf.region), std::ptr::read(&buf.pool)) };
        drop(pool);
        self.local[class].push(Block { region, offset });
        if self.local[class].len() > CACHE_HIGH_WATER {
            let keep = CACHE_HIGH_WATER / 2;
            let extra: Vec<Block> = self.local[class].drain(keep..).collect();
            self.pool.give_blocks(class, extra.into_iter());
        }
    }
}

impl Drop for DmaCache {
    fn drop(&mut self) {
        for (class, list) in self.local.iter_mut().enumerate() {
            if !list.is_empty() {
                self.pool.give_blocks(class, list.drain(..));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_buffer_is_checked_once_against_itself_not_its_region() {
        // Arrange: a 4 KiB buffer from a class block, inside a larger region.
        let pool = DmaPool::new(PagePolicy::Small);
        let b = pool.alloc(4096, 4096).unwrap();
        assert!(b.in_region());
        assert!(b.region().len() >= b.len());
        // Act and assert: the last entry of the buffer reads and writes; one past it, or a
        // misaligned entry, panics, though the region goes on after the buffer.
        b.write(4096 - 16, &[7u8; 16]);
        assert_eq!(b.load_entry16(4096 - 16, |_| true), Some([0x0707_0707; 4]));
        let past = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.write(4096 - 8, &[0u8; 16])
        }));
        assert!(past.is_err(), "a write past the buffer panics");
        let past = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.load_entry16(4096, |_| true)
        }));
        assert!(past.is_err(), "an entry past the buffer panics");
        let skew =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.load_entry16(2, |_| true)));
        assert!(skew.is_err(), "a misaligned entry panics");
    }

    #[test]
    fn words_are_stored_little_endian_inside_the_buffer_only() {
        // Arrange: a 4 KiB buffer, filled with a marker.
        let pool = DmaPool::new(PagePolicy::Small);
        let b = pool.alloc(4096, 4096).unwrap();
        b.fill(0, 4096, 0xee);
        // Act: two words in the buffer's last 16 bytes.
        b.store_words(4096 - 16, &[0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908]);
        // Assert: the bytes in memory order, and nothing before them touched.
        let mut tail = [0u8; 24];
        b.read(4096 - 24, &mut tail);
        assert_eq!(tail[..8], [0xee; 8]);
        assert_eq!(tail[8..], (0..16).collect::<Vec<u8>>()[..]);
        // One word past the end, or a misaligned start, panics and stores nothing.
        let past = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.store_words(4096 - 8, &[1, 2])
        }));
        assert!(past.is_err(), "words past the buffer panic");
        let skew =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.store_words(4, &[1])));
        assert!(skew.is_err(), "a misaligned word panics");
        let mut head = [0u8; 16];
        b.read(0, &mut head);
        assert_eq!(head, [0xee; 16], "a refused store wrote nothing");
        assert_eq!(b.load_u64(4096 - 8), 0x0f0e_0d0c_0b0a_0908);
    }

    /// A mapper that places each region at VA + a salt, like an IOMMU with its own IOVA space.
    struct SaltMapper {
        domain: DomainId,
        salt: u64,
        maps: AtomicUsize,
        unmaps: AtomicUsize,
    }

    impl SaltMapper {
        fn new(salt: u64) -> Arc<SaltMapper> {
            Arc::new(SaltMapper {
                domain: DomainId::allocate().unwrap(),
                salt,
                maps: AtomicUsize::new(0),
                unmaps: AtomicUsize::new(0),
            })
        }
    }

    impl DmaMapper for SaltMapper {
        fn domain(&self) -> DomainId {
            self.domain
        }
        fn map(&self, region: &DmaRegion) -> Result<Iova> {
            self.maps.fetch_add(1, Ordering::Relaxed);
            Ok(Iova(region.va() as u64 + self.salt))
        }
        fn unmap(&self, _region: &DmaRegion, _iova: Iova) -> Result<()> {
            self.unmaps.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    impl Drop for SaltMapper {
        fn drop(&mut self) {
            self.domain.release();
        }
    }

    #[test]
    fn buffers_translate_in_every_domain() {
        let pool = DmaPool::new(PagePolicy::Small);
        let a = SaltMapper::new(1 << 48);
        let b = SaltMapper::new(2 << 48);
        pool.add_mapper(a.clone()).unwrap();
        let buf = pool.alloc(8192, 4096).unwrap();
        // A domain registered after the buffer exists still reaches it.
        pool.add_mapper(b.clone()).unwrap();
        assert_eq!(buf.va() % 4096, 0);
        assert_eq!(
            buf.iova(a.domain(), 0),
            Some(Iova(buf.va() as u64 + (1 << 48)))
        );
        assert_eq!(
            buf.iova(b.domain(), 100),
            Some(Iova(buf.va() as u64 + 100 + (2 << 48)))
        );
        assert_eq!(buf.iova(a.domain(), 8192), None, "past the end");
        let off = buf
            .region()
            .offset_of_iova(b.domain(), buf.iova(b.domain(), 5).unwrap());
        assert_eq!(off, Some(buf.region_offset() + 5));
        pool.remove_mapper(a.domain()).unwrap();
        assert_eq!(
            buf.iova(a.domain(), 0),
            None,
            "unmapped domain gives no IOVA"
        );
        assert_eq!(
            a.unmaps.load(Ordering::Relaxed),
            a.maps.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn sizes_round_to_classes_and_large_buffers_get_their_own_region() {
        let pool = DmaPool::new(PagePolicy::Small);
        let small = pool.alloc(100, 4).unwrap();
        assert_eq!(small.len(), 100);
        assert_eq!(small.va() % 4096, 0);
        let mid = pool.alloc(12288, 4096).unwrap();
        assert_eq!(mid.va() % 16384, 0, "a block is aligned to its class size");
        let before = pool.region_count();
        let big = pool.alloc(3 << 20, 4096).unwrap();
        assert_eq!(pool.region_count(), before + 1);
        big.write((3 << 20) - 1, &[7]);
        drop(big);
        assert_eq!(pool.region_count(), before, "own region is released");
    }

    #[test]
    fn bad_requests_are_refused() {
        let pool = DmaPool::new(PagePolicy::Small);
        assert!(matches!(pool.alloc(0, 8), Err(Error::BadAllocation { .. })));
        assert!(matches!(
            pool.alloc(4096, 3),
            Err(Error::BadAllocation { .. })
        ));
        assert!(matches!(
            pool.alloc(4096, 8192),
            Err(Error::BadAllocation { .. })
        ));
        let mut c = DmaCache::new(&pool);
        assert!(matches!(c.alloc(0, 8), Err(Error::BadAllocation { .. })));
    }

    #[test]
    fn cache_reuses_freed_blocks_without_overlap() {
        let pool = DmaPool::new(PagePolicy::Small);
        let mut c = DmaCache::new(&pool);
        let bufs: Vec<DmaBuf> = (0..40).map(|_| c.alloc(4096, 4096).unwrap()).collect();
        let mut vas: Vec<usize> = bufs.iter().map(|b| b.va()).collect();
        vas.sort();
        vas.dedup();
        assert_eq!(vas.len(), 40, "no two live buffers share memory");
        for (i, b) in bufs.iter().enumerate() {
            b.fill(0, 4096, i as u8);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.to_vec().iter().all(|&x| x == i as u8));
        }
        let first = bufs[0].va();
        for b in bufs {
            c.free(b);
        }
        let again = c.alloc(4096, 4096).unwrap();
        assert!(vas.contains(&again.va()));
        let _ = first;
        // Over the high-water mark, blocks flow back to the pool and stay allocatable.
        drop(c);
        let from_pool = pool.alloc(4096, 4096).unwrap();
        assert!(vas.contains(&from_pool.va()));
    }

    /// The two hugepage tests change and read the machine's reserve: run them one at a time.
    static HUGEPAGE_RESERVE: Mutex<()> = Mutex::new(());

    #[test]
    fn hugepage_region_when_reserved() {
        let _g = HUGEPAGE_RESERVE.lock().unwrap_or_else(|e| e.into_inner());
        use crate::region::PageKind;
        use crate::sysfs;
        let before = sysfs::total_hugepages().unwrap_or(0);
        let free = sysfs::free_hugepages_total().unwrap_or(0);
        let mut reserved_here = false;
        if free < 2 {
            // Root may reserve two pages for the test and must put the reserve back.
            if sysfs::set_total_hugepages(before + 2).is_ok_and(|n| n >= before + 2) {
                reserved_here = true;
            }
        }
        let r = DmaRegion::allocate(3 << 20, PagePolicy::RequireHuge);
        match r {
            Ok(region) => {
                assert_eq!(region.kind(), PageKind::Huge2M);
                assert_eq!(region.len(), 4 << 20);
                assert_eq!(region.va() % (2 << 20), 0);
                region.write((4 << 20) - 8, &[9; 8]);
                let mut b = [0; 8];
                region.read((4 << 20) - 8, &mut b);
                assert_eq!(b, [9; 8]);
                drop(region);
            }
            Err(Error::HugepagesUnavailable { .. }) => {
                eprintln!(
                    "skipped: no 2 MiB hugepages reserved and this process cannot reserve them"
                );
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        if reserved_here {
            sysfs::set_total_hugepages(before).unwrap();
        }
    }

    #[test]
    fn require_huge_without_reserve_is_a_clear_error() {
        // With no hugepages reserved, RequireHuge must fail with a message naming the fix.
        let _g = HUGEPAGE_RESERVE.lock().unwrap_or_else(|e| e.into_inner());
        if crate::sysfs::free_hugepages_total().unwrap_or(0) > 0 {
            eprintln!("skipped: hugepages are reserved on this machine");
            return;
        }
        match DmaRegion::allocate(1 << 20, PagePolicy::RequireHuge) {
            Err(e @ Error::HugepagesUnavailable { .. }) => {
                assert!(e.to_string().contains("vfnvme-setup hugepages"));
            }
            other => panic!("expected HugepagesUnavailable, got {other:?}"),
        }
        let r = DmaRegion::allocate(1 << 20, PagePolicy::PreferHuge).unwrap();
        assert_eq!(
            r.kind(),
            crate::region::PageKind::Small4K,
            "falls back to small pages"
        );
    }
}
