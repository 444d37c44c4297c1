//! Helpers shared by the cross-crate tests: the self-checking block format of the verify
//! workloads (every 512-byte block carries its LBA, a write generation and a checksum).

use vfnvme_hugepages::DmaBuf;

/// Logical block size of the verify format.
pub const BLOCK: usize = 512;
/// Blocks per verify I/O.
pub const IO_BLOCKS: u32 = 8;
/// Bytes per verify I/O.
pub const IO_BYTES: usize = BLOCK * IO_BLOCKS as usize;

/// FNV-1a over `b`.
pub fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Fills every 512-byte block of `buf` with its LBA, a generation and a checksum of the rest.
pub fn stamp(buf: &DmaBuf, lba: u64, gen: u64) {
    let mut v = vec![0u8; IO_BYTES];
    for (i, blk) in v.chunks_mut(BLOCK).enumerate() {
        let l = lba + i as u64;
        blk[0..8].copy_from_slice(&l.to_le_bytes());
        blk[8..16].copy_from_slice(&gen.to_le_bytes());
        for (k, b) in blk[24..].iter_mut().enumerate() {
            *b = (l as usize * 131 + gen as usize * 7 + k) as u8;
        }
        let c = checksum(&blk[24..]);
        blk[16..24].copy_from_slice(&c.to_le_bytes());
    }
    buf.write(0, &v);
}

/// Checks what `stamp` wrote; returns a description of the first problem.
pub fn check(buf: &DmaBuf, lba: u64, gen: u64) -> Result<(), String> {
    let v = buf.to_vec();
    for (i, blk) in v[..IO_BYTES].chunks(BLOCK).enumerate() {
        let l = u64::from_le_bytes(blk[0..8].try_into().unwrap());
        let g = u64::from_le_bytes(blk[8..16].try_into().unwrap());
        let c = u64::from_le_bytes(blk[16..24].try_into().unwrap());
        if l != lba + i as u64 {
            return Err(format!("block {}: holds lba {l}", lba + i as u64));
        }
        if g != gen {
            return Err(format!("block {l}: generation {g}, expected {gen}"));
        }
        if c != checksum(&blk[24..]) {
            return Err(format!("block {l}: bad checksum"));
        }
    }
    Ok(())
}
