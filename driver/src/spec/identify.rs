//! Identify data structures (NVMe Base 2.0 Identify command; NVM Command Set 2.0 for
//! the namespace structure).

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::SpecError;

/// Identify CNS values (CDW10 7:0).
pub mod cns {
    /// Identify Namespace for the NSID in the command.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active namespace ID list: up to 1024 NSIDs greater than the command NSID.
    pub const ACTIVE_NSID_LIST: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NS_DESCRIPTORS: u8 = 0x03;
}

/// CMIC bits (Identify Controller byte 76).
pub mod cmic {
    /// The subsystem may have more than one port.
    pub const MULTI_PORT: u8 = 1 << 0;
    /// The subsystem may have more than one controller.
    pub const MULTI_CTRL: u8 = 1 << 1;
    /// SR-IOV virtual function controller.
    pub const SRIOV: u8 = 1 << 2;
    /// Asymmetric Namespace Access reporting supported.
    pub const ANA: u8 = 1 << 3;
}

/// OAES bits (Identify Controller byte 92): optional async events supported.
pub mod oaes {
    /// Namespace Attribute Notices.
    pub const NS_ATTR: u32 = 1 << 8;
    /// Firmware Activation Notices.
    pub const FW_ACTIVATION: u32 = 1 << 9;
    /// ANA Change Notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
}

/// OACS bits (Identify Controller byte 256): optional admin commands.
pub mod oacs {
    /// Security Send/Receive.
    pub const SECURITY: u16 = 1 << 0;
    /// Format NVM.
    pub const FORMAT: u16 = 1 << 1;
    /// Firmware Commit / Image Download.
    pub const FIRMWARE: u16 = 1 << 2;
    /// Namespace Management and Attachment.
    pub const NS_MGMT: u16 = 1 << 3;
    /// Device Self-test.
    pub const SELF_TEST: u16 = 1 << 4;
    /// Directives.
    pub const DIRECTIVES: u16 = 1 << 5;
    /// NVMe-MI Send/Receive.
    pub const NVME_MI: u16 = 1 << 6;
    /// Virtualization Management.
    pub const VIRT_MGMT: u16 = 1 << 7;
    /// Doorbell Buffer Config.
    pub const DBBUF: u16 = 1 << 8;
    /// Get LBA Status.
    pub const LBA_STATUS: u16 = 1 << 9;
}

/// ONCS bits (Identify Controller byte 520): optional NVM commands.
pub mod oncs {
    /// Compare.
    pub const COMPARE: u16 = 1 << 0;
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    /// Dataset Management.
    pub const DSM: u16 = 1 << 2;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u16 = 1 << 3;
    /// Save field in Set Features / Select field in Get Features.
    pub const SAVE_SELECT: u16 = 1 << 4;
    /// Reservations.
    pub const RESERVATIONS: u16 = 1 << 5;
    /// Timestamp feature.
    pub const TIMESTAMP: u16 = 1 << 6;
    /// Verify.
    pub const VERIFY: u16 = 1 << 7;
    /// Copy.
    pub const COPY: u16 = 1 << 8;
}

