//! Log pages and asynchronous events (NVMe Base 2.0 Get Log Page and
//! Asynchronous Event Request commands; ANA log per the ANA section).

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::SpecError;

/// Log page identifiers (Get Log Page CDW10 7:0).
pub mod lid {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FW_SLOT: u8 = 0x03;
    /// Changed Namespace List.
    pub const CHANGED_NS: u8 = 0x04;
    /// Commands Supported and Effects.
    pub const EFFECTS: u8 = 0x05;
    /// Asymmetric Namespace Access.
    pub const ANA: u8 = 0x0c;
}

/// ANA log LSP bit 0 (RGO): return groups only, omit NSID lists.
pub const ANA_LSP_RGO: u8 = 1 << 0;

/// Error Information log entry, 64 bytes (LID 01h).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ErrorLogEntry {
    /// Error Count; 0 means the entry is empty.
    pub error_count: u64,
    /// Submission Queue ID of the failed command.
    pub sqid: u16,
    /// Command ID of the failed command.
    pub cid: u16,
    /// Status field, phase tag in bit 0 (same as CQE bytes 14-15).
    pub status_field: u16,
    /// Parameter Error Location: byte 7:0 and bit 10:8 in the command.
    pub param_error_location: u16,
    /// First LBA that had the error.
    pub lba: u64,
    /// Namespace of the error.
    pub nsid: u32,
    /// Vendor Specific Information Available (log page id).
    pub vs: u8,
    /// Transport Type.
    pub trtype: u8,
    /// Reserved.
    pub rsvd30: [u8; 2],
    /// Command Specific Information.
    pub cs: u64,
    /// Transport Type Specific Information.
    pub trtype_spec_info: u16,
    /// Reserved.
    pub rsvd42: [u8; 22],
}

const _: () = assert!(size_of::<ErrorLogEntry>() == 64);
const _: () = assert!(offset_of!(ErrorLogEntry, sqid) == 8);
const _: () = assert!(offset_of!(ErrorLogEntry, cid) == 10);
const _: () = assert!(offset_of!(ErrorLogEntry, status_field) == 12);
const _: () = assert!(offset_of!(ErrorLogEntry, param_error_location) == 14);
const _: () = assert!(offset_of!(ErrorLogEntry, lba) == 16);
const _: () = assert!(offset_of!(ErrorLogEntry, nsid) == 24);
const _: () = assert!(offset_of!(ErrorLogEntry, vs) == 28);
const _: () = assert!(offset_of!(ErrorLogEntry, trtype) == 29);
const _: () = assert!(offset_of!(ErrorLogEntry, cs) == 32);

impl ErrorLogEntry {
    /// Status of the failed command (phase tag removed).
    pub fn status(&self) -> super::Status {
        super::Status(self.status_field >> 1)
    }
}

/// SMART / Health Information log, 512 bytes (LID 02h).
/// The 128-bit counters are little-endian byte arrays; use the `u128` getters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SmartLog {
    /// Critical Warning bits.
    pub critical_warning: u8,
    /// Composite Temperature, K (unaligned u16, see [`SmartLog::temperature_k`]).
    pub temperature: [u8; 2],
    /// Available Spare, percent.
    pub avail_spare: u8,
    /// Available Spare Threshold, percent.
    pub spare_thresh: u8,
    /// Percentage Used.
    pub percent_used: u8,
    /// Endurance Group Critical Warning Summary.
    pub endu_grp_crit_warn_sumry: u8,
    /// Reserved.
    pub rsvd7: [u8; 25],
    /// Data Units Read, thousands of 512-byte units.
    pub data_units_read: [u8; 16],
    /// Data Units Written, thousands of 512-byte units.
    pub data_units_written: [u8; 16],
    /// Host Read Commands.
    pub host_reads: [u8; 16],
    /// Host Write Commands.
    pub host_writes: [u8; 16],
    /// Controller Busy Time, minutes.
    pub ctrl_busy_time: [u8; 16],
    /// Power Cycles.
    pub power_cycles: [u8; 16],
    /// Power On Hours.
    pub power_on_hours: [u8; 16],
    /// Unsafe Shutdowns.
    pub unsafe_shutdowns: [u8; 16],
    /// Media and Data Integrity Errors.
    pub media_errors: [u8; 16],
    /// Number of Error Information Log Entries.
    pub num_err_log_entries: [u8; 16],
    /// Warning Composite Temperature Time, minutes.
    pub warning_temp_time: u32,
    /// Critical Composite Temperature Time, minutes.
    pub critical_comp_time: u32,
    /// Temperature Sensors 1-8, K.
    pub temp_sensor: [u16; 8],
    /// Thermal Management Temperature 1 Transition Count.
    pub thm_temp1_trans_count: u32,
    /// Thermal Management Temperature 2 Transition Count.
    pub thm_temp2_trans_count: u32,
    /// Total Time For Thermal Management Temperature 1, seconds.
    pub thm_temp1_total_time: u32,
    /// Total Time For Thermal Management Temperature 2, seconds.
    pub thm_temp2_total_time: u32,
    /// Reserved.
    pub rsvd232: [u8; 280],
}

