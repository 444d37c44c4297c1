//! Register file and handshakes: enable, ready delay, CFS on bad configuration, disable,
//! shutdown, doorbell stride.

use std::time::Duration;

use vfnvme_hugepages::{DmaPool, PagePolicy};

use super::*;
use crate::spec::regs::{shst, Cap, ALL_ONES_32};

#[test]
fn cap_and_vs_describe_the_configured_device() {
    // Arrange
    let sub = SimSubsystem::builder().mqes(255).cap_to(3).dstrd(1).build();
    let c = sub.controller(0);

    // Act
    let cap = Cap::from(c.read64(offset::CAP));
    let vs = c.read32(offset::VS);

    // Assert
    assert_eq!(cap.mqes(), 255);
    assert_eq!(cap.to(), 3);
    assert_eq!(cap.dstrd(), 1);
    assert!(cap.cqr());
    assert_eq!(cap.css() & 1, 1);
    assert_eq!(vs, 0x0002_0000);
    assert_eq!(c.read32(offset::CMBSZ), 0);
    assert!(!c.is_enabled());
}

#[test]
fn enable_with_doorbell_stride_serves_admin_commands() {
    // Arrange
    let sub = SimSubsystem::builder().dstrd(2).build();

    // Act
    let mut h = Host::new(sub.controller(0));
    let c = h.admin(Sqe::keep_alive());

    // Assert
    assert!(c.status().is_success());
    assert!(h.ctrl.is_enabled());
}

#[test]
fn ready_follows_enable_after_the_ready_delay() {
    // Arrange
    let sub = SimSubsystem::builder()
        .ready_delay(Duration::from_millis(300))
        .build();
    let c = sub.controller(0);
    let pool = DmaPool::new(PagePolicy::Small);
    pool.add_mapper(c.dma_mapper()).unwrap();
    let sq = pool.alloc(4096, 4096).unwrap();
    let cq = pool.alloc(4096, 4096).unwrap();
    let dom = c.mapper().domain();
    c.write32(offset::AQA, Aqa::new().with_asqs(3).with_acqs(3).into());
    c.write64(offset::ASQ, sq.iova(dom, 0).unwrap().0);
    c.write64(offset::ACQ, cq.iova(dom, 0).unwrap().0);

    // Act
    c.write32(offset::CC, cc_enabled().into());
    let right_after = Csts::from(c.read32(offset::CSTS));

    // Assert
    assert!(!right_after.rdy(), "RDY waits for the ready delay");
    let deadline = Instant::now() + DEADLINE;
    while !Csts::from(c.read32(offset::CSTS)).rdy() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    c.write32(offset::CC, 0);
    assert!(
        Csts::from(c.read32(offset::CSTS)).rdy(),
        "RDY clears after the delay too"
    );
    let deadline = Instant::now() + DEADLINE;
    while Csts::from(c.read32(offset::CSTS)).rdy() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn bad_configurations_set_cfs_and_disable_clears_it() {
    // Arrange
    let sub = subsystem(1, 1);
    let c = sub.controller(0);
    let pool = DmaPool::new(PagePolicy::Small);
    pool.add_mapper(c.dma_mapper()).unwrap();
    let ring = pool.alloc(8192, 4096).unwrap();
    let dom = c.mapper().domain();
    let good = ring.iova(dom, 0).unwrap().0;
    let aqa: u32 = Aqa::new().with_asqs(3).with_acqs(3).into();
    let cases: Vec<(&str, u32, u64, u64, Cc)> = vec![
        ("unaligned ASQ", aqa, good + 64, good + 4096, cc_enabled()),
        ("unaligned ACQ", aqa, good, good + 4100, cc_enabled()),
        (
            "ASQS zero",
            Aqa::new().with_acqs(3).into(),
            good,
            good + 4096,
            cc_enabled(),
        ),
        (
            "ACQS zero",
            Aqa::new().with_asqs(3).into(),
            good,
            good + 4096,
            cc_enabled(),
        ),
        (
            "IOSQES",
            aqa,
            good,
            good + 4096,
            cc_enabled().with_iosqes(5),
        ),
        (
            "IOCQES",
            aqa,
            good,
            good + 4096,
            cc_enabled().with_iocqes(0),
        ),
        ("MPS", aqa, good, good + 4096, cc_enabled().with_mps(9)),
        ("CSS", aqa, good, good + 4096, cc_enabled().with_css(1)),
        ("unmapped ASQ", aqa, 0x7000_0000, good + 4096, cc_enabled()),
        ("zero ACQ", aqa, good, 0, cc_enabled()),
    ];
    for (what, aqa, asq, acq, cc) in cases {
        c.write32(offset::AQA, aqa);
        c.write64(offset::ASQ, asq);
        c.write64(offset::ACQ, acq);

        // Act
        c.write32(offset::CC, cc.into());

        // Assert
        let csts = Csts::from(c.read32(offset::CSTS));
        assert!(csts.cfs(), "{what}: CFS");
        assert!(!csts.rdy(), "{what}: not ready");
        c.write32(offset::CC, 0);
        assert!(
            !Csts::from(c.read32(offset::CSTS)).cfs(),
            "{what}: disable clears CFS"
        );
    }
}

#[test]
fn disable_deletes_every_queue_and_reenable_starts_fresh() {
    // Arrange
    let sub = subsystem(1, 1);
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 16);

    // Act
    h.disable();
    h.enable(8);

    // Assert: qid 1 is free again; the old ring no longer exists (doorbell ignored).
    h.ctrl.write32(sq_tail_doorbell(1, 0), 1);
    h.create_pair(1, 16);
    let c = h.cmd(1, Sqe::flush(1));
    assert!(c.status().is_success());
}

