//! Submission and completion queue entries, opcodes and command constructors
//! (NVMe Base 2.0 §4.2, §4.6, §5; NVM Command Set 2.0 §3).

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::status::Status;

/// Submission queue entry, 64 bytes (§4.2).
///
/// CDW0 holds the opcode (bits 7:0), FUSE (9:8), PSDT (15:14) and the
/// command identifier (31:16). Constructors return an entry with CID 0 and
/// no data pointer: the caller sets the CID and PRPs.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Sqe {
    /// Command Dword 0: opcode, flags, command identifier.
    pub cdw0: u32,
    /// Namespace identifier (`0xffff_ffff` = all namespaces).
    pub nsid: u32,
    /// Command Dword 2 (command specific).
    pub cdw2: u32,
    /// Command Dword 3 (command specific).
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// PRP entry 1 (data pointer, first half).
    pub prp1: u64,
    /// PRP entry 2 or PRP list pointer (data pointer, second half).
    pub prp2: u64,
    /// Command Dword 10.
    pub cdw10: u32,
    /// Command Dword 11.
    pub cdw11: u32,
    /// Command Dword 12.
    pub cdw12: u32,
    /// Command Dword 13.
    pub cdw13: u32,
    /// Command Dword 14.
    pub cdw14: u32,
    /// Command Dword 15.
    pub cdw15: u32,
}

const _: () = assert!(size_of::<Sqe>() == 64);
const _: () = assert!(offset_of!(Sqe, nsid) == 4);
const _: () = assert!(offset_of!(Sqe, mptr) == 16);
const _: () = assert!(offset_of!(Sqe, prp1) == 24);
const _: () = assert!(offset_of!(Sqe, prp2) == 32);
const _: () = assert!(offset_of!(Sqe, cdw10) == 40);
const _: () = assert!(offset_of!(Sqe, cdw15) == 60);

impl Sqe {
    /// The entry as the eight little-endian 64-bit words of its memory image, built from its
    /// fields, so that an entry the compiler keeps in registers is stored from them.
    #[inline(always)]
    pub fn to_words(&self) -> [u64; 8] {
        let pair = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
        [
            pair(self.cdw0, self.nsid),
            pair(self.cdw2, self.cdw3),
            self.mptr,
            self.prp1,
            self.prp2,
            pair(self.cdw10, self.cdw11),
            pair(self.cdw12, self.cdw13),
            pair(self.cdw14, self.cdw15),
        ]
    }

    /// An entry with only the opcode set.
    pub const fn with_opcode(opcode: u8) -> Self {
        Sqe {
            cdw0: opcode as u32,
            nsid: 0,
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            prp1: 0,
            prp2: 0,
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            cdw14: 0,
            cdw15: 0,
        }
    }