/// Identify Controller data structure, 4096 bytes (CNS 01h).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IdentifyController {
    /// PCI Vendor ID.
    pub vid: u16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: u16,
    /// Serial Number, ASCII, space padded.
    pub sn: [u8; 20],
    /// Model Number, ASCII, space padded.
    pub mn: [u8; 40],
    /// Firmware Revision, ASCII, space padded.
    pub fr: [u8; 8],
    /// Recommended Arbitration Burst.
    pub rab: u8,
    /// IEEE OUI Identifier.
    pub ieee: [u8; 3],
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities, see [`cmic`].
    pub cmic: u8,
    /// Maximum Data Transfer Size: `2^mdts` × CAP.MPSMIN pages, 0 = unlimited.
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: u16,
    /// Version (same layout as the VS register).
    pub ver: u32,
    /// RTD3 Resume Latency, µs.
    pub rtd3r: u32,
    /// RTD3 Entry Latency, µs.
    pub rtd3e: u32,
    /// Optional Asynchronous Events Supported, see [`oaes`].
    pub oaes: u32,
    /// Controller Attributes.
    pub ctratt: u32,
    /// Read Recovery Levels Supported.
    pub rrls: u16,
    /// Reserved.
    pub rsvd102: [u8; 9],
    /// Controller Type (1 I/O, 2 discovery, 3 administrative).
    pub cntrltype: u8,
    /// FRU Globally Unique Identifier.
    pub fguid: [u8; 16],
    /// Command Retry Delay Time 1, 100 ms units.
    pub crdt1: u16,
    /// Command Retry Delay Time 2, 100 ms units.
    pub crdt2: u16,
    /// Command Retry Delay Time 3, 100 ms units.
    pub crdt3: u16,
    /// Reserved.
    pub rsvd134: [u8; 119],
    /// NVM Subsystem Report.
    pub nvmsr: u8,
    /// VPD Write Cycle Information.
    pub vwci: u8,
    /// Management Endpoint Capabilities.
    pub mec: u8,
    /// Optional Admin Command Support, see [`oacs`].
    pub oacs: u16,
    /// Abort Command Limit, 0-based.
    pub acl: u8,
    /// Asynchronous Event Request Limit, 0-based.
    pub aerl: u8,
    /// Firmware Updates.
    pub frmw: u8,
    /// Log Page Attributes.
    pub lpa: u8,
    /// Error Log Page Entries, 0-based.
    pub elpe: u8,
    /// Number of Power States Support, 0-based.
    pub npss: u8,
    /// Admin Vendor Specific Command Configuration.
    pub avscc: u8,
    /// Autonomous Power State Transition Attributes.
    pub apsta: u8,
    /// Warning Composite Temperature Threshold, K.
    pub wctemp: u16,
    /// Critical Composite Temperature Threshold, K.
    pub cctemp: u16,
    /// Maximum Time for Firmware Activation, 100 ms units.
    pub mtfa: u16,
    /// Host Memory Buffer Preferred Size, 4 KiB units.
    pub hmpre: u32,
    /// Host Memory Buffer Minimum Size, 4 KiB units.
    pub hmmin: u32,
    /// Total NVM Capacity, bytes (128-bit).
    pub tnvmcap: [u8; 16],
    /// Unallocated NVM Capacity, bytes (128-bit).
    pub unvmcap: [u8; 16],
    /// Replay Protected Memory Block Support.
    pub rpmbs: u32,
    /// Extended Device Self-test Time, minutes.
    pub edstt: u16,
    /// Device Self-test Options.
    pub dsto: u8,
    /// Firmware Update Granularity, 4 KiB units.
    pub fwug: u8,
    /// Keep Alive Support: granularity in 100 ms units, 0 = unsupported.
    pub kas: u16,
    /// Host Controlled Thermal Management Attributes.
    pub hctma: u16,
    /// Minimum Thermal Management Temperature, K.
    pub mntmt: u16,
    /// Maximum Thermal Management Temperature, K.
    pub mxtmt: u16,
    /// Sanitize Capabilities.
    pub sanicap: u32,
    /// Host Memory Buffer Minimum Descriptor Entry Size, 4 KiB units.
    pub hmminds: u32,
    /// Host Memory Maximum Descriptors Entries.
    pub hmmaxd: u16,
    /// NVM Set Identifier Maximum.
    pub nsetidmax: u16,
    /// Endurance Group Identifier Maximum.
    pub endgidmax: u16,
    /// ANA Transition Time, seconds.
    pub anatt: u8,
    /// Asymmetric Namespace Access Capabilities.
    pub anacap: u8,
    /// ANA Group Identifier Maximum.
    pub anagrpmax: u32,
    /// Number of ANA Group Identifiers.
    pub nanagrpid: u32,
    /// Persistent Event Log Size, 64 KiB units.
    pub pels: u32,
    /// Domain Identifier.
    pub domainid: u16,
    /// Reserved.
    pub rsvd358: [u8; 10],
    /// Max Endurance Group Capacity (128-bit).
    pub megcap: [u8; 16],
    /// Reserved.
    pub rsvd384: [u8; 2],
    /// Command Quiesce Time, ms (NVMe 2.1; reserved/0 on older controllers).
    pub cqt: u16,
    /// Reserved.
    pub rsvd388: [u8; 124],
    /// Submission Queue Entry Size: required (3:0) and maximum (7:4), log2 bytes.
    pub sqes: u8,
    /// Completion Queue Entry Size: required (3:0) and maximum (7:4), log2 bytes.
    pub cqes: u8,
    /// Maximum Outstanding Commands (fabrics).
    pub maxcmd: u16,
    /// Number of Namespaces (maximum valid NSID).
    pub nn: u32,
    /// Optional NVM Command Support, see [`oncs`].
    pub oncs: u16,
    /// Fused Operation Support.
    pub fuses: u16,
    /// Format NVM Attributes.
    pub fna: u8,
    /// Volatile Write Cache (bit 0 present).
    pub vwc: u8,
    /// Atomic Write Unit Normal, 0-based blocks.
    pub awun: u16,
    /// Atomic Write Unit Power Fail, 0-based blocks.
    pub awupf: u16,
    /// I/O Command Set Vendor Specific Command Configuration.
    pub icsvscc: u8,
    /// Namespace Write Protection Capabilities.
    pub nwpc: u8,
    /// Atomic Compare & Write Unit, 0-based blocks.
    pub acwu: u16,
    /// Copy Descriptor Formats Supported.
    pub ocfs: u16,
    /// SGL Support.
    pub sgls: u32,
    /// Maximum Number of Allowed Namespaces.
    pub mnan: u32,
    /// Maximum Domain Namespace Attachments (128-bit).
    pub maxdna: [u8; 16],
    /// Maximum I/O Controller Namespace Attachments.
    pub maxcna: u32,
    /// Reserved.
    pub rsvd564: [u8; 204],
    /// NVM Subsystem NVMe Qualified Name, UTF-8, NUL padded.
    pub subnqn: [u8; 256],
    /// Reserved.
    pub rsvd1024: [u8; 768],
    /// NVMe over Fabrics attributes (not used on PCIe).
    pub nvmof: [u8; 256],
    /// Power State Descriptors 0..31, 32 bytes each.
    pub psd: [u8; 1024],
    /// Vendor specific.
    pub vs: [u8; 1024],
}

