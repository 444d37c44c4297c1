//! Self-checking block contents for the `verify` workload.
//!
//! Every logical block written carries a 24-byte header and a deterministic payload:
//!
//! | bytes  | field                                                          |
//! |--------|----------------------------------------------------------------|
//! | 0..8   | LBA of the block (little endian)                               |
//! | 8..16  | generation: this run's tag (high 32 bits) and how many times   |
//! |        | the run wrote this I/O unit (low 32 bits)                      |
//! | 16..24 | checksum over LBA, generation and the payload (FNV-1a on words)|
//! | 24..   | payload: wyrand words seeded from (LBA, generation)            |
//!
//! The run tag is random per run, so that a block left on a real disk by an earlier run, whose
//! bytes would match this run's for the same LBA and count, is not taken for this run's write
//! (a lost write would pass unseen).
//!
//! A read checks, in this order: the LBA (a misdirected read or write), the generation (a lost or
//! stale write), and the checksum (corruption). [`VerifyState`] keeps the generation each I/O
//! unit of a worker's LBA range should hold; each worker owns a disjoint range, so there is no
//! sharing between cores.

use super::rng::{mix, WyRand};

/// Bytes of header at the start of every block.
pub const HEADER_LEN: usize = 24;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The header of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    /// LBA the block was written to.
    pub lba: u64,
    /// Generation of the write.
    pub gen: u64,
    /// Checksum over LBA, generation and payload.
    pub checksum: u64,
}

impl BlockHeader {
    /// Decodes the header at the start of `block` (at least [`HEADER_LEN`] bytes).
    pub fn decode(block: &[u8]) -> BlockHeader {
        let w = |i: usize| u64::from_le_bytes(block[i..i + 8].try_into().expect("8 bytes"));
        BlockHeader {
            lba: w(0),
            gen: w(8),
            checksum: w(16),
        }
    }

    /// Encodes the header into the start of `block`.
    pub fn encode(&self, block: &mut [u8]) {
        block[0..8].copy_from_slice(&self.lba.to_le_bytes());
        block[8..16].copy_from_slice(&self.gen.to_le_bytes());
        block[16..24].copy_from_slice(&self.checksum.to_le_bytes());
    }
}

/// FNV-1a over 64-bit words (one multiply per 8 bytes): LBA, generation, then the payload.
/// `payload.len()` must be a multiple of 8.
#[inline]
pub fn checksum(lba: u64, gen: u64, payload: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    h = (h ^ lba).wrapping_mul(FNV_PRIME);
    h = (h ^ gen).wrapping_mul(FNV_PRIME);
    for w in payload.chunks_exact(8) {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(FNV_PRIME);
    }
    h
}

/// Writes header and payload for `lba`/`gen` into `block` (a whole logical block; its length a
/// multiple of 8 and at least [`HEADER_LEN`] + 8).
#[inline]
pub fn stamp_block(block: &mut [u8], lba: u64, gen: u64) {
    let mut r = WyRand::new(mix(lba ^ gen.rotate_left(40)));
    for w in block[HEADER_LEN..].chunks_exact_mut(8) {
        w.copy_from_slice(&r.next_u64().to_le_bytes());
    }
    let checksum = checksum(lba, gen, &block[HEADER_LEN..]);
    BlockHeader { lba, gen, checksum }.encode(block);
}

/// What is wrong with a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MismatchKind {
    /// The header names another LBA (misdirected write or read).
    WrongLba {
        /// LBA found in the header.
        found: u64,
    },
    /// The generation is not the last one written (lost or stale write).
    StaleGen {
        /// Generation found in the header.
        found: u64,
    },
    /// LBA and generation are right but the checksum is not (corrupted data).
    BadChecksum,
}

impl MismatchKind {
    /// Index into per-kind counters: 0 wrong LBA, 1 stale generation, 2 bad checksum.
    pub fn index(self) -> usize {
        match self {
            MismatchKind::WrongLba { .. } => 0,
            MismatchKind::StaleGen { .. } => 1,
            MismatchKind::BadChecksum => 2,
        }
    }