    /// Opcode, CDW0 bits 7:0.
    pub const fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }

    /// Sets the opcode.
    pub fn set_opcode(&mut self, opcode: u8) {
        self.cdw0 = (self.cdw0 & !0xff) | opcode as u32;
    }

    /// Flags byte, CDW0 bits 15:8 (FUSE and PSDT).
    pub const fn flags(&self) -> u8 {
        (self.cdw0 >> 8) as u8
    }

    /// Sets the flags byte (CDW0 bits 15:8).
    pub fn set_flags(&mut self, flags: u8) {
        self.cdw0 = (self.cdw0 & !0xff00) | ((flags as u32) << 8);
    }

    /// Fused operation, CDW0 bits 9:8 (0 normal, 1 first, 2 second).
    pub const fn fuse(&self) -> u8 {
        ((self.cdw0 >> 8) & 0x3) as u8
    }

    /// PRP or SGL selector, CDW0 bits 15:14 (0 = PRP).
    pub const fn psdt(&self) -> u8 {
        ((self.cdw0 >> 14) & 0x3) as u8
    }

    /// Command identifier, CDW0 bits 31:16.
    pub const fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }

    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        self.cdw0 = (self.cdw0 & 0xffff) | ((cid as u32) << 16);
    }

    /// Starting LBA of an I/O command (CDW11:CDW10).
    pub const fn slba(&self) -> u64 {
        self.cdw10 as u64 | ((self.cdw11 as u64) << 32)
    }

    /// Number of logical blocks of an I/O command, 0-based (CDW12 bits 15:0).
    pub const fn nlb_0b(&self) -> u16 {
        self.cdw12 as u16
    }

    /// Identify: CNS in CDW10 7:0, CNTID in CDW10 31:16.
    /// PRP1 must point to a 4 KiB buffer.
    pub const fn identify(cns: u8, nsid: u32, cntid: u16) -> Self {
        let mut s = Self::with_opcode(AdminOpcode::IDENTIFY.0);
        s.nsid = nsid;
        s.cdw10 = cns as u32 | ((cntid as u32) << 16);
        s
    }

    /// Create I/O Completion Queue, physically contiguous (PC = 1).
    /// `qsize_0b` is the entry count minus one; `iv` the interrupt vector.
    pub const fn create_io_cq(qid: u16, qsize_0b: u16, prp1: u64, iv: u16, ien: bool) -> Self {
        let mut s = Self::with_opcode(AdminOpcode::CREATE_IO_CQ.0);
        s.prp1 = prp1;
        s.cdw10 = qid as u32 | ((qsize_0b as u32) << 16);
        s.cdw11 = 1 | ((ien as u32) << 1) | ((iv as u32) << 16);
        s
    }

    /// Create I/O Submission Queue, physically contiguous (PC = 1),
    /// bound to completion queue `cqid`, priority `qprio` (2 bits).
    pub const fn create_io_sq(qid: u16, qsize_0b: u16, prp1: u64, cqid: u16, qprio: u8) -> Self {
        let mut s = Self::with_opcode(AdminOpcode::CREATE_IO_SQ.0);
        s.prp1 = prp1;
        s.cdw10 = qid as u32 | ((qsize_0b as u32) << 16);
        s.cdw11 = 1 | (((qprio & 0x3) as u32) << 1) | ((cqid as u32) << 16);
        s
    }

    /// Delete I/O Submission Queue.
    pub const fn delete_io_sq(qid: u16) -> Self {
        let mut s = Self::with_opcode(AdminOpcode::DELETE_IO_SQ.0);
        s.cdw10 = qid as u32;
        s
    }

    /// Delete I/O Completion Queue.
    pub const fn delete_io_cq(qid: u16) -> Self {
        let mut s = Self::with_opcode(AdminOpcode::DELETE_IO_CQ.0);
        s.cdw10 = qid as u32;
        s
    }

    /// Get Log Page. `numd_0b` is the dword count minus one,
    /// `offset_bytes` the log page offset (dword aligned), `lsp` the 7-bit
    /// log specific field, `rae` Retain Asynchronous Event.
    pub const fn get_log_page(
        lid: u8,
        nsid: u32,
        numd_0b: u32,
        offset_bytes: u64,
        lsp: u8,
        rae: bool,
    ) -> Self {
        let mut s = Self::with_opcode(AdminOpcode::GET_LOG_PAGE.0);
        s.nsid = nsid;
        s.cdw10 = lid as u32
            | (((lsp & 0x7f) as u32) << 8)
            | ((rae as u32) << 15)
            | ((numd_0b & 0xffff) << 16);
        s.cdw11 = numd_0b >> 16;
        s.cdw12 = offset_bytes as u32;
        s.cdw13 = (offset_bytes >> 32) as u32;
        s
    }

    /// Get Features: FID in CDW10 7:0, SEL in CDW10 10:8.
    pub const fn get_features(fid: u8, sel: u8, cdw11: u32) -> Self {
        let mut s = Self::with_opcode(AdminOpcode::GET_FEATURES.0);
        s.cdw10 = fid as u32 | (((sel & 0x7) as u32) << 8);
        s.cdw11 = cdw11;
        s
    }

    /// Set Features: FID in CDW10 7:0, SV (save) in CDW10 bit 31.
    pub const fn set_features(fid: u8, cdw11: u32, save: bool) -> Self {
        let mut s = Self::with_opcode(AdminOpcode::SET_FEATURES.0);
        s.cdw10 = fid as u32 | ((save as u32) << 31);
        s.cdw11 = cdw11;
        s
    }

    /// Abort: SQID in CDW10 15:0, CID in CDW10 31:16.
    /// Completion DW0 bit 0 set means the command was not aborted.
    pub const fn abort(sqid: u16, cid: u16) -> Self {
        let mut s = Self::with_opcode(AdminOpcode::ABORT.0);
        s.cdw10 = sqid as u32 | ((cid as u32) << 16);
        s
    }

    /// Keep Alive.
    pub const fn keep_alive() -> Self {
        Self::with_opcode(AdminOpcode::KEEP_ALIVE.0)
    }

    /// Asynchronous Event Request; completes when an event occurs.
    pub const fn async_event_request() -> Self {
        Self::with_opcode(AdminOpcode::ASYNC_EVENT_REQUEST.0)
    }

    /// Doorbell Buffer Config: PRP1 = shadow doorbell page,
    /// PRP2 = EventIdx page (both page aligned).
    pub const fn doorbell_buffer_config(shadow_iova: u64, eventidx_iova: u64) -> Self {
        let mut s = Self::with_opcode(AdminOpcode::DOORBELL_BUFFER_CONFIG.0);
        s.prp1 = shadow_iova;
        s.prp2 = eventidx_iova;
        s
    }

    const fn rw(opcode: NvmOpcode, nsid: u32, slba: u64, nlb_0b: u16) -> Self {
        let mut s = Self::with_opcode(opcode.0);
        s.nsid = nsid;
        s.cdw10 = slba as u32;
        s.cdw11 = (slba >> 32) as u32;
        s.cdw12 = nlb_0b as u32;
        s
    }

    /// Read (NVM Command Set): SLBA in CDW10-11, NLB (0-based) in CDW12 15:0.
    pub const fn read(nsid: u32, slba: u64, nlb_0b: u16) -> Self {
        Self::rw(NvmOpcode::READ, nsid, slba, nlb_0b)
    }

    /// Write (NVM Command Set): SLBA in CDW10-11, NLB (0-based) in CDW12 15:0.
    pub const fn write(nsid: u32, slba: u64, nlb_0b: u16) -> Self {
        Self::rw(NvmOpcode::WRITE, nsid, slba, nlb_0b)
    }

    /// Compare (NVM Command Set): SLBA in CDW10-11, NLB (0-based) in CDW12 15:0.
    pub const fn compare(nsid: u32, slba: u64, nlb_0b: u16) -> Self {
        Self::rw(NvmOpcode::COMPARE, nsid, slba, nlb_0b)
    }

    /// Flush (Base §7.1).
    pub const fn flush(nsid: u32) -> Self {
        let mut s = Self::with_opcode(NvmOpcode::FLUSH.0);
        s.nsid = nsid;
        s
    }

    /// Write Zeroes (NVM Command Set); `deallocate` sets DEAC (CDW12 bit 25).
    pub const fn write_zeroes(nsid: u32, slba: u64, nlb_0b: u16, deallocate: bool) -> Self {
        let mut s = Self::rw(NvmOpcode::WRITE_ZEROES, nsid, slba, nlb_0b);
        s.cdw12 |= (deallocate as u32) << 25;
        s
    }

    /// Dataset Management (NVM Command Set): `nr_0b` ranges minus one in CDW10 7:0,
    /// AD (deallocate) in CDW11 bit 2. PRP1 points to the [`DsmRange`] array.
    pub const fn dsm(nsid: u32, nr_0b: u8, attr_deallocate: bool) -> Self {
        let mut s = Self::with_opcode(NvmOpcode::DSM.0);
        s.nsid = nsid;
        s.cdw10 = nr_0b as u32;
        s.cdw11 = (attr_deallocate as u32) << 2;
        s
    }
}

