//! Admin commands and their error statuses.

use zerocopy::FromBytes;

use super::*;
use crate::spec::features::{aec, fid, NumberOfQueues};
use crate::spec::identify::{
    cns, parse_ns_descriptors, parse_nsid_list, IdentifyController, IdentifyNamespace, NsIdentifier,
};
use crate::spec::log::{
    aer_error, aer_notice, aer_type, lid, parse_ana_log, AnaState, AsyncEvent, ErrorLogEntry,
    SmartLog,
};
use crate::spec::status::{command_specific as cs, generic};

fn identify(h: &mut Host, cns: u8, nsid: u32) -> (Cqe, Vec<u8>) {
    let buf = h.buf(4096);
    let mut sqe = Sqe::identify(cns, nsid, 0);
    sqe.prp1 = h.iova(&buf, 0);
    let c = h.admin(sqe);
    (c, buf.to_vec())
}

fn log_page(h: &mut Host, lid: u8, len: usize, offset: u64, lsp: u8, rae: bool) -> (Cqe, Vec<u8>) {
    let buf = h.buf(len.max(4096));
    let mut sqe = Sqe::get_log_page(lid, u32::MAX, (len / 4 - 1) as u32, offset, lsp, rae);
    let (p1, p2) = h.prps(&buf, 0, len);
    sqe.prp1 = p1;
    sqe.prp2 = p2;
    let c = h.admin(sqe);
    (c, buf.to_vec()[..len].to_vec())
}

#[test]
fn identify_controller_reports_the_subsystem() {
    // Arrange
    let sub = SimSubsystem::builder()
        .crdt([3, 4, 6])
        .cqt_ms(25)
        .namespace(crate::sim::NsConfig::ram(1, 1 << 20))
        .namespace(crate::sim::NsConfig::null(3, 1 << 20))
        .build();
    let mut h0 = Host::new(sub.controller(0));
    let mut h1 = Host::new(sub.controller(1));

    // Act
    let (c0, b0) = identify(&mut h0, cns::CONTROLLER, 0);
    let (c1, b1) = identify(&mut h1, cns::CONTROLLER, 0);

    // Assert
    assert!(c0.status().is_success() && c1.status().is_success());
    let id0 = IdentifyController::read_from_bytes(&b0).unwrap();
    let id1 = IdentifyController::read_from_bytes(&b1).unwrap();
    assert_ne!(id0.cntlid, id1.cntlid);
    assert_eq!(id0.subnqn(), sub.subnqn());
    assert_eq!(id0.subnqn(), id1.subnqn());
    assert_eq!(id0.serial(), id1.serial());
    assert_eq!(id0.cmic, 0b1011);
    assert_eq!(id0.mdts, 5);
    assert!(id0.supports_dbbuf());
    assert_eq!((id0.crdt1, id0.crdt2, id0.crdt3), (3, 4, 6));
    assert_eq!(id0.cqt, 25);
    assert_eq!(id0.nn, 3);
    assert_eq!((id0.sqes, id0.cqes), (0x66, 0x44));
    assert_eq!(id0.sgls, 0);
    assert_eq!(id0.ver, 0x0002_0000);
    assert_eq!(id0.anagrpmax, 3);
}

#[test]
fn identify_namespaces_are_shared_and_identical_on_every_controller() {
    // Arrange
    let sub = SimSubsystem::builder()
        .namespace(crate::sim::NsConfig::ram(1, 1 << 20))
        .namespace(crate::sim::NsConfig {
            nsid: 3,
            size_bytes: 8 << 20,
            lba_size: 4096,
            backing: crate::sim::Backing::Null,
            metadata_size: 0,
        })
        .build();
    let mut h0 = Host::new(sub.controller(0));
    let mut h1 = Host::new(sub.controller(1));

    // Act
    let (_, a) = identify(&mut h0, cns::NAMESPACE, 3);
    let (_, b) = identify(&mut h1, cns::NAMESPACE, 3);
    let (_, list) = identify(&mut h0, cns::ACTIVE_NSID_LIST, 1);
    let (_, desc) = identify(&mut h1, cns::NS_DESCRIPTORS, 1);
    let (inactive, zeroes) = identify(&mut h0, cns::NAMESPACE, 2);

    // Assert
    let a = IdentifyNamespace::read_from_bytes(&a).unwrap();
    let b = IdentifyNamespace::read_from_bytes(&b).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.nsze, 2048);
    assert_eq!(a.lba_size_bytes(), 4096);
    assert!(a.shared());
    assert_eq!(a.anagrpid, 3);
    assert_ne!(a.nguid, [0; 16]);
    assert_eq!(parse_nsid_list(&list), vec![3]);
    let d = parse_ns_descriptors(&desc).unwrap();
    assert_eq!(d.len(), 4);
    assert!(d.iter().any(|x| matches!(x, NsIdentifier::Csi(0))));
    assert!(inactive.status().is_success());
    assert!(zeroes.iter().all(|&x| x == 0));
}

