//! What a controller needs from its PCI function, and the backends that provide it.
//!
//! [`PciFunction`] is the bus boundary of the design: BAR0 register access, DMA mapping into the
//! function's IOMMU domain, function reset, bus mastering, and notice of removal. Everything above
//! it (`ctrl`, `qpair`, `vfnvme-mpath`) is written once and runs unchanged on the VFIO backend and
//! on the software controller in [`crate::sim`].
//!
//! Surprise removal shows as all-ones register reads ([`crate::spec::regs::ALL_ONES_32`]); orderly
//! removal (the VFIO device-request IRQ) shows as [`PciFunction::removal_requested`].

use std::sync::Arc;

pub mod iommu;
pub mod mmio;
pub mod noiommu;
pub mod sys;
pub mod sysfs;
pub mod vfio;

use vfnvme_hugepages::DmaMapper;

/// Errors from a bus backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The function is gone (surprise removal or released after a removal request).
    #[error("{function}: device is gone")]
    DeviceGone {
        /// PCI address or simulated name.
        function: String,
    },
    /// A backend operation failed.
    #[error("{function}: {op} failed: {detail}")]
    Backend {
        /// PCI address or simulated name.
        function: String,
        /// The operation (e.g. "function reset", "enable bus mastering").
        op: &'static str,
        /// What went wrong, with the fix when one is known.
        detail: String,
    },
    /// DMA memory error.
    #[error("{function}: DMA memory")]
    Dma {
        /// PCI address or simulated name.
        function: String,
        /// The cause.
        #[source]
        source: vfnvme_hugepages::Error,
    },
}

/// A PCI function holding an NVMe controller. Implemented by the VFIO backend and the software
/// controller. All methods may be called from any thread; register access is what a doorbell
/// write costs, so implementations keep it to one MMIO (or one call into the simulator).
pub trait PciFunction: Send + Sync {
    /// A name for logs and errors: the PCI address (`0000:01:00.0`) or the simulated name.
    fn name(&self) -> &str;

    /// Reads a 32-bit BAR0 register. A vanished device reads as all-ones.
    fn read32(&self, offset: usize) -> u32;

    /// Writes a 32-bit BAR0 register (a doorbell, CC, AQA...).
    fn write32(&self, offset: usize, value: u32);

    /// Reads a 64-bit BAR0 register (CAP, ASQ, ACQ), low dword first.
    fn read64(&self, offset: usize) -> u64 {
        let lo = self.read32(offset) as u64;
        let hi = self.read32(offset + 4) as u64;
        lo | (hi << 32)
    }

    /// Writes a 64-bit BAR0 register, low dword first.
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    /// The DMA domain of this function. Functions that share an IOMMU container return mappers
    /// with the same [`vfnvme_hugepages::DomainId`].
    fn dma_mapper(&self) -> Arc<dyn DmaMapper>;

    /// Function-level reset, where the function offers one.
    ///
    /// # Errors
    /// [`Error::Backend`] when the reset is refused or not offered.
    fn reset_function(&self) -> Result<(), Error>;

    /// Turns bus mastering (the function's ability to DMA) on or off.
    ///
    /// # Errors
    /// [`Error::Backend`] when the config write fails.
    fn set_bus_master(&self, enable: bool) -> Result<(), Error>;

    /// True once the platform asked for the function back (VFIO device-request IRQ). The control
    /// plane then fails its paths over and releases the function.
    fn removal_requested(&self) -> bool {
        false
    }

    /// Lets go of the function after removal (requested or surprise): the control plane calls it
    /// once the controller is [`crate::CtrlState::Removed`], so that the platform can finish the
    /// removal (for VFIO: BAR0 unmapped and the device fd closed, without which the kernel waits
    /// for the process and the hypervisor never reports the device deleted). Afterwards register
    /// reads return all-ones, writes go nowhere, and config-space calls fail with
    /// [`Error::DeviceGone`]; DMA mappings stay valid. Idempotent. The default does nothing
    /// (the software controller has nothing to release).
    fn release(&self) {}

    /// Called by a queue pair whose completion queue was empty. The inline software controller
    /// uses it to make progress on delayed completions; hardware backends do nothing.
    fn idle_poll(&self) {}

    /// Bytes of BAR0 (registers and doorbells), if known. Doorbell offsets come from the device
    /// (CAP.DSTRD), so the driver checks that every doorbell it will ring lies inside.
    fn bar_len(&self) -> Option<usize> {
        None
    }
}
