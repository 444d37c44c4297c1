//! Controller registers in BAR0 (NVMe Base 2.0 §3.1.3).
//!
//! Each register is a `bitfield-struct` newtype over its raw integer, so
//! `Cc::new().with_en(true)` builds a value and `u32::from(cc)` gives the
//! bits to write.

use bitfield_struct::bitfield;

/// Byte offsets of the controller registers in BAR0 (§3.1.3, Figure 33).
pub mod offset {
    /// Controller Capabilities, 64 bit.
    pub const CAP: usize = 0x00;
    /// Version.
    pub const VS: usize = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: usize = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: usize = 0x10;
    /// Controller Configuration.
    pub const CC: usize = 0x14;
    /// Controller Status.
    pub const CSTS: usize = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: usize = 0x20;
    /// Admin Queue Attributes.
    pub const AQA: usize = 0x24;
    /// Admin Submission Queue base address, 64 bit.
    pub const ASQ: usize = 0x28;
    /// Admin Completion Queue base address, 64 bit.
    pub const ACQ: usize = 0x30;
    /// Controller Memory Buffer Location.
    pub const CMBLOC: usize = 0x38;
    /// Controller Memory Buffer Size.
    pub const CMBSZ: usize = 0x3c;
    /// First doorbell register (admin SQ tail).
    pub const DOORBELL_BASE: usize = 0x1000;
}

/// Value a 32-bit register read returns when the device has gone away
/// (surprise removal, link down, or function-level reset in progress).
pub const ALL_ONES_32: u32 = u32::MAX;

/// Value written to NSSR to start an NVM subsystem reset ("NVMe", §3.1.3.6).
pub const NSSR_RESET_VALUE: u32 = 0x4E56_4D65;

/// CC.SHN shutdown notification values (§3.1.3.5).
pub mod shn {
    /// No notification.
    pub const NONE: u8 = 0;
    /// Normal shutdown notification.
    pub const NORMAL: u8 = 1;
    /// Abrupt shutdown notification.
    pub const ABRUPT: u8 = 2;
}

/// CSTS.SHST shutdown status values (§3.1.3.6).
pub mod shst {
    /// Normal operation, no shutdown requested.
    pub const NORMAL: u8 = 0;
    /// Shutdown processing in progress.
    pub const OCCURRING: u8 = 1;
    /// Shutdown processing complete.
    pub const COMPLETE: u8 = 2;
}

/// Controller Capabilities, CAP at 0x00 (§3.1.3.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Cap {
    /// Maximum Queue Entries Supported, 0-based.
    pub mqes: u16,
    /// Contiguous Queues Required.
    pub cqr: bool,
    /// Arbitration Mechanism Supported.
    #[bits(2)]
    pub ams: u8,
    #[bits(5)]
    __: u8,
    /// Timeout for CSTS.RDY transitions, in 500 ms units.
    pub to: u8,
    /// Doorbell Stride: doorbells are `4 << dstrd` bytes apart.
    #[bits(4)]
    pub dstrd: u8,
    /// NVM Subsystem Reset Supported.
    pub nssrs: bool,
    /// Command Sets Supported (bit 0 NVM, bit 6 I/O command sets, bit 7 no I/O).
    pub css: u8,
    /// Boot Partition Support.
    pub bps: bool,
    #[bits(2)]
    __: u8,
    /// Memory Page Size Minimum: `2^(12 + mpsmin)` bytes.
    #[bits(4)]
    pub mpsmin: u8,
    /// Memory Page Size Maximum: `2^(12 + mpsmax)` bytes.
    #[bits(4)]
    pub mpsmax: u8,
    /// Persistent Memory Region Supported.
    pub pmrs: bool,
    /// Controller Memory Buffer Supported.
    pub cmbs: bool,
    #[bits(6)]
    __: u8,
}

impl Cap {
    /// Worst-case time for CSTS.RDY to change after CC.EN changes (TO × 500 ms).
    pub const fn timeout_ms(&self) -> u64 {
        self.to() as u64 * 500
    }

    /// Distance between consecutive doorbell registers in bytes.
    pub const fn doorbell_stride_bytes(&self) -> usize {
        4usize << self.dstrd()
    }

    /// Maximum entries per queue, as a count (MQES + 1).
    pub const fn max_queue_entries(&self) -> u32 {
        self.mqes() as u32 + 1
    }

    /// Smallest supported memory page size in bytes.
    pub const fn mps_min_bytes(&self) -> u64 {
        1u64 << (12 + self.mpsmin())
    }