#[test]
fn identify_errors() {
    // Arrange
    let sub = subsystem(1, 1);
    let mut h = Host::new(sub.controller(0));

    // Act / Assert
    assert_eq!(
        sc(&identify(&mut h, cns::NAMESPACE, 0).0),
        st(0, generic::INVALID_NAMESPACE)
    );
    assert_eq!(
        sc(&identify(&mut h, cns::NAMESPACE, 7).0),
        st(0, generic::INVALID_NAMESPACE)
    );
    assert_eq!(
        sc(&identify(&mut h, cns::NS_DESCRIPTORS, 9).0),
        st(0, generic::INVALID_NAMESPACE)
    );
    assert_eq!(
        sc(&identify(&mut h, cns::ACTIVE_NSID_LIST, u32::MAX).0),
        st(0, generic::INVALID_NAMESPACE)
    );
    assert_eq!(
        sc(&identify(&mut h, 0x77, 0).0),
        st(0, generic::INVALID_FIELD)
    );
    // No data pointer: PRP1 0 is not mapped.
    let c = h.admin(Sqe::identify(cns::CONTROLLER, 0, 0));
    assert_eq!(sc(&c), st(0, generic::DATA_TRANSFER_ERROR));
}

#[test]
fn number_of_queues_then_command_sequence_error_after_a_queue_exists() {
    // Arrange
    let sub = SimSubsystem::builder().max_io_queue_pairs(8).build();
    let mut h = Host::new(sub.controller(0));

    // Act
    let set = h.admin_ok(Sqe::set_features(
        fid::NUMBER_OF_QUEUES,
        NumberOfQueues { nsq: 100, ncq: 2 }.to_cdw11(),
        false,
    ));
    let get = h.admin_ok(Sqe::get_features(fid::NUMBER_OF_QUEUES, 0, 0));
    let bad = h.admin(Sqe::set_features(fid::NUMBER_OF_QUEUES, 0xffff, false));
    h.create_pair(1, 4);
    let late = h.admin(Sqe::set_features(fid::NUMBER_OF_QUEUES, 0, false));
    let too_many = h.admin(Sqe::create_io_cq(3, 3, 0, 0, false));

    // Assert
    assert_eq!(
        NumberOfQueues::from_dw0(set.dw0),
        NumberOfQueues { nsq: 8, ncq: 2 }
    );
    assert_eq!(get.dw0, set.dw0);
    assert_eq!(sc(&bad), st(0, generic::INVALID_FIELD));
    assert_eq!(sc(&late), st(0, generic::COMMAND_SEQUENCE_ERROR));
    assert!(late.status().dnr());
    assert_eq!(sc(&too_many), st(1, cs::INVALID_QID));
}

#[test]
fn features_are_stored() {
    // Arrange
    let sub = subsystem(1, 1);
    let mut h = Host::new(sub.controller(0));

    // Act
    for (f, v) in [
        (fid::ARBITRATION, 3u32),
        (fid::KEEP_ALIVE_TIMER, 5000),
        (fid::ASYNC_EVENT_CONFIG, aec::ANA_CHANGE),
        (fid::INTERRUPT_COALESCING, 0x0102),
        (fid::VOLATILE_WC, 0),
    ] {
        h.admin_ok(Sqe::set_features(f, v, false));
        // Assert
        assert_eq!(h.admin_ok(Sqe::get_features(f, 0, 0)).dw0, v, "fid {f:#x}");
    }
    assert_eq!(
        sc(&h.admin(Sqe::get_features(0x55, 0, 0))),
        st(0, generic::INVALID_FIELD)
    );
    assert_eq!(
        sc(&h.admin(Sqe::set_features(0x55, 0, false))),
        st(0, generic::INVALID_FIELD)
    );
    assert_eq!(
        h.admin_ok(Sqe::get_features(fid::KEEP_ALIVE_TIMER, 1, 0))
            .dw0,
        0,
        "default"
    );
}

