//! Queue pair and controller tests against the inline software controller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vfnvme_hugepages::{DmaBuf, DmaPool, PagePolicy};

use super::*;
use crate::ctrl::{Controller, ControllerOptions};
use crate::sim::{FaultMatch, NsConfig, SimBuilder, SimSubsystem};
use crate::spec::status::{generic, path};

struct Rig {
    sim: SimSubsystem,
    ctrl: Controller,
    pool: Arc<DmaPool>,
    ns: NsInfo,
}

fn rig_with(b: SimBuilder) -> Rig {
    let sim = b.build();
    let pool = DmaPool::new(PagePolicy::Small);
    let ctrl = Controller::open(
        sim.controller(0),
        pool.clone(),
        ControllerOptions::default(),
    )
    .expect("bring-up");
    let ns = ctrl.namespace(1).expect("namespace 1").info;
    Rig {
        sim,
        ctrl,
        pool,
        ns,
    }
}

/// A queue pair of `size` entries with a `timeout_ms` command timeout.
fn queue(r: &Rig, size: u16, timeout_ms: u32) -> QueuePair {
    r.ctrl
        .io_queue_pair(QueueOptions { size, timeout_ms })
        .unwrap()
}

fn rig() -> Rig {
    rig_with(
        SimSubsystem::builder()
            .controllers(1)
            .namespace(NsConfig::ram(1, 8 << 20)),
    )
}

fn pattern(buf: &DmaBuf, seed: u64) {
    let mut v = vec![0u8; buf.len()];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8 ^ (i >> 9) as u8;
    }
    buf.write(0, &v);
}

/// Polls until `n` completions arrived (calling `service` now and then), with a deadline.
fn wait<C: Copy + Default>(
    qp: &mut QueuePair<C>,
    ctrl: &Controller,
    n: usize,
    secs: u64,
) -> Vec<Completion<C>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut spins = 0u32;
    while out.len() < n {
        match qp.poll(64, |c| out.push(c)) {
            Ok(_) => {}
            Err(e) => panic!("unexpected queue error: {e}"),
        }
        spins += 1;
        if spins.is_multiple_of(64) {
            ctrl.service();
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions",
            out.len()
        );
    }
    out
}

/// Submits, stepping the control plane while the queue waits to be re-created after a reset
/// (submissions are refused with `NotReady` until then).
fn until_ready(ctrl: &Controller, mut submit: impl FnMut() -> Result<(), SubmitError>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match submit() {
            Ok(()) => return,
            Err(SubmitError::NotReady { .. }) if Instant::now() < deadline => {
                ctrl.service();
            }
            Err(e) => panic!("submission refused: {e}"),
        }
    }
}