const _: () = assert!(size_of::<SmartLog>() == 512);
const _: () = assert!(offset_of!(SmartLog, temperature) == 1);
const _: () = assert!(offset_of!(SmartLog, avail_spare) == 3);
const _: () = assert!(offset_of!(SmartLog, percent_used) == 5);
const _: () = assert!(offset_of!(SmartLog, data_units_read) == 32);
const _: () = assert!(offset_of!(SmartLog, data_units_written) == 48);
const _: () = assert!(offset_of!(SmartLog, host_reads) == 64);
const _: () = assert!(offset_of!(SmartLog, host_writes) == 80);
const _: () = assert!(offset_of!(SmartLog, unsafe_shutdowns) == 144);
const _: () = assert!(offset_of!(SmartLog, media_errors) == 160);
const _: () = assert!(offset_of!(SmartLog, warning_temp_time) == 192);
const _: () = assert!(offset_of!(SmartLog, temp_sensor) == 200);

impl Default for SmartLog {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl SmartLog {
    /// Composite temperature in kelvin.
    pub fn temperature_k(&self) -> u16 {
        u16::from_le_bytes(self.temperature)
    }
    /// Data Units Read (1000 × 512 bytes each).
    pub fn data_units_read(&self) -> u128 {
        u128::from_le_bytes(self.data_units_read)
    }
    /// Data Units Written (1000 × 512 bytes each).
    pub fn data_units_written(&self) -> u128 {
        u128::from_le_bytes(self.data_units_written)
    }
    /// Host Read Commands.
    pub fn host_reads(&self) -> u128 {
        u128::from_le_bytes(self.host_reads)
    }
    /// Host Write Commands.
    pub fn host_writes(&self) -> u128 {
        u128::from_le_bytes(self.host_writes)
    }
    /// Controller Busy Time, minutes.
    pub fn ctrl_busy_time(&self) -> u128 {
        u128::from_le_bytes(self.ctrl_busy_time)
    }
    /// Power Cycles.
    pub fn power_cycles(&self) -> u128 {
        u128::from_le_bytes(self.power_cycles)
    }
    /// Power On Hours.
    pub fn power_on_hours(&self) -> u128 {
        u128::from_le_bytes(self.power_on_hours)
    }
    /// Unsafe Shutdowns.
    pub fn unsafe_shutdowns(&self) -> u128 {
        u128::from_le_bytes(self.unsafe_shutdowns)
    }
    /// Media and Data Integrity Errors.
    pub fn media_errors(&self) -> u128 {
        u128::from_le_bytes(self.media_errors)
    }
    /// Number of Error Information Log Entries.
    pub fn num_err_log_entries(&self) -> u128 {
        u128::from_le_bytes(self.num_err_log_entries)
    }
}

/// ANA log page header, 16 bytes (LID 0Ch).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct AnaLogHeader {
    /// Change Count.
    pub chgcnt: u64,
    /// Number of ANA Group Descriptors.
    pub ngrps: u16,
    /// Reserved.
    pub rsvd: [u8; 6],
}

const _: () = assert!(size_of::<AnaLogHeader>() == 16);
const _: () = assert!(offset_of!(AnaLogHeader, ngrps) == 8);

/// ANA Group Descriptor header, 32 bytes, followed by `nnsids` u32 NSIDs.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct AnaGroupDescHeader {
    /// ANA Group ID.
    pub grpid: u32,
    /// Number of NSID values that follow.
    pub nnsids: u32,
    /// Change Count.
    pub chgcnt: u64,
    /// ANA State in bits 3:0, see [`AnaState`].
    pub state: u8,
    /// Reserved.
    pub rsvd: [u8; 15],
}