/// Completion queue entry, 16 bytes (§4.6).
///
/// `status_phase` holds the phase tag in bit 0 and the [`Status`] in 15:1.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Cqe {
    /// Command specific result.
    pub dw0: u32,
    /// Command specific result (usually reserved).
    pub dw1: u32,
    /// SQ head pointer at the time of completion.
    pub sqhd: u16,
    /// Submission queue the command came from.
    pub sqid: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag (bit 0) and status field (bits 15:1).
    pub status_phase: u16,
}

const _: () = assert!(size_of::<Cqe>() == 16);
const _: () = assert!(offset_of!(Cqe, dw1) == 4);
const _: () = assert!(offset_of!(Cqe, sqhd) == 8);
const _: () = assert!(offset_of!(Cqe, sqid) == 10);
const _: () = assert!(offset_of!(Cqe, cid) == 12);
const _: () = assert!(offset_of!(Cqe, status_phase) == 14);

impl Cqe {
    /// Builds an entry (DW1 = 0), as a controller would post it.
    pub const fn new(
        dw0: u32,
        sqhd: u16,
        sqid: u16,
        cid: u16,
        status: Status,
        phase: bool,
    ) -> Self {
        Cqe {
            dw0,
            dw1: 0,
            sqhd,
            sqid,
            cid,
            status_phase: ((status.0 & 0x7fff) << 1) | phase as u16,
        }
    }

    /// Phase tag.
    pub const fn phase(&self) -> bool {
        self.status_phase & 1 != 0
    }