#[test]
fn shutdown_reports_occurring_then_complete_and_keeps_queues() {
    // Arrange
    let sub = SimSubsystem::builder()
        .ready_delay(Duration::from_millis(200))
        .build();
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 8);

    // Act
    let cc = u32::from(cc_enabled().with_shn(crate::spec::regs::shn::NORMAL));
    h.ctrl.write32(offset::CC, cc);

    // Assert
    assert_eq!(h.ctrl.shutdown_state(), shst::OCCURRING);
    let deadline = Instant::now() + DEADLINE;
    while h.ctrl.shutdown_state() != shst::COMPLETE {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.csts().shst(), shst::COMPLETE);
    assert!(h.cmd(1, Sqe::flush(1)).status().is_success(), "queues kept");
    h.ctrl.write32(offset::CC, cc_enabled().into());
    assert_eq!(h.ctrl.shutdown_state(), shst::NORMAL);
}

#[test]
fn immediate_shutdown_without_delay() {
    // Arrange
    let sub = subsystem(1, 1);
    let h = Host::new(sub.controller(0));

    // Act
    let cc = cc_enabled().with_shn(crate::spec::regs::shn::ABRUPT);
    h.ctrl.write32(offset::CC, cc.into());

    // Assert
    assert_eq!(h.ctrl.shutdown_state(), shst::COMPLETE);
}

#[test]
fn interrupt_mask_registers_and_nssr_are_harmless() {
    // Arrange
    let sub = subsystem(1, 1);
    let c = sub.controller(0);

    // Act
    c.write32(offset::INTMS, 0b101);
    c.write32(offset::INTMC, 0b001);
    c.write32(offset::NSSR, crate::spec::regs::NSSR_RESET_VALUE);

    // Assert
    assert_eq!(c.read32(offset::INTMS), 0b100);
    assert_ne!(c.read32(offset::CSTS), ALL_ONES_32);
}

#[test]
fn function_reset_returns_to_disabled() {
    // Arrange
    let sub = subsystem(1, 1);
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 8);

    // Act
    h.ctrl.reset_function().unwrap();

    // Assert
    assert!(!h.ctrl.is_enabled());
    assert!(!h.csts().rdy());
    h.rings.clear();
    h.enable(8);
    h.create_pair(1, 8);
}