    /// Largest supported memory page size in bytes.
    pub const fn mps_max_bytes(&self) -> u64 {
        1u64 << (12 + self.mpsmax())
    }
}

/// Version, VS at 0x08 (§3.1.3.2).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Vs {
    /// Tertiary version number.
    pub ter: u8,
    /// Minor version number.
    pub mnr: u8,
    /// Major version number.
    pub mjr: u16,
}

/// Controller Configuration, CC at 0x14 (§3.1.3.5).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Cc {
    /// Enable.
    pub en: bool,
    #[bits(3)]
    __: u8,
    /// I/O Command Set Selected (0 = NVM).
    #[bits(3)]
    pub css: u8,
    /// Memory Page Size: `2^(12 + mps)` bytes.
    #[bits(4)]
    pub mps: u8,
    /// Arbitration Mechanism Selected.
    #[bits(3)]
    pub ams: u8,
    /// Shutdown Notification, see [`shn`].
    #[bits(2)]
    pub shn: u8,
    /// I/O SQ entry size as log2 bytes (6 = 64 B).
    #[bits(4)]
    pub iosqes: u8,
    /// I/O CQ entry size as log2 bytes (4 = 16 B).
    #[bits(4)]
    pub iocqes: u8,
    #[bits(8)]
    __: u8,
}

impl Cc {
    /// Memory page size selected by CC.MPS, in bytes.
    pub const fn page_size_bytes(&self) -> u64 {
        1u64 << (12 + self.mps())
    }
}

/// Controller Status, CSTS at 0x1c (§3.1.3.6).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Csts {
    /// Ready.
    pub rdy: bool,
    /// Controller Fatal Status.
    pub cfs: bool,
    /// Shutdown Status, see [`shst`].
    #[bits(2)]
    pub shst: u8,
    /// NVM Subsystem Reset Occurred.
    pub nssro: bool,
    /// Processing Paused.
    pub pp: bool,
    #[bits(26)]
    __: u32,
}

/// Admin Queue Attributes, AQA at 0x24 (§3.1.3.8). Sizes are 0-based.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Aqa {
    /// Admin Submission Queue Size, 0-based entries.
    #[bits(12)]
    pub asqs: u16,
    #[bits(4)]
    __: u8,
    /// Admin Completion Queue Size, 0-based entries.
    #[bits(12)]
    pub acqs: u16,
    #[bits(4)]
    __: u8,
}

/// Controller Memory Buffer Location, CMBLOC at 0x38 (§3.1.3.11).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Cmbloc {
    /// Base Indicator Register: which BAR holds the CMB.
    #[bits(3)]
    pub bir: u8,
    #[bits(9)]
    __: u16,
    /// Offset of the CMB within the BAR, in CMBSZ.SZU units.
    #[bits(20)]
    pub ofst: u32,
}

/// Controller Memory Buffer Size, CMBSZ at 0x3c (§3.1.3.12).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Cmbsz {
    /// Submission Queue Support.
    pub sqs: bool,
    /// Completion Queue Support.
    pub cqs: bool,
    /// PRP/SGL List Support.
    pub lists: bool,
    /// Read Data Support.
    pub rds: bool,
    /// Write Data Support.
    pub wds: bool,
    #[bits(3)]
    __: u8,
    /// Size Units: `4 KiB × 16^szu`.
    #[bits(4)]
    pub szu: u8,
    /// Size, in SZU units.
    #[bits(20)]
    pub sz: u32,
}

/// BAR0 offset of the SQ `qid` tail doorbell (§3.1.3, SQyTDBL).
pub const fn sq_tail_doorbell(qid: u16, dstrd: u8) -> usize {
    offset::DOORBELL_BASE + (2 * qid as usize) * (4usize << dstrd)
}

