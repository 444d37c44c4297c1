//! Fault injection.

use super::*;
use crate::sim::FaultMatch;
use crate::spec::log::AnaState;
use crate::spec::regs::ALL_ONES_32;
use crate::spec::status::{generic, path, sct};

fn setup() -> (SimSubsystem, Host, DmaBuf) {
    let sub = subsystem(2, 1);
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 32);
    let buf = h.buf(4096);
    (sub, h, buf)
}

fn read(h: &mut Host, buf: &DmaBuf, lba: u64) -> Cqe {
    h.io(1, Sqe::read(1, lba, 0), buf, 0, 512)
}

#[test]
fn fail_next_fails_exactly_n_io_commands_with_the_given_status() {
    // Arrange
    let (_sub, mut h, buf) = setup();
    let status = Status::new(sct::PATH, path::INTERNAL_PATH_ERROR)
        .with_crd(1)
        .with_dnr(false);
    h.ctrl.faults().fail_next(2, status);

    // Act
    let a = read(&mut h, &buf, 0);
    let keep_alive = h.admin(Sqe::keep_alive());
    let b = read(&mut h, &buf, 0);
    let c = read(&mut h, &buf, 0);

    // Assert
    assert_eq!(a.status(), status);
    assert_eq!(b.status().crd(), 1);
    assert!(
        keep_alive.status().is_success(),
        "admin commands are not hit"
    );
    assert!(c.status().is_success());
    assert_eq!(h.ctrl.stats().injected_failures, 2);
}

#[test]
fn fail_matching_by_opcode_lba_queue_and_admin() {
    // Arrange
    let (_sub, mut h, buf) = setup();
    h.create_pair(2, 8);
    let dnr = Status::new(sct::GENERIC, generic::INTERNAL_ERROR).with_dnr(true);
    h.ctrl
        .faults()
        .fail_matching(FaultMatch::io().opcode(0x02).lbas(100..200), dnr, None)
        .fail_matching(
            FaultMatch::io().queue(2),
            Status::new(sct::PATH, path::ANA_TRANSITION),
            Some(1),
        )
        .fail_matching(FaultMatch::admin().opcode(0x18), dnr, Some(1));

    // Act
    let hit = read(&mut h, &buf, 150);
    let edge = read(&mut h, &buf, 99);
    let write = h.io(1, Sqe::write(1, 150, 0), &buf, 0, 512);
    let q2 = h.cmd(2, Sqe::flush(1));
    let q2_again = h.cmd(2, Sqe::flush(1));
    let ka = h.admin(Sqe::keep_alive());
    let ka2 = h.admin(Sqe::keep_alive());
    h.ctrl.faults().clear();
    let after_clear = read(&mut h, &buf, 150);

    // Assert
    assert_eq!(hit.status(), dnr);
    assert!(edge.status().is_success());
    assert!(write.status().is_success());
    assert_eq!(sc(&q2), st(sct::PATH, path::ANA_TRANSITION));
    assert!(q2_again.status().is_success());
    assert_eq!(ka.status(), dnr);
    assert!(ka2.status().is_success());
    assert!(after_clear.status().is_success());
}

#[test]
fn cfs_stops_processing_until_disable_and_enable() {
    // Arrange
    let (_sub, mut h, buf) = setup();

    // Act
    h.ctrl.faults().set_cfs();
    let cid = h.submit(1, Sqe::flush(1));
    let lost = h.try_wait(1, cid, Duration::from_millis(20));

    // Assert
    assert!(h.csts().cfs());
    assert!(lost.is_none());
    h.disable();
    assert!(!h.csts().cfs());
    h.enable(8);
    h.create_pair(1, 8);
    assert!(read(&mut h, &buf, 0).status().is_success());
}

#[test]
fn surprise_removal_reads_all_ones_and_restore_gives_a_fresh_controller() {
    // Arrange
    let (_sub, mut h, buf) = setup();

    // Act
    h.ctrl.faults().surprise_remove();
    let cid = h.submit(1, Sqe::flush(1));

    // Assert
    assert_eq!(h.ctrl.read32(offset::CSTS), ALL_ONES_32);
    assert_eq!(h.ctrl.read32(offset::VS), ALL_ONES_32);
    assert!(h.try_wait(1, cid, Duration::from_millis(20)).is_none());
    assert!(h.ctrl.reset_function().is_err());
    h.ctrl.faults().restore();
    assert!(!h.ctrl.is_enabled());
    assert!(!h.csts().rdy());
    h.rings.clear();
    h.enable(8);
    h.create_pair(1, 8);
    assert!(read(&mut h, &buf, 0).status().is_success());
}

