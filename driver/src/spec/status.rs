//! Completion status field (NVMe Base 2.0 §4.6.1) and status code tables.
//!
//! [`Status`] is the 15-bit status field of a CQE *without* the phase tag,
//! i.e. CQE bytes 14-15 shifted right by one, the same convention as Linux
//! and QEMU: SC 7:0, SCT 10:8, CRD 12:11, M 13, DNR 14.

use core::fmt;

/// Status Code Type values (§4.6.1).
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
    /// Path related status.
    pub const PATH: u8 = 3;
    /// Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// Generic command status codes, SCT 0 (§4.6.1).
pub mod generic {
    /// Successful Completion.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: u8 = 0x01;
    /// Invalid Field in Command.
    pub const INVALID_FIELD: u8 = 0x02;
    /// Command ID Conflict.
    pub const CID_CONFLICT: u8 = 0x03;
    /// Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    /// Commands Aborted due to Power Loss Notification.
    pub const ABORTED_POWER_LOSS: u8 = 0x05;
    /// Internal Error.
    pub const INTERNAL_ERROR: u8 = 0x06;
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: u8 = 0x07;
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    /// Command Aborted due to Failed Fused Command.
    pub const ABORTED_FAILED_FUSED: u8 = 0x09;
    /// Command Aborted due to Missing Fused Command.
    pub const ABORTED_MISSING_FUSED: u8 = 0x0a;
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: u8 = 0x0b;
    /// Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0c;
    /// Invalid SGL Segment Descriptor.
    pub const INVALID_SGL_SEGMENT_DESCRIPTOR: u8 = 0x0d;
    /// Invalid Number of SGL Descriptors.
    pub const INVALID_SGL_DESCRIPTOR_COUNT: u8 = 0x0e;
    /// Data SGL Length Invalid.
    pub const DATA_SGL_LENGTH_INVALID: u8 = 0x0f;
    /// Metadata SGL Length Invalid.
    pub const METADATA_SGL_LENGTH_INVALID: u8 = 0x10;
    /// SGL Descriptor Type Invalid.
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u8 = 0x11;
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: u8 = 0x13;
    /// SGL Offset Invalid.
    pub const SGL_OFFSET_INVALID: u8 = 0x16;
    /// Host Identifier Inconsistent Format.
    pub const HOST_ID_INCONSISTENT_FORMAT: u8 = 0x18;
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// Capacity Exceeded.
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    /// Namespace Not Ready.
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
    /// Reservation Conflict.
    pub const RESERVATION_CONFLICT: u8 = 0x83;
}

/// Command specific status codes, SCT 1 (§4.6.1).
pub mod command_specific {
    /// Completion Queue Invalid.
    pub const INVALID_CQ: u8 = 0x00;
    /// Invalid Queue Identifier (also returned for too many queues).
    pub const INVALID_QID: u8 = 0x01;
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    /// Abort Command Limit Exceeded.
    pub const ABORT_LIMIT_EXCEEDED: u8 = 0x03;
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: u8 = 0x05;
    /// Invalid Interrupt Vector.
    pub const INVALID_INTERRUPT_VECTOR: u8 = 0x08;
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    /// Invalid Format.
    pub const INVALID_FORMAT: u8 = 0x0a;
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: u8 = 0x0c;
}

/// Media and data integrity errors, SCT 2 (§4.6.1).
pub mod media {
    /// Write Fault.
    pub const WRITE_FAULT: u8 = 0x80;
    /// Unrecovered Read Error.
    pub const UNRECOVERED_READ: u8 = 0x81;
    /// End-to-end Guard Check Error.
    pub const GUARD_CHECK: u8 = 0x82;
    /// End-to-end Application Tag Check Error.
    pub const APP_TAG_CHECK: u8 = 0x83;
    /// End-to-end Reference Tag Check Error.
    pub const REF_TAG_CHECK: u8 = 0x84;
    /// Compare Failure.
    pub const COMPARE_FAILURE: u8 = 0x85;
    /// Access Denied.
    pub const ACCESS_DENIED: u8 = 0x86;
}

/// Path related status codes, SCT 3 (§4.6.1).
pub mod path {
    /// Internal Path Error.
    pub const INTERNAL_PATH_ERROR: u8 = 0x00;
    /// Asymmetric Access Persistent Loss.
    pub const ANA_PERSISTENT_LOSS: u8 = 0x01;
    /// Asymmetric Access Inaccessible.
    pub const ANA_INACCESSIBLE: u8 = 0x02;
    /// Asymmetric Access Transition.
    pub const ANA_TRANSITION: u8 = 0x03;
    /// Controller Pathing Error.
    pub const CONTROLLER_PATHING_ERROR: u8 = 0x60;
    /// Host Pathing Error.
    pub const HOST_PATHING_ERROR: u8 = 0x70;
    /// Command Aborted By Host.
    pub const ABORTED_BY_HOST: u8 = 0x71;
}

