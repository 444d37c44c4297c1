//! The simulated controller's DMA domain: an IOMMU model.
//!
//! Each controller owns one [`DomainId`] and a table of mappings (IOVA range → [`DmaRegion`]).
//! [`SimMapper::map`] places a region at `va + salt`, where the salt is `(index + 1) << 48`, so
//! an IOVA that is valid for one controller is never valid for another (user VAs are below
//! 2^47). Every device access to host memory goes through [`DmaView::translate`]; an access that
//! falls outside every mapping is a Data Transfer Error for the command that made it.
//!
//! The table changes only on map/unmap. Readers keep a [`DmaView`]: a snapshot of the table plus
//! the generation it was taken at, refreshed with one atomic load per doorbell, and a last-hit
//! index so that the common translation is two compares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vfnvme_hugepages::{DmaMapper, DmaRegion, DomainId, Iova};

use super::lock;

/// One mapping: `[start, end)` in IOVA space is `region` from its first byte.
#[derive(Clone, Debug)]
pub(crate) struct Mapping {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) region: DmaRegion,
}

/// The DMA mapper of one simulated controller (its IOMMU domain).
#[derive(Debug)]
pub struct SimMapper {
    domain: DomainId,
    salt: u64,
    name: String,
    table: Mutex<Arc<Vec<Mapping>>>,
    generation: AtomicU64,
}

impl SimMapper {
    pub(crate) fn new(domain: DomainId, salt: u64, name: String) -> SimMapper {
        SimMapper {
            domain,
            salt,
            name,
            table: Mutex::new(Arc::new(Vec::new())),
            generation: AtomicU64::new(1),
        }
    }

    /// The constant added to a region's VA to form its IOVA in this domain.
    pub fn salt(&self) -> u64 {
        self.salt
    }

    /// Number of regions mapped now.
    pub fn mapping_count(&self) -> usize {
        lock(&self.table).len()
    }

    fn snapshot(&self) -> (u64, Arc<Vec<Mapping>>) {
        let t = lock(&self.table);
        (self.generation.load(Ordering::Acquire), t.clone())
    }

    /// A fresh view for device-side translation.
    pub(crate) fn view(&self) -> DmaView {
        let (generation, maps) = self.snapshot();
        DmaView {
            generation,
            maps,
            last: 0,
        }
    }

    /// Brings `view` up to date if the table changed since it was taken (one atomic load).
    #[inline]
    pub(crate) fn refresh(&self, view: &mut DmaView) {
        if self.generation.load(Ordering::Acquire) != view.generation {
            *view = self.view();
        }
    }

    fn map_err(&self, region: &DmaRegion, detail: String) -> vfnvme_hugepages::Error {
        vfnvme_hugepages::Error::Map {
            domain: self.domain,
            va: region.va(),
            len: region.len(),
            detail: format!("{}: {detail}", self.name),
        }
    }
}

impl Drop for SimMapper {
    fn drop(&mut self) {
        // The last owner is gone: every pool that mapped regions through us has unmapped them
        // (a pool holds an `Arc` to its mappers), so no region keeps a stale slot for this id.
        self.domain.release();
    }
}

impl DmaMapper for SimMapper {
    fn domain(&self) -> DomainId {
        self.domain
    }

    fn map(&self, region: &DmaRegion) -> vfnvme_hugepages::Result<Iova> {
        let start = (region.va() as u64)
            .checked_add(self.salt)
            .ok_or_else(|| self.map_err(region, "IOVA overflow".into()))?;
        let end = start + region.len() as u64;
        let mut t = lock(&self.table);
        if t.iter().any(|m| m.start < end && start < m.end) {
            return Err(self.map_err(region, "overlaps an existing mapping".into()));
        }
        let mut v: Vec<Mapping> = t.as_ref().clone();
        let pos = v.partition_point(|m| m.start < start);
        v.insert(
            pos,
            Mapping {
                start,
                end,
                region: region.clone(),
            },
        );
        *t = Arc::new(v);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(Iova(start))
    }

    fn unmap(&self, region: &DmaRegion, iova: Iova) -> vfnvme_hugepages::Result<()> {
        let mut t = lock(&self.table);
        let Some(pos) = t
            .iter()
            .position(|m| m.start == iova.0 && m.region.same(region))
        else {
            return Err(self.map_err(region, format!("no mapping at {iova}")));
        };
        let mut v: Vec<Mapping> = t.as_ref().clone();
        v.remove(pos);
        *t = Arc::new(v);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// A device-side snapshot of a domain's mappings with a last-hit cache.
#[derive(Clone, Debug)]
pub(crate) struct DmaView {
    generation: u64,
    maps: Arc<Vec<Mapping>>,
    last: usize,
}

/// Where a translated IOVA lands: mapping index and byte offset in its region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) map: u32,
    pub(crate) offset: usize,
}

impl DmaView {
    /// Translates `len` bytes at `iova`; `None` when any byte is outside every mapping or the
    /// range crosses the end of its mapping.
    #[inline]
    pub(crate) fn translate(&mut self, iova: u64, len: usize) -> Option<Loc> {
        let end = iova.checked_add(len as u64)?;
        if let Some(m) = self.maps.get(self.last) {
            if iova >= m.start && end <= m.end {
                return Some(Loc {
                    map: self.last as u32,
                    offset: (iova - m.start) as usize,
                });
            }
        }
        let idx = self
            .maps
            .partition_point(|m| m.start <= iova)
            .checked_sub(1)?;
        let m = &self.maps[idx];
        if end <= m.end {
            self.last = idx;
            Some(Loc {
                map: idx as u32,
                offset: (iova - m.start) as usize,
            })
        } else {
            None
        }
    }

    /// The region behind a [`Loc`] from this view.
    #[inline]
    pub(crate) fn region(&self, loc: Loc) -> &DmaRegion {
        &self.maps[loc.map as usize].region
    }

    /// Translates and returns the region and offset (cloning the region handle).
    pub(crate) fn resolve(&mut self, iova: u64, len: usize) -> Option<(DmaRegion, usize)> {
        let loc = self.translate(iova, len)?;
        Some((self.region(loc).clone(), loc.offset))
    }
}