/// BAR0 offset of the CQ `qid` head doorbell (§3.1.3, CQyHDBL).
pub const fn cq_head_doorbell(qid: u16, dstrd: u8) -> usize {
    offset::DOORBELL_BASE + (2 * qid as usize + 1) * (4usize << dstrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_cap_decodes() {
        let cap = Cap::from(0x0040_1820_0f01_07ffu64);
        assert_eq!(cap.mqes(), 0x7ff);
        assert!(cap.cqr());
        assert_eq!(cap.ams(), 0);
        assert_eq!(cap.to(), 0x0f);
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.dstrd(), 0);
        assert_eq!(cap.doorbell_stride_bytes(), 4);
        assert!(!cap.nssrs());
        assert_eq!(cap.css(), 0xc1);
        assert!(!cap.bps());
        assert_eq!(cap.mpsmin(), 0);
        assert_eq!(cap.mpsmax(), 4);
        assert_eq!(cap.mps_min_bytes(), 4096);
        assert_eq!(cap.mps_max_bytes(), 65536);
        assert!(!cap.pmrs());
        assert!(!cap.cmbs());
        assert_eq!(cap.max_queue_entries(), 0x800);
        // Round trip.
        let built = Cap::new()
            .with_mqes(0x7ff)
            .with_cqr(true)
            .with_to(0x0f)
            .with_css(0xc1)
            .with_mpsmax(4);
        assert_eq!(u64::from(built), 0x0040_1820_0f01_07ff);
    }

    #[test]
    fn cap_high_bits() {
        let cap = Cap::new()
            .with_dstrd(0xf)
            .with_nssrs(true)
            .with_bps(true)
            .with_mpsmin(1)
            .with_pmrs(true)
            .with_cmbs(true);
        assert_eq!(
            u64::from(cap),
            (0xf << 32) | (1 << 36) | (1 << 45) | (1 << 48) | (1 << 56) | (1 << 57)
        );
    }

    #[test]
    fn vs_decodes() {
        let vs = Vs::from(0x0001_0400);
        assert_eq!((vs.mjr(), vs.mnr(), vs.ter()), (1, 4, 0));
        assert_eq!(
            u32::from(Vs::new().with_mjr(2).with_mnr(1).with_ter(3)),
            0x0002_0103
        );
    }

    #[test]
    fn cc_encodes() {
        let cc = Cc::new()
            .with_en(true)
            .with_css(0)
            .with_mps(0)
            .with_iosqes(6)
            .with_iocqes(4);
        assert_eq!(u32::from(cc), 0x0046_0001);
        let cc = cc.with_shn(shn::NORMAL);
        assert_eq!(u32::from(cc), 0x0046_4001);
        let cc = Cc::from(0x0046_8781);
        assert!(cc.en());
        assert_eq!(cc.mps(), 0xf);
        assert_eq!(cc.shn(), shn::ABRUPT);
        assert_eq!(cc.ams(), 0);
        let cc = Cc::new().with_css(7).with_ams(7).with_mps(2);
        assert_eq!(u32::from(cc), (7 << 4) | (7 << 11) | (2 << 7));
        assert_eq!(cc.page_size_bytes(), 16384);
    }

    #[test]
    fn csts_decodes() {
        let csts = Csts::from(0b11_1001);
        assert!(csts.rdy());
        assert!(!csts.cfs());
        assert_eq!(csts.shst(), shst::COMPLETE);
        assert!(csts.nssro());
        assert!(csts.pp());
        let csts = Csts::from(0b0110);
        assert!(csts.cfs());
        assert_eq!(csts.shst(), shst::OCCURRING);
        // A gone device reads all ones: CFS and RDY both set.
        let gone = Csts::from(ALL_ONES_32);
        assert!(gone.rdy() && gone.cfs());
    }

    #[test]
    fn aqa_and_cmb() {
        let aqa = Aqa::new().with_asqs(31).with_acqs(0xfff);
        assert_eq!(u32::from(aqa), 0x0fff_001f);
        assert_eq!(Aqa::from(0x0fff_001f), aqa);
        let loc = Cmbloc::from(0x0000_3002);
        assert_eq!((loc.bir(), loc.ofst()), (2, 3));
        let sz = Cmbsz::from(0x0001_0117);
        assert!(sz.sqs() && sz.cqs() && sz.lists() && !sz.rds() && sz.wds());
        assert_eq!(sz.szu(), 1);
        assert_eq!(sz.sz(), 0x10);
    }

    #[test]
    fn doorbells() {
        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(1, 0), 0x1008);
        assert_eq!(cq_head_doorbell(1, 0), 0x100c);
        assert_eq!(sq_tail_doorbell(0, 1), 0x1000);
        assert_eq!(cq_head_doorbell(0, 1), 0x1008);
        assert_eq!(sq_tail_doorbell(1, 1), 0x1010);
        assert_eq!(cq_head_doorbell(1, 1), 0x1018);
        assert_eq!(
            cq_head_doorbell(u16::MAX, 15),
            0x1000 + (2 * 65535 + 1) * (4 << 15)
        );
    }

    #[test]
    fn offsets() {
        assert_eq!(offset::CC, 0x14);
        assert_eq!(offset::CSTS, 0x1c);
        assert_eq!(offset::AQA, 0x24);
        assert_eq!(NSSR_RESET_VALUE.to_be_bytes(), *b"NVMe");
    }
}
