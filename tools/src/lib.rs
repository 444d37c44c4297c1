//! Tools for vfnvme: the reusable parts of the command-line programs, kept here so that they can
//! be unit-tested.
//!
//! * [`perf`]: `vfnvme-perf`, a polled NVMe benchmark modelled on SPDK's `spdk_nvme_perf`
//!   (IOPS, bandwidth, latency percentiles and histogram, data verification, multipath), on PCIe
//!   controllers through VFIO or on the built-in simulated NVM subsystem.
//!
//! This crate has no unsafe code: DMA memory and registers live in `vfnvme` and
//! `vfnvme-hugepages`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod perf;