const _: () = assert!(size_of::<IdentifyController>() == 4096);
const _: () = assert!(offset_of!(IdentifyController, sn) == 4);
const _: () = assert!(offset_of!(IdentifyController, mn) == 24);
const _: () = assert!(offset_of!(IdentifyController, fr) == 64);
const _: () = assert!(offset_of!(IdentifyController, rab) == 72);
const _: () = assert!(offset_of!(IdentifyController, ieee) == 73);
const _: () = assert!(offset_of!(IdentifyController, cmic) == 76);
const _: () = assert!(offset_of!(IdentifyController, mdts) == 77);
const _: () = assert!(offset_of!(IdentifyController, cntlid) == 78);
const _: () = assert!(offset_of!(IdentifyController, ver) == 80);
const _: () = assert!(offset_of!(IdentifyController, rtd3r) == 84);
const _: () = assert!(offset_of!(IdentifyController, rtd3e) == 88);
const _: () = assert!(offset_of!(IdentifyController, oaes) == 92);
const _: () = assert!(offset_of!(IdentifyController, ctratt) == 96);
const _: () = assert!(offset_of!(IdentifyController, cntrltype) == 111);
const _: () = assert!(offset_of!(IdentifyController, crdt1) == 128);
const _: () = assert!(offset_of!(IdentifyController, crdt2) == 130);
const _: () = assert!(offset_of!(IdentifyController, crdt3) == 132);
const _: () = assert!(offset_of!(IdentifyController, oacs) == 256);
const _: () = assert!(offset_of!(IdentifyController, acl) == 258);
const _: () = assert!(offset_of!(IdentifyController, aerl) == 259);
const _: () = assert!(offset_of!(IdentifyController, frmw) == 260);
const _: () = assert!(offset_of!(IdentifyController, lpa) == 261);
const _: () = assert!(offset_of!(IdentifyController, elpe) == 262);
const _: () = assert!(offset_of!(IdentifyController, npss) == 263);
const _: () = assert!(offset_of!(IdentifyController, kas) == 320);
const _: () = assert!(offset_of!(IdentifyController, anatt) == 342);
const _: () = assert!(offset_of!(IdentifyController, anacap) == 343);
const _: () = assert!(offset_of!(IdentifyController, anagrpmax) == 344);
const _: () = assert!(offset_of!(IdentifyController, nanagrpid) == 348);
const _: () = assert!(offset_of!(IdentifyController, cqt) == 386);
const _: () = assert!(offset_of!(IdentifyController, sqes) == 512);
const _: () = assert!(offset_of!(IdentifyController, cqes) == 513);
const _: () = assert!(offset_of!(IdentifyController, maxcmd) == 514);
const _: () = assert!(offset_of!(IdentifyController, nn) == 516);
const _: () = assert!(offset_of!(IdentifyController, oncs) == 520);
const _: () = assert!(offset_of!(IdentifyController, fuses) == 522);
const _: () = assert!(offset_of!(IdentifyController, vwc) == 525);
const _: () = assert!(offset_of!(IdentifyController, sgls) == 536);
const _: () = assert!(offset_of!(IdentifyController, subnqn) == 768);
const _: () = assert!(offset_of!(IdentifyController, psd) == 2048);
const _: () = assert!(offset_of!(IdentifyController, vs) == 3072);

