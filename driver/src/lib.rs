//! vfnvme: a polled userspace NVMe driver.
//!
//! Modules:
//! * [`spec`]: NVMe wire formats (registers, SQE/CQE, opcodes, status, identify, log pages).
//! * [`pci`]: the bus boundary ([`pci::PciFunction`]) with the VFIO backend.
//! * [`sim`]: a software NVMe controller and subsystem, with fault injection.
//! * [`ctrl`]: controller bring-up, admin queue, reset, shutdown, health.
//! * [`qpair`]: polled I/O queue pairs: SQ/CQ rings, command ids, PRPs, submit and poll.
//! * [`clock`]: the TSC clock of the I/O path (deadlines, latencies).
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod clock;
pub mod ctrl;
pub mod pci;
pub mod qpair;
pub mod sim;
pub mod spec;

pub use ctrl::{ControlPlane, Controller, ControllerOptions, CtrlState, Namespace};
pub use qpair::{Completion, NsInfo, Outcome, PassthruCmd, QueueOptions, QueuePair};