#[test]
fn queue_creation_and_deletion_errors() {
    // Arrange
    let sub = SimSubsystem::builder()
        .mqes(63)
        .max_io_queue_pairs(4)
        .build();
    let mut h = Host::new(sub.controller(0));
    let ring = h.buf(64 * 64);
    let r = h.iova(&ring, 0);
    h.create_pair(1, 8);
    let cases: Vec<(&str, Sqe, (u8, u8))> = vec![
        (
            "CQ qid 0",
            Sqe::create_io_cq(0, 7, r, 0, false),
            st(1, cs::INVALID_QID),
        ),
        (
            "CQ qid too big",
            Sqe::create_io_cq(5, 7, r, 0, false),
            st(1, cs::INVALID_QID),
        ),
        (
            "CQ in use",
            Sqe::create_io_cq(1, 7, r, 0, false),
            st(1, cs::INVALID_QID),
        ),
        (
            "CQ size 0",
            Sqe::create_io_cq(2, 0, r, 0, false),
            st(1, cs::INVALID_QUEUE_SIZE),
        ),
        (
            "CQ size > MQES",
            Sqe::create_io_cq(2, 64, r, 0, false),
            st(1, cs::INVALID_QUEUE_SIZE),
        ),
        (
            "CQ unaligned",
            Sqe::create_io_cq(2, 7, r + 16, 0, false),
            st(0, generic::PRP_OFFSET_INVALID),
        ),
        (
            "CQ unmapped",
            Sqe::create_io_cq(2, 7, 0x10_0000, 0, false),
            st(0, generic::DATA_TRANSFER_ERROR),
        ),
        (
            "CQ PC 0",
            {
                let mut s = Sqe::create_io_cq(2, 7, r, 0, false);
                s.cdw11 &= !1;
                s
            },
            st(0, generic::INVALID_FIELD),
        ),
        (
            "CQ bad vector",
            Sqe::create_io_cq(2, 7, r, 999, true),
            st(1, cs::INVALID_INTERRUPT_VECTOR),
        ),
        (
            "SQ CQID 0",
            Sqe::create_io_sq(2, 7, r, 0, 0),
            st(1, cs::INVALID_CQ),
        ),
        (
            "SQ CQ missing",
            Sqe::create_io_sq(2, 7, r, 3, 0),
            st(1, cs::INVALID_CQ),
        ),
        (
            "SQ qid 0",
            Sqe::create_io_sq(0, 7, r, 1, 0),
            st(1, cs::INVALID_QID),
        ),
        (
            "SQ in use",
            Sqe::create_io_sq(1, 7, r, 1, 0),
            st(1, cs::INVALID_QID),
        ),
        (
            "SQ size 0",
            Sqe::create_io_sq(2, 0, r, 1, 0),
            st(1, cs::INVALID_QUEUE_SIZE),
        ),
        (
            "SQ unaligned",
            Sqe::create_io_sq(2, 7, r + 4, 1, 0),
            st(0, generic::PRP_OFFSET_INVALID),
        ),
        (
            "SQ PC 0",
            {
                let mut s = Sqe::create_io_sq(2, 7, r, 1, 0);
                s.cdw11 &= !1;
                s
            },
            st(0, generic::INVALID_FIELD),
        ),
        (
            "delete CQ with SQ",
            Sqe::delete_io_cq(1),
            st(1, cs::INVALID_QUEUE_DELETION),
        ),
        ("delete SQ 0", Sqe::delete_io_sq(0), st(1, cs::INVALID_QID)),
        (
            "delete SQ missing",
            Sqe::delete_io_sq(3),
            st(1, cs::INVALID_QID),
        ),
        ("delete CQ 0", Sqe::delete_io_cq(0), st(1, cs::INVALID_QID)),
        (
            "delete CQ missing",
            Sqe::delete_io_cq(3),
            st(1, cs::INVALID_QID),
        ),
    ];
    for (what, sqe, want) in cases {
        // Act
        let c = h.admin(sqe);
        // Assert
        assert_eq!(sc(&c), want, "{what}");
    }
    assert_eq!(sub.controller(0).stats().admin(0x05), 1 + 9);
    // Deleting in the right order works.
    h.admin_ok(Sqe::delete_io_sq(1));
    h.admin_ok(Sqe::delete_io_cq(1));
}