impl Default for IdentifyController {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Decodes a space/NUL padded ASCII field.
fn trimmed(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches(|c| c == '\0' || c == ' ')
        .to_string()
}

/// Copies `s` into a fixed field, padding with `pad` (for software controllers).
pub fn pad_ascii(s: &str, field: &mut [u8], pad: u8) {
    field.fill(pad);
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

impl IdentifyController {
    /// Serial number with padding removed.
    pub fn serial(&self) -> String {
        trimmed(&self.sn)
    }

    /// Model number with padding removed.
    pub fn model(&self) -> String {
        trimmed(&self.mn)
    }

    /// Firmware revision with padding removed.
    pub fn firmware(&self) -> String {
        trimmed(&self.fr)
    }

    /// Subsystem NQN with padding removed.
    pub fn subnqn(&self) -> String {
        trimmed(&self.subnqn)
    }

    /// Maximum data transfer size in bytes given CAP.MPSMIN in bytes;
    /// `None` when MDTS is 0 (no limit).
    pub fn mdts_bytes(&self, mpsmin_bytes: u64) -> Option<u64> {
        if self.mdts == 0 {
            return None;
        }
        Some(
            1u64.checked_shl(self.mdts.into())
                .and_then(|m| m.checked_mul(mpsmin_bytes))
                .unwrap_or(u64::MAX),
        )
    }

    /// Retry delay for a completion's CRD value: 0 → 0 ms, 1..=3 → CRDTn × 100 ms.
    /// Out-of-range values give 0.
    pub fn crdt_ms(&self, index_1_based: u8) -> u64 {
        let t = match index_1_based {
            1 => self.crdt1,
            2 => self.crdt2,
            3 => self.crdt3,
            _ => 0,
        };
        u64::from(t) * 100
    }

    /// Command Quiesce Time in ms (0 = not reported).
    pub fn cqt_ms(&self) -> u64 {
        self.cqt.into()
    }

    /// Keep Alive granularity in ms (0 = keep alive unsupported).
    pub fn kas_ms(&self) -> u64 {
        u64::from(self.kas) * 100
    }

    /// Doorbell Buffer Config supported (OACS bit 8).
    pub fn supports_dbbuf(&self) -> bool {
        self.oacs & oacs::DBBUF != 0
    }

    /// The subsystem may contain more than one controller (CMIC bit 1).
    pub fn multi_controller(&self) -> bool {
        self.cmic & cmic::MULTI_CTRL != 0
    }

    /// ANA reporting supported (CMIC bit 3).
    pub fn ana_reporting(&self) -> bool {
        self.cmic & cmic::ANA != 0
    }
}

/// LBA Format descriptor, 4 bytes (Identify Namespace bytes 128 + 4n).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Lbaf {
    /// Metadata Size, bytes per LBA.
    pub ms: u16,
    /// LBA Data Size as log2 bytes (9 = 512 B).
    pub lbads: u8,
    /// Relative Performance (bits 1:0).
    pub rp: u8,
}

const _: () = assert!(size_of::<Lbaf>() == 4);
const _: () = assert!(offset_of!(Lbaf, lbads) == 2);
const _: () = assert!(offset_of!(Lbaf, rp) == 3);

/// Identify Namespace data structure, 4096 bytes (CNS 00h, NVM Command Set).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IdentifyNamespace {
    /// Namespace Size, logical blocks.
    pub nsze: u64,
    /// Namespace Capacity, logical blocks.
    pub ncap: u64,
    /// Namespace Utilization, logical blocks.
    pub nuse: u64,
    /// Namespace Features.
    pub nsfeat: u8,
    /// Number of LBA Formats, 0-based.
    pub nlbaf: u8,
    /// Formatted LBA Size: format 3:0, extended metadata 4, format high bits 6:5.
    pub flbas: u8,
    /// Metadata Capabilities.
    pub mc: u8,
    /// End-to-end Data Protection Capabilities.
    pub dpc: u8,
    /// End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities (bit 0 shared).
    pub nmic: u8,
    /// Reservation Capabilities.
    pub rescap: u8,
    /// Format Progress Indicator.
    pub fpi: u8,
    /// Deallocate Logical Block Features.
    pub dlfeat: u8,
    /// Namespace Atomic Write Unit Normal.
    pub nawun: u16,
    /// Namespace Atomic Write Unit Power Fail.
    pub nawupf: u16,
    /// Namespace Atomic Compare & Write Unit.
    pub nacwu: u16,
    /// Namespace Atomic Boundary Size Normal.
    pub nabsn: u16,
    /// Namespace Atomic Boundary Offset.
    pub nabo: u16,
    /// Namespace Atomic Boundary Size Power Fail.
    pub nabspf: u16,
    /// Namespace Optimal I/O Boundary.
    pub noiob: u16,
    /// NVM Capacity, bytes (128-bit).
    pub nvmcap: [u8; 16],
    /// Namespace Preferred Write Granularity.
    pub npwg: u16,
    /// Namespace Preferred Write Alignment.
    pub npwa: u16,
    /// Namespace Preferred Deallocate Granularity.
    pub npdg: u16,
    /// Namespace Preferred Deallocate Alignment.
    pub npda: u16,
    /// Namespace Optimal Write Size.
    pub nows: u16,
    /// Maximum Single Source Range Length (Copy).
    pub mssrl: u16,
    /// Maximum Copy Length.
    pub mcl: u32,
    /// Maximum Source Range Count.
    pub msrc: u8,
    /// Reserved.
    pub rsvd81: [u8; 11],
    /// ANA Group Identifier.
    pub anagrpid: u32,
    /// Reserved.
    pub rsvd96: [u8; 3],
    /// Namespace Attributes (bit 0 write protected).
    pub nsattr: u8,
    /// NVM Set Identifier.
    pub nvmsetid: u16,
    /// Endurance Group Identifier.
    pub endgid: u16,
    /// Namespace Globally Unique Identifier.
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier.
    pub eui64: [u8; 8],
    /// LBA Format descriptors 0..63.
    pub lbaf: [Lbaf; 64],
    /// Reserved.
    pub rsvd384: [u8; 3456],
    /// Vendor specific.
    pub vs: [u8; 256],
}