/// Completion status without the phase tag: SC 7:0, SCT 10:8, CRD 12:11,
/// M 13, DNR 14 (§4.6.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u16);

impl Status {
    /// Successful Completion (SCT 0, SC 0).
    pub const SUCCESS: Self = Self(0);

    /// Status with the given type and code; CRD, More and DNR clear.
    pub const fn new(sct: u8, sc: u8) -> Self {
        Self((((sct & 0x7) as u16) << 8) | sc as u16)
    }

    /// Returns a copy with Do Not Retry set or cleared.
    pub const fn with_dnr(self, dnr: bool) -> Self {
        Self((self.0 & !(1 << 14)) | ((dnr as u16) << 14))
    }

    /// Returns a copy with the Command Retry Delay index (0..=3) set.
    pub const fn with_crd(self, crd: u8) -> Self {
        Self((self.0 & !(0x3 << 11)) | (((crd & 0x3) as u16) << 11))
    }

    /// Returns a copy with More (error log has more information) set or cleared.
    pub const fn with_more(self, more: bool) -> Self {
        Self((self.0 & !(1 << 13)) | ((more as u16) << 13))
    }

    /// Status Code.
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Status Code Type, see [`sct`].
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }

    /// Command Retry Delay: 0 = none, 1..=3 index Identify Controller CRDT1..3.
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 0x3) as u8
    }

    /// More: the Error Information log page has more detail.
    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }

    /// Do Not Retry.
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// SCT and SC are both zero (ignores CRD/M/DNR).
    pub const fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }

    /// A path related status (SCT 3): candidates for retry on another path.
    pub const fn is_path_error(self) -> bool {
        self.sct() == sct::PATH
    }

    /// Spec name of the status code, `"unknown"` when not in the table.
    pub const fn name(self) -> &'static str {
        match (self.sct(), self.sc()) {
            (sct::GENERIC, c) => match c {
                generic::SUCCESS => "Successful Completion",
                generic::INVALID_OPCODE => "Invalid Command Opcode",
                generic::INVALID_FIELD => "Invalid Field in Command",
                generic::CID_CONFLICT => "Command ID Conflict",
                generic::DATA_TRANSFER_ERROR => "Data Transfer Error",
                generic::ABORTED_POWER_LOSS => "Commands Aborted due to Power Loss Notification",
                generic::INTERNAL_ERROR => "Internal Error",
                generic::ABORT_REQUESTED => "Command Abort Requested",
                generic::ABORTED_SQ_DELETION => "Command Aborted due to SQ Deletion",
                generic::ABORTED_FAILED_FUSED => "Command Aborted due to Failed Fused Command",
                generic::ABORTED_MISSING_FUSED => "Command Aborted due to Missing Fused Command",
                generic::INVALID_NAMESPACE => "Invalid Namespace or Format",
                generic::COMMAND_SEQUENCE_ERROR => "Command Sequence Error",
                generic::INVALID_SGL_SEGMENT_DESCRIPTOR => "Invalid SGL Segment Descriptor",
                generic::INVALID_SGL_DESCRIPTOR_COUNT => "Invalid Number of SGL Descriptors",
                generic::DATA_SGL_LENGTH_INVALID => "Data SGL Length Invalid",
                generic::METADATA_SGL_LENGTH_INVALID => "Metadata SGL Length Invalid",
                generic::SGL_DESCRIPTOR_TYPE_INVALID => "SGL Descriptor Type Invalid",
                generic::PRP_OFFSET_INVALID => "PRP Offset Invalid",
                generic::SGL_OFFSET_INVALID => "SGL Offset Invalid",
                generic::HOST_ID_INCONSISTENT_FORMAT => "Host Identifier Inconsistent Format",
                generic::LBA_OUT_OF_RANGE => "LBA Out of Range",
                generic::CAPACITY_EXCEEDED => "Capacity Exceeded",
                generic::NAMESPACE_NOT_READY => "Namespace Not Ready",
                generic::RESERVATION_CONFLICT => "Reservation Conflict",
                _ => "unknown",
            },
            (sct::COMMAND_SPECIFIC, c) => match c {
                command_specific::INVALID_CQ => "Completion Queue Invalid",
                command_specific::INVALID_QID => "Invalid Queue Identifier",
                command_specific::INVALID_QUEUE_SIZE => "Invalid Queue Size",
                command_specific::ABORT_LIMIT_EXCEEDED => "Abort Command Limit Exceeded",
                command_specific::AER_LIMIT_EXCEEDED => "Asynchronous Event Request Limit Exceeded",
                command_specific::INVALID_INTERRUPT_VECTOR => "Invalid Interrupt Vector",
                command_specific::INVALID_LOG_PAGE => "Invalid Log Page",
                command_specific::INVALID_FORMAT => "Invalid Format",
                command_specific::INVALID_QUEUE_DELETION => "Invalid Queue Deletion",
                _ => "unknown",
            },
            (sct::MEDIA, c) => match c {
                media::WRITE_FAULT => "Write Fault",
                media::UNRECOVERED_READ => "Unrecovered Read Error",
                media::GUARD_CHECK => "End-to-end Guard Check Error",
                media::APP_TAG_CHECK => "End-to-end Application Tag Check Error",
                media::REF_TAG_CHECK => "End-to-end Reference Tag Check Error",
                media::COMPARE_FAILURE => "Compare Failure",
                media::ACCESS_DENIED => "Access Denied",
                _ => "unknown",
            },
            (sct::PATH, c) => match c {
                path::INTERNAL_PATH_ERROR => "Internal Path Error",
                path::ANA_PERSISTENT_LOSS => "Asymmetric Access Persistent Loss",
                path::ANA_INACCESSIBLE => "Asymmetric Access Inaccessible",
                path::ANA_TRANSITION => "Asymmetric Access Transition",
                path::CONTROLLER_PATHING_ERROR => "Controller Pathing Error",
                path::HOST_PATHING_ERROR => "Host Pathing Error",
                path::ABORTED_BY_HOST => "Command Aborted By Host",
                _ => "unknown",
            },
            (sct::VENDOR, _) => "Vendor Specific",
            _ => "unknown",
        }
    }

    fn fmt_fields(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sct {:x}h sc {:02x}h", self.sct(), self.sc())?;
        if self.crd() != 0 {
            write!(f, ", crd {}", self.crd())?;
        }
        if self.more() {
            f.write_str(", more")?;
        }
        if self.dnr() {
            f.write_str(", dnr")?;
        }
        Ok(())
    }
}