#[test]
fn a_controller_that_needs_pages_larger_than_4k_is_refused_clearly() {
    let sim = SimSubsystem::builder().controllers(1).mpsmin(2).build();
    let pool = DmaPool::new(PagePolicy::Small);
    let Err(e) = Controller::open(sim.controller(0), pool, ControllerOptions::default()) else {
        panic!("opened a controller whose smallest page is 16 KiB");
    };
    assert!(matches!(e, crate::ctrl::Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("16 KiB (CAP.MPSMIN)"), "{e}");
}

#[test]
fn doorbells_past_the_end_of_bar0_are_refused_not_rung() {
    // CAP.DSTRD 15 (128 KiB between doorbells) on a 16 KiB BAR: even the admin queue's doorbells
    // lie past it.
    let sim = SimSubsystem::builder().controllers(1).dstrd(15).build();
    let pool = DmaPool::new(PagePolicy::Small);
    let Err(e) = Controller::open(sim.controller(0), pool, ControllerOptions::default()) else {
        panic!("opened a controller whose doorbells lie past its BAR");
    };
    assert!(matches!(e, crate::ctrl::Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("past the end of BAR0"), "{e}");
}

#[test]
fn bring_up_identifies_the_controller() {
    let r = rig();
    let info = r.ctrl.info();
    assert_eq!(r.ctrl.state(), CtrlState::Live);
    assert_eq!(info.identify.cntlid, r.sim.controller(0).cntlid());
    assert_eq!(info.mdts_bytes, 128 << 10);
    assert!(
        info.shadow_doorbells,
        "sim offers DBBUF and the driver uses it"
    );
    assert_eq!(r.ns.nsid, 1);
    assert_eq!(r.ns.lba_size(), 512);
    assert_eq!(r.ns.nsze, (8 << 20) / 512);
    assert!(
        !r.ctrl.namespace(1).unwrap().ids.is_empty(),
        "descriptor list read"
    );
}

#[test]
fn data_integrity_across_prp_shapes() {
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let mdts = 128 << 10;
    // (bytes, offset into the buffer): one page, two pages, three pages, an unaligned first page,
    // exactly MDTS, MDTS plus one block (split into two commands), and a large split.
    let shapes = [
        (512usize, 0usize),
        (4096, 0),
        (8192, 0),
        (12288, 0),
        (8192, 512),
        (4096, 3584),
        (mdts, 0),
        (mdts + 512, 0),
        (mdts * 3 + 1024, 512),
    ];
    let mut lba = 0u64;
    for (i, &(len, off)) in shapes.iter().enumerate() {
        let wbuf = r.pool.alloc(len + off, 4096).unwrap();
        let rbuf = r.pool.alloc(len + off, 4096).unwrap();
        pattern(&wbuf, i as u64 + 1);
        rbuf.fill(0, rbuf.len(), 0xee);
        let blocks = (len / 512) as u32;
        qp.write(&r.ns, lba, blocks, &wbuf, off, 1).unwrap();
        let c = wait(&mut qp, &r.ctrl, 1, 5);
        assert_eq!(
            c[0].outcome,
            Outcome::Status(Status::SUCCESS),
            "write {len}@{off}"
        );
        qp.read(&r.ns, lba, blocks, &rbuf, off, 2).unwrap();
        let c = wait(&mut qp, &r.ctrl, 1, 5);
        assert_eq!((c[0].tag, c[0].outcome.is_success()), (2, true));
        assert!(
            wbuf.equal(off, &rbuf, off, len),
            "data mismatch for {len}@{off}"
        );
        lba += blocks as u64 + 8;
    }
    assert_eq!(
        r.sim.controller(0).stats().io(NvmOpcode::WRITE.0),
        1 + 1 + 1 + 1 + 1 + 1 + 1 + 2 + 4
    );
}

#[test]
fn transfers_that_can_never_be_queued_are_refused_not_left_to_retry() {
    // A split needing more commands than the queue holds (MDTS 128 KiB, 7 slots, 1 MiB): not
    // `QueueFull`, which tells the caller to poll and retry, for ever on an idle queue.
    let r = rig();
    let mut qp = queue(&r, 8, 1000);
    let big = r.pool.alloc(1 << 20, 4096).unwrap();
    let e = qp.read(&r.ns, 0, (1 << 20) / 512, &big, 0, 1).unwrap_err();
    assert!(matches!(e, SubmitError::BadBuffer { .. }), "{e}");
    assert!(
        e.to_string().contains("more commands than the queue holds"),
        "{e}"
    );
    assert!(qp.is_idle(), "nothing was queued");
    // Seven pieces do fit.
    qp.read(&r.ns, 0, (7 * (128 << 10)) / 512, &big, 0, 2)
        .unwrap();
    assert!(wait(&mut qp, &r.ctrl, 1, 5)[0].outcome.is_success());
    // A block larger than MDTS (a 16 KiB-block namespace on an 8 KiB-MDTS controller) cannot be
    // split at all: refused, not a division by zero.
    let r = rig_with(
        SimSubsystem::builder()
            .controllers(1)
            .mdts(1)
            .namespace(NsConfig::ram(1, 8 << 20)),
    );
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let ns = NsInfo {
        lba_shift: 14,
        ..r.ns
    };
    let buf = r.pool.alloc(16 << 10, 4096).unwrap();
    let e = qp.read(&ns, 0, 1, &buf, 0, 1).unwrap_err();
    assert!(matches!(e, SubmitError::TooLarge { .. }), "{e}");
}

#[test]
fn a_namespace_formatted_with_metadata_is_not_offered_for_reads_and_writes() {
    // Namespace 2 carries 8 bytes of metadata per block, which reads and writes would not
    // transfer (the device would write it to a metadata pointer of 0).
    let r = rig_with(
        SimSubsystem::builder()
            .controllers(1)
            .namespace(NsConfig::ram(1, 8 << 20))
            .namespace(NsConfig {
                metadata_size: 8,
                ..NsConfig::ram(2, 8 << 20)
            }),
    );
    assert!(r.ctrl.namespace(1).is_some());
    assert!(r.ctrl.namespace(2).is_none(), "offered a metadata format");
    assert_eq!(
        r.ctrl
            .namespaces()
            .iter()
            .map(|n| n.info.nsid)
            .collect::<Vec<_>>(),
        vec![1]
    );
}

#[test]
fn passthrough_above_mdts_is_refused_and_bad_buffers_too() {
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let big = r.pool.alloc((128 << 10) + 512, 4096).unwrap();
    let cmd = PassthruCmd {
        opcode: NvmOpcode::READ.0,
        nsid: 1,
        cdw10_15: [0, 0, 256, 0, 0, 0],
        ..Default::default()
    };
    let e = qp
        .passthru(&cmd, Some(DataRef::whole(&big)), None, 0)
        .unwrap_err();
    assert!(matches!(e, SubmitError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("exceeds MDTS"), "{e}");
    let small = r.pool.alloc(4096, 4096).unwrap();
    let bad = DataRef {
        buf: &small,
        offset: 2,
        len: 512,
    };
    assert!(matches!(
        qp.passthru(&cmd, Some(bad), None, 0),
        Err(SubmitError::BadBuffer { .. })
    ));
    let past = DataRef {
        buf: &small,
        offset: 4000,
        len: 512,
    };
    assert!(matches!(
        qp.passthru(&cmd, Some(past), None, 0),
        Err(SubmitError::BadBuffer { .. })
    ));
    // A buffer from a pool not mapped into this controller.
    let other = DmaPool::new(PagePolicy::Small).alloc(4096, 4096).unwrap();
    let e = qp.read(&r.ns, 0, 8, &other, 0, 0).unwrap_err();
    assert!(e.to_string().contains("not mapped"), "{e}");
    assert_eq!(qp.in_flight(), 0, "nothing queued on refusal");
    // A valid passthrough read works.
    let cmd = PassthruCmd {
        cdw10_15: [0, 0, 7, 0, 0, 0],
        ..cmd
    };
    qp.passthru(&cmd, Some(DataRef::whole(&small)), None, 9)
        .unwrap();
    let c = wait(&mut qp, &r.ctrl, 1, 5);
    assert_eq!((c[0].tag, c[0].outcome.is_success()), (9, true));
}

/// A queue pair of 16 entries: 15 commands.
fn queue_of_15(r: &Rig) -> QueuePair {
    r.ctrl
        .io_queue_pair(QueueOptions {
            size: 16,
            ..Default::default()
        })
        .unwrap()
}

#[test]
fn wraparound_at_full_depth_and_backpressure() {
    let r = rig();
    let mut qp = queue_of_15(&r);
    let buf = r.pool.alloc(4096, 4096).unwrap();
    assert_eq!(qp.capacity(), 15);
    let mut tag = 0u64;
    let mut done = 0usize;
    for _lap in 0..50 {
        while qp.read(&r.ns, tag % 64, 8, &buf, 0, tag).is_ok() {
            tag += 1;
        }
        assert_eq!(qp.in_flight(), 15, "full queue reached");
        assert!(matches!(
            qp.read(&r.ns, 0, 8, &buf, 0, 0),
            Err(SubmitError::QueueFull)
        ));
        let c = wait(&mut qp, &r.ctrl, 15, 5);
        assert!(c.iter().all(|c| c.outcome.is_success()));
        done += c.len();
    }
    assert_eq!(done as u64, tag);
    assert!(done > 16 * 40, "many laps of a 16-entry ring");
}

#[test]
fn a_limit_on_commands_in_flight_refuses_above_it_until_lifted() {
    // Arrange: a queue of 15 commands, limited to 3 in flight; MDTS is 128 KiB (the rig).
    let r = rig();
    let mut qp = queue_of_15(&r);
    let buf = r.pool.alloc(256 << 10, 4096).unwrap();
    assert!(!qp.is_limited());
    qp.limit_in_flight(3);
    assert!(qp.is_limited());
    // Act and assert: three reads go, the fourth is QueueFull; with two in flight again, a split
    // needing two commands does not fit under the limit of three, until the limit is lifted.
    for tag in 0..3 {
        qp.read(&r.ns, tag * 8, 8, &buf, 0, tag).unwrap();
    }
    assert!(matches!(
        qp.read(&r.ns, 0, 8, &buf, 0, 9),
        Err(SubmitError::QueueFull)
    ));
    let c = wait(&mut qp, &r.ctrl, 3, 5);
    assert!(c.iter().all(|c| c.outcome.is_success()));
    qp.read(&r.ns, 0, 8, &buf, 0, 3).unwrap();
    qp.read(&r.ns, 8, 8, &buf, 0, 4).unwrap();
    let split = ((256 << 10) / 512) as u32; // two commands at MDTS 128 KiB
    assert!(matches!(
        qp.read(&r.ns, 64, split, &buf, 0, 5),
        Err(SubmitError::QueueFull)
    ));
    qp.limit_in_flight(usize::MAX);
    assert!(!qp.is_limited());
    qp.read(&r.ns, 64, split, &buf, 0, 5).unwrap();
    assert_eq!(qp.in_flight(), 4, "two reads and the split's two pieces");
    let mut tags: Vec<u64> = wait(&mut qp, &r.ctrl, 3, 5).iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, [3, 4, 5]);
    // A limit on new commands counts from what is in flight now: with none in flight, two more
    // go and the third is QueueFull, until lifted.
    assert_eq!(qp.in_flight(), 0);
    qp.limit_new(2);
    assert!(qp.is_limited());
    qp.read(&r.ns, 0, 8, &buf, 0, 6).unwrap();
    qp.read(&r.ns, 8, 8, &buf, 0, 7).unwrap();
    assert!(matches!(
        qp.read(&r.ns, 16, 8, &buf, 0, 8),
        Err(SubmitError::QueueFull)
    ));
    qp.lift_limit();
    assert!(!qp.is_limited());
    qp.read(&r.ns, 16, 8, &buf, 0, 8).unwrap();
    let mut tags: Vec<u64> = wait(&mut qp, &r.ctrl, 3, 5).iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, [6, 7, 8]);
    // A limit above the capacity is the capacity: no limit.
    qp.limit_in_flight(1000);
    assert!(!qp.is_limited());
    let mut n = 0;
    while qp.read(&r.ns, 0, 8, &buf, 0, 100 + n).is_ok() {
        n += 1;
    }
    assert_eq!(n, 15);
}

#[test]
fn every_io_command_kind() {
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = r.pool.alloc(4096, 4096).unwrap();
    pattern(&buf, 5);
    qp.write(&r.ns, 100, 8, &buf, 0, 1).unwrap();
    qp.flush(1, 2).unwrap();
    assert!(wait(&mut qp, &r.ctrl, 2, 5)
        .iter()
        .all(|c| c.outcome.is_success()));
    qp.compare(&r.ns, 100, 8, &buf, 0, 3).unwrap();
    assert!(wait(&mut qp, &r.ctrl, 1, 5)[0].outcome.is_success());
    qp.write_zeroes(&r.ns, 100, 4, false, 4).unwrap();
    assert!(wait(&mut qp, &r.ctrl, 1, 5)[0].outcome.is_success());
    qp.compare(&r.ns, 100, 8, &buf, 0, 5).unwrap();
    let c = wait(&mut qp, &r.ctrl, 1, 5);
    assert_eq!(
        c[0].outcome,
        Outcome::Status(Status::new(
            sct::MEDIA,
            crate::spec::status::media::COMPARE_FAILURE
        )),
        "compare after write zeroes fails"
    );
    let ranges = r.pool.alloc(4096, 4096).unwrap();
    qp.deallocate(&r.ns, &[(104, 4), (0, 1)], &ranges, 6)
        .unwrap();
    assert!(wait(&mut qp, &r.ctrl, 1, 5)[0].outcome.is_success());
    let rb = r.pool.alloc(4096, 4096).unwrap();
    qp.read(&r.ns, 100, 8, &rb, 0, 7).unwrap();
    wait(&mut qp, &r.ctrl, 1, 5);
    assert!(
        rb.to_vec().iter().all(|&b| b == 0),
        "zeroed and deallocated blocks read as zero"
    );
    // An LBA past the end: the device's status is returned, decoded.
    qp.read(&r.ns, r.ns.nsze - 1, 8, &rb, 0, 8).unwrap();
    let c = wait(&mut qp, &r.ctrl, 1, 5);
    assert_eq!(
        c[0].outcome,
        Outcome::Status(Status::new(sct::GENERIC, generic::LBA_OUT_OF_RANGE)).map_dnr()
    );
    assert!(
        c[0].outcome.to_string().contains("LBA Out of Range"),
        "{}",
        c[0].outcome
    );
    assert!(qp.write_zeroes(&r.ns, 0, 0, false, 0).is_err());
    assert!(qp.deallocate(&r.ns, &[], &ranges, 0).is_err());
}

trait MapDnr {
    fn map_dnr(self) -> Outcome;
}
impl MapDnr for Outcome {
    /// The sim sets DNR on LBA range errors, as devices do.
    fn map_dnr(self) -> Outcome {
        match self {
            Outcome::Status(s) => Outcome::Status(s.with_dnr(true)),
            o => o,
        }
    }
}

#[test]
fn bad_completions_are_reported_and_the_queue_survives() {
    let r = rig();
    let mut qp = queue(&r, 32, 50);
    let buf = r.pool.alloc(4096, 4096).unwrap();
    // Unknown cid: the device completes a read but writes a cid that was never issued.
    qp.read(&r.ns, 0, 8, &buf, 0, 1).unwrap();
    qp.ring();
    assert!(qp.rings.corrupt_head_cid_for_test(0x0ffe));
    let e = qp
        .poll(8, |_| panic!("no completion expected"))
        .unwrap_err();
    assert!(
        matches!(
            e,
            QueueError::BadCompletion {
                fault: CidFault::Unknown | CidFault::NotInFlight,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("bad completion"));
    // The read whose completion was garbled never completes from the device: it times out, the
    // abort finds nothing, the controller is reset, and it completes as timed out.
    let c = wait(&mut qp, &r.ctrl, 1, 10);
    assert_eq!((c[0].tag, c[0].outcome), (1, Outcome::TimedOut));
    // Duplicate: the device posts the cid of a command that already completed.
    until_ready(&r.ctrl, || qp.read(&r.ns, 0, 8, &buf, 0, 2));
    qp.ring();
    let done_cid = qp.rings.peek_cqe().expect("inline sim completed it").cid;
    let c = wait(&mut qp, &r.ctrl, 1, 5);
    assert_eq!(c[0].tag, 2);
    qp.read(&r.ns, 0, 8, &buf, 0, 3).unwrap();
    qp.ring();
    assert!(qp.rings.corrupt_head_cid_for_test(done_cid));
    assert!(matches!(
        qp.poll(8, |_| panic!("a duplicate must not complete anything")),
        // The slot was reused by the new read, so the old id is stale.
        Err(QueueError::BadCompletion {
            fault: CidFault::Stale | CidFault::NotInFlight,
            ..
        })
    ));
    assert_eq!(wait(&mut qp, &r.ctrl, 1, 10)[0].outcome, Outcome::TimedOut);
    // The queue keeps working.
    for t in 0..100 {
        until_ready(&r.ctrl, || qp.read(&r.ns, t, 8, &buf, 0, t));
        let c = wait(&mut qp, &r.ctrl, 1, 5);
        assert_eq!((c[0].tag, c[0].outcome.is_success()), (t, true));
    }
}

#[test]
fn dropped_command_times_out_then_abort_then_reset() {
    let r = rig();
    let mut qp = queue(&r, 32, 50);
    let buf = r.pool.alloc(4096, 4096).unwrap();
    r.sim.controller(0).faults().drop_commands(1);
    qp.read(&r.ns, 0, 8, &buf, 0, 77).unwrap();
    let c = wait(&mut qp, &r.ctrl, 1, 10);
    assert_eq!((c[0].tag, c[0].outcome), (77, Outcome::TimedOut));
    let st = r.sim.controller(0).stats();
    assert!(st.admin(AdminOpcode::ABORT.0) >= 1, "abort was tried");
    assert_eq!(
        r.ctrl.state(),
        CtrlState::Live,
        "reset recovered the controller"
    );
    // The queue pair works after the reset (its queues were re-created).
    until_ready(&r.ctrl, || qp.read(&r.ns, 0, 8, &buf, 0, 78));
    assert!(wait(&mut qp, &r.ctrl, 1, 5)[0].outcome.is_success());
}

#[test]
fn a_timeout_counts_from_submission_never_from_an_older_reading() {
    // Arrange: the queue pair has been used, then left alone for longer than the timeout, so
    // any clock reading it kept from its last poll is already past the deadline of a command
    // queued now.
    let r = rig();
    let mut qp = queue(&r, 32, 50);
    let buf = r.pool.alloc(4096, 4096).unwrap();
    qp.read(&r.ns, 0, 8, &buf, 0, 1).unwrap();
    assert!(wait(&mut qp, &r.ctrl, 1, 5)[0].outcome.is_success());
    std::thread::sleep(Duration::from_millis(120));
    // Act: a read the device never completes.
    r.sim.controller(0).faults().drop_commands(1);
    let queued = Instant::now();
    qp.read(&r.ns, 0, 8, &buf, 0, 2).unwrap();
    let c = wait(&mut qp, &r.ctrl, 1, 10);
    // Assert: it timed out, and not before its 50 ms had passed since it was queued.
    assert_eq!((c[0].tag, c[0].outcome), (2, Outcome::TimedOut));
    assert!(
        queued.elapsed() >= Duration::from_millis(50),
        "timed out {:?} after submission, before its 50 ms timeout",
        queued.elapsed()
    );
}

#[test]
fn a_slow_command_that_completes_after_its_timeout_keeps_its_status_and_costs_no_reset() {
    // Arrange: a write the device completes after 150 ms, on a queue with a 50 ms timeout.
    let r = rig();
    let mut qp = queue(&r, 32, 50);
    let buf = r.pool.alloc(4096, 4096).unwrap();
    r.sim.controller(0).faults().delay_matching(
        FaultMatch::io(),
        Duration::from_millis(150),
        Some(1),
    );
    let epoch = r.ctrl.shared().load().epoch();
    qp.write(&r.ns, 0, 8, &buf, 0, 1).unwrap();
    // Act: poll until it completes, with no control-plane step in between (its timeout is
    // reported, but no abort has gone out yet); then the control plane runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.is_empty() {
        qp.poll(8, |c| got.push((c.tag, c.outcome))).unwrap();
        assert!(Instant::now() < deadline, "the write never completed");
    }
    r.ctrl.service();
    // Assert: it completed as the device said (it ran: calling it timed out would have it
    // resent), and the abort that found nothing did not reset a healthy controller.
    assert_eq!(got, vec![(1, Outcome::Status(Status::SUCCESS))]);
    assert_eq!(
        r.ctrl.shared().load().epoch(),
        epoch,
        "the controller was reset"
    );
    assert_eq!(r.ctrl.state(), CtrlState::Live);
    qp.read(&r.ns, 0, 8, &buf, 0, 2).unwrap();
    assert!(wait(&mut qp, &r.ctrl, 1, 5)[0].outcome.is_success());
}

use crate::spec::AdminOpcode;

#[test]
fn one_dropped_command_among_busy_ones_still_times_out() {
    // Arrange: a steady stream of reads keeps completions flowing; one read is never completed.
    let r = rig();
    let mut qp = queue(&r, 32, 50);
    let buf = r.pool.alloc(4096, 4096).unwrap();
    r.sim
        .controller(0)
        .faults()
        .drop_matching(FaultMatch::io().lbas(4000..4001), Some(1));
    const LOST: u64 = u64::MAX;
    qp.read(&r.ns, 4000, 8, &buf, 0, LOST).unwrap();
    // Act: keep the queue busy until the dropped read comes back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lost = None;
    let mut tag = 0;
    while lost.is_none() {
        while qp.in_flight() < 8 {
            tag += 1;
            until_ready(&r.ctrl, || qp.read(&r.ns, tag % 256, 8, &buf, 0, tag));
        }
        qp.poll(64, |c| {
            if c.tag == LOST {
                lost = Some(c.outcome);
            } else {
                assert!(
                    c.outcome.is_success() || c.outcome == Outcome::Reset,
                    "{:?}",
                    c.outcome
                );
            }
        })
        .unwrap();
        r.ctrl.service();
        assert!(
            Instant::now() < deadline,
            "the dropped read was never timed out"
        );
    }
    // Assert: it timed out although completions never stopped.
    assert_eq!(lost, Some(Outcome::TimedOut));
}

#[test]
fn controller_fatal_status_leads_to_reset_and_recovery() {
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = r.pool.alloc(4096, 4096).unwrap();
    pattern(&buf, 9);
    qp.write(&r.ns, 10, 8, &buf, 0, 1).unwrap();
    wait(&mut qp, &r.ctrl, 1, 5);
    r.sim.controller(0).faults().drop_commands(1);
    qp.read(&r.ns, 10, 8, &buf, 0, 2).unwrap();
    qp.ring();
    r.sim.controller(0).faults().set_cfs();
    assert_eq!(
        r.ctrl.service(),
        CtrlState::Live,
        "service resets a CFS controller"
    );
    let c = wait(&mut qp, &r.ctrl, 1, 5);
    assert_eq!((c[0].tag, c[0].outcome), (2, Outcome::Reset));
    let rb = r.pool.alloc(4096, 4096).unwrap();
    until_ready(&r.ctrl, || qp.read(&r.ns, 10, 8, &rb, 0, 3));
    assert!(wait(&mut qp, &r.ctrl, 1, 5)[0].outcome.is_success());
    assert!(buf.equal(0, &rb, 0, 4096), "data survived the reset");
}

#[test]
fn a_controller_that_fails_after_a_reset_is_stopped_before_its_commands_are_failed_back() {
    // Arrange: after a reset, queue pair A's queues are re-created and it has a read in flight
    // (the device holds its completion); then re-creating B's queues fails.
    let r = rig();
    let mut a = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let mut b = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = r.pool.alloc(4096, 4096).unwrap();
    let dev = r.sim.controller(0);
    dev.faults().set_cfs();
    assert_eq!(r.ctrl.service(), CtrlState::Live);
    dev.faults()
        .delay_matching(FaultMatch::io(), Duration::from_secs(30), Some(1));
    until_ready(&r.ctrl, || a.read(&r.ns, 0, 8, &buf, 0, 1));
    a.ring();
    dev.faults().fail_matching(
        FaultMatch::admin().opcode(AdminOpcode::CREATE_IO_CQ.0),
        Status::new(sct::GENERIC, generic::INTERNAL_ERROR),
        Some(1),
    );
    assert!(b.poll(8, |_| panic!("nothing in flight on B")).is_ok());
    // Act: the control plane tries B's queues, and fails the controller.
    assert_eq!(r.ctrl.service(), CtrlState::Failed);
    let c = wait(&mut a, &r.ctrl, 1, 5);
    // Assert: A's read is failed back, and by then the device can no longer run it.
    assert_eq!((c[0].tag, c[0].outcome), (1, Outcome::Reset));
    assert!(
        !dev.is_enabled(),
        "a command was failed back while the controller that holds it still runs"
    );
    // The control plane's next reset brings the controller back.
    r.ctrl.reset().expect("reset after the failure");
    until_ready(&r.ctrl, || a.read(&r.ns, 0, 8, &buf, 0, 2));
    assert!(wait(&mut a, &r.ctrl, 1, 5)[0].outcome.is_success());
}

#[test]
fn a_retired_controller_fails_back_what_it_held_and_refuses_more() {
    // Arrange: a read the device holds, on a controller that nothing services any more.
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = r.pool.alloc(4096, 4096).unwrap();
    r.sim.controller(0).faults().drop_commands(1);
    qp.read(&r.ns, 0, 8, &buf, 0, 7).unwrap();
    qp.ring();
    // Act.
    r.ctrl.retire();
    r.ctrl.retire(); // a second call changes nothing
                     // Assert: the read completes as removed without the control plane, and nothing more is taken.
    let mut got = Vec::new();
    qp.poll(8, |c| got.push((c.tag, c.outcome))).unwrap();
    assert_eq!(got, vec![(7, Outcome::Removed)]);
    assert!(!qp.is_ready());
    assert!(matches!(
        qp.read(&r.ns, 0, 8, &buf, 0, 8),
        Err(SubmitError::DeviceGone { .. })
    ));
    assert_eq!(r.ctrl.state(), CtrlState::Removed);
}

#[test]
fn a_dropped_queue_pair_keeps_its_prp_lists_until_its_queues_are_deleted() {
    // Arrange: a read that needs a PRP list (16 KiB from an offset into the buffer), which the
    // device never completes.
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = r.pool.alloc(32 << 10, 4096).unwrap();
    r.sim.controller(0).faults().drop_commands(1);
    qp.read(&r.ns, 0, 32, &buf, 512, 1).unwrap();
    // PRP2 of the first SQE (bytes 32..40): the list page the device reads.
    let list = qp.rings.sq_mem().load_u64(32);
    qp.ring();
    let dom = r.ctrl.domain();
    // Act: the queue pair goes away with the read still in the device.
    drop(qp);
    let pages: Vec<DmaBuf> = (0..64).map(|_| r.pool.alloc(4096, 4096).unwrap()).collect();
    // Assert: the list page is not handed out again while the device may read it.
    assert!(
        pages.iter().all(|p| p.iova(dom, 0).unwrap().0 != list),
        "the PRP list of a command in flight was reused before its queue was deleted"
    );
    // Once the control plane has deleted the queues it is free again.
    drop(pages);
    r.ctrl.service();
    let again: Vec<DmaBuf> = (0..64).map(|_| r.pool.alloc(4096, 4096).unwrap()).collect();
    assert!(again.iter().any(|p| p.iova(dom, 0).unwrap().0 == list));
}

#[test]
fn doorbells_follow_each_bring_ups_doorbell_buffer_config() {
    // Doorbell Buffer Config taken at open and refused at a reset, and the other way round: a
    // queue pair must ring where the device looks in each epoch (shadow page or MMIO), or its
    // commands sit unseen.
    for refused_at_open in [false, true] {
        let sim = SimSubsystem::builder()
            .controllers(1)
            .namespace(NsConfig::ram(1, 8 << 20))
            .build();
        let refuse_once = || {
            sim.controller(0).faults().fail_matching(
                FaultMatch::admin().opcode(AdminOpcode::DOORBELL_BUFFER_CONFIG.0),
                Status::new(sct::GENERIC, generic::INVALID_FIELD).with_dnr(true),
                Some(1),
            );
        };
        if refused_at_open {
            refuse_once();
        }
        let pool = DmaPool::new(PagePolicy::Small);
        let ctrl = Controller::open(sim.controller(0), pool.clone(), Default::default()).unwrap();
        assert_eq!(ctrl.info().shadow_doorbells, !refused_at_open);
        let ns = ctrl.namespace(1).unwrap().info;
        let mut qp = ctrl.io_queue_pair(QueueOptions::default()).unwrap();
        let buf = pool.alloc(4096, 4096).unwrap();
        qp.read(&ns, 0, 8, &buf, 0, 0).unwrap();
        assert!(wait(&mut qp, &ctrl, 1, 5)[0].outcome.is_success());
        if !refused_at_open {
            refuse_once();
        }
        sim.controller(0).faults().set_cfs();
        assert_eq!(ctrl.service(), CtrlState::Live);
        assert_eq!(ctrl.info().shadow_doorbells, refused_at_open);
        for t in 1..=4 {
            until_ready(&ctrl, || qp.read(&ns, t, 8, &buf, 0, t));
            let c = wait(&mut qp, &ctrl, 1, 5);
            assert_eq!((c[0].tag, c[0].outcome.is_success()), (t, true));
        }
    }
}

#[test]
fn a_doorbell_stride_too_wide_for_the_shadow_page_means_mmio_doorbells() {
    // DSTRD 3 (32-byte stride) and 64 queues: the last queues' shadow doorbells would lie past
    // the one page that Doorbell Buffer Config takes.
    let r = rig_with(
        SimSubsystem::builder()
            .controllers(1)
            .dstrd(3)
            .max_io_queue_pairs(64)
            .namespace(NsConfig::ram(1, 8 << 20)),
    );
    assert!(!r.ctrl.info().shadow_doorbells);
    let buf = r.pool.alloc(4096, 4096).unwrap();
    let mut qps: Vec<QueuePair> = (0..64)
        .map(|_| r.ctrl.io_queue_pair(QueueOptions::default()).unwrap())
        .collect();
    let last = qps.last_mut().unwrap();
    assert_eq!(last.qid(), 64);
    last.read(&r.ns, 0, 8, &buf, 0, 1).unwrap();
    assert!(wait(last, &r.ctrl, 1, 5)[0].outcome.is_success());
}

#[test]
fn buffers_kept_by_a_dropped_queue_pair_are_freed_only_after_its_queues_are_deleted() {
    // Arrange: a read into `buf` that the device never completes.
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = r.pool.alloc(4096, 4096).unwrap();
    let dom = r.ctrl.domain();
    let at = buf.iova(dom, 0).unwrap().0;
    r.sim.controller(0).faults().drop_commands(1);
    qp.read(&r.ns, 0, 8, &buf, 0, 1).unwrap();
    qp.ring();
    // Act: the owner hands the buffer to the queue pair and drops both.
    qp.keep_until_deleted(Box::new(buf));
    drop(qp);
    let taken: Vec<DmaBuf> = (0..64).map(|_| r.pool.alloc(4096, 4096).unwrap()).collect();
    // Assert: not reused while the device may still write it; free once the queue is deleted.
    assert!(taken.iter().all(|p| p.iova(dom, 0).unwrap().0 != at));
    drop(taken);
    r.ctrl.service();
    let again: Vec<DmaBuf> = (0..64).map(|_| r.pool.alloc(4096, 4096).unwrap()).collect();
    assert!(again.iter().any(|p| p.iova(dom, 0).unwrap().0 == at));
}

#[test]
fn a_reset_never_lets_stale_sqes_into_the_recreated_queue() {
    // Arrange: a write is queued in the SQ but its doorbell not yet rung when the controller
    // fails and is reset by the control plane.
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = r.pool.alloc(4096, 4096).unwrap();
    pattern(&buf, 1);
    let writes = || r.sim.controller(0).stats().io(NvmOpcode::WRITE.0);
    qp.write(&r.ns, 300, 8, &buf, 0, 1).unwrap();
    r.sim.controller(0).faults().set_cfs();
    assert_eq!(r.ctrl.service(), CtrlState::Live);
    // Act: the queue pair's next calls.
    let e = qp.read(&r.ns, 0, 8, &buf, 0, 2).unwrap_err();
    let c = wait(&mut qp, &r.ctrl, 1, 5);
    // Assert: the stale write was failed, never rung into the new queue, and the queue was
    // refused until the control plane had re-created it after the queue pair rewound.
    assert!(matches!(e, SubmitError::NotReady { .. }), "{e}");
    assert_eq!((c[0].tag, c[0].outcome), (1, Outcome::Reset));
    assert_eq!(writes(), 0, "the stale SQE was never executed");
    until_ready(&r.ctrl, || qp.read(&r.ns, 0, 8, &buf, 0, 3));
    assert!(wait(&mut qp, &r.ctrl, 1, 5)[0].outcome.is_success());
    assert_eq!(writes(), 0);
    assert!(r.ctrl.queues_recreated() >= 1);
}

#[test]
fn idle_means_nothing_to_deliver_including_commands_failed_by_removal() {
    // Arrange: a queue pair with one read, and three more the device will drop.
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = r.pool.alloc(4096, 4096).unwrap();
    assert!(qp.is_idle(), "a new queue pair");
    qp.read(&r.ns, 0, 8, &buf, 0, 0).unwrap();
    assert!(!qp.is_idle(), "a command in flight");
    assert_eq!(wait(&mut qp, &r.ctrl, 1, 5).len(), 1);
    assert!(qp.is_idle(), "everything delivered");
    r.sim.controller(0).faults().drop_commands(3);
    for t in 1..4 {
        qp.read(&r.ns, t, 8, &buf, 0, t).unwrap();
    }
    qp.ring();
    // Act: the function goes away; the control plane notices; the next submission finds out.
    r.sim.controller(0).faults().surprise_remove();
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.ctrl.state() != CtrlState::Removed {
        r.ctrl.service();
        assert!(Instant::now() < deadline, "removal not noticed");
    }
    assert!(matches!(
        qp.read(&r.ns, 0, 8, &buf, 0, 9),
        Err(SubmitError::DeviceGone { .. })
    ));
    // Assert: nothing is in flight any more, but the three failed commands are still to be
    // delivered, so the queue pair is not idle until a poll hands them over.
    assert_eq!(qp.in_flight(), 0);
    assert!(!qp.is_idle(), "failed commands wait for a poll");
    let mut got = Vec::new();
    qp.poll(64, |c| got.push(c)).unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|c| c.outcome == Outcome::Removed));
    assert!(qp.is_idle());
}