#[test]
fn unknown_admin_opcode_and_keep_alive() {
    // Arrange
    let sub = subsystem(1, 1);
    let mut h = Host::new(sub.controller(0));

    // Act / Assert
    assert!(h.admin(Sqe::keep_alive()).status().is_success());
    for op in [0x03u8, 0x0d, 0x10, 0x80, 0xc0] {
        assert_eq!(
            sc(&h.admin(Sqe::with_opcode(op))),
            st(0, generic::INVALID_OPCODE),
            "{op:#x}"
        );
    }
    let mut fused = Sqe::keep_alive();
    fused.set_flags(1);
    assert_eq!(sc(&h.admin(fused)), st(0, generic::INVALID_FIELD));
}

#[test]
fn error_smart_and_ana_log_pages() {
    // Arrange
    let sub = SimSubsystem::builder()
        .namespace(crate::sim::NsConfig::ram(1, 1 << 20))
        .namespace(crate::sim::NsConfig::ram(2, 1 << 20))
        .build();
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 8);
    let data = h.buf(4096);
    h.io(1, Sqe::write(1, 0, 7), &data, 0, 4096);
    h.io(1, Sqe::read(1, 0, 7), &data, 0, 4096);
    let bad = h.cmd(1, Sqe::read(99, 0, 0));
    h.ctrl.faults().set_ana_state(2, AnaState::INACCESSIBLE);

    // Act
    let (e, err_log) = log_page(&mut h, lid::ERROR, 4096, 0, 0, false);
    let (s, smart) = log_page(&mut h, lid::SMART, 512, 0, 0, false);
    let (a, ana) = log_page(&mut h, lid::ANA, 4096, 0, 0, false);
    let (_, rgo) = log_page(&mut h, lid::ANA, 4096, 0, 1, false);
    let (o, off) = log_page(&mut h, lid::SMART, 16, 64, 0, false);
    let unknown = log_page(&mut h, 0x7f, 64, 0, 0, false).0;
    let past = log_page(&mut h, lid::SMART, 64, 1024, 0, false).0;

    // Assert
    assert!(
        e.status().is_success()
            && s.status().is_success()
            && a.status().is_success()
            && o.status().is_success()
    );
    let e0 = ErrorLogEntry::read_from_bytes(&err_log[..64]).unwrap();
    assert!(e0.error_count >= 1);
    assert_eq!((e0.sqid, e0.cid), (1, bad.cid));
    assert_eq!(e0.status().sc(), generic::INVALID_NAMESPACE);
    let smart = SmartLog::read_from_bytes(&smart).unwrap();
    assert_eq!(smart.host_reads(), 1);
    assert_eq!(smart.host_writes(), 1);
    assert_eq!(smart.data_units_read(), 1);
    let (chg, groups) = parse_ana_log(&ana).unwrap();
    assert_eq!(chg, 1);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[1].state, AnaState::INACCESSIBLE);
    assert_eq!(groups[1].nsids, vec![2]);
    assert_eq!(groups[0].state, AnaState::OPTIMIZED);
    assert!(parse_ana_log(&rgo)
        .unwrap()
        .1
        .iter()
        .all(|g| g.nsids.is_empty()));
    assert_eq!(off[..16], smart.host_reads.as_slice()[..16]);
    assert_eq!(sc(&unknown), st(1, cs::INVALID_LOG_PAGE));
    assert_eq!(sc(&past), st(0, generic::INVALID_FIELD));
}