const _: () = assert!(size_of::<AnaGroupDescHeader>() == 32);
const _: () = assert!(offset_of!(AnaGroupDescHeader, nnsids) == 4);
const _: () = assert!(offset_of!(AnaGroupDescHeader, chgcnt) == 8);
const _: () = assert!(offset_of!(AnaGroupDescHeader, state) == 16);

/// Asymmetric Namespace Access state, an open enum.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct AnaState(pub u8);

impl AnaState {
    /// ANA Optimized.
    pub const OPTIMIZED: Self = Self(0x1);
    /// ANA Non-Optimized.
    pub const NON_OPTIMIZED: Self = Self(0x2);
    /// ANA Inaccessible.
    pub const INACCESSIBLE: Self = Self(0x3);
    /// ANA Persistent Loss.
    pub const PERSISTENT_LOSS: Self = Self(0x4);
    /// ANA Change (transitioning).
    pub const CHANGE: Self = Self(0xf);

    /// Spec name, `"unknown"` for reserved values.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x1 => "optimized",
            0x2 => "non-optimized",
            0x3 => "inaccessible",
            0x4 => "persistent-loss",
            0xf => "change",
            _ => "unknown",
        }
    }

    /// I/O may be sent through this path (optimized or non-optimized).
    pub const fn is_usable(self) -> bool {
        matches!(self.0, 0x1 | 0x2)
    }
}

impl core::fmt::Display for AnaState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// One decoded ANA group descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnaGroup {
    /// ANA Group ID.
    pub grpid: u32,
    /// State of the group as seen through this controller.
    pub state: AnaState,
    /// Per-group change count.
    pub chgcnt: u64,
    /// Member NSIDs (empty if the log was read with RGO).
    pub nsids: Vec<u32>,
}

const ANA_LOG: &str = "ANA log page";

/// Parses an ANA log page. Returns the header change count and the groups.
///
/// # Errors
/// [`SpecError::Truncated`] if the header, a descriptor, or its NSID list
/// runs past `buf`.
pub fn parse_ana_log(buf: &[u8]) -> Result<(u64, Vec<AnaGroup>), SpecError> {
    let (hdr, mut rest) =
        AnaLogHeader::read_from_prefix(buf).map_err(|_| SpecError::Truncated {
            what: ANA_LOG,
            len: buf.len(),
            need: size_of::<AnaLogHeader>(),
        })?;
    // Never trust ngrps for the allocation size.
    let mut groups = Vec::with_capacity(usize::from(hdr.ngrps).min(rest.len() / 32));
    for _ in 0..hdr.ngrps {
        let at = buf.len() - rest.len();
        let (desc, after) =
            AnaGroupDescHeader::read_from_prefix(rest).map_err(|_| SpecError::Truncated {
                what: ANA_LOG,
                len: buf.len(),
                need: at + size_of::<AnaGroupDescHeader>(),
            })?;
        let list_len = (desc.nnsids as usize).saturating_mul(4);
        let list = after.get(..list_len).ok_or(SpecError::Truncated {
            what: ANA_LOG,
            len: buf.len(),
            need: (at + size_of::<AnaGroupDescHeader>()).saturating_add(list_len),
        })?;
        groups.push(AnaGroup {
            grpid: desc.grpid,
            state: AnaState(desc.state & 0xf),
            chgcnt: desc.chgcnt,
            nsids: list
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        });
        rest = &after[list_len..];
    }
    Ok((hdr.chgcnt, groups))
}

/// Bytes needed to encode an ANA log page with these groups.
pub fn ana_log_len(groups: &[AnaGroup]) -> usize {
    size_of::<AnaLogHeader>()
        + groups
            .iter()
            .map(|g| size_of::<AnaGroupDescHeader>() + 4 * g.nsids.len())
            .sum::<usize>()
}