const _: () = assert!(size_of::<IdentifyNamespace>() == 4096);
const _: () = assert!(offset_of!(IdentifyNamespace, ncap) == 8);
const _: () = assert!(offset_of!(IdentifyNamespace, nuse) == 16);
const _: () = assert!(offset_of!(IdentifyNamespace, nsfeat) == 24);
const _: () = assert!(offset_of!(IdentifyNamespace, nlbaf) == 25);
const _: () = assert!(offset_of!(IdentifyNamespace, flbas) == 26);
const _: () = assert!(offset_of!(IdentifyNamespace, mc) == 27);
const _: () = assert!(offset_of!(IdentifyNamespace, dpc) == 28);
const _: () = assert!(offset_of!(IdentifyNamespace, dps) == 29);
const _: () = assert!(offset_of!(IdentifyNamespace, nmic) == 30);
const _: () = assert!(offset_of!(IdentifyNamespace, rescap) == 31);
const _: () = assert!(offset_of!(IdentifyNamespace, nvmcap) == 48);
const _: () = assert!(offset_of!(IdentifyNamespace, anagrpid) == 92);
const _: () = assert!(offset_of!(IdentifyNamespace, nsattr) == 99);
const _: () = assert!(offset_of!(IdentifyNamespace, nvmsetid) == 100);
const _: () = assert!(offset_of!(IdentifyNamespace, endgid) == 102);
const _: () = assert!(offset_of!(IdentifyNamespace, nguid) == 104);
const _: () = assert!(offset_of!(IdentifyNamespace, eui64) == 120);
const _: () = assert!(offset_of!(IdentifyNamespace, lbaf) == 128);
const _: () = assert!(offset_of!(IdentifyNamespace, vs) == 3840);

