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

/// Counters that verify workers share.
#[derive(Default)]
pub struct Tally {
    /// Commands submitted.
    pub submitted: std::sync::atomic::AtomicU64,
    /// Commands completed (each exactly once, checked by the worker).
    pub completed: std::sync::atomic::AtomicU64,
    /// Reads whose data was checked.
    pub verified: std::sync::atomic::AtomicU64,
    /// Commands on registered buffers (submitted through runs) that completed.
    pub registered: std::sync::atomic::AtomicU64,
    /// Failovers the channels did.
    pub failovers: std::sync::atomic::AtomicU64,
    /// Same-path retries the channels did.
    pub retries: std::sync::atomic::AtomicU64,
    /// Commands issued on path 0 and 1 (sampled right after each batch is submitted, before any
    /// poll, with `Channel::in_flight_per_path`).
    pub per_path: [std::sync::atomic::AtomicU64; 2],
}

/// One core's verify loop through `ch` over its own LBA range (`qd` slots of [`IO_BLOCKS`]
/// blocks from `base`) until `stop` (and at least three rounds): write every slot with a new
/// generation, then read every slot back and check it. The rounds take turns at three ways in:
/// plain descriptors that own their buffers (`Channel::submit`), passthrough commands, and
/// registered buffers through runs (`Channel::turns` over several usable paths,
/// `Channel::submitter` on one, `submit_fixed` for what a run hands back), as the perf tool
/// submits. Every command must complete exactly once and successfully; the channel must end
/// with nothing outstanding, no "no path" completion and no bad completion.
///
/// # Panics
/// On any of those violations (it is a test helper).
pub fn verify_worker(
    core: u64,
    mut ch: vfnvme_mpath::Channel,
    pool: &std::sync::Arc<vfnvme_hugepages::DmaPool>,
    qd: u64,
    base: u64,
    stop: &std::sync::atomic::AtomicBool,
    tally: &Tally,
) {
    use std::collections::HashSet;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    use vfnvme::spec::NvmOpcode;
    use vfnvme::PassthruCmd;
    use vfnvme_mpath::channel::RefuseReason;
    use vfnvme_mpath::IoDesc;

    let mut bufs: Vec<Option<DmaBuf>> = (0..qd)
        .map(|_| Some(pool.alloc(IO_BYTES, 4096).unwrap()))
        .collect();
    let fixed: std::sync::Arc<[DmaBuf]> = (0..qd)
        .map(|_| pool.alloc(IO_BYTES, 4096).unwrap())
        .collect::<Vec<_>>()
        .into();
    ch.register_buffers(fixed.clone()).unwrap();
    let mut gen = 0u64;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) || round < 3 {
        gen += 1;
        for read_phase in [false, true] {
            let passthru = round % 3 == 1;
            let registered = round % 3 == 2;
            let mut pending: HashSet<u64> = HashSet::new();
            let lba_of = |i: u64| base + i * IO_BLOCKS as u64;
            let tag_of = |i: u64| (gen << 20) | (read_phase as u64) << 16 | i;
            if registered {
                for i in 0..qd {
                    if read_phase {
                        fixed[i as usize].fill(0, IO_BYTES, 0);
                    } else {
                        stamp(&fixed[i as usize], lba_of(i), gen);
                    }
                    assert!(pending.insert(tag_of(i)));
                }
                submit_registered(&mut ch, core, qd, !read_phase, lba_of, tag_of);
                tally.submitted.fetch_add(qd, Ordering::Relaxed);
            }
            for i in (0..qd).filter(|_| !registered) {
                let lba = lba_of(i);
                let buf = bufs[i as usize].take().unwrap();
                if read_phase {
                    buf.fill(0, IO_BYTES, 0);
                } else {
                    stamp(&buf, lba, gen);
                }
                let tag = tag_of(i);
                let mut desc = if passthru {
                    let opcode = if read_phase {
                        NvmOpcode::READ.0
                    } else {
                        NvmOpcode::WRITE.0
                    };
                    let cmd = PassthruCmd {
                        opcode,
                        nsid: 1,
                        cdw10_15: [lba as u32, (lba >> 32) as u32, IO_BLOCKS - 1, 0, 0, 0],
                        ..Default::default()
                    };
                    IoDesc::passthru(cmd, Some(buf), None, read_phase, tag)
                } else if read_phase {
                    IoDesc::read(lba, IO_BLOCKS, buf, tag)
                } else {
                    IoDesc::write(lba, IO_BLOCKS, buf, tag)
                };
                loop {
                    match ch.submit(desc) {
                        Ok(()) => break,
                        Err(r) => {
                            assert_eq!(r.reason, RefuseReason::Full, "core {core}: refused");
                            desc = r.desc;
                            ch.poll(64, |c| panic!("unexpected early completion {:#x}", c.tag));
                        }
                    }
                }
                assert!(pending.insert(tag));
                tally.submitted.fetch_add(1, Ordering::Relaxed);
            }
            for (p, n) in ch.in_flight_per_path().into_iter().enumerate().take(2) {
                tally.per_path[p].fetch_add(n as u64, Ordering::Relaxed);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while !pending.is_empty() {
                ch.poll(64, |c| {
                    assert!(
                        pending.remove(&c.tag),
                        "core {core}: tag {:#x} completed twice or unknown",
                        c.tag
                    );
                    tally.completed.fetch_add(1, Ordering::Relaxed);
                    let i = c.tag & 0xffff;
                    if let Err(e) = &c.result {
                        panic!("core {core} gen {gen} slot {i} read={read_phase}: {e}");
                    }
                    let lba = lba_of(i);
                    if registered {
                        tally.registered.fetch_add(1, Ordering::Relaxed);
                        assert!(c.data.is_none(), "core {core}: a registered buffer is kept");
                        assert_eq!(c.buf_index, Some(i as u32), "core {core}: buffer index");
                        if read_phase {
                            if let Err(e) = check(&fixed[i as usize], lba, gen) {
                                panic!("core {core}: corrupted data (registered): {e}");
                            }
                            tally.verified.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                    let buf = c.data.take().expect("buffer comes back");
                    if read_phase {
                        if let Err(e) = check(&buf, lba, gen) {
                            panic!("core {core}: corrupted data: {e}");
                        }
                        tally.verified.fetch_add(1, Ordering::Relaxed);
                    }
                    bufs[i as usize] = Some(buf);
                });
                assert!(
                    Instant::now() < deadline,
                    "core {core}: {} commands never completed",
                    pending.len()
                );
                std::hint::spin_loop();
            }
        }
        round += 1;
    }
    assert_eq!(ch.outstanding(), 0);
    let st = ch.stats();
    assert_eq!(st.no_path, 0, "core {core}: {st:?}");
    assert_eq!(st.bad_completions, 0, "core {core}: {st:?}");
    eprintln!("core {core}: {round} rounds, {st:?}");
    tally.failovers.fetch_add(st.failovers, Ordering::Relaxed);
    tally.retries.fetch_add(st.retries, Ordering::Relaxed);
}

/// Submits registered buffer `i` for every `i` below `qd` (a write when `write`, at `lba_of(i)`,
/// tagged `tag_of(i)`) through runs: round-robin's `Turns` where the pick varies, a `Submitter`
/// where it is one path, and `submit_fixed` for each command a run hands back (polling, with
/// nothing expected to complete, while the channel is full).
fn submit_registered(
    ch: &mut vfnvme_mpath::Channel,
    core: u64,
    qd: u64,
    write: bool,
    lba_of: impl Fn(u64) -> u64,
    tag_of: impl Fn(u64) -> u64,
) {
    use vfnvme_mpath::channel::RefuseReason;
    use vfnvme_mpath::{IoKind, Run};
    // Takes commands from `next` on until the run hands one back; returns how many it took.
    let take = |run: &mut dyn FnMut(u64) -> bool, next: u64| {
        (next..qd).take_while(|&i| run(i)).count() as u64
    };
    let rw = |r: &mut dyn Run, i: u64| {
        let (lba, buf, tag) = (lba_of(i), i as u32, tag_of(i));
        if write {
            r.write(lba, IO_BLOCKS, buf, tag).is_ok()
        } else {
            r.read(lba, IO_BLOCKS, buf, tag).is_ok()
        }
    };
    let mut next = 0;
    while next < qd {
        let took = ch.turns().map(|mut t| take(&mut |i| rw(&mut t, i), next));
        next += match took {
            Some(n) => n,
            None => ch
                .submitter()
                .map_or(0, |mut s| take(&mut |i| rw(&mut s, i), next)),
        };
        if next == qd {
            break;
        }
        // The run handed `next` back: one by one, which says why (or sends it elsewhere).
        let (lba, blocks) = (lba_of(next), IO_BLOCKS);
        let kind = if write {
            IoKind::Write { lba, blocks }
        } else {
            IoKind::Read { lba, blocks }
        };
        match ch.submit_fixed(kind, next as u32, tag_of(next)) {
            Ok(()) => next += 1,
            Err(RefuseReason::Full) => {
                ch.poll(64, |c| panic!("unexpected early completion {:#x}", c.tag));
            }
            Err(r) => panic!("core {core}: registered command refused: {r:?}"),
        }
    }
}