    /// Names of the kinds, by [`MismatchKind::index`].
    pub const NAMES: [&'static str; 3] = ["wrong LBA", "stale generation", "bad checksum"];
}

/// One bad block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The LBA that was read.
    pub lba: u64,
    /// The generation expected there.
    pub expected_gen: u64,
    /// What was wrong.
    pub kind: MismatchKind,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            MismatchKind::WrongLba { found } => {
                write!(f, "LBA {}: block holds LBA {found}", self.lba)
            }
            MismatchKind::StaleGen { found } => write!(
                f,
                "LBA {}: generation {found}, expected {}",
                self.lba, self.expected_gen
            ),
            MismatchKind::BadChecksum => write!(
                f,
                "LBA {}: bad checksum (generation {})",
                self.lba, self.expected_gen
            ),
        }
    }
}

/// Checks one block read from `lba` against generation `gen`.
///
/// # Errors
/// The first problem found, as a [`Mismatch`].
#[inline]
pub fn check_block(block: &[u8], lba: u64, gen: u64) -> Result<(), Mismatch> {
    let h = BlockHeader::decode(block);
    let kind = if h.lba != lba {
        MismatchKind::WrongLba { found: h.lba }
    } else if h.gen != gen {
        MismatchKind::StaleGen { found: h.gen }
    } else if h.checksum != checksum(lba, gen, &block[HEADER_LEN..]) {
        MismatchKind::BadChecksum
    } else {
        return Ok(());
    };
    Err(Mismatch {
        lba,
        expected_gen: gen,
        kind,
    })
}

/// Examples of mismatches kept for the report.
pub const MAX_EXAMPLES: usize = 8;

/// Verify bookkeeping of one worker: expected generation and busy flag per I/O unit of its LBA
/// range, and the mismatch counters. Allocated once, at setup.
#[derive(Debug)]
pub struct VerifyState {
    /// This run's tag, or-ed into every generation written and expected.
    pub run: u64,
    /// Expected generation per unit; 0 = contents unknown (never written, or a write failed).
    pub gen: Vec<u32>,
    /// An I/O is in flight on the unit (no second one is issued to it).
    pub busy: Vec<bool>,
    /// Bytes per logical block.
    pub lba_size: usize,
    /// Staging buffer of one I/O.
    pub scratch: Vec<u8>,
    /// Blocks checked.
    pub blocks_checked: u64,
    /// Mismatches by kind (see [`MismatchKind::index`]).
    pub by_kind: [u64; 3],
    /// The first few mismatches.
    pub examples: Vec<Mismatch>,
}

/// This run's tag: random high 32 bits (from the clock and the process id), low 32 bits clear.
fn run_tag() -> u64 {
    static TAG: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TAG.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let tag = mix(t ^ (u64::from(std::process::id()) << 40)) & !0xffff_ffff;
        // Never 0: a zeroed block must not look like this run's.
        tag.max(1 << 32)
    })
}

impl VerifyState {
    /// State for `units` I/O units of `io_size` bytes in blocks of `lba_size` bytes, with this
    /// run's tag.
    pub fn new(units: usize, io_size: usize, lba_size: usize) -> VerifyState {
        VerifyState::with_run(units, io_size, lba_size, run_tag())
    }

    /// [`VerifyState::new`] with a given run tag (high 32 bits; for tests).
    pub fn with_run(units: usize, io_size: usize, lba_size: usize, run: u64) -> VerifyState {
        VerifyState {
            run,
            gen: vec![0; units],
            busy: vec![false; units],
            lba_size,
            scratch: vec![0; io_size],
            blocks_checked: 0,
            by_kind: [0; 3],
            examples: Vec::with_capacity(MAX_EXAMPLES),
        }
    }

    /// Total mismatches.
    pub fn mismatches(&self) -> u64 {
        self.by_kind.iter().sum()
    }

    /// Stamps every block of the staging buffer for a write of generation `gen` at `lba`.
    #[inline]
    pub fn stamp(&mut self, lba: u64, gen: u64) {
        let bs = self.lba_size;
        let gen = self.run | gen;
        for (i, b) in self.scratch.chunks_exact_mut(bs).enumerate() {
            stamp_block(b, lba + i as u64, gen);
        }
    }