impl Default for IdentifyNamespace {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl IdentifyNamespace {
    /// Index of the active LBA format: FLBAS bits 3:0, plus bits 6:5 as bits 5:4.
    pub fn lba_format_index(&self) -> usize {
        usize::from(self.flbas & 0xf) | (usize::from((self.flbas >> 5) & 0x3) << 4)
    }

    /// The active LBA format descriptor.
    pub fn active_lbaf(&self) -> Lbaf {
        self.lbaf[self.lba_format_index()]
    }

    /// Logical block size in bytes of the active format, or 0 if its LBADS
    /// is outside the valid 9..=31 range (512 B to 2 GiB).
    pub fn lba_size_bytes(&self) -> u64 {
        match self.active_lbaf().lbads {
            l @ 9..=31 => 1u64 << l,
            _ => 0,
        }
    }

    /// Metadata bytes per logical block of the active format.
    pub fn metadata_size(&self) -> u16 {
        self.active_lbaf().ms
    }

    /// Metadata is interleaved with data (FLBAS bit 4).
    pub fn extended_metadata(&self) -> bool {
        self.flbas & (1 << 4) != 0
    }

    /// The namespace may be attached to more than one controller (NMIC bit 0).
    pub fn shared(&self) -> bool {
        self.nmic & 1 != 0
    }
}

/// Namespace Identifier Type values of the descriptor list (CNS 03h).
pub mod nidt {
    /// IEEE EUI-64, 8 bytes.
    pub const EUI64: u8 = 1;
    /// NGUID, 16 bytes.
    pub const NGUID: u8 = 2;
    /// UUID, 16 bytes.
    pub const UUID: u8 = 3;
    /// Command Set Identifier, 1 byte.
    pub const CSI: u8 = 4;
}

/// One Namespace Identification Descriptor (CNS 03h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NsIdentifier {
    /// IEEE Extended Unique Identifier.
    Eui64([u8; 8]),
    /// Namespace Globally Unique Identifier.
    Nguid([u8; 16]),
    /// RFC 4122 UUID.
    Uuid([u8; 16]),
    /// Command Set Identifier.
    Csi(u8),
}

impl NsIdentifier {
    /// NIDT value of this identifier.
    pub fn nidt(&self) -> u8 {
        match self {
            Self::Eui64(_) => nidt::EUI64,
            Self::Nguid(_) => nidt::NGUID,
            Self::Uuid(_) => nidt::UUID,
            Self::Csi(_) => nidt::CSI,
        }
    }

    /// Identifier bytes (NIDL of them).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Eui64(b) => b,
            Self::Nguid(b) | Self::Uuid(b) => b,
            Self::Csi(b) => core::slice::from_ref(b),
        }
    }
}

const NS_DESC: &str = "namespace identification descriptor list";

/// Parses a CNS 03h descriptor list. Stops at NIDT 0 or the end of `buf`;
/// skips unknown NIDT values (by NIDL) for forward compatibility.
///
/// # Errors
/// [`SpecError::Truncated`] if a descriptor runs past the buffer,
/// [`SpecError::Malformed`] if a known type has the wrong NIDL.
pub fn parse_ns_descriptors(buf: &[u8]) -> Result<Vec<NsIdentifier>, SpecError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < buf.len() {
        let ty = buf[off];
        if ty == 0 {
            break;
        }
        let need = off + 4;
        if buf.len() < need {
            return Err(SpecError::Truncated {
                what: NS_DESC,
                len: buf.len(),
                need,
            });
        }
        let len = usize::from(buf[off + 1]);
        let need = need + len;
        let body = buf.get(off + 4..need).ok_or(SpecError::Truncated {
            what: NS_DESC,
            len: buf.len(),
            need,
        })?;
        let want = match ty {
            nidt::EUI64 => 8,
            nidt::NGUID | nidt::UUID => 16,
            nidt::CSI => 1,
            _ => len,
        };
        if len != want {
            return Err(SpecError::Malformed {
                what: NS_DESC,
                detail: format!("NIDT {ty} at byte {off} has NIDL {len}, expected {want}"),
            });
        }
        let id = match ty {
            nidt::EUI64 => body.try_into().ok().map(NsIdentifier::Eui64),
            nidt::NGUID => body.try_into().ok().map(NsIdentifier::Nguid),
            nidt::UUID => body.try_into().ok().map(NsIdentifier::Uuid),
            nidt::CSI => Some(NsIdentifier::Csi(body[0])),
            _ => None,
        };
        out.extend(id);
        off = need;
    }
    Ok(out)
}

