//! NVMe wire formats as typed, inert Rust.
//!
//! This module owns every byte layout the driver exchanges with a controller:
//! the BAR0 controller registers ([`regs`]), submission and completion queue
//! entries and their constructors ([`cmd`]), completion status codes
//! ([`status`]), Identify data structures ([`identify`]), log pages and
//! asynchronous event encoding ([`log`]) and feature identifiers
//! ([`features`]).
//!
//! It does **not** touch hardware, memory-map anything, or keep state: every
//! type here is plain data that can be built, parsed and compared in a unit
//! test. Parsers of variable-length device data return [`SpecError`] on bad
//! input and never panic.
//!
//! Field layouts follow the NVM Express Base Specification 2.0 (plus the
//! NVMe 2.1 CQT field in Identify Controller), cross-checked against QEMU 7.2
//! (`include/block/nvme.h`), Linux 6.13 (`include/linux/nvme.h`) and SPDK
//! (`include/spdk/nvme_spec.h`) as recorded in the project's NVMe facts sheet.
//! Section numbers in doc comments refer to NVMe Base 2.0 unless stated.
//!
//! Only little-endian hosts are supported: the structs are read and written
//! as native integers.

#![forbid(unsafe_code)]

#[cfg(target_endian = "big")]
compile_error!("vfnvme::spec assumes a little-endian host (NVMe structures are little-endian)");

pub mod cmd;
pub mod features;
pub mod identify;
pub mod log;
pub mod regs;
pub mod status;

pub use cmd::{AdminOpcode, Cqe, NvmOpcode, Sqe};
pub use status::Status;

/// Error decoding variable-length device data (log pages, descriptor lists).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The buffer ends before a structure it announces.
    #[error("{what}: buffer too short ({len} bytes, need {need})")]
    Truncated {
        /// Which structure was being decoded.
        what: &'static str,
        /// Bytes available.
        len: usize,
        /// Bytes required.
        need: usize,
    },
    /// A field holds a value the specification does not allow.
    #[error("{what}: malformed ({detail})")]
    Malformed {
        /// Which structure was being decoded.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}