    /// Status field without the phase tag.
    pub const fn status(&self) -> Status {
        Status(self.status_phase >> 1)
    }
}

/// Admin command opcode, an open enum (§5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdminOpcode(pub u8);

impl AdminOpcode {
    /// Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: Self = Self(0x00);
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: Self = Self(0x01);
    /// Get Log Page.
    pub const GET_LOG_PAGE: Self = Self(0x02);
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: Self = Self(0x04);
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: Self = Self(0x05);
    /// Identify.
    pub const IDENTIFY: Self = Self(0x06);
    /// Abort.
    pub const ABORT: Self = Self(0x08);
    /// Set Features.
    pub const SET_FEATURES: Self = Self(0x09);
    /// Get Features.
    pub const GET_FEATURES: Self = Self(0x0a);
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: Self = Self(0x0c);
    /// Namespace Management.
    pub const NS_MANAGEMENT: Self = Self(0x0d);
    /// Firmware Commit.
    pub const FW_COMMIT: Self = Self(0x10);
    /// Firmware Image Download.
    pub const FW_DOWNLOAD: Self = Self(0x11);
    /// Namespace Attachment.
    pub const NS_ATTACH: Self = Self(0x15);
    /// Keep Alive.
    pub const KEEP_ALIVE: Self = Self(0x18);
    /// Doorbell Buffer Config.
    pub const DOORBELL_BUFFER_CONFIG: Self = Self(0x7c);
    /// Format NVM.
    pub const FORMAT_NVM: Self = Self(0x80);
    /// Security Send.
    pub const SECURITY_SEND: Self = Self(0x81);
    /// Security Receive.
    pub const SECURITY_RECV: Self = Self(0x82);

    /// Human-readable name, `"unknown"` for opcodes not listed here.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x00 => "Delete I/O SQ",
            0x01 => "Create I/O SQ",
            0x02 => "Get Log Page",
            0x04 => "Delete I/O CQ",
            0x05 => "Create I/O CQ",
            0x06 => "Identify",
            0x08 => "Abort",
            0x09 => "Set Features",
            0x0a => "Get Features",
            0x0c => "Asynchronous Event Request",
            0x0d => "Namespace Management",
            0x10 => "Firmware Commit",
            0x11 => "Firmware Image Download",
            0x15 => "Namespace Attachment",
            0x18 => "Keep Alive",
            0x7c => "Doorbell Buffer Config",
            0x80 => "Format NVM",
            0x81 => "Security Send",
            0x82 => "Security Receive",
            _ => "unknown",
        }
    }
}

impl core::fmt::Display for AdminOpcode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({:02x}h)", self.name(), self.0)
    }
}

/// NVM command set I/O opcode, an open enum (NVM Command Set §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NvmOpcode(pub u8);

impl NvmOpcode {
    /// Flush.
    pub const FLUSH: Self = Self(0x00);
    /// Write.
    pub const WRITE: Self = Self(0x01);
    /// Read.
    pub const READ: Self = Self(0x02);
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: Self = Self(0x04);
    /// Compare.
    pub const COMPARE: Self = Self(0x05);
    /// Write Zeroes.
    pub const WRITE_ZEROES: Self = Self(0x08);
    /// Dataset Management.
    pub const DSM: Self = Self(0x09);

    /// Human-readable name, `"unknown"` for opcodes not listed here.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x00 => "Flush",
            0x01 => "Write",
            0x02 => "Read",
            0x04 => "Write Uncorrectable",
            0x05 => "Compare",
            0x08 => "Write Zeroes",
            0x09 => "Dataset Management",
            _ => "unknown",
        }
    }

    /// Data moves host → controller (opcode bit 0, "Data Transfer" bits of the opcode).
    pub const fn transfers_to_device(self) -> bool {
        self.0 & 0x1 != 0
    }

    /// Data moves controller → host (opcode bit 1).
    pub const fn transfers_from_device(self) -> bool {
        self.0 & 0x2 != 0
    }
}

impl core::fmt::Display for NvmOpcode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({:02x}h)", self.name(), self.0)
    }
}

/// Dataset Management range, 16 bytes (NVM Command Set).
/// `nlb` is a count (not 0-based).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct DsmRange {
    /// Context attributes.
    pub attributes: u32,
    /// Length in logical blocks (1-based).
    pub nlb: u32,
    /// Starting LBA.
    pub slba: u64,
}