/// Encodes a CNS 03h descriptor list into `out`, zero-filling the rest (so a
/// NIDT 0 terminator follows when there is room). Descriptors that do not
/// fit are left out. Returns the bytes used by descriptors.
pub fn encode_ns_descriptors(ids: &[NsIdentifier], out: &mut [u8]) -> usize {
    out.fill(0);
    let mut off = 0usize;
    for id in ids {
        let body = id.bytes();
        let end = off + 4 + body.len();
        if end > out.len() {
            break;
        }
        out[off] = id.nidt();
        // Identifier bodies are at most 16 bytes.
        out[off + 1] = body.len() as u8;
        out[off + 4..end].copy_from_slice(body);
        off = end;
    }
    off
}

/// Parses a CNS 02h active NSID list: little-endian u32s, ending at the first 0.
pub fn parse_nsid_list(buf: &[u8]) -> Vec<u32> {
    buf.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&n| n != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_fields_at_offsets() {
        let mut raw = vec![0u8; 4096];
        raw[4..9].copy_from_slice(b"SN123");
        raw[9..24].fill(b' ');
        raw[24..28].copy_from_slice(b"QEMU");
        raw[28..64].fill(b' ');
        raw[64..67].copy_from_slice(b"7.2");
        raw[76] = cmic::MULTI_CTRL | cmic::ANA;
        raw[77] = 7;
        raw[128..130].copy_from_slice(&5u16.to_le_bytes());
        raw[132..134].copy_from_slice(&30u16.to_le_bytes());
        raw[256..258].copy_from_slice(&oacs::DBBUF.to_le_bytes());
        raw[320..322].copy_from_slice(&50u16.to_le_bytes());
        raw[386..388].copy_from_slice(&1000u16.to_le_bytes());
        raw[516..520].copy_from_slice(&256u32.to_le_bytes());
        raw[768..790].copy_from_slice(b"nqn.2019-08.org.qemu:x");
        let id = IdentifyController::read_from_bytes(&raw[..]).unwrap();
        assert_eq!(id.serial(), "SN123");
        assert_eq!(id.model(), "QEMU");
        assert_eq!(id.firmware(), "7.2");
        assert_eq!(id.subnqn(), "nqn.2019-08.org.qemu:x");
        assert_eq!(id.nn, 256);
        assert!(id.multi_controller());
        assert!(id.ana_reporting());
        assert!(id.supports_dbbuf());
        assert_eq!(id.crdt_ms(0), 0);
        assert_eq!(id.crdt_ms(1), 500);
        assert_eq!(id.crdt_ms(2), 0);
        assert_eq!(id.crdt_ms(3), 3000);
        assert_eq!(id.crdt_ms(4), 0);
        assert_eq!(id.cqt_ms(), 1000);
        assert_eq!(id.kas_ms(), 5000);
        assert_eq!(id.mdts_bytes(4096), Some(512 * 1024));
        assert_eq!(id.as_bytes(), &raw[..]);
    }

    #[test]
    fn controller_helpers_edge_cases() {
        let mut id = IdentifyController::default();
        assert_eq!(id.mdts_bytes(4096), None);
        assert!(!id.supports_dbbuf() && !id.multi_controller() && !id.ana_reporting());
        id.mdts = 60;
        assert_eq!(id.mdts_bytes(4096), Some(u64::MAX));
        id.mdts = 200;
        assert_eq!(id.mdts_bytes(4096), Some(u64::MAX));
        pad_ascii("abc", &mut id.sn, b' ');
        assert_eq!(&id.sn[..4], b"abc ");
        assert_eq!(id.serial(), "abc");
        assert_eq!(id.model(), "");
    }

    #[test]
    fn namespace_fields() {
        let mut ns = IdentifyNamespace {
            nsze: 0x1000,
            flbas: 0x21 | 0x10, // index 1 + (1 << 4) = 17, extended metadata
            nmic: 1,
            anagrpid: 3,
            ..Default::default()
        };
        ns.lbaf[17] = Lbaf {
            ms: 8,
            lbads: 12,
            rp: 0,
        };
        ns.eui64 = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(ns.lba_format_index(), 17);
        assert_eq!(ns.lba_size_bytes(), 4096);
        assert_eq!(ns.metadata_size(), 8);
        assert!(ns.extended_metadata());
        assert!(ns.shared());
        let b = ns.as_bytes();
        assert_eq!(b[26], 0x31);
        assert_eq!(b[92], 3);
        assert_eq!(b[120], 1);
        assert_eq!(b[128 + 17 * 4..128 + 18 * 4], [8, 0, 12, 0]);
        ns.flbas = 0;
        assert_eq!(ns.lba_size_bytes(), 0, "lbaf[0] is zeroed, LBADS 0 invalid");
        ns.lbaf[0].lbads = 9;
        assert_eq!(ns.lba_size_bytes(), 512);
        assert!(!ns.extended_metadata());
    }

    #[test]
    fn ns_descriptor_round_trip() {
        let ids = [
            NsIdentifier::Eui64([1; 8]),
            NsIdentifier::Nguid([2; 16]),
            NsIdentifier::Uuid([3; 16]),
            NsIdentifier::Csi(0),
        ];
        let mut buf = [0xaau8; 4096];
        let used = encode_ns_descriptors(&ids, &mut buf);
        assert_eq!(used, 12 + 20 + 20 + 5);
        assert_eq!(buf[..4], [1, 8, 0, 0]);
        assert_eq!(buf[used], 0);
        assert_eq!(parse_ns_descriptors(&buf).unwrap(), ids);
        // Exact-fit buffer with no terminator.
        assert_eq!(parse_ns_descriptors(&buf[..used]).unwrap(), ids);
        // Too small output: only whole descriptors are written.
        let mut small = [0u8; 20];
        assert_eq!(encode_ns_descriptors(&ids, &mut small), 12);
        assert_eq!(parse_ns_descriptors(&small).unwrap(), ids[..1]);
        assert!(parse_ns_descriptors(&[]).unwrap().is_empty());
    }

    #[test]
    fn ns_descriptor_malformed() {
        // Truncated header.
        assert!(matches!(
            parse_ns_descriptors(&[1, 8]),
            Err(SpecError::Truncated { need: 4, .. })
        ));
        // Truncated body.
        assert!(matches!(
            parse_ns_descriptors(&[2, 16, 0, 0, 1, 2]),
            Err(SpecError::Truncated {
                need: 20,
                len: 6,
                ..
            })
        ));
        // Wrong NIDL for a known type.
        let e = parse_ns_descriptors(&[1, 4, 0, 0, 1, 2, 3, 4]).unwrap_err();
        assert!(matches!(e, SpecError::Malformed { .. }));
        assert!(e.to_string().contains("NIDL 4"));
        // Unknown type is skipped, then parsing continues.
        let buf = [9, 2, 0, 0, 0xff, 0xff, 4, 1, 0, 0, 1, 0];
        assert_eq!(parse_ns_descriptors(&buf).unwrap(), [NsIdentifier::Csi(1)]);
        // Unknown type with zero length still makes progress.
        assert!(parse_ns_descriptors(&[9, 0, 0, 0, 0]).unwrap().is_empty());
    }

    #[test]
    fn nsid_list() {
        let mut buf = vec![0u8; 4096];
        buf[..4].copy_from_slice(&1u32.to_le_bytes());
        buf[4..8].copy_from_slice(&7u32.to_le_bytes());
        buf[12..16].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(parse_nsid_list(&buf), [1, 7]);
        assert_eq!(parse_nsid_list(&buf[..6]), [1]);
        assert!(parse_nsid_list(&[]).is_empty());
    }
}