/// Encodes an ANA log page (for the software controller).
///
/// Writes `min(out.len(), ana_log_len(groups))` bytes, truncating like Get
/// Log Page does for a short NUMD, and returns the full encoded length
/// ([`ana_log_len`]); equal to the bytes written when `out` is large enough.
/// At most 65535 groups are encoded (NGRPS is 16 bits).
pub fn encode_ana_log(chgcnt: u64, groups: &[AnaGroup], out: &mut [u8]) -> usize {
    let groups = &groups[..groups.len().min(usize::from(u16::MAX))];
    let mut page = Vec::with_capacity(ana_log_len(groups));
    let hdr = AnaLogHeader {
        chgcnt,
        ngrps: groups.len() as u16,
        rsvd: [0; 6],
    };
    page.extend_from_slice(hdr.as_bytes());
    for g in groups {
        let desc = AnaGroupDescHeader {
            grpid: g.grpid,
            nnsids: g.nsids.len() as u32,
            chgcnt: g.chgcnt,
            state: g.state.0 & 0xf,
            rsvd: [0; 15],
        };
        page.extend_from_slice(desc.as_bytes());
        for nsid in &g.nsids {
            page.extend_from_slice(&nsid.to_le_bytes());
        }
    }
    let n = page.len().min(out.len());
    out[..n].copy_from_slice(&page[..n]);
    page.len()
}

/// Asynchronous event types (AER completion DW0 bits 2:0).
pub mod aer_type {
    /// Error status.
    pub const ERROR: u8 = 0;
    /// SMART / Health status.
    pub const SMART: u8 = 1;
    /// Notice.
    pub const NOTICE: u8 = 2;
    /// I/O command specific status.
    pub const IO_SET: u8 = 6;
    /// Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// Asynchronous event information for type Notice (DW0 bits 15:8).
pub mod aer_notice {
    /// Namespace Attribute Changed (read LID 04h).
    pub const NS_CHANGED: u8 = 0x00;
    /// Firmware Activation Starting.
    pub const FW_ACTIVATION: u8 = 0x01;
    /// Asymmetric Namespace Access Change (read LID 0Ch).
    pub const ANA_CHANGE: u8 = 0x03;
}

/// Asynchronous event information for type Error (DW0 bits 15:8).
pub mod aer_error {
    /// Write to an invalid doorbell register.
    pub const INVALID_DOORBELL_REGISTER: u8 = 0x00;
    /// Invalid doorbell write value.
    pub const INVALID_DOORBELL_VALUE: u8 = 0x01;
}

/// Decoded Asynchronous Event Request completion DW0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AsyncEvent {
    /// Event type (bits 2:0), see [`aer_type`].
    pub event_type: u8,
    /// Event information (bits 15:8), e.g. [`aer_notice`].
    pub info: u8,
    /// Log page to read to clear the event (bits 23:16).
    pub log_page: u8,
}

impl AsyncEvent {
    /// Decodes completion DW0.
    pub const fn from_dw0(dw0: u32) -> Self {
        Self {
            event_type: (dw0 & 0x7) as u8,
            info: (dw0 >> 8) as u8,
            log_page: (dw0 >> 16) as u8,
        }
    }

    /// Encodes completion DW0 (for the software controller).
    pub const fn to_dw0(self) -> u32 {
        (self.event_type & 0x7) as u32 | ((self.info as u32) << 8) | ((self.log_page as u32) << 16)
    }

    /// An ANA change notice (type Notice, info 03h).
    pub const fn is_ana_change(&self) -> bool {
        self.event_type == aer_type::NOTICE && self.info == aer_notice::ANA_CHANGE
    }

