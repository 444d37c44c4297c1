//! NVM commands, PRP walking and completion-queue behaviour.

use super::*;
use crate::spec::cmd::DsmRange;
use crate::spec::status::{generic, media, sct};

fn setup(mib: u64) -> (SimSubsystem, Host) {
    let sub = subsystem(2, mib);
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 32);
    (sub, h)
}

#[test]
fn data_written_through_one_controller_reads_back_through_the_other() {
    // Arrange
    let sub = subsystem(2, 4);
    let pool = DmaPool::new(PagePolicy::Small);
    let mut h0 = Host::with_pool(sub.controller(0), pool.clone());
    let mut h1 = Host::with_pool(sub.controller(1), pool);
    h0.create_pair(1, 8);
    h1.create_pair(1, 8);
    let src = h0.buf(64 * 1024);
    fill_pattern(&src, 7);
    let dst = h1.buf(64 * 1024);

    // Act: 60 KiB from an unaligned offset (PRP1 offset + PRP list), then read it back.
    let w = h0.io(1, Sqe::write(1, 10, 119), &src, 512, 120 * 512);
    let r = h1.io(1, Sqe::read(1, 10, 119), &dst, 1024, 120 * 512);

    // Assert
    assert!(w.status().is_success(), "{:?}", w.status());
    assert!(r.status().is_success(), "{:?}", r.status());
    assert!(src.equal(512, &dst, 1024, 120 * 512));
    assert_eq!(sub.controller(0).stats().host_writes, 1);
    assert_eq!(sub.controller(1).stats().host_reads, 1);
}

#[test]
fn two_page_transfer_uses_prp2_as_a_page_and_chained_lists_work() {
    // Arrange
    let sub = SimSubsystem::builder()
        .mdts(10)
        .namespace(crate::sim::NsConfig::ram(1, 8 << 20))
        .build();
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 8);
    let len = (1 << 20) * 3 - 4096; // > 512 pages: two chained list pages
    let src = h.buf(len);
    fill_pattern(&src, 3);
    let dst = h.buf(len);
    let small = h.buf(8192);
    fill_pattern(&small, 9);
    let small_dst = h.buf(8192);

    // Act
    let nlb = (len / 512 - 1) as u16;
    let w = h.io(1, Sqe::write(1, 0, nlb), &src, 0, len);
    let r = h.io(1, Sqe::read(1, 0, nlb), &dst, 0, len);
    let w2 = h.io(1, Sqe::write(1, 9000, 15), &small, 0, 8192);
    let r2 = h.io(1, Sqe::read(1, 9000, 15), &small_dst, 0, 8192);

    // Assert
    assert!(
        w.status().is_success() && r.status().is_success(),
        "{:?} {:?}",
        w.status(),
        r.status()
    );
    assert!(src.equal(0, &dst, 0, len));
    assert!(w2.status().is_success() && r2.status().is_success());
    assert!(small.equal(0, &small_dst, 0, 8192));
}

