//! Multipath NVMe namespaces over the controllers of one NVM subsystem, with failover of every
//! command — passthrough included.
//!
//! * [`subsystem`]: group controllers by SUBNQN and match namespaces across them by NSID plus
//!   NGUID, EUI64 or UUID (a mismatch is an error, never a silent merge).
//! * [`path`]: the published state of each path (controller state, ANA state) with a generation
//!   counter that I/O cores check with one atomic load per poll.
//! * [`policy`]: active-passive with failback, round-robin with a minimum run, least queue depth;
//!   all prefer ANA-optimized paths.
//! * [`channel`]: the per-core [`Channel`]: one queue pair per path, retained descriptors, the
//!   bounded requeue ring, and the disposition of every completion.
//! * [`control`]: the control plane: controller service, reconnect with deadlines, ANA log reads.
//!
//! This crate has no unsafe code; DMA and registers live in `vfnvme` and `vfnvme-hugepages`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod channel;
pub mod control;
pub mod desc;
pub mod disposition;
pub mod path;
pub mod policy;
pub mod requeue;
pub mod subsystem;

pub use channel::{
    Channel, ChannelOptions, IoError, MpCompletion, NotTaken, Run, Submitter, Turns,
};
pub use control::{MpathControl, ReconnectOptions};
pub use desc::{IoDesc, IoKind};
pub use path::{PathInfo, PathStatus};
pub use policy::Policy;
pub use subsystem::{MpNamespace, Subsystem};

/// Errors from discovery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Controllers that claim one subsystem disagree.
    #[error("subsystem {subnqn}: {detail}")]
    Inconsistent {
        /// The subsystem NQN.
        subnqn: String,
        /// What disagrees.
        detail: String,
    },
    /// A namespace id is shared but its identifiers differ between controllers.
    #[error(
        "subsystem {subnqn} nsid {nsid}: identifiers differ between {a} and {b}; refusing to merge"
    )]
    NamespaceMismatch {
        /// The subsystem NQN.
        subnqn: String,
        /// Namespace id.
        nsid: u32,
        /// One controller.
        a: String,
        /// The other.
        b: String,
    },
    /// The namespace is not on any controller.
    #[error("nsid {nsid} not found on any controller of {subnqn}")]
    NoNamespace {
        /// The subsystem NQN.
        subnqn: String,
        /// Namespace id.
        nsid: u32,
    },
    /// A controller error while creating queues.
    #[error(transparent)]
    Ctrl(#[from] vfnvme::ctrl::Error),
}
