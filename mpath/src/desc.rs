//! Retained command descriptors: what a channel keeps for every command in flight, and all it
//! needs to rebuild the command (SQE and PRPs) for another path.

use vfnvme::PassthruCmd;
use vfnvme_hugepages::DmaBuf;

/// What a command does.
#[derive(Clone, Copy, Debug)]
pub enum IoKind {
    /// Read `blocks` logical blocks at `lba` into the data buffer.
    Read {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
    },
    /// Write `blocks` logical blocks at `lba` from the data buffer.
    Write {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
    },
    /// A raw command (the userspace twin of io_uring's `nvme_uring_cmd`). The nsid is rewritten
    /// from the path's namespace when the command is (re)built.
    Passthru {
        /// The command dwords.
        cmd: PassthruCmd,
        /// Safe to resend at once after a path failure (reads are; writes and anything unknown are
        /// not, and wait the controller's Command Quiesce Time first).
        idempotent: bool,
    },
}

/// A command with its buffers, owned by the channel while in flight and given back on
/// completion.
#[derive(Debug)]
pub struct IoDesc {
    /// What to do.
    pub kind: IoKind,
    /// Data buffer (the whole buffer is transferred for passthrough; reads and writes use
    /// `blocks × block size` bytes from its start).
    pub data: Option<DmaBuf>,
    /// Metadata buffer (passthrough only).
    pub metadata: Option<DmaBuf>,
    /// Caller's tag, handed back in the completion.
    pub tag: u64,
}

impl IoDesc {
    /// A read.
    pub fn read(lba: u64, blocks: u32, buf: DmaBuf, tag: u64) -> IoDesc {
        IoDesc {
            kind: IoKind::Read { lba, blocks },
            data: Some(buf),
            metadata: None,
            tag,
        }
    }

    /// A write.
    pub fn write(lba: u64, blocks: u32, buf: DmaBuf, tag: u64) -> IoDesc {
        IoDesc {
            kind: IoKind::Write { lba, blocks },
            data: Some(buf),
            metadata: None,
            tag,
        }
    }

    /// A passthrough command.
    pub fn passthru(
        cmd: PassthruCmd,
        data: Option<DmaBuf>,
        metadata: Option<DmaBuf>,
        idempotent: bool,
        tag: u64,
    ) -> IoDesc {
        IoDesc {
            kind: IoKind::Passthru { cmd, idempotent },
            data,
            metadata,
            tag,
        }
    }

    /// True if the command may be resent on another path at once.
    #[inline]
    pub fn idempotent(&self) -> bool {
        match self.kind {
            IoKind::Read { .. } => true,
            IoKind::Write { .. } => false,
            IoKind::Passthru { idempotent, .. } => idempotent,
        }
    }
}