    /// Checks every block of the staging buffer (a read of `lba`) against `gen`; returns the
    /// number of bad blocks.
    #[inline]
    pub fn check(&mut self, lba: u64, gen: u64) -> u64 {
        let bs = self.lba_size;
        let gen = self.run | gen;
        let mut bad = 0;
        for (i, b) in self.scratch.chunks_exact(bs).enumerate() {
            self.blocks_checked += 1;
            if let Err(m) = check_block(b, lba + i as u64, gen) {
                bad += 1;
                self.by_kind[m.kind.index()] += 1;
                if self.examples.len() < MAX_EXAMPLES {
                    self.examples.push(m);
                }
            }
        }
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = BlockHeader {
            lba: 0x0102_0304_0506_0708,
            gen: 9,
            checksum: u64::MAX - 1,
        };
        let mut b = [0u8; 32];
        h.encode(&mut b);
        assert_eq!(BlockHeader::decode(&b), h);
        assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
    }

    #[test]
    fn stamped_block_checks() {
        for bs in [512usize, 4096] {
            let mut b = vec![0u8; bs];
            stamp_block(&mut b, 77, 3);
            assert_eq!(check_block(&b, 77, 3), Ok(()));
            // Deterministic: the same (lba, gen) gives the same bytes.
            let mut c = vec![0u8; bs];
            stamp_block(&mut c, 77, 3);
            assert_eq!(b, c);
        }
    }

    #[test]
    fn a_block_left_by_an_earlier_run_is_stale_not_this_runs() {
        // Two runs with different tags write the same unit the same number of times: the first
        // run's block must not pass for the second's (a lost write would go unseen).
        let (lba, io) = (40u64, 1024usize);
        let mut earlier = VerifyState::with_run(1, io, 512, 7 << 32);
        earlier.stamp(lba, 1);
        let mut now = VerifyState::with_run(1, io, 512, 9 << 32);
        now.scratch.copy_from_slice(&earlier.scratch);
        assert_eq!(now.check(lba, 1), 2, "both blocks of the unit are stale");
        assert!(now
            .examples
            .iter()
            .all(|m| matches!(m.kind, MismatchKind::StaleGen { .. })));
        // Its own write checks.
        now.stamp(lba, 1);
        assert_eq!(now.check(lba, 1), 0);
        assert_ne!(run_tag() & !0xffff_ffff, 0);
        assert_eq!(run_tag() & 0xffff_ffff, 0);
    }

    #[test]
    fn mismatches_are_classified() {
        let mut b = vec![0u8; 512];
        stamp_block(&mut b, 10, 2);
        assert_eq!(
            check_block(&b, 11, 2).unwrap_err().kind,
            MismatchKind::WrongLba { found: 10 }
        );
        assert_eq!(
            check_block(&b, 10, 3).unwrap_err().kind,
            MismatchKind::StaleGen { found: 2 }
        );
        b[300] ^= 1;
        let m = check_block(&b, 10, 2).unwrap_err();
        assert_eq!(m.kind, MismatchKind::BadChecksum);
        assert!(m.to_string().contains("bad checksum"));
        // An all-zero (never written) block is a wrong LBA unless it is LBA 0.
        let z = vec![0u8; 512];
        assert!(matches!(
            check_block(&z, 5, 1).unwrap_err().kind,
            MismatchKind::WrongLba { found: 0 }
        ));
    }

    #[test]
    fn state_counts_bad_blocks() {
        let mut s = VerifyState::new(4, 4 * 512, 512);
        s.stamp(100, 1);
        assert_eq!(s.check(100, 1), 0);
        assert_eq!(s.blocks_checked, 4);
        s.scratch[512 + 40] ^= 0xff; // block 101
        assert_eq!(s.check(100, 1), 1);
        assert_eq!(s.by_kind, [0, 0, 1]);
        assert_eq!(s.check(100, 2), 4);
        assert_eq!(s.mismatches(), 5);
        assert_eq!(s.examples[0].lba, 101);
    }
}
