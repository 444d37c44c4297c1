//! Namespaces of a simulated subsystem: geometry, identifiers and the backing store shared by
//! every controller.
//!
//! A RAM namespace keeps its blocks in a [`DmaRegion`], so a transfer is a bounds-checked raw
//! copy between two regions and two controllers may read and write it at once (as two ports of a
//! real SSD may; overlapping writes race like they would on the device). A null namespace moves
//! no data: reads leave the host buffer untouched and writes are discarded.

use vfnvme_hugepages::{DmaRegion, PagePolicy};

use crate::spec::identify::{IdentifyNamespace, NsIdentifier};
use zerocopy::FromZeros;

use super::dma::DmaView;
use super::prp::Seg;

/// What holds a namespace's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backing {
    /// Blocks live in memory, shared by all controllers; they start zeroed.
    #[default]
    Ram,
    /// Reads and writes complete without moving data (for benchmarks).
    Null,
}

/// Configuration of one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsConfig {
    /// Namespace id, 1-based.
    pub nsid: u32,
    /// Capacity in bytes (rounded down to whole blocks).
    pub size_bytes: u64,
    /// Logical block size: 512 or 4096.
    pub lba_size: u32,
    /// Data store.
    pub backing: Backing,
    /// Metadata bytes per block in the reported format (separate buffer, FLBAS bit 4 clear).
    /// Only reported in Identify Namespace: the simulator moves no metadata.
    pub metadata_size: u16,
}

impl NsConfig {
    /// A RAM namespace of `size_bytes` with 512-byte blocks.
    pub fn ram(nsid: u32, size_bytes: u64) -> NsConfig {
        NsConfig {
            nsid,
            size_bytes,
            lba_size: 512,
            backing: Backing::Ram,
            metadata_size: 0,
        }
    }

    /// A null namespace of `size_bytes` with 4 KiB blocks.
    pub fn null(nsid: u32, size_bytes: u64) -> NsConfig {
        NsConfig {
            nsid,
            size_bytes,
            lba_size: 4096,
            backing: Backing::Null,
            metadata_size: 0,
        }
    }
}

/// A namespace as the device sees it.
#[derive(Debug)]
pub(crate) struct Namespace {
    pub(crate) nsid: u32,
    pub(crate) lba_shift: u32,
    pub(crate) nsze: u64,
    pub(crate) metadata_size: u16,
    pub(crate) store: Option<DmaRegion>,
    pub(crate) nguid: [u8; 16],
    pub(crate) eui64: [u8; 8],
    pub(crate) uuid: [u8; 16],
}

impl Namespace {
    pub(crate) fn new(cfg: &NsConfig, subsys_id: u32) -> Result<Namespace, String> {
        let lba_shift = match cfg.lba_size {
            512 => 9,
            4096 => 12,
            n => {
                return Err(format!(
                    "nsid {}: lba_size {n} (want 512 or 4096)",
                    cfg.nsid
                ))
            }
        };
        if cfg.nsid == 0 || cfg.nsid == u32::MAX {
            return Err(format!("invalid nsid {}", cfg.nsid));
        }
        let nsze = cfg.size_bytes >> lba_shift;
        if nsze == 0 {
            return Err(format!("nsid {}: smaller than one block", cfg.nsid));
        }
        let store = match cfg.backing {
            Backing::Null => None,
            Backing::Ram => {
                let len = usize::try_from(nsze << lba_shift)
                    .map_err(|_| format!("nsid {}: too large", cfg.nsid))?;
                Some(
                    DmaRegion::allocate(len, PagePolicy::Small)
                        .map_err(|e| format!("nsid {}: {e}", cfg.nsid))?,
                )
            }
        };
        let s = subsys_id.to_be_bytes();
        let n = cfg.nsid.to_be_bytes();
        let nguid = [
            0x76, 0x66, 0x6e, 0x76, s[0], s[1], s[2], s[3], 0, 0, 0, 1, n[0], n[1], n[2], n[3],
        ];
        let eui64 = [0x00, 0x76, 0x66, s[2], s[3], n[1], n[2], n[3]];
        let mut uuid = nguid;
        uuid[6] = 0x40 | (uuid[6] & 0x0f);
        uuid[8] = 0x80 | (uuid[8] & 0x3f);
        Ok(Namespace {
            nsid: cfg.nsid,
            lba_shift,
            nsze,
            metadata_size: cfg.metadata_size,
            store,
            nguid,
            eui64,
            uuid,
        })
    }

    /// True if `[slba, slba + nlb)` lies inside the namespace.
    #[inline]
    pub(crate) fn in_range(&self, slba: u64, nlb: u64) -> bool {
        slba.checked_add(nlb).is_some_and(|end| end <= self.nsze)
    }

    /// Identify Namespace data for this namespace, ANA group `anagrpid` (0 = no ANA).
    pub(crate) fn identify(&self, anagrpid: u32) -> IdentifyNamespace {
        let mut id = IdentifyNamespace::new_zeroed();
        id.nsze = self.nsze;
        id.ncap = self.nsze;
        id.nuse = self.nsze;
        id.nlbaf = 0;
        id.flbas = 0;
        id.nmic = 1;
        // Deallocated blocks read as zeroes; Write Zeroes may deallocate.
        id.dlfeat = 0x09;
        id.anagrpid = anagrpid;
        id.nguid = self.nguid;
        id.eui64 = self.eui64;
        id.lbaf[0].lbads = self.lba_shift as u8;
        id.lbaf[0].ms = self.metadata_size;
        id
    }

    /// The identifiers of the CNS 03h descriptor list.
    pub(crate) fn descriptors(&self) -> [NsIdentifier; 4] {
        [
            NsIdentifier::Eui64(self.eui64),
            NsIdentifier::Nguid(self.nguid),
            NsIdentifier::Uuid(self.uuid),
            NsIdentifier::Csi(0),
        ]
    }

    /// Copies blocks starting at byte `ns_off` to the host segments.
    pub(crate) fn read_to(&self, ns_off: usize, view: &DmaView, segs: &[Seg]) {
        let Some(store) = &self.store else { return };
        let mut off = ns_off;
        for s in segs {
            store.copy_to(off, view.region(s.loc), s.loc.offset, s.len);
            off += s.len;
        }
    }

    /// Copies the host segments into blocks starting at byte `ns_off`.
    pub(crate) fn write_from(&self, ns_off: usize, view: &DmaView, segs: &[Seg]) {
        let Some(store) = &self.store else { return };
        let mut off = ns_off;
        for s in segs {
            view.region(s.loc).copy_to(s.loc.offset, store, off, s.len);
            off += s.len;
        }
    }

    /// True if the host segments equal the blocks at byte `ns_off` (always true for null).
    pub(crate) fn compare(&self, ns_off: usize, view: &DmaView, segs: &[Seg]) -> bool {
        let Some(store) = &self.store else {
            return true;
        };
        let mut off = ns_off;
        for s in segs {
            if !store.equal(off, view.region(s.loc), s.loc.offset, s.len) {
                return false;
            }
            off += s.len;
        }
        true
    }

    /// Zeroes `nlb` blocks from `slba` (the caller checked the range).
    pub(crate) fn zero(&self, slba: u64, nlb: u64) {
        if let Some(store) = &self.store {
            store.fill(
                (slba << self.lba_shift) as usize,
                (nlb << self.lba_shift) as usize,
                0,
            );
        }
    }

    /// Byte offset of `slba`.
    #[inline]
    pub(crate) fn byte_offset(&self, slba: u64) -> usize {
        (slba << self.lba_shift) as usize
    }
}