#[test]
fn an_idle_queue_pair_is_not_idle_after_a_reset_until_it_has_polled() {
    // Arrange: an idle queue pair; the controller fails and is reset.
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    assert!(qp.is_idle());
    r.sim.controller(0).faults().set_cfs();
    assert_eq!(
        r.ctrl.service(),
        CtrlState::Live,
        "service resets the controller"
    );
    // Act and assert: a reset to catch up with; one poll rewinds it (nothing to deliver), and
    // only then does the control plane re-create its queues.
    assert!(!qp.is_idle(), "a reset to catch up with");
    let before = r.ctrl.queues_recreated();
    r.ctrl.service();
    assert_eq!(
        r.ctrl.queues_recreated(),
        before,
        "not before the queue pair rewinds"
    );
    assert_eq!(
        qp.poll(64, |c| panic!("nothing was in flight: {c:?}"))
            .unwrap(),
        0
    );
    assert!(qp.is_idle());
    r.ctrl.service();
    assert_eq!(r.ctrl.queues_recreated(), before + 1);
    let buf = r.pool.alloc(4096, 4096).unwrap();
    qp.read(&r.ns, 0, 8, &buf, 0, 1).unwrap();
    assert!(wait(&mut qp, &r.ctrl, 1, 5)[0].outcome.is_success());
}