#[test]
fn compare_write_zeroes_dsm_and_flush() {
    // Arrange
    let (_sub, mut h) = setup(1);
    let data = h.buf(4096);
    fill_pattern(&data, 1);
    h.io(1, Sqe::write(1, 0, 7), &data, 0, 4096);
    h.io(1, Sqe::write(1, 100, 7), &data, 0, 4096);
    h.io(1, Sqe::write(1, 200, 7), &data, 0, 4096);
    let other = h.buf(4096);

    // Act
    let same = h.io(1, Sqe::compare(1, 0, 7), &data, 0, 4096);
    let differ = h.io(1, Sqe::compare(1, 0, 7), &other, 0, 4096);
    let wz = h.cmd(1, Sqe::write_zeroes(1, 0, 7, true));
    let after_wz = h.io(1, Sqe::compare(1, 0, 7), &other, 0, 4096);
    let ranges = h.buf(4096);
    let r = [
        DsmRange {
            attributes: 0,
            nlb: 8,
            slba: 100,
        },
        DsmRange {
            attributes: 0,
            nlb: 4,
            slba: 200,
        },
    ];
    ranges.write(0, zerocopy::IntoBytes::as_bytes(&r));
    let mut dsm = Sqe::dsm(1, 1, true);
    dsm.prp1 = h.iova(&ranges, 0);
    let d = h.cmd(1, dsm);
    let after_dsm = h.buf(4096);
    h.io(1, Sqe::read(1, 200, 7), &after_dsm, 0, 4096);
    let flush_all = h.cmd(1, Sqe::flush(u32::MAX));
    let flush_one = h.cmd(1, Sqe::flush(1));
    let bad_range = [DsmRange {
        attributes: 0,
        nlb: 8,
        slba: 2047,
    }];
    ranges.write(0, zerocopy::IntoBytes::as_bytes(&bad_range));
    let mut dsm_bad = Sqe::dsm(1, 0, true);
    dsm_bad.prp1 = h.iova(&ranges, 0);
    let d_bad = h.cmd(1, dsm_bad);

    // Assert
    assert!(same.status().is_success());
    assert_eq!(sc(&differ), st(sct::MEDIA, media::COMPARE_FAILURE));
    assert!(wz.status().is_success() && after_wz.status().is_success());
    assert!(d.status().is_success());
    let v = after_dsm.to_vec();
    assert!(
        v[..2048].iter().all(|&b| b == 0),
        "deallocated blocks read zero"
    );
    assert_eq!(
        v[2048..],
        data.to_vec()[2048..],
        "blocks past the range are kept"
    );
    assert!(flush_all.status().is_success() && flush_one.status().is_success());
    assert_eq!(sc(&d_bad), st(0, generic::LBA_OUT_OF_RANGE));
}

#[test]
fn nvm_command_errors() {
    // Arrange
    let sub = subsystem(2, 1);
    let pool = DmaPool::new(PagePolicy::Small);
    let mut h = Host::with_pool(sub.controller(0), pool.clone());
    let other = Host::with_pool(sub.controller(1), pool);
    h.create_pair(1, 32);
    let buf = h.buf(256 * 1024);
    let b0 = h.iova(&buf, 0);
    let with = |mut s: Sqe, p1: u64, p2: u64| {
        s.prp1 = p1;
        s.prp2 = p2;
        s
    };
    let bad_list = h.buf(4096);
    bad_list.store_u64(0, b0 + 4096);
    bad_list.store_u64(8, b0 + 8192 + 512); // list entry with an offset
    let unmapped_list = h.buf(4096);
    unmapped_list.store_u64(0, b0 + 4096);
    unmapped_list.store_u64(8, 0x40_0000_0000);
    let mut sgl = Sqe::read(1, 0, 0);
    sgl.set_flags(0x40);
    let mut fused = Sqe::read(1, 0, 0);
    fused.set_flags(0x01);
    let cases: Vec<(&str, Sqe, (u8, u8))> = vec![
        (
            "nsid 0",
            with(Sqe::read(0, 0, 0), b0, 0),
            st(0, generic::INVALID_NAMESPACE),
        ),
        (
            "nsid 99",
            with(Sqe::write(99, 0, 0), b0, 0),
            st(0, generic::INVALID_NAMESPACE),
        ),
        (
            "flush nsid 5",
            Sqe::flush(5),
            st(0, generic::INVALID_NAMESPACE),
        ),
        (
            "LBA out of range",
            with(Sqe::read(1, 2047, 1), b0, b0 + 4096),
            st(0, generic::LBA_OUT_OF_RANGE),
        ),
        (
            "LBA overflow",
            with(Sqe::read(1, u64::MAX, 0), b0, 0),
            st(0, generic::LBA_OUT_OF_RANGE),
        ),
        (
            "write zeroes out of range",
            Sqe::write_zeroes(1, 2040, 100, false),
            st(0, generic::LBA_OUT_OF_RANGE),
        ),
        (
            "MDTS exceeded",
            with(Sqe::read(1, 0, 256 + 255), b0, 0),
            st(0, generic::INVALID_FIELD),
        ),
        ("SGL", with(sgl, b0, 0), st(0, generic::INVALID_FIELD)),
        ("fused", with(fused, b0, 0), st(0, generic::INVALID_FIELD)),
        (
            "invalid opcode",
            Sqe::with_opcode(0x7e),
            st(0, generic::INVALID_OPCODE),
        ),
        (
            "write uncorrectable",
            Sqe::with_opcode(0x04),
            st(0, generic::INVALID_OPCODE),
        ),
        (
            "PRP1 not dword aligned",
            with(Sqe::read(1, 0, 0), b0 + 2, 0),
            st(0, generic::PRP_OFFSET_INVALID),
        ),
        (
            "PRP2 page with offset",
            with(Sqe::read(1, 0, 15), b0, b0 + 4096 + 8),
            st(0, generic::PRP_OFFSET_INVALID),
        ),
        (
            "PRP list entry with offset",
            with(Sqe::read(1, 0, 23), b0, h.iova(&bad_list, 0)),
            st(0, generic::PRP_OFFSET_INVALID),
        ),
        (
            "PRP list pointer unaligned",
            with(Sqe::read(1, 0, 23), b0, h.iova(&bad_list, 2)),
            st(0, generic::PRP_OFFSET_INVALID),
        ),
        (
            "unmapped PRP1",
            with(Sqe::read(1, 0, 0), 0x40_0000_0000, 0),
            st(0, generic::DATA_TRANSFER_ERROR),
        ),
        (
            "unmapped PRP2",
            with(Sqe::read(1, 0, 15), b0, 0x40_0000_1000),
            st(0, generic::DATA_TRANSFER_ERROR),
        ),
        (
            "unmapped list entry",
            with(Sqe::read(1, 0, 23), b0, h.iova(&unmapped_list, 0)),
            st(0, generic::DATA_TRANSFER_ERROR),
        ),
        (
            "unmapped list page",
            with(Sqe::read(1, 0, 23), b0, 0x40_0000_2000),
            st(0, generic::DATA_TRANSFER_ERROR),
        ),
        (
            "other controller's IOVA",
            with(Sqe::read(1, 0, 0), other.iova(&buf, 0), 0),
            st(0, generic::DATA_TRANSFER_ERROR),
        ),
        (
            "other controller's IOVA in PRP2",
            with(Sqe::write(1, 0, 15), b0, other.iova(&buf, 4096)),
            st(0, generic::DATA_TRANSFER_ERROR),
        ),
    ];
    for (what, sqe, want) in cases {
        // Act
        let c = h.cmd(1, sqe);
        // Assert
        assert_eq!(sc(&c), want, "{what}: {:?}", c.status());
    }
}