#[test]
fn dropped_commands_never_complete_and_abort_says_not_aborted() {
    // Arrange
    let (_sub, mut h, buf) = setup();
    h.ctrl.faults().drop_commands(1);

    // Act
    let cid = h.submit(1, Sqe::flush(1));
    let lost = h.try_wait(1, cid, Duration::from_millis(20));
    let abort = h.admin(Sqe::abort(1, cid));
    let next = read(&mut h, &buf, 0);

    // Assert
    assert!(lost.is_none());
    assert_eq!(abort.dw0 & 1, 1);
    assert!(next.status().is_success());
    assert_eq!(h.ctrl.stats().dropped, 1);
    h.ctrl
        .faults()
        .drop_matching(FaultMatch::io().opcode(0x02), Some(1));
    let cid = h.submit(1, Sqe::flush(1));
    assert!(h.wait(1, cid).status().is_success(), "flush does not match");
}

#[test]
fn delayed_completions_arrive_later_and_can_be_aborted() {
    // Arrange
    let (_sub, mut h, buf) = setup();
    h.ctrl.faults().delay_completions(Duration::from_millis(30));

    // Act
    let cid = h.submit(1, Sqe::flush(1));
    let c = h.wait(1, cid);
    h.ctrl.faults().delay_completions(Duration::from_secs(3600));
    let stuck = h.submit(1, Sqe::flush(1));
    let abort = h.admin(Sqe::abort(1, stuck));
    let aborted = h.wait(1, stuck);
    let unknown = h.admin(Sqe::abort(1, 0x7777));
    h.ctrl.faults().delay_completions(Duration::ZERO);
    h.ctrl.faults().delay_matching(
        FaultMatch::io().opcode(0x02),
        Duration::from_millis(10),
        Some(1),
    );
    let delayed_read = read(&mut h, &buf, 0);

    // Assert
    assert!(c.status().is_success());
    assert_eq!(abort.dw0 & 1, 0);
    assert_eq!(sc(&aborted), st(0, generic::ABORT_REQUESTED));
    assert_eq!(unknown.dw0 & 1, 1);
    assert!(delayed_read.status().is_success());
    let stats = h.ctrl.stats();
    assert_eq!(stats.delayed, 3);
    assert_eq!(stats.aborted, 1);
}

#[test]
fn deleting_an_sq_aborts_its_held_commands_first() {
    // Arrange
    let (_sub, mut h, _buf) = setup();
    h.ctrl.faults().delay_completions(Duration::from_secs(3600));
    let a = h.submit(1, Sqe::flush(1));
    let b = h.submit(1, Sqe::flush(1));

    // Act
    let del = h.admin(Sqe::delete_io_sq(1));

    // Assert
    assert!(del.status().is_success());
    let ca = h.wait(1, a);
    let cb = h.wait(1, b);
    assert_eq!(sc(&ca), st(0, generic::ABORTED_SQ_DELETION));
    assert_eq!(sc(&cb), st(0, generic::ABORTED_SQ_DELETION));
    h.admin_ok(Sqe::delete_io_cq(1));
}

#[test]
fn ana_states_fail_io_with_path_errors_on_that_controller_only() {
    // Arrange
    let (sub, mut h, buf) = setup();
    let mut h1 = Host::new(sub.controller(1));
    h1.create_pair(1, 8);
    let buf1 = h1.buf(4096);
    let cases = [
        (AnaState::INACCESSIBLE, Some(path::ANA_INACCESSIBLE)),
        (AnaState::PERSISTENT_LOSS, Some(path::ANA_PERSISTENT_LOSS)),
        (AnaState::CHANGE, Some(path::ANA_TRANSITION)),
        (AnaState::NON_OPTIMIZED, None),
        (AnaState::OPTIMIZED, None),
    ];
    for (state, want) in cases {
        // Act
        h.ctrl.faults().set_ana_state(1, state);
        let c = read(&mut h, &buf, 0);
        let other = h1.io(1, Sqe::read(1, 0, 0), &buf1, 0, 512);

        // Assert
        match want {
            Some(code) => assert_eq!(sc(&c), st(sct::PATH, code), "{state}"),
            None => assert!(c.status().is_success(), "{state}"),
        }
        assert!(other.status().is_success(), "controller 1 is unaffected");
        assert_eq!(h.ctrl.ana_state(1), Some(state));
    }
}