#[test]
fn surprise_removal_fails_everything_in_flight() {
    let r = rig();
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = r.pool.alloc(4096, 4096).unwrap();
    r.sim.controller(0).faults().drop_commands(10);
    for t in 0..10 {
        qp.read(&r.ns, t, 8, &buf, 0, t).unwrap();
    }
    qp.ring();
    r.sim.controller(0).faults().surprise_remove();
    let start = Instant::now();
    let c = wait(&mut qp, &r.ctrl, 10, 5);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(c.iter().all(|c| c.outcome == Outcome::Removed));
    assert_eq!(r.ctrl.state(), CtrlState::Removed);
    assert!(matches!(
        qp.read(&r.ns, 0, 8, &buf, 0, 0),
        Err(SubmitError::DeviceGone { .. })
    ));
}

#[test]
fn two_threads_each_with_a_queue_pair() {
    let r = rig();
    let mut handles = Vec::new();
    for t in 0..2u64 {
        let ctrl = r.ctrl.clone();
        let pool = r.pool.clone();
        let ns = r.ns;
        handles.push(std::thread::spawn(move || {
            let mut qp = ctrl.io_queue_pair(QueueOptions::default()).unwrap();
            let base = t * 4096;
            let bufs: Vec<DmaBuf> = (0..16).map(|_| pool.alloc(4096, 4096).unwrap()).collect();
            for round in 0..20u64 {
                for (i, b) in bufs.iter().enumerate() {
                    pattern(b, t * 1000 + round * 16 + i as u64);
                    qp.write(&ns, base + i as u64 * 8, 8, b, 0, i as u64)
                        .unwrap();
                }
                wait(&mut qp, &ctrl, 16, 10);
                let rb: Vec<DmaBuf> = (0..16).map(|_| pool.alloc(4096, 4096).unwrap()).collect();
                for (i, b) in rb.iter().enumerate() {
                    qp.read(&ns, base + i as u64 * 8, 8, b, 0, i as u64)
                        .unwrap();
                }
                assert!(wait(&mut qp, &ctrl, 16, 10)
                    .iter()
                    .all(|c| c.outcome.is_success()));
                for i in 0..16 {
                    assert!(
                        bufs[i].equal(0, &rb[i], 0, 4096),
                        "thread {t} round {round} block {i}"
                    );
                }
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn shutdown_leaves_the_device_shut_down() {
    let r = rig();
    let qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    drop(qp);
    r.ctrl.service();
    r.ctrl.shutdown().unwrap();
    assert_eq!(
        r.sim.controller(0).shutdown_state(),
        crate::spec::regs::shst::COMPLETE
    );
    assert_eq!(r.ctrl.state(), CtrlState::ShutDown);
    assert!(r.ctrl.io_queue_pair(QueueOptions::default()).is_err());
}

#[test]
fn dropping_the_last_handle_of_a_live_controller_shuts_it_down() {
    // Arrange: a live controller with a clone; its I/O queue pair is gone.
    let r = rig();
    let sim = r.sim.controller(0);
    let clone = r.ctrl.clone();
    assert_ne!(sim.shutdown_state(), crate::spec::regs::shst::COMPLETE);
    // Act 1: dropping one of two handles does nothing.
    drop(r.ctrl);
    assert_ne!(sim.shutdown_state(), crate::spec::regs::shst::COMPLETE);
    // Act 2: dropping the last one shuts the device down (CC.SHN, SHST complete).
    drop(clone);
    assert_eq!(sim.shutdown_state(), crate::spec::regs::shst::COMPLETE);
}

#[test]
fn dropping_a_removed_controller_does_not_touch_it() {
    let r = rig();
    let sim = r.sim.controller(0);
    sim.faults().surprise_remove();
    r.ctrl.service(); // notices the removal
    assert_eq!(r.ctrl.state(), CtrlState::Removed);
    drop(r.ctrl);
    sim.faults().restore();
    assert_ne!(sim.shutdown_state(), crate::spec::regs::shst::COMPLETE);
}

#[test]
fn admin_interface() {
    let r = rig();
    // Log page with an offset: the second half of SMART equals the tail of the whole page.
    let whole = r
        .ctrl
        .get_log_page(crate::spec::log::lid::SMART, 0xffff_ffff, 0, 512)
        .unwrap();
    let tail = r
        .ctrl
        .get_log_page(crate::spec::log::lid::SMART, 0xffff_ffff, 256, 256)
        .unwrap();
    assert_eq!(&whole[256..], &tail[..]);
    assert!(
        r.ctrl.get_log_page(0x77, 0, 0, 512).is_err(),
        "unknown log page"
    );
    assert!(
        r.ctrl.get_log_page(1, 0, 0, 3).is_err(),
        "bad length refused before sending"
    );
    // Features.
    r.ctrl
        .set_features(crate::spec::features::fid::ARBITRATION, 0x0302)
        .unwrap();
    assert_eq!(
        r.ctrl
            .get_features(crate::spec::features::fid::ARBITRATION, 0)
            .unwrap()
            & 0xffff,
        0x0302
    );
    // Admin passthrough: an unknown opcode comes back decoded.
    let mut s = Sqe::default();
    s.set_opcode(0xc7);
    let e = r.ctrl.admin(s).unwrap_err();
    assert!(
        e.to_string().contains("Invalid Command Opcode")
            || e.to_string().contains("Invalid Opcode"),
        "{e}"
    );
    // Async events reach the callback.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    r.ctrl.on_async_event(move |e| s2.lock().unwrap().push(e));
    r.sim
        .controller(0)
        .faults()
        .set_ana_state(1, crate::spec::log::AnaState::INACCESSIBLE);
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().is_empty() {
        r.ctrl.service();
        assert!(Instant::now() < deadline, "no async event");
    }
    assert!(seen.lock().unwrap()[0].is_ana_change());
    // I/O to an inaccessible group gets the path status.
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = r.pool.alloc(4096, 4096).unwrap();
    qp.read(&r.ns, 0, 8, &buf, 0, 1).unwrap();
    let c = wait(&mut qp, &r.ctrl, 1, 5);
    match c[0].outcome {
        Outcome::Status(s) => assert_eq!((s.sct(), s.sc()), (sct::PATH, path::ANA_INACCESSIBLE)),
        o => panic!("{o:?}"),
    }
}

#[test]
fn bring_up_errors_are_clear() {
    // A removed device.
    let sim = SimSubsystem::builder().controllers(1).build();
    sim.controller(0).faults().surprise_remove();
    let e = Controller::open(
        sim.controller(0),
        DmaPool::new(PagePolicy::Small),
        ControllerOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, crate::ctrl::Error::DeviceGone { .. }), "{e}");
    // A controller that never becomes ready within CAP.TO (1 × 500 ms).
    let sim = SimSubsystem::builder()
        .controllers(1)
        .cap_to(1)
        .ready_delay(Duration::from_secs(30))
        .build();
    let e = Controller::open(
        sim.controller(0),
        DmaPool::new(PagePolicy::Small),
        ControllerOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("CSTS.RDY = 1"), "{e}");
}

mod device_answers {
    //! The device answers with arbitrary command ids and statuses: the queue pair never panics,
    //! reports what it cannot match, and in the end every command it accepted completes exactly
    //! once (by the device, or failed by the timeout → abort → reset path).
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[derive(Clone, Debug)]
    enum Act {
        Submit(u8),
        Poll,
        CorruptHeadCid(u16),
        FailNext(u8, u8, bool),
        Drop1,
    }

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            4 => (1u8..16).prop_map(Act::Submit),
            3 => Just(Act::Poll),
            1 => any::<u16>().prop_map(Act::CorruptHeadCid),
            1 => (0u8..4, any::<u8>(), any::<bool>()).prop_map(|(t, c, d)| Act::FailNext(t, c, d)),
            1 => Just(Act::Drop1),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn every_accepted_command_completes_once(acts in proptest::collection::vec(act(), 1..40)) {
            let r = rig();
            let mut qp = r.ctrl.io_queue_pair(QueueOptions { size: 16, timeout_ms: 20 }).unwrap();
            let buf = r.pool.alloc(8192, 4096).unwrap();
            let faults = r.sim.controller(0);
            let mut pending: HashSet<u64> = HashSet::new();
            let mut tag = 0u64;
            let mut bad = 0u32;
            let take = |qp: &mut QueuePair, pending: &mut HashSet<u64>, bad: &mut u32| {
                let mut got = Vec::new();
                if qp.poll(64, |c| got.push(c.tag)).is_err() {
                    *bad += 1;
                }
                for t in got {
                    assert!(pending.remove(&t), "tag {t} completed twice or never submitted");
                }
            };
            for a in acts {
                match a {
                    Act::Submit(blocks) => {
                        tag += 1;
                        match qp.read(&r.ns, tag % 1024, blocks as u32, &buf, 0, tag) {
                            Ok(()) => { pending.insert(tag); }
                            Err(SubmitError::QueueFull) | Err(SubmitError::NotReady { .. }) => {}
                            Err(e) => panic!("unexpected refusal: {e}"),
                        }
                        qp.ring();
                    }
                    Act::Poll => take(&mut qp, &mut pending, &mut bad),
                    Act::CorruptHeadCid(cid) => { qp.rings.corrupt_head_cid_for_test(cid); }
                    Act::FailNext(sct, sc, dnr) => {
                        faults.faults().fail_next(1, Status::new(sct, sc).with_dnr(dnr));
                    }
                    Act::Drop1 => { faults.faults().drop_commands(1); }
                }
            }
            faults.faults().clear();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !pending.is_empty() {
                take(&mut qp, &mut pending, &mut bad);
                r.ctrl.service();
                std::thread::sleep(Duration::from_micros(200));
                prop_assert!(Instant::now() < deadline, "{} commands never completed", pending.len());
            }
            prop_assert_eq!(qp.in_flight(), 0);
            // The queue still works.
            qp.read(&r.ns, 0, 8, &buf, 0, 1 << 40).unwrap();
            let c = wait(&mut qp, &r.ctrl, 1, 10);
            prop_assert!(c[0].outcome.is_success());
        }
    }
}

#[test]
fn chained_prp_lists_on_a_controller_without_mdts() {
    // Arrange: no transfer limit, so a command is bounded only by NLB (65536 blocks, 32 MiB at
    // 512 B) and its PRP lists chain: 4 MiB needs 3 list pages; 34 MiB goes as 32 MiB (17 list
    // pages, past the 16 kept on the stack) plus 2 MiB.
    let r = rig_with(
        SimSubsystem::builder()
            .controllers(1)
            .mdts(0)
            .namespace(NsConfig::ram(1, 40 << 20)),
    );
    assert_eq!(r.ctrl.info().mdts_bytes, u64::MAX);
    let mut qp = r.ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    for (i, len) in [4usize << 20, 34 << 20].into_iter().enumerate() {
        let wbuf = r.pool.alloc(len + 512, 4096).unwrap();
        let rbuf = r.pool.alloc(len + 512, 4096).unwrap();
        pattern(&wbuf, 40 + i as u64);
        // Act: a write and a read with an unaligned first page.
        let blocks = (len / 512) as u32;
        qp.write(&r.ns, 0, blocks, &wbuf, 512, 1).unwrap();
        assert!(wait(&mut qp, &r.ctrl, 1, 10)[0].outcome.is_success());
        qp.read(&r.ns, 0, blocks, &rbuf, 512, 2).unwrap();
        assert!(wait(&mut qp, &r.ctrl, 1, 10)[0].outcome.is_success());
        // Assert: the data made the round trip.
        assert!(wbuf.equal(512, &rbuf, 512, len), "{len} bytes");
    }
    assert_eq!(
        r.sim.controller(0).stats().io(NvmOpcode::WRITE.0),
        1 + 2,
        "split only at the NLB limit"
    );
}

/// A context wider than a register, as the multipath channel uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ctx {
    id: u64,
    lba: u64,
    note: u32,
}

#[test]
fn a_context_comes_back_whole_through_splits_errors_and_removal() {
    let r = rig();
    let mut qp = r
        .ctrl
        .io_queue_pair_with::<Ctx>(QueueOptions::default())
        .unwrap();
    let mdts = 128 << 10;
    let buf = r.pool.alloc(mdts * 2 + 4096, 4096).unwrap();
    let ctx = |id: u64, lba: u64| Ctx {
        id,
        lba,
        note: 0xfeed_0000 | id as u32,
    };
    // Written in place, written by value, and split above MDTS (three commands, one completion).
    qp.write_with(&r.ns, 0, 8, &buf, 0, |c| *c = ctx(1, 0))
        .unwrap();
    qp.read(&r.ns, 0, 8, &buf, 0, ctx(2, 0)).unwrap();
    let split_blocks = ((mdts * 2 + 4096) / 512) as u32;
    qp.read_with(&r.ns, 64, split_blocks, &buf, 0, |c| *c = ctx(3, 64))
        .unwrap();
    // An error completion keeps its context too.
    r.sim.controller(0).faults().fail_matching(
        crate::sim::FaultMatch::io().opcode(NvmOpcode::FLUSH.0),
        Status::new(sct::GENERIC, generic::INTERNAL_ERROR).with_dnr(true),
        Some(1),
    );
    qp.flush(1, ctx(4, 0)).unwrap();
    let mut got = wait(&mut qp, &r.ctrl, 4, 5);
    got.sort_by_key(|c| c.tag.id);
    let tags: Vec<Ctx> = got.iter().map(|c| c.tag).collect();
    assert_eq!(tags, vec![ctx(1, 0), ctx(2, 0), ctx(3, 64), ctx(4, 0)]);
    assert!(got[..3].iter().all(|c| c.outcome.is_success()));
    assert!(!got[3].outcome.is_success(), "{:?}", got[3].outcome);
    assert_eq!(r.sim.controller(0).stats().io(NvmOpcode::READ.0), 1 + 3);
    // A command that does not fit is refused and its `init` never runs.
    let mut called = false;
    let e = qp.read_with(&r.ns, 0, 0, &buf, 0, |_| called = true);
    assert!(matches!(e, Err(SubmitError::BadBuffer { .. })), "{e:?}");
    assert!(!called);
    // Commands failed by a removal come back with their contexts.
    r.sim.controller(0).faults().drop_commands(5);
    for i in 10..15 {
        qp.read(&r.ns, i, 8, &buf, 0, ctx(i, i)).unwrap();
    }
    qp.ring();
    r.sim.controller(0).faults().surprise_remove();
    let mut got = wait(&mut qp, &r.ctrl, 5, 5);
    got.sort_by_key(|c| c.tag.id);
    assert!(got.iter().all(|c| c.outcome == Outcome::Removed));
    let tags: Vec<Ctx> = got.iter().map(|c| c.tag).collect();
    assert_eq!(tags, (10..15).map(|i| ctx(i, i)).collect::<Vec<_>>());
}