#[test]
fn cq_wraps_with_phase_flip_and_sqhd_follows_the_sq() {
    // Arrange
    let (_sub, mut h) = setup(1);
    h.create_pair_sized(2, 8, 4);

    // Act / Assert: 3 wraps of a 4-entry CQ; the harness only accepts entries with the phase
    // it expects, so a missing flip would hang (and fail) the wait.
    for i in 0..13u32 {
        let c = h.cmd(2, Sqe::flush(1));
        assert!(c.status().is_success());
        assert_eq!(u32::from(c.sqhd), (i + 1) % 8);
    }
}

#[test]
fn full_cq_holds_completions_until_the_head_doorbell_frees_slots() {
    // Arrange
    let (_sub, mut h) = setup(1);
    h.create_pair_sized(2, 16, 4);
    h.auto_cq_doorbell = false;
    let cids: Vec<u16> = (0..8).map(|_| h.push(2, Sqe::flush(1))).collect();

    // Act
    h.ring_sq(2);
    let mut seen = Vec::new();
    while let Some(c) = h.reap(2) {
        seen.push(c.cid);
    }

    // Assert: a 4-entry CQ holds 3 completions; the rest wait, in order.
    assert_eq!(seen, cids[..3]);
    h.ring_cq(2);
    while let Some(c) = h.reap(2) {
        seen.push(c.cid);
    }
    h.ring_cq(2);
    while let Some(c) = h.reap(2) {
        seen.push(c.cid);
    }
    assert_eq!(seen, cids);
}

#[test]
fn null_namespace_completes_without_moving_data() {
    // Arrange
    let sub = SimSubsystem::builder()
        .namespace(crate::sim::NsConfig::null(1, 1 << 30))
        .build();
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 64);
    let buf = h.buf(4096);
    buf.fill(0, 4096, 0xab);

    // Act
    let w = h.io(1, Sqe::write(1, 5, 0), &buf, 0, 4096);
    let r = h.io(1, Sqe::read(1, 5, 0), &buf, 0, 4096);

    // Assert
    assert!(w.status().is_success() && r.status().is_success());
    assert!(buf.to_vec().iter().all(|&b| b == 0xab));
}