const _: () = assert!(size_of::<DsmRange>() == 16);
const _: () = assert!(offset_of!(DsmRange, nlb) == 4);
const _: () = assert!(offset_of!(DsmRange, slba) == 8);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::status::{generic, sct};

    #[test]
    fn an_entry_as_words_is_its_memory_image() {
        // Every byte distinct, so that a swapped or shifted field shows.
        let sqe = Sqe {
            cdw0: 0x0302_0100,
            nsid: 0x0706_0504,
            cdw2: 0x0b0a_0908,
            cdw3: 0x0f0e_0d0c,
            mptr: 0x1716_1514_1312_1110,
            prp1: 0x1f1e_1d1c_1b1a_1918,
            prp2: 0x2726_2524_2322_2120,
            cdw10: 0x2b2a_2928,
            cdw11: 0x2f2e_2d2c,
            cdw12: 0x3332_3130,
            cdw13: 0x3736_3534,
            cdw14: 0x3b3a_3938,
            cdw15: 0x3f3e_3d3c,
        };
        let image: Vec<u8> = sqe
            .to_words()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(image, sqe.as_bytes());
        assert_eq!(image, (0..64).collect::<Vec<u8>>());
    }

    fn dword(sqe: &Sqe, n: usize) -> u32 {
        let b = sqe.as_bytes();
        u32::from_le_bytes(b[n * 4..n * 4 + 4].try_into().unwrap())
    }

    #[test]
    fn cdw0_fields() {
        let mut s = Sqe::identify(1, 0, 0);
        s.set_cid(0xbeef);
        s.set_flags(0x41);
        assert_eq!(s.as_bytes()[..4], [0x06, 0x41, 0xef, 0xbe]);
        assert_eq!(s.opcode(), 6);
        assert_eq!(s.cid(), 0xbeef);
        assert_eq!(s.fuse(), 1);
        assert_eq!(s.psdt(), 1);
        assert_eq!(s.flags(), 0x41);
        s.set_opcode(0x02);
        assert_eq!(s.cdw0, 0xbeef_4102);
    }

    #[test]
    fn identify_layout() {
        let s = Sqe::identify(0x03, 7, 0x1234);
        assert_eq!(dword(&s, 0), 0x06);
        assert_eq!(dword(&s, 1), 7);
        assert_eq!(dword(&s, 10), 0x1234_0003);
    }

    #[test]
    fn queue_commands() {
        let s = Sqe::create_io_cq(3, 1023, 0x1000_0000, 2, true);
        assert_eq!(s.opcode(), 0x05);
        assert_eq!(dword(&s, 10), (1023 << 16) | 3);
        assert_eq!(dword(&s, 11), (2 << 16) | 0b11);
        assert_eq!(s.as_bytes()[24..32], 0x1000_0000u64.to_le_bytes());
        let s = Sqe::create_io_cq(3, 15, 0x2000, 0, false);
        assert_eq!(dword(&s, 11), 1);

        let s = Sqe::create_io_sq(4, 255, 0xabc000, 3, 2);
        assert_eq!(s.opcode(), 0x01);
        assert_eq!(dword(&s, 10), (255 << 16) | 4);
        assert_eq!(dword(&s, 11), (3 << 16) | (2 << 1) | 1);
        assert_eq!(s.prp1, 0xabc000);

        assert_eq!(Sqe::delete_io_sq(9).opcode(), 0x00);
        assert_eq!(dword(&Sqe::delete_io_sq(9), 10), 9);
        assert_eq!(Sqe::delete_io_cq(9).opcode(), 0x04);
        assert_eq!(dword(&Sqe::delete_io_cq(9), 10), 9);
    }

    #[test]
    fn get_log_page_layout() {
        let s = Sqe::get_log_page(0x0c, 0xffff_ffff, 0x0001_0203, 0x1_0000_0010, 1, true);
        assert_eq!(s.opcode(), 0x02);
        assert_eq!(s.nsid, 0xffff_ffff);
        assert_eq!(dword(&s, 10), 0x0203_0000 | (1 << 15) | (1 << 8) | 0x0c);
        assert_eq!(dword(&s, 11), 0x0001);
        assert_eq!(dword(&s, 12), 0x10);
        assert_eq!(dword(&s, 13), 0x1);
    }

    #[test]
    fn feature_and_misc_commands() {
        let s = Sqe::get_features(0x07, 2, 0x55);
        assert_eq!(
            (s.opcode(), dword(&s, 10), dword(&s, 11)),
            (0x0a, 0x207, 0x55)
        );
        let s = Sqe::set_features(0x0b, 0x900, true);
        assert_eq!(
            (s.opcode(), dword(&s, 10), dword(&s, 11)),
            (0x09, 0x8000_000b, 0x900)
        );
        let s = Sqe::abort(2, 0x77);
        assert_eq!((s.opcode(), dword(&s, 10)), (0x08, 0x0077_0002));
        assert_eq!(Sqe::keep_alive().opcode(), 0x18);
        assert_eq!(Sqe::async_event_request().opcode(), 0x0c);
        let s = Sqe::doorbell_buffer_config(0x1000, 0x2000);
        assert_eq!(s.opcode(), 0x7c);
        assert_eq!(
            s.as_bytes()[24..40],
            [0x1000u64.to_le_bytes(), 0x2000u64.to_le_bytes()].concat()[..]
        );
    }

    #[test]
    fn io_commands() {
        let s = Sqe::read(1, 0x1_2345_6789, 7);
        assert_eq!(s.opcode(), 0x02);
        assert_eq!(dword(&s, 1), 1);
        assert_eq!(dword(&s, 10), 0x2345_6789);
        assert_eq!(dword(&s, 11), 0x1);
        assert_eq!(dword(&s, 12), 7);
        assert_eq!(s.slba(), 0x1_2345_6789);
        assert_eq!(s.nlb_0b(), 7);
        assert_eq!(Sqe::write(1, 0, 0).opcode(), 0x01);
        assert_eq!(Sqe::compare(1, 0, 0).opcode(), 0x05);
        let f = Sqe::flush(5);
        assert_eq!((f.opcode(), f.nsid), (0x00, 5));
        let z = Sqe::write_zeroes(1, 10, 3, true);
        assert_eq!((z.opcode(), dword(&z, 12)), (0x08, (1 << 25) | 3));
        assert_eq!(z.nlb_0b(), 3);
        let d = Sqe::dsm(1, 4, true);
        assert_eq!((d.opcode(), dword(&d, 10), dword(&d, 11)), (0x09, 4, 4));
    }

    #[test]
    fn cqe_decode() {
        // dw0=1, dw1=0, sqhd=5, sqid=1, cid=0x42, status: sct 0 sc 02 dnr, phase 1.
        let raw: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, 0x42, 0, 0x05, 0x80];
        let c = Cqe::read_from_bytes(&raw[..]).unwrap();
        assert_eq!((c.dw0, c.sqhd, c.sqid, c.cid), (1, 5, 1, 0x42));
        assert!(c.phase());
        assert_eq!(c.status().sct(), sct::GENERIC);
        assert_eq!(c.status().sc(), generic::INVALID_FIELD);
        assert!(c.status().dnr());
        assert!(!c.status().is_success());
        let built = Cqe::new(
            1,
            5,
            1,
            0x42,
            Status::new(sct::GENERIC, generic::INVALID_FIELD).with_dnr(true),
            true,
        );
        assert_eq!(built.as_bytes(), &raw[..]);

        let ok = Cqe::new(0, 0, 0, 0, Status::SUCCESS, false);
        assert!(!ok.phase());
        assert!(ok.status().is_success());
        assert_eq!(ok.status_phase, 0);
    }

    #[test]
    fn opcode_names() {
        assert_eq!(AdminOpcode::IDENTIFY.name(), "Identify");
        assert_eq!(AdminOpcode(0xfe).name(), "unknown");
        assert_eq!(AdminOpcode::KEEP_ALIVE.to_string(), "Keep Alive (18h)");
        assert_eq!(NvmOpcode::READ.name(), "Read");
        assert!(NvmOpcode::WRITE.transfers_to_device());
        assert!(!NvmOpcode::WRITE.transfers_from_device());
        assert!(NvmOpcode::READ.transfers_from_device());
        assert!(!NvmOpcode::READ.transfers_to_device());
        assert!(NvmOpcode::COMPARE.transfers_to_device());
        assert!(NvmOpcode::DSM.transfers_to_device());
        assert!(
            !NvmOpcode::FLUSH.transfers_to_device() && !NvmOpcode::FLUSH.transfers_from_device()
        );
        assert!(!NvmOpcode::WRITE_ZEROES.transfers_to_device());
    }

    #[test]
    fn dsm_range_bytes() {
        let r = DsmRange {
            attributes: 0,
            nlb: 8,
            slba: 0x100,
        };
        let mut want = [0u8; 16];
        want[4] = 8;
        want[9] = 1;
        assert_eq!(r.as_bytes(), &want[..]);
    }
}
