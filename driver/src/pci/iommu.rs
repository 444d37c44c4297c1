//! The IOVA space of a type1 VFIO container and its [`DmaMapper`].
//!
//! The IOMMU reports which IOVAs it can translate (`VFIO_IOMMU_GET_INFO` with the IOVA-range
//! capability): on x86 the MSI window 0xfee00000..0xfeefffff is always excluded, and a 39-bit
//! vIOMMU cannot reach normal mmap addresses at all. [`Type1Mapper::map`] uses IOVA = VA, as SPDK
//! does, when the region's virtual range lies inside a valid range and no other mapping of the
//! container uses it; otherwise it places the mapping first-fit inside the valid ranges.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vfnvme_hugepages::region::{PageKind, HUGE_PAGE_SIZE, SMALL_PAGE_SIZE};
use vfnvme_hugepages::{DmaMapper, DmaRegion, DomainId, Iova};

use super::sys::Type1Ops;

/// `VFIO_IOMMU_INFO_CAPS`: the info has a capability chain.
const INFO_CAPS: u32 = 2;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`.
const CAP_IOVA_RANGE: u16 = 1;
/// The lowest IOVA the allocator hands out (keeps 0 and the first MiB unused: a zero PRP is a
/// classic bug, and should fault).
pub const MIN_ALLOC_IOVA: u64 = 1 << 20;

/// What `VFIO_IOMMU_GET_INFO` says about a type1 container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuInfo {
    /// Supported IOMMU page sizes (bit n set: 2^n bytes).
    pub iova_pgsizes: u64,
    /// Valid IOVA ranges, `(start, end)` with inclusive ends, sorted. `None` when the kernel
    /// reported no IOVA-range capability (before Linux 5.4).
    pub ranges: Option<Vec<(u64, u64)>>,
}

/// Why IOMMU info bytes did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed VFIO_IOMMU_GET_INFO reply: {0}")]
pub struct InfoParseError(pub &'static str);

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Parses the bytes of `struct vfio_iommu_type1_info` and its capability chain (as returned by
/// [`super::sys::iommu_info`]). Never panics on bad input.
///
/// # Errors
/// [`InfoParseError`] for a truncated struct, a chain that points outside the buffer or loops,
/// or an IOVA range that ends before it starts.
pub fn parse_iommu_info(b: &[u8]) -> Result<IommuInfo, InfoParseError> {
    let flags = u32_at(b, 4).ok_or(InfoParseError("shorter than the info struct"))?;
    let iova_pgsizes = u64_at(b, 8).ok_or(InfoParseError("shorter than the info struct"))?;
    let cap_offset = u32_at(b, 16).ok_or(InfoParseError("shorter than the info struct"))?;
    let mut ranges = None;
    if flags & INFO_CAPS != 0 {
        let mut off = cap_offset as usize;
        let mut hops = 0;
        while off != 0 {
            hops += 1;
            if hops > 64 {
                return Err(InfoParseError("capability chain loops"));
            }
            if off < 24 {
                return Err(InfoParseError("capability inside the info struct"));
            }
            let id = u16_at(b, off).ok_or(InfoParseError("capability header out of bounds"))?;
            let next =
                u32_at(b, off + 4).ok_or(InfoParseError("capability header out of bounds"))?;
            if id == CAP_IOVA_RANGE {
                let n = u32_at(b, off + 8).ok_or(InfoParseError("IOVA range cap truncated"))?;
                let mut v = Vec::with_capacity((n as usize).min(64));
                for i in 0..n as usize {
                    let at = off + 16 + i * 16;
                    let s = u64_at(b, at).ok_or(InfoParseError("IOVA range cap truncated"))?;
                    let e = u64_at(b, at + 8).ok_or(InfoParseError("IOVA range cap truncated"))?;
                    if e < s {
                        return Err(InfoParseError("IOVA range ends before it starts"));
                    }
                    v.push((s, e));
                }
                v.sort_unstable();
                ranges = Some(v);
            }
            off = next as usize;
        }
    }
    Ok(IommuInfo {
        iova_pgsizes,
        ranges,
    })
}

/// Bookkeeping of one container's IOVA space: the valid ranges and every live mapping.
#[derive(Clone, Debug)]
pub struct IovaSpace {
    ranges: Vec<(u64, u64)>,
    /// start -> length, every live mapping (identity or allocated).
    used: BTreeMap<u64, u64>,
}

impl IovaSpace {
    /// A space with these valid ranges (inclusive ends).
    pub fn new(mut ranges: Vec<(u64, u64)>) -> IovaSpace {
        ranges.sort_unstable();
        IovaSpace {
            ranges,
            used: BTreeMap::new(),
        }
    }

    /// The valid ranges.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    fn in_ranges(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len - 1) else {
            return false;
        };
        self.ranges.iter().any(|&(s, e)| s <= start && end <= e)
    }

    /// The first live mapping that overlaps `[start, start+len)`, as (start, len).
    fn overlap(&self, start: u64, len: u64) -> Option<(u64, u64)> {
        let end = start.saturating_add(len);
        // The mapping starting at or before `start`, then any starting inside the range.
        if let Some((&s, &l)) = self.used.range(..=start).next_back() {
            if s.saturating_add(l) > start {
                return Some((s, l));
            }
        }
        self.used.range(start..end).next().map(|(&s, &l)| (s, l))
    }

    /// True if `[start, start+len)` lies in a valid range and overlaps no live mapping.
    pub fn is_free(&self, start: u64, len: u64) -> bool {
        len > 0 && self.in_ranges(start, len) && self.overlap(start, len).is_none()
    }

    /// Records `[start, start+len)` as used (the caller checked [`IovaSpace::is_free`]).
    pub fn reserve(&mut self, start: u64, len: u64) {
        self.used.insert(start, len);
    }

    /// First fit: the lowest IOVA at or above [`MIN_ALLOC_IOVA`], aligned to `align` (a power of
    /// two), where `len` bytes are free. Records it.
    pub fn allocate(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let align_up = |v: u64| v.checked_add(align - 1).map(|x| x & !(align - 1));
        for &(rs, re) in &self.ranges {
            let mut cand = align_up(rs.max(MIN_ALLOC_IOVA))?;
            while let Some(last) = cand.checked_add(len - 1) {
                if cand < rs || last > re {
                    break;
                }
                match self.overlap(cand, len) {
                    None => {
                        self.used.insert(cand, len);
                        return Some(cand);
                    }
                    Some((s, l)) => match s.checked_add(l).and_then(align_up) {
                        Some(next) => cand = next,
                        None => break,
                    },
                }
            }
        }
        None
    }

    /// Forgets the mapping at `start`; returns its length.
    pub fn release(&mut self, start: u64) -> Option<u64> {
        self.used.remove(&start)
    }

    /// Live mappings.
    pub fn mappings(&self) -> usize {
        self.used.len()
    }
}

/// The [`DmaMapper`] of a type1 container: one DMA domain shared by every function in the
/// container.
pub struct Type1Mapper {
    domain: DomainId,
    ops: Arc<dyn Type1Ops>,
    space: Mutex<IovaSpace>,
    /// Name for errors and logs ("container of 0000:01:00.0, 0000:02:00.0").
    label: String,
}

impl std::fmt::Debug for Type1Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Type1Mapper")
            .field("domain", &self.domain)
            .field("label", &self.label)
            .finish()
    }
}

impl Type1Mapper {
    /// A mapper over `ops` whose IOMMU accepts `ranges`. Takes a [`DomainId`], given back on drop.
    ///
    /// # Errors
    /// [`vfnvme_hugepages::Error::TooManyDomains`] when every domain id is taken.
    pub fn new(
        ops: Arc<dyn Type1Ops>,
        ranges: Vec<(u64, u64)>,
        label: String,
    ) -> Result<Type1Mapper, vfnvme_hugepages::Error> {
        let domain = DomainId::allocate().ok_or(vfnvme_hugepages::Error::TooManyDomains)?;
        Ok(Type1Mapper {
            domain,
            ops,
            space: Mutex::new(IovaSpace::new(ranges)),
            label,
        })
    }

    /// The valid IOVA ranges of the container.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.space.lock().unwrap().ranges().to_vec()
    }

    /// Live mappings in the container.
    pub fn mappings(&self) -> usize {
        self.space.lock().unwrap().mappings()
    }

    fn err(&self, region: &DmaRegion, detail: String) -> vfnvme_hugepages::Error {
        vfnvme_hugepages::Error::Map {
            domain: self.domain,
            va: region.va(),
            len: region.len(),
            detail: format!("{}: {detail}", self.label),
        }
    }
}

impl Drop for Type1Mapper {
    fn drop(&mut self) {
        self.domain.release();
    }
}

impl DmaMapper for Type1Mapper {
    fn domain(&self) -> DomainId {
        self.domain
    }

    fn map(&self, region: &DmaRegion) -> vfnvme_hugepages::Result<Iova> {
        let len = region.len() as u64;
        let va = region.va() as u64;
        let mut space = self.space.lock().unwrap();
        let iova = if space.is_free(va, len) {
            space.reserve(va, len);
            va
        } else {
            let align = match region.kind() {
                PageKind::Huge2M => HUGE_PAGE_SIZE,
                PageKind::Small4K => SMALL_PAGE_SIZE,
            } as u64;
            space.allocate(len, align).ok_or_else(|| {
                self.err(
                    region,
                    format!(
                        "no free IOVA range of {len:#x} bytes inside the IOMMU's ranges {:x?}",
                        space.ranges()
                    ),
                )
            })?
        };
        if let Err(e) = self.ops.map(iova, region) {
            space.release(iova);
            return Err(self.err(region, format!("VFIO_IOMMU_MAP_DMA at iova {iova:#x}: {e}")));
        }
        log::debug!(
            "{}: mapped va {va:#x} len {len:#x} at iova {iova:#x}{}",
            self.label,
            if iova == va { " (identity)" } else { "" }
        );
        Ok(Iova(iova))
    }

    fn unmap(&self, region: &DmaRegion, iova: Iova) -> vfnvme_hugepages::Result<()> {
        let mut space = self.space.lock().unwrap();
        let r = self.ops.unmap(iova.0, region.len());
        // Forget the range either way: after a failed unmap the kernel still holds it, but the
        // region is about to go and a retry would fail the same way.
        space.release(iova.0);
        r.map_err(|e| self.err(region, format!("VFIO_IOMMU_UNMAP_DMA at iova {iova}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::sys::fake::FakeIommu;
    use vfnvme_hugepages::PagePolicy;

    fn info_bytes(flags: u32, caps: &[(u16, Vec<(u64, u64)>)]) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&0x4020_1000u64.to_le_bytes());
        if !caps.is_empty() {
            b[16..20].copy_from_slice(&24u32.to_le_bytes());
        }
        for (i, (id, ranges)) in caps.iter().enumerate() {
            let start = b.len();
            let size = 16 + ranges.len() * 16;
            let next = if i + 1 < caps.len() { start + size } else { 0 };
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes());
            b.extend_from_slice(&(next as u32).to_le_bytes());
            b.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            for (s, e) in ranges {
                b.extend_from_slice(&s.to_le_bytes());
                b.extend_from_slice(&e.to_le_bytes());
            }
        }
        let n = b.len() as u32;
        b[0..4].copy_from_slice(&n.to_le_bytes());
        b
    }

    #[test]
    fn parses_the_iova_range_capability_after_another_cap() {
        let b = info_bytes(
            3,
            &[
                (2, vec![]), // a migration cap, skipped
                (1, vec![(0xfef0_0000, 0xffff_ffff_ffff), (0, 0xfedf_ffff)]),
            ],
        );
        let info = parse_iommu_info(&b).unwrap();
        assert_eq!(info.iova_pgsizes, 0x4020_1000);
        assert_eq!(
            info.ranges,
            Some(vec![(0, 0xfedf_ffff), (0xfef0_0000, 0xffff_ffff_ffff)])
        );
    }

    #[test]
    fn no_caps_flag_means_no_ranges() {
        let b = info_bytes(1, &[(1, vec![(0, 10)])]);
        assert_eq!(parse_iommu_info(&b).unwrap().ranges, None);
    }

    #[test]
    fn malformed_info_is_an_error_not_a_panic() {
        assert!(parse_iommu_info(&[0u8; 10]).is_err());
        let mut b = info_bytes(3, &[(1, vec![(0, 10)])]);
        b.truncate(b.len() - 4);
        assert!(parse_iommu_info(&b).is_err(), "truncated range");
        let mut b = info_bytes(3, &[(1, vec![(10, 0)])]);
        assert!(parse_iommu_info(&b).is_err(), "end before start");
        b = info_bytes(3, &[(2, vec![])]);
        b[28..32].copy_from_slice(&24u32.to_le_bytes()); // next points at itself
        assert!(parse_iommu_info(&b).is_err(), "loop");
        b = info_bytes(3, &[(2, vec![])]);
        b[16..20].copy_from_slice(&4000u32.to_le_bytes());
        assert!(parse_iommu_info(&b).is_err(), "out of bounds");
        // Arbitrary bytes never panic.
        for seed in 0..2000u32 {
            let v: Vec<u8> = (0..64 + seed % 64)
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) as u8)
                .collect();
            let _ = parse_iommu_info(&v);
        }
    }

    #[test]
    fn allocator_first_fit_skips_holes_and_used_ranges() {
        // A 39-bit space with the MSI hole.
        let mut s = IovaSpace::new(vec![(0xfef0_0000, (1 << 39) - 1), (0, 0xfedf_ffff)]);
        let a = s.allocate(0x20_0000, 0x20_0000).unwrap();
        assert_eq!(
            a, 0x20_0000,
            "first 2 MiB-aligned IOVA above MIN_ALLOC_IOVA"
        );
        let b = s.allocate(0x1000, 0x1000).unwrap();
        assert_eq!(b, 0x10_0000, "a 4 KiB block fits below the 2 MiB one");
        assert!(!s.is_free(a, 0x1000));
        assert!(!s.is_free(0xfee0_0000, 0x1000), "MSI window");
        assert!(s.is_free(0xfef0_0000, 0x1000));
        assert!(!s.is_free((1 << 39) - 0x1000, 0x2000), "past the end");
        // Fill up to the hole: a 2 MiB block that would straddle it goes above it.
        s.reserve(0x40_1000, 0xfedf_ffff - 0x40_1000 + 1 - 0x10_0000);
        let c = s.allocate(0x20_0000, 0x20_0000).unwrap();
        assert_eq!(c, 0xff00_0000);
        assert_eq!(s.release(b), Some(0x1000));
        assert_eq!(s.allocate(0x1000, 0x1000), Some(0x10_0000), "reused");
        assert_eq!(s.allocate(1 << 40, 0x1000), None, "too big");
    }

    #[test]
    fn identity_when_the_va_fits_else_allocated() {
        let r1 = DmaRegion::allocate(8192, PagePolicy::Small).unwrap();
        let r2 = DmaRegion::allocate(8192, PagePolicy::Small).unwrap();
        // 48-bit ranges: VA fits.
        let wide = Arc::new(FakeIommu {
            ranges: vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 48) - 1)],
            ..Default::default()
        });
        let m = Type1Mapper::new(wide.clone(), wide.ranges.clone(), "wide".into()).unwrap();
        let i1 = r1.map_into(&m).unwrap();
        assert_eq!(i1.0, r1.va() as u64);
        assert_eq!(r1.iova_base(m.domain()), Some(i1));
        r1.unmap_from(&m).unwrap();
        assert!(wide.maps.lock().unwrap().is_empty());

        // 39-bit ranges: user VAs (0x7f..) do not fit, so IOVAs are allocated low.
        let narrow = Arc::new(FakeIommu {
            ranges: vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)],
            ..Default::default()
        });
        let m2 = Type1Mapper::new(narrow.clone(), narrow.ranges.clone(), "narrow".into()).unwrap();
        assert_ne!(m.domain(), m2.domain());
        let a = r1.map_into(&m2).unwrap();
        let b = r2.map_into(&m2).unwrap();
        if r1.va() as u64 >= 1 << 39 {
            assert_eq!(a.0, MIN_ALLOC_IOVA);
            assert_eq!(b.0, MIN_ALLOC_IOVA + 8192);
        }
        assert_eq!(narrow.maps.lock().unwrap().len(), 2);
        assert_eq!(m2.mappings(), 2);
        r1.unmap_from(&m2).unwrap();
        r2.unmap_from(&m2).unwrap();
        assert_eq!(m2.mappings(), 0);
    }

    #[test]
    fn a_refused_map_leaves_no_reservation() {
        let r = DmaRegion::allocate(4096, PagePolicy::Small).unwrap();
        // The fake accepts nothing: its ranges are empty, while the mapper believes all is valid.
        let none = Arc::new(FakeIommu::default());
        let m = Type1Mapper::new(none, vec![(0, u64::MAX)], "refusing".into()).unwrap();
        let e = m.map(&r).unwrap_err().to_string();
        assert!(e.contains("refusing"), "{e}");
        assert_eq!(m.mappings(), 0);
    }
}