#[test]
fn aer_limit_and_ana_change_notice_with_masking() {
    // Arrange
    let sub = subsystem(2, 1);
    let mut h = Host::new(sub.controller(0));
    h.admin_ok(Sqe::set_features(
        fid::ASYNC_EVENT_CONFIG,
        aec::ANA_CHANGE,
        false,
    ));
    let aers: Vec<u16> = (0..4)
        .map(|_| h.submit(0, Sqe::async_event_request()))
        .collect();
    let over = h.admin(Sqe::async_event_request());

    // Act
    h.ctrl.faults().set_ana_state(1, AnaState::CHANGE);
    let first = h.wait(0, aers[0]);
    h.ctrl.faults().set_ana_state(1, AnaState::OPTIMIZED);
    let masked = h.try_wait(0, aers[1], Duration::from_millis(50));
    let (_, _) = log_page(&mut h, lid::ANA, 4096, 0, 0, false);
    let h1 = h.try_wait(0, aers[1], Duration::from_millis(50));

    // Assert
    assert_eq!(sc(&over), st(1, cs::AER_LIMIT_EXCEEDED));
    let ev = AsyncEvent::from_dw0(first.dw0);
    assert!(ev.is_ana_change());
    assert_eq!(ev.log_page, lid::ANA);
    assert!(
        masked.is_none(),
        "second ANA notice waits until the log is read"
    );
    // Reading the log consumed the queued notice: no AEN for a change already reported.
    assert!(h1.is_none());
    h.ctrl.faults().set_ana_state(1, AnaState::NON_OPTIMIZED);
    let again = h.wait(0, aers[1]);
    assert_eq!(AsyncEvent::from_dw0(again.dw0).info, aer_notice::ANA_CHANGE);
}

#[test]
fn bad_doorbells_are_ignored_and_reported_to_a_waiting_aer() {
    // Arrange
    let sub = subsystem(1, 1);
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 8);
    h.ctrl.write32(sq_tail_doorbell(5, 0), 1); // no AER yet: ignored silently
    let aer = h.submit(0, Sqe::async_event_request());

    // Act
    h.ctrl.write32(sq_tail_doorbell(1, 0), 8); // value past the end

    // Assert
    let c = h.wait(0, aer);
    let ev = AsyncEvent::from_dw0(c.dw0);
    assert_eq!(
        (ev.event_type, ev.info),
        (aer_type::ERROR, aer_error::INVALID_DOORBELL_VALUE)
    );
    let aer2 = h.submit(0, Sqe::async_event_request());
    log_page(&mut h, lid::ERROR, 64, 0, 0, false);
    h.ctrl.write32(cq_head_doorbell(9, 0), 0);
    let c = h.wait(0, aer2);
    assert_eq!(
        AsyncEvent::from_dw0(c.dw0).info,
        aer_error::INVALID_DOORBELL_REGISTER
    );
    assert!(
        h.cmd(1, Sqe::flush(1)).status().is_success(),
        "queue unaffected"
    );
}

#[test]
fn doorbell_buffer_config_shadow_doorbells_and_eventidx() {
    // Arrange
    let sub = subsystem(1, 1);
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 16);
    let shadow = h.buf(4096);
    let ei = h.buf(4096);
    let bad = Sqe::doorbell_buffer_config(h.iova(&shadow, 8), h.iova(&ei, 0));
    assert_eq!(sc(&h.admin(bad)), st(0, generic::INVALID_FIELD));
    h.admin_ok(Sqe::doorbell_buffer_config(
        h.iova(&shadow, 0),
        h.iova(&ei, 0),
    ));

    // Act: submit through the shadow tail only, then poll (no MMIO).
    let cid = h.push(1, Sqe::flush(1));
    let tail = h.rings[&1].sq_tail;
    shadow.store_u32(8, tail);
    h.ctrl.idle_poll();
    let c = h.wait(1, cid);

    // Assert
    assert!(c.status().is_success());
    assert_eq!(ei.load_u32(8), tail, "SQ EventIdx = consumed tail");
    // MMIO with the same value as the shadow also works (the Linux/SPDK protocol).
    let cid = h.push(1, Sqe::flush(1));
    let tail = h.rings[&1].sq_tail;
    shadow.store_u32(8, tail);
    h.ring_sq(1);
    assert!(h.wait(1, cid).status().is_success());
    // Admin MMIO writes are mirrored into the shadow page.
    h.admin_ok(Sqe::keep_alive());
    assert_eq!(shadow.load_u32(0), h.rings[&0].sq_tail);
}
