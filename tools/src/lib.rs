//! Tools for vfnvme: the reusable parts of the command-line programs, kept here so that they can
//! be unit-tested.
//!
//! * [`perf`]: `vfnvme-perf`, a polled NVMe benchmark modelled on SPDK's `spdk_nvme_perf`
//!   (IOPS, bandwidth, latency percentiles and histogram, data verification, multipath), on PCIe
//!   controllers through VFIO or on the built-in simulated NVM subsystem.
//! * [`setup`]: `vfnvme-setup`, SPDK's `scripts/setup.sh` for vfnvme: controller status, binding
//!   to vfio-pci and back through `driver_override`, hugepages, reset.
//! * [`identify`]: `vfnvme-identify`, decoded Identify Controller and Namespace data (like
//!   nvme-cli's `id-ctrl`/`id-ns`), grouped by subsystem.
//!
//! This crate has no unsafe code: DMA memory and registers live in `vfnvme` and
//! `vfnvme-hugepages`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod identify;
pub mod perf;
pub mod setup;