#[test]
fn two_host_threads_drive_their_own_queues_of_one_controller() {
    // Arrange
    let sub = subsystem(1, 4);
    let pool = DmaPool::new(PagePolicy::Small);
    let mut h = Host::with_pool(sub.controller(0), pool.clone());
    h.create_pair(1, 64);
    h.create_pair(2, 64);
    let rings: Vec<(u16, Ring)> = [1u16, 2]
        .iter()
        .map(|q| (*q, h.rings.remove(q).unwrap()))
        .collect();

    // Act
    let threads: Vec<_> = rings
        .into_iter()
        .map(|(qid, ring)| {
            let ctrl = h.ctrl.clone();
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut t = Host {
                    ctrl,
                    pool,
                    rings: HashMap::from([(qid, ring)]),
                    next_cid: 1,
                    auto_cq_doorbell: true,
                    keep: Vec::new(),
                    dstrd: 0,
                };
                let buf = t.buf(4096);
                let back = t.buf(4096);
                for i in 0..200u64 {
                    fill_pattern(&buf, (i as u8) ^ qid as u8);
                    let lba = u64::from(qid) * 1000 + (i % 50) * 8;
                    assert!(t
                        .io(qid, Sqe::write(1, lba, 7), &buf, 0, 4096)
                        .status()
                        .is_success());
                    assert!(t
                        .io(qid, Sqe::read(1, lba, 7), &back, 0, 4096)
                        .status()
                        .is_success());
                    assert!(buf.equal(0, &back, 0, 4096));
                }
            })
        })
        .collect();

    // Assert
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(sub.controller(0).stats().host_writes, 400);
}

#[test]
fn threaded_mode_processes_commands_on_the_device_thread() {
    // Arrange
    let sub = SimSubsystem::builder()
        .inline(false)
        .namespace(crate::sim::NsConfig::ram(1, 4 << 20))
        .build();
    let pool = DmaPool::new(PagePolicy::Small);
    let mut h = Host::with_pool(sub.controller(0), pool.clone());
    h.create_pair(1, 64);
    h.create_pair(2, 64);
    let rings: Vec<(u16, Ring)> = [1u16, 2]
        .iter()
        .map(|q| (*q, h.rings.remove(q).unwrap()))
        .collect();

    // Act
    let threads: Vec<_> = rings
        .into_iter()
        .map(|(qid, ring)| {
            let ctrl = h.ctrl.clone();
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut t = Host {
                    ctrl,
                    pool,
                    rings: HashMap::from([(qid, ring)]),
                    next_cid: 1,
                    auto_cq_doorbell: true,
                    keep: Vec::new(),
                    dstrd: 0,
                };
                let buf = t.buf(4096);
                let back = t.buf(4096);
                for i in 0..150u64 {
                    fill_pattern(&buf, i as u8);
                    // Disjoint ranges (150 × 8 blocks each): a thread that falls behind must
                    // not overwrite what the other one is about to read back.
                    let lba = u64::from(qid - 1) * 2048 + i * 8;
                    // A batch of two per doorbell.
                    let (p1, _) = t.prps(&buf, 0, 4096);
                    let mut w = Sqe::write(1, lba, 7);
                    w.prp1 = p1;
                    let c1 = t.push(qid, w);
                    let c2 = t.push(qid, Sqe::flush(1));
                    t.ring_sq(qid);
                    assert!(t.wait(qid, c1).status().is_success());
                    assert!(t.wait(qid, c2).status().is_success());
                    assert!(t
                        .io(qid, Sqe::read(1, lba, 7), &back, 0, 4096)
                        .status()
                        .is_success());
                    assert!(buf.equal(0, &back, 0, 4096));
                }
            })
        })
        .collect();

    // Assert
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(sub.controller(0).stats().io(0x01), 300);
    assert_eq!(sub.controller(0).stats().io(0x00), 300);
}