impl fmt::Display for Status {
    /// `Invalid Field in Command (sct 0h sc 02h, dnr)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", self.name())?;
        self.fmt_fields(f)?;
        f.write_str(")")
    }
}

impl fmt::Debug for Status {
    /// `Status(Invalid Field in Command: sct 0h sc 02h, dnr)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({}: ", self.name())?;
        self.fmt_fields(f)?;
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let s2 = Status::new(sct::MEDIA, media::COMPARE_FAILURE)
            .with_crd(2)
            .with_more(true)
            .with_dnr(true);
        assert_eq!(s2.0, (1 << 14) | (1 << 13) | (2 << 11) | (2 << 8) | 0x85);
        assert_eq!(s2.sct(), 2);
        assert_eq!(s2.sc(), 0x85);
        assert_eq!(s2.crd(), 2);
        assert!(s2.more() && s2.dnr());
        assert!(!s2.with_dnr(false).dnr());
        assert_eq!(s2.with_crd(0).crd(), 0);
        // Linux/QEMU mask convention.
        assert_eq!(Status(0x700).sct(), 7);
        assert_eq!(Status(0x1800).crd(), 3);
        assert!(Status(0x2000).more());
        assert!(Status(0x4000).dnr());
    }

    #[test]
    fn success_and_path() {
        assert!(Status::SUCCESS.is_success());
        assert!(Status::SUCCESS.with_dnr(true).is_success());
        assert!(!Status::new(0, 1).is_success());
        assert!(Status::new(sct::PATH, path::ANA_TRANSITION).is_path_error());
        assert!(!Status::new(sct::GENERIC, generic::INTERNAL_ERROR).is_path_error());
    }

    #[test]
    fn names() {
        assert_eq!(Status::SUCCESS.name(), "Successful Completion");
        assert_eq!(
            Status::new(0, generic::PRP_OFFSET_INVALID).name(),
            "PRP Offset Invalid"
        );
        assert_eq!(
            Status::new(sct::COMMAND_SPECIFIC, command_specific::INVALID_QID).name(),
            "Invalid Queue Identifier"
        );
        assert_eq!(
            Status::new(sct::PATH, path::ANA_INACCESSIBLE).name(),
            "Asymmetric Access Inaccessible"
        );
        assert_eq!(
            Status::new(sct::MEDIA, media::UNRECOVERED_READ).name(),
            "Unrecovered Read Error"
        );
        assert_eq!(Status::new(0, 0x7f).name(), "unknown");
        assert_eq!(Status::new(5, 0).name(), "unknown");
        assert_eq!(Status::new(sct::VENDOR, 0x12).name(), "Vendor Specific");
    }

    #[test]
    fn display_and_debug() {
        let s = Status::new(sct::GENERIC, generic::INVALID_FIELD).with_dnr(true);
        assert_eq!(
            s.to_string(),
            "Invalid Field in Command (sct 0h sc 02h, dnr)"
        );
        assert_eq!(
            format!("{s:?}"),
            "Status(Invalid Field in Command: sct 0h sc 02h, dnr)"
        );
        let s = Status::new(sct::PATH, path::ANA_TRANSITION)
            .with_crd(1)
            .with_more(true);
        assert_eq!(
            s.to_string(),
            "Asymmetric Access Transition (sct 3h sc 03h, crd 1, more)"
        );
        assert_eq!(
            Status::SUCCESS.to_string(),
            "Successful Completion (sct 0h sc 00h)"
        );
    }
}