    /// A namespace attribute changed notice (type Notice, info 00h).
    pub const fn is_ns_changed(&self) -> bool {
        self.event_type == aer_type::NOTICE && self.info == aer_notice::NS_CHANGED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Vec<AnaGroup> {
        vec![
            AnaGroup {
                grpid: 1,
                state: AnaState::OPTIMIZED,
                chgcnt: 5,
                nsids: vec![1, 2, 3],
            },
            AnaGroup {
                grpid: 2,
                state: AnaState::INACCESSIBLE,
                chgcnt: 6,
                nsids: vec![],
            },
            AnaGroup {
                grpid: 7,
                state: AnaState::CHANGE,
                chgcnt: 7,
                nsids: vec![0x10],
            },
        ]
    }

    #[test]
    fn ana_round_trip() {
        let g = groups();
        let mut buf = [0u8; 4096];
        let n = encode_ana_log(42, &g, &mut buf);
        assert_eq!(n, 16 + 32 * 3 + 4 * 4);
        assert_eq!(n, ana_log_len(&g));
        assert_eq!(buf[..8], 42u64.to_le_bytes());
        assert_eq!(buf[8..10], 3u16.to_le_bytes());
        assert_eq!(buf[16..20], 1u32.to_le_bytes());
        assert_eq!(buf[20..24], 3u32.to_le_bytes());
        assert_eq!(buf[32], 1);
        assert_eq!(buf[48..52], 1u32.to_le_bytes());
        let (chg, parsed) = parse_ana_log(&buf).unwrap();
        assert_eq!(chg, 42);
        assert_eq!(parsed, g);
        // Exactly sized buffer is fine too.
        assert_eq!(parse_ana_log(&buf[..n]).unwrap().1, g);
    }

    #[test]
    fn ana_truncated() {
        let g = groups();
        let mut buf = [0u8; 256];
        let n = encode_ana_log(1, &g, &mut buf);
        assert!(matches!(
            parse_ana_log(&buf[..10]),
            Err(SpecError::Truncated {
                len: 10,
                need: 16,
                ..
            })
        ));
        for cut in 16..n {
            let e = parse_ana_log(&buf[..cut]).unwrap_err();
            assert!(matches!(e, SpecError::Truncated { .. }), "cut {cut}: {e}");
        }
        // Huge NNSIDs does not panic or over-allocate.
        let mut bad = [0u8; 48];
        bad[8] = 1;
        bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_ana_log(&bad),
            Err(SpecError::Truncated { .. })
        ));
        // Huge NGRPS with no data.
        let mut bad = [0u8; 16];
        bad[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(parse_ana_log(&bad).is_err());
        // Short output is truncated but reports the full length.
        let mut short = [0u8; 20];
        assert_eq!(encode_ana_log(9, &g, &mut short), n);
        assert_eq!(short[..8], 9u64.to_le_bytes());
    }

    #[test]
    fn ana_state() {
        assert!(AnaState::OPTIMIZED.is_usable());
        assert!(AnaState::NON_OPTIMIZED.is_usable());
        assert!(!AnaState::INACCESSIBLE.is_usable());
        assert!(!AnaState::CHANGE.is_usable());
        assert!(!AnaState(0).is_usable());
        assert_eq!(AnaState::PERSISTENT_LOSS.name(), "persistent-loss");
        assert_eq!(AnaState(9).name(), "unknown");
        // Upper nibble of the state byte is reserved and masked.
        let mut buf = [0u8; 48];
        buf[8] = 1;
        buf[16 + 16] = 0xa2;
        assert_eq!(
            parse_ana_log(&buf).unwrap().1[0].state,
            AnaState::NON_OPTIMIZED
        );
    }

    #[test]
    fn async_event_round_trip() {
        let ev = AsyncEvent::from_dw0(0x000c_0302);
        assert_eq!(
            ev,
            AsyncEvent {
                event_type: 2,
                info: 3,
                log_page: 0x0c
            }
        );
        assert!(ev.is_ana_change());
        assert!(!ev.is_ns_changed());
        assert_eq!(ev.to_dw0(), 0x000c_0302);
        let ns = AsyncEvent {
            event_type: aer_type::NOTICE,
            info: aer_notice::NS_CHANGED,
            log_page: lid::CHANGED_NS,
        };
        assert_eq!(ns.to_dw0(), 0x0004_0002);
        assert!(ns.is_ns_changed());
        for dw0 in [0u32, 0x00ff_ff07, 0x0001_0101] {
            assert_eq!(AsyncEvent::from_dw0(dw0).to_dw0(), dw0);
        }
    }

    #[test]
    fn smart_and_error_entries() {
        let mut raw = [0u8; 512];
        raw[1..3].copy_from_slice(&310u16.to_le_bytes());
        raw[32..48].copy_from_slice(&(1u128 << 70 | 5).to_le_bytes());
        raw[160] = 9;
        let s = SmartLog::read_from_bytes(&raw[..]).unwrap();
        assert_eq!(s.temperature_k(), 310);
        assert_eq!(s.data_units_read(), 1u128 << 70 | 5);
        assert_eq!(s.media_errors(), 9);
        assert_eq!(s.unsafe_shutdowns(), 0);

        let mut raw = [0u8; 64];
        raw[0] = 1;
        raw[8] = 2;
        raw[10] = 0x33;
        raw[12..14].copy_from_slice(&((0x4002u16 << 1) | 1).to_le_bytes());
        raw[24] = 1;
        let e = ErrorLogEntry::read_from_bytes(&raw[..]).unwrap();
        assert_eq!((e.error_count, e.sqid, e.cid, e.nsid), (1, 2, 0x33, 1));
        assert_eq!(e.status().sc(), 2);
        assert!(e.status().dnr());
    }
}
