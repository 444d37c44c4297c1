//! Multipath failover on the simulated dual-controller subsystem: a verify workload on two cores
//! while one path gets every fault kind in turn, then a seeded stress of mixed failures. Every
//! command must complete exactly once, successfully, with the data it should have.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashSet;
use vfnvme::sim::{FaultMatch, NsConfig, SimSubsystem};
use vfnvme::spec::log::AnaState;
use vfnvme::spec::status::{path, sct};
use vfnvme::spec::{NvmOpcode, Status};
use vfnvme::{Controller, ControllerOptions, QueueOptions};
use vfnvme_hugepages::{DmaPool, PagePolicy};
use vfnvme_mpath::channel::RefuseReason;
use vfnvme_mpath::control::ControlThread;
use vfnvme_mpath::{
    Channel, ChannelOptions, IoDesc, IoKind, MpNamespace, MpathControl, Policy, ReconnectOptions,
    Subsystem,
};
use vfnvme_mpath::{NotTaken, Run};
use vfnvme_tests::{check, stamp, verify_worker, Tally, IO_BLOCKS, IO_BYTES};

struct World {
    sim: SimSubsystem,
    pool: Arc<DmaPool>,
    ns: Arc<MpNamespace>,
}

fn world(cqt_ms: u16) -> World {
    let sim = SimSubsystem::builder()
        .controllers(2)
        .namespace(NsConfig::ram(1, 16 << 20))
        .cqt_ms(cqt_ms)
        .crdt([1, 1, 1])
        .build();
    let pool = DmaPool::new(PagePolicy::Small);
    let ctrls: Vec<Controller> = (0..2)
        .map(|i| {
            Controller::open(
                sim.controller(i),
                pool.clone(),
                ControllerOptions::default(),
            )
            .unwrap()
        })
        .collect();
    let subs = Subsystem::group(ctrls).unwrap();
    assert_eq!(subs.len(), 1, "one subsystem");
    assert_eq!(subs[0].ctrls.len(), 2);
    let ns = subs[0].namespace(1).unwrap();
    World { sim, pool, ns }
}

fn chan_opts() -> ChannelOptions {
    ChannelOptions {
        queue: QueueOptions {
            size: 64,
            timeout_ms: 100,
        },
        policy: Policy::RoundRobin { min_ios: 1 },
        slots: 64,
        fast_fail_ms: 20_000,
        default_cqt_ms: 5,
        // The stress run injects hundreds of retryable errors; one command may draw many of
        // them (a read resent at once can take every failure queued on both paths).
        retries: 100,
        max_failovers: u16::MAX,
    }
}

fn run_with_faults(w: &World, inject: impl FnOnce(&World)) -> Arc<Tally> {
    let control = MpathControl::new(
        std::slice::from_ref(&w.ns),
        ReconnectOptions {
            reconnect_delay: Duration::from_millis(20),
            ctrl_loss_timeout: Duration::from_secs(30),
            interval: Duration::from_millis(1),
        },
    )
    .spawn();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers: Vec<_> = (0..2)
        .map(|core| {
            let (ns, pool, stop, tally) =
                (w.ns.clone(), w.pool.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let ch = Channel::new(&ns, chan_opts()).unwrap();
                verify_worker(core, ch, &pool, 16, core * 4096, &stop, &tally)
            })
        })
        .collect();
    inject(w);
    stop.store(true, Ordering::Relaxed);
    for h in workers {
        h.join().expect("worker failed");
    }
    drop(control);
    let t = &tally;
    assert_eq!(
        t.submitted.load(Ordering::Relaxed),
        t.completed.load(Ordering::Relaxed)
    );
    assert!(t.verified.load(Ordering::Relaxed) > 0);
    assert!(
        t.registered.load(Ordering::Relaxed) > 0,
        "no round on registered buffers"
    );
    tally
}

/// A control plane that checks the paths every millisecond (default reconnect timing).
/// A channel of [`chan_opts`] with active-passive on path 0 (failback on).
fn active_passive_on_0(w: &World) -> Channel {
    Channel::new(
        &w.ns,
        ChannelOptions {
            policy: Policy::ActivePassive {
                preferred: 0,
                failback: true,
            },
            ..chan_opts()
        },
    )
    .unwrap()
}

fn fast_control(w: &World) -> ControlThread {
    MpathControl::new(
        std::slice::from_ref(&w.ns),
        ReconnectOptions {
            interval: Duration::from_millis(1),
            ..ReconnectOptions::default()
        },
    )
    .spawn()
}

fn pause(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Waits until the controller is live again (after a reset by the control plane).
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        pause(5);
    }
}

#[test]
fn every_fault_kind_in_turn_loses_nothing() {
    let w = world(20);
    let tally = run_with_faults(&w, |w| {
        let c0 = w.sim.controller(0);
        pause(100);
        // 1. Path status on I/O.
        c0.faults().fail_matching(
            FaultMatch::io(),
            Status::new(sct::PATH, path::INTERNAL_PATH_ERROR),
            Some(30),
        );
        pause(150);
        c0.faults().clear();
        // 2. Controller fatal status: reset and recovery.
        c0.faults().set_cfs();
        pause(200);
        until("path 0 back after CFS", || {
            w.ns.path(0).ctrl.state() == vfnvme::CtrlState::Live
        });
        // 3. Dropped commands: timeout, abort, reset.
        c0.faults().drop_commands(6);
        pause(600);
        until("path 0 back after timeouts", || {
            w.ns.path(0).ctrl.state() == vfnvme::CtrlState::Live
        });
        // 4. ANA inaccessible, then optimized again.
        c0.faults().set_ana_state(1, AnaState::INACCESSIBLE);
        pause(150);
        c0.faults().set_ana_state(1, AnaState::OPTIMIZED);
        pause(100);
        // 5. ANA transition.
        c0.faults().set_ana_state(1, AnaState::CHANGE);
        pause(150);
        c0.faults().set_ana_state(1, AnaState::OPTIMIZED);
        pause(100);
        // 6. Persistent loss, then back.
        c0.faults().set_ana_state(1, AnaState::PERSISTENT_LOSS);
        pause(150);
        c0.faults().set_ana_state(1, AnaState::OPTIMIZED);
        pause(100);
        // 7. Surprise removal; then the port comes back and is re-attached.
        c0.faults().surprise_remove();
        until("path 0 gone", || {
            w.ns.path(0).status() == vfnvme_mpath::PathStatus::Gone
        });
        pause(100);
        c0.faults().restore();
        let ctrl =
            Controller::open(c0.clone(), w.pool.clone(), ControllerOptions::default()).unwrap();
        w.ns.reattach(0, ctrl).unwrap();
        pause(200);
    });
    assert!(
        tally.failovers.load(Ordering::Relaxed) > 0,
        "faults caused failovers"
    );
    // The re-attached path carries I/O again.
    let before = w.sim.controller(0).stats().io(NvmOpcode::READ.0);
    run_with_faults(&w, |_| pause(100));
    assert!(
        w.sim.controller(0).stats().io(NvmOpcode::READ.0) > before,
        "path 0 carries I/O after re-attach"
    );
}

#[test]
fn seeded_stress_of_mixed_failures() {
    let w = world(2);
    let tally = run_with_faults(&w, |w| {
        let mut seed = 0x5eed_1234_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut injected = 0;
        while injected < 1000 {
            let c = w.sim.controller((next() % 2) as usize);
            match next() % 5 {
                0 | 1 => {
                    c.faults().fail_next(
                        1,
                        Status::new(
                            sct::PATH,
                            [path::INTERNAL_PATH_ERROR, path::ANA_TRANSITION]
                                [(next() % 2) as usize],
                        ),
                    );
                }
                2 => {
                    c.faults().fail_next(1, Status::new(0, 0x82).with_crd(0));
                }
                3 => {
                    c.faults().fail_matching(
                        FaultMatch::io().opcode(NvmOpcode::WRITE.0),
                        Status::new(sct::PATH, path::CONTROLLER_PATHING_ERROR),
                        Some(1),
                    );
                }
                _ => {
                    c.faults().fail_matching(
                        FaultMatch::io().opcode(NvmOpcode::READ.0),
                        Status::new(sct::PATH, path::HOST_PATHING_ERROR).with_dnr(true),
                        Some(1),
                    );
                }
            }
            injected += 1;
            if injected % 50 == 0 {
                pause(5);
                // Paced by the workers too: on a loaded machine they can fall hundreds of
                // failures behind, and a command left alone at the end of a phase then draws
                // every one still queued on its path (past its retry budget). A bounded backlog
                // keeps each failure landing on commands in flight (the read- and write-only
                // rules wait for their phase, hence the deadline).
                let deadline = Instant::now() + Duration::from_secs(10);
                while injected - fired(w) > 100 && Instant::now() < deadline {
                    pause(1);
                }
            }
        }
        // Let every injected failure land on a command (the read- and write-only rules wait
        // for their phase), however slowly the workers run on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        while fired(w) < 1000 && Instant::now() < deadline {
            pause(5);
        }
        w.sim.controller(0).faults().clear();
        w.sim.controller(1).faults().clear();
    });
    // Assert: all 1000 failures fired, and each one was absorbed by a failover or a same-path
    // retry (none completed a command with an error: the workers check that). A command that
    // times out on a loaded machine adds failovers of its own, hence "at least".
    let hit = tally.failovers.load(Ordering::Relaxed) + tally.retries.load(Ordering::Relaxed);
    eprintln!("stress: {hit} failovers and retries");
    assert_eq!(fired(&w), 1000, "every injected failure hit a command");
    assert!(hit >= 1000, "a failover or retry per failure ({hit})");
}

/// Injected failures that have hit a command, over both controllers.
fn fired(w: &World) -> u64 {
    (0..2)
        .map(|i| w.sim.controller(i).stats().injected_failures)
        .sum()
}

/// A registered-buffer read (`write` false) or write of `IO_BLOCKS` blocks at `lba`.
fn rw_kind(write: bool, lba: u64) -> IoKind {
    if write {
        IoKind::Write {
            lba,
            blocks: IO_BLOCKS,
        }
    } else {
        IoKind::Read {
            lba,
            blocks: IO_BLOCKS,
        }
    }
}

/// The raw NVMe Read (`write` false) or Write of `IO_BLOCKS` blocks at `lba`, naming nsid 1
/// (rewritten per path) and the LBA in CDW10-11.
fn raw_rw(write: bool, lba: u64) -> vfnvme::PassthruCmd {
    let opcode = if write {
        NvmOpcode::WRITE
    } else {
        NvmOpcode::READ
    };
    vfnvme::PassthruCmd {
        opcode: opcode.0,
        nsid: 1,
        cdw10_15: [lba as u32, (lba >> 32) as u32, IO_BLOCKS - 1, 0, 0, 0],
        ..Default::default()
    }
}

/// How [`writes_wait_out_cqt_and_reads_go_at_once`] submits its write and its read.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// Descriptors that own their buffers (`Channel::submit`).
    Owned,
    /// Reads and writes on registered buffers (`submit_fixed`, no slot until they fail).
    Registered,
    /// Raw NVMe Write and Read on registered buffers, the read marked idempotent.
    Passthru,
}

#[test]
fn writes_wait_out_cqt_and_reads_go_at_once() {
    for form in [Form::Owned, Form::Registered, Form::Passthru] {
        write_waits_out_cqt_read_goes_at_once(form);
    }
}

fn write_waits_out_cqt_read_goes_at_once(form: Form) {
    let w = world(400);
    let _control =
        MpathControl::new(std::slice::from_ref(&w.ns), ReconnectOptions::default()).spawn();
    let mut ch = Channel::new(
        &w.ns,
        ChannelOptions {
            policy: Policy::ActivePassive {
                preferred: 0,
                failback: false,
            },
            ..chan_opts()
        },
    )
    .unwrap();
    let c0 = w.sim.controller(0);
    let c1 = w.sim.controller(1);
    c0.faults().fail_matching(
        FaultMatch::io(),
        Status::new(sct::PATH, path::INTERNAL_PATH_ERROR),
        Some(2),
    );
    let wbuf = w.pool.alloc(IO_BYTES, 4096).unwrap();
    stamp(&wbuf, 0, 1);
    let rbuf = w.pool.alloc(IO_BYTES, 4096).unwrap();
    let (w1, r1) = (
        c1.stats().io(NvmOpcode::WRITE.0),
        c1.stats().io(NvmOpcode::READ.0),
    );
    let start = Instant::now();
    match form {
        Form::Owned => {
            ch.submit(IoDesc::write(64, IO_BLOCKS, wbuf, 1)).unwrap();
            ch.submit(IoDesc::read(128, IO_BLOCKS, rbuf, 2)).unwrap();
        }
        Form::Registered | Form::Passthru => {
            ch.register_buffers(vec![wbuf, rbuf].into()).unwrap();
            let rw = |write: bool, lba: u64| match form {
                Form::Registered => rw_kind(write, lba),
                _ => IoKind::Passthru {
                    cmd: raw_rw(write, lba),
                    idempotent: !write,
                },
            };
            ch.submit_fixed(rw(true, 64), 0, 1).unwrap();
            ch.submit_fixed(rw(false, 128), 1, 2).unwrap();
        }
    }
    let mut done = Vec::new();
    // Both fail on path 0 at once (inline sim); the read is resent on path 1 within a few polls.
    for _ in 0..100 {
        ch.poll(8, |c| done.push((c.tag, start.elapsed(), c.result.is_ok())));
    }
    assert_eq!(
        c1.stats().io(NvmOpcode::READ.0),
        r1 + 1,
        "{form:?}: read resent at once"
    );
    if start.elapsed() < Duration::from_millis(400) {
        assert_eq!(
            c1.stats().io(NvmOpcode::WRITE.0),
            w1,
            "{form:?}: write held back during CQT"
        );
    }
    while done.len() < 2 {
        ch.poll(8, |c| done.push((c.tag, start.elapsed(), c.result.is_ok())));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    assert!(
        done.iter().all(|d| d.2),
        "{form:?}: both succeeded on path 1"
    );
    let write_done = done.iter().find(|d| d.0 == 1).unwrap().1;
    assert!(
        write_done >= Duration::from_millis(400),
        "{form:?}: write resent only after CQT ({write_done:?})"
    );
    assert_eq!(c1.stats().io(NvmOpcode::WRITE.0), w1 + 1, "{form:?}");
    assert!(ch.stats().quiesce_waits >= 1, "{form:?}");
}

#[test]
fn no_path_completes_with_a_clear_error() {
    let w = world(1);
    let mut ch = Channel::new(
        &w.ns,
        ChannelOptions {
            fast_fail_ms: 50,
            ..chan_opts()
        },
    )
    .unwrap();
    w.sim.controller(0).faults().surprise_remove();
    w.sim.controller(1).faults().surprise_remove();
    for p in w.ns.paths() {
        p.ctrl.service();
    }
    w.ns.publish();
    let buf = w.pool.alloc(IO_BYTES, 4096).unwrap();
    let r = ch.submit(IoDesc::read(0, IO_BLOCKS, buf, 1)).unwrap_err();
    assert_eq!(r.reason, vfnvme_mpath::channel::RefuseReason::NoPath);
    assert!(r.desc.data.is_some(), "buffer handed back");
}

#[test]
fn mismatched_namespaces_are_not_merged() {
    let a = SimSubsystem::builder()
        .controllers(1)
        .namespace(NsConfig::ram(1, 1 << 20))
        .build();
    let b = SimSubsystem::builder()
        .controllers(1)
        .namespace(NsConfig::ram(1, 2 << 20))
        .build();
    let pool = DmaPool::new(PagePolicy::Small);
    let ca = Controller::open(a.controller(0), pool.clone(), ControllerOptions::default()).unwrap();
    let cb = Controller::open(b.controller(0), pool, ControllerOptions::default()).unwrap();
    // Two different simulated subsystems: different SUBNQNs, two groups.
    let subs = Subsystem::group(vec![ca.clone(), cb.clone()]).unwrap();
    assert_eq!(subs.len(), 2);
    // Forcing them into one subsystem: the namespace differs, so no merge.
    let forced = Subsystem {
        subnqn: "forced".into(),
        ctrls: vec![ca, cb],
    };
    let e = forced.namespace(1).err().expect("mismatch must be refused");
    assert!(e.to_string().contains("refusing to merge"), "{e}");
    assert!(forced.namespace(7).is_err());
}

#[test]
fn inaccessible_everywhere_holds_io_up_to_anatt_then_resumes() {
    // Arrange: both paths' ANA group goes inaccessible; the fast-fail timeout is short, but the
    // controllers advertise ANATT = 10 s, so I/O that hits the inaccessible group is held.
    let w = world(1);
    let _cp = fast_control(&w);
    let mut ch = Channel::new(
        &w.ns,
        ChannelOptions {
            fast_fail_ms: 20,
            ..chan_opts()
        },
    )
    .unwrap();
    for i in 0..2 {
        w.sim
            .controller(i)
            .faults()
            .set_ana_state(1, AnaState::INACCESSIBLE);
    }
    let buf = w.pool.alloc(IO_BYTES, 4096).unwrap();
    stamp(&buf, 256, 7);
    // Act: a write while everything is inaccessible; the group comes back after 200 ms.
    ch.submit(IoDesc::write(256, IO_BLOCKS, buf, 1)).unwrap();
    let start = Instant::now();
    let mut done = None;
    while done.is_none() {
        ch.poll(8, |c| done = Some(c.result.clone()));
        if start.elapsed() > Duration::from_millis(200) {
            w.sim
                .controller(1)
                .faults()
                .set_ana_state(1, AnaState::OPTIMIZED);
        }
        assert!(start.elapsed() < Duration::from_secs(10), "held past ANATT");
    }
    // Assert: held (not failed after the 20 ms fast-fail), then completed on the returned path.
    assert_eq!(done.unwrap(), Ok(0));
    assert!(start.elapsed() >= Duration::from_millis(200));
    let rb = w.pool.alloc(IO_BYTES, 4096).unwrap();
    ch.submit(IoDesc::read(256, IO_BLOCKS, rb, 2)).unwrap();
    let mut back = None;
    while back.is_none() {
        ch.poll(8, |c| back = c.data.take());
    }
    check(&back.unwrap(), 256, 7).unwrap();
}

#[test]
fn registered_buffers_fail_over_too() {
    // Arrange: two paths; path 0 answers every I/O with a path error for a while.
    let w = world(1);
    let _cp = MpathControl::new(std::slice::from_ref(&w.ns), ReconnectOptions::default()).spawn();
    let mut ch = Channel::new(&w.ns, chan_opts()).unwrap();
    let bufs: Arc<[vfnvme_hugepages::DmaBuf]> = (0..8)
        .map(|_| w.pool.alloc(IO_BYTES, 4096).unwrap())
        .collect::<Vec<_>>()
        .into();
    ch.register_buffers(bufs.clone()).unwrap();
    assert!(matches!(
        ch.submit_fixed(
            IoKind::Read {
                lba: 0,
                blocks: IO_BLOCKS
            },
            8,
            0
        ),
        Err(RefuseReason::Invalid(_))
    ));
    assert!(matches!(
        ch.submit_rw(true, 0, IO_BLOCKS, 8, 0),
        Err(RefuseReason::Invalid(_))
    ));
    assert_eq!(ch.outstanding(), 0, "a refused command is not held");
    w.sim.controller(0).faults().fail_matching(
        FaultMatch::io(),
        Status::new(sct::PATH, path::INTERNAL_PATH_ERROR),
        Some(64),
    );
    let run = |ch: &mut Channel, write: bool, gen: u64| {
        for i in 0..8u32 {
            let lba = 1024 + i as u64 * IO_BLOCKS as u64;
            if write {
                stamp(&bufs[i as usize], lba, gen);
            } else {
                bufs[i as usize].fill(0, IO_BYTES, 0);
            }
            // Half through each entry point: both must fail over alike.
            if i % 2 == 0 {
                ch.submit_fixed(rw_kind(write, lba), i, 100 + i as u64)
                    .unwrap();
            } else {
                ch.submit_rw(write, lba, IO_BLOCKS, i, 100 + i as u64)
                    .unwrap();
            }
        }
        let mut seen = HashSet::new();
        let start = Instant::now();
        while seen.len() < 8 {
            ch.poll(16, |c| {
                assert_eq!(c.result, Ok(0), "tag {}", c.tag);
                assert!(c.data.is_none());
                assert_eq!(c.buf_index, Some((c.tag - 100) as u32));
                assert!(seen.insert(c.tag), "completed twice");
            });
            assert!(start.elapsed() < Duration::from_secs(10));
        }
    };
    // Act: writes then reads through registered buffers while path 0 fails.
    run(&mut ch, true, 3);
    // Registering again while nothing is outstanding is allowed; while busy it is refused.
    ch.register_buffers(bufs.clone()).unwrap();
    run(&mut ch, false, 3);
    // Assert: the data is what was written, and the failures were failed over.
    for i in 0..8 {
        check(&bufs[i], 1024 + i as u64 * IO_BLOCKS as u64, 3).unwrap();
    }
    assert!(ch.stats().failovers > 0);
    ch.submit_fixed(
        IoKind::Read {
            lba: 0,
            blocks: IO_BLOCKS,
        },
        0,
        1,
    )
    .unwrap();
    assert!(ch.register_buffers(bufs.clone()).is_err(), "in use");
}

#[test]
fn completions_with_errors_or_unclaimed_buffers_are_delivered_and_released() {
    // Arrange: two paths; the next I/O on each fails with a DNR error (complete, not retried).
    let w = world(1);
    let mut ch = Channel::new(&w.ns, chan_opts()).unwrap();
    let bufs: Arc<[vfnvme_hugepages::DmaBuf]> = vec![w.pool.alloc(IO_BYTES, 4096).unwrap()].into();
    ch.register_buffers(bufs).unwrap();
    let dnr =
        Status::new(sct::GENERIC, vfnvme::spec::status::generic::INTERNAL_ERROR).with_dnr(true);
    for i in 0..2 {
        w.sim
            .controller(i)
            .faults()
            .fail_matching(FaultMatch::io(), dnr, Some(1));
    }
    let read = IoKind::Read {
        lba: 8,
        blocks: IO_BLOCKS,
    };
    // Act: one registered-buffer read and one owned read, both failing; the callback claims
    // nothing, so the channel drops the owned buffer itself.
    ch.submit_fixed(read, 0, 10).unwrap();
    ch.submit(IoDesc::read(
        8,
        IO_BLOCKS,
        w.pool.alloc(IO_BYTES, 4096).unwrap(),
        11,
    ))
    .unwrap();
    let mut seen = Vec::new();
    let start = Instant::now();
    while seen.len() < 2 {
        ch.poll(8, |c| {
            seen.push((c.tag, c.result.clone(), c.buf_index, c.data.is_some()))
        });
        assert!(start.elapsed() < Duration::from_secs(10), "never completed");
    }
    seen.sort_by_key(|s| s.0);
    // Assert: both completed once with the device's status, with their buffer identities.
    for (tag, result, buf_index, has_data) in &seen {
        let st = match result {
            Err(vfnvme_mpath::IoError::Status { status, .. }) => *status,
            other => panic!("tag {tag}: expected a device status, got {other:?}"),
        };
        assert_eq!(st.sc(), vfnvme::spec::status::generic::INTERNAL_ERROR);
        assert_eq!(*buf_index, (*tag == 10).then_some(0));
        assert_eq!(*has_data, *tag == 11);
    }
    assert_eq!(ch.outstanding(), 0);
    assert_eq!(ch.stats().completed, 2);
    // The slot and the registered buffer are free again: the same submission now succeeds.
    ch.submit_fixed(read, 0, 12).unwrap();
    let mut ok = None;
    while ok.is_none() {
        ch.poll(8, |c| ok = Some((c.tag, c.result.clone())));
    }
    assert_eq!(ok, Some((12, Ok(0))));
}

#[test]
fn a_command_that_keeps_failing_over_gives_up_after_the_fast_fail_time() {
    // Arrange: two paths that answer every I/O with a path error, and a control plane that
    // brings each path back at once (its ANA state never changes), so a read bounces between
    // them; fast-fail is 100 ms, and no failover count cap.
    let w = world(1);
    let _cp = fast_control(&w);
    let mut ch = Channel::new(
        &w.ns,
        ChannelOptions {
            fast_fail_ms: 100,
            ..chan_opts()
        },
    )
    .unwrap();
    for i in 0..2 {
        w.sim.controller(i).faults().fail_matching(
            FaultMatch::io(),
            Status::new(sct::PATH, path::INTERNAL_PATH_ERROR),
            None,
        );
    }
    let buf = w.pool.alloc(IO_BYTES, 4096).unwrap();
    // Act
    let start = Instant::now();
    ch.submit(IoDesc::read(0, IO_BLOCKS, buf, 7)).unwrap();
    let mut done = None;
    while done.is_none() {
        ch.poll(8, |c| {
            done = Some((c.result.clone(), c.data.take().is_some()))
        });
        assert!(start.elapsed() < Duration::from_secs(20), "never gave up");
    }
    // Assert: it failed over more than once, gave up after the 100 ms budget (not before), and
    // its buffer came back.
    let (result, buffer_back) = done.unwrap();
    match result {
        Err(vfnvme_mpath::IoError::TooManyFailovers {
            failovers,
            failing_ms,
            ..
        }) => {
            assert!(failovers > 1, "{failovers} failovers");
            assert!(failing_ms >= 100, "gave up after {failing_ms} ms");
        }
        // Under load the control plane can be slower to bring the paths back than the 100 ms
        // budget: then the read waited for a path on the ring, and its fast-fail ended it.
        Err(vfnvme_mpath::IoError::NoPath) => assert!(ch.stats().failovers >= 1),
        other => panic!("expected TooManyFailovers (or NoPath), got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert!(buffer_back);
    assert_eq!(ch.outstanding(), 0);
}

#[test]
fn registered_buffers_backpressure_and_passthrough() {
    // Arrange: a channel with two slots and three registered buffers.
    let w = world(1);
    let mut ch = Channel::new(
        &w.ns,
        ChannelOptions {
            slots: 2,
            ..chan_opts()
        },
    )
    .unwrap();
    let bufs: Arc<[vfnvme_hugepages::DmaBuf]> = (0..3)
        .map(|_| w.pool.alloc(IO_BYTES, 4096).unwrap())
        .collect::<Vec<_>>()
        .into();
    ch.register_buffers(bufs.clone()).unwrap();
    let wait_all = |ch: &mut Channel, n: usize| {
        let mut got = Vec::new();
        let start = Instant::now();
        while got.len() < n {
            ch.poll(8, |c| got.push((c.tag, c.result.clone(), c.buf_index)));
            assert!(start.elapsed() < Duration::from_secs(10), "never completed");
        }
        got.sort_by_key(|g| g.0);
        got
    };
    let write = |lba| rw_kind(true, lba);
    // Act 1: two writes fill the channel; a third is refused with Full, and goes in once they
    // have completed.
    for i in 0..3u64 {
        stamp(&bufs[i as usize], 512 + i * IO_BLOCKS as u64, 9);
    }
    ch.submit_fixed(write(512), 0, 1).unwrap();
    ch.submit_fixed(write(512 + IO_BLOCKS as u64), 1, 2)
        .unwrap();
    assert_eq!(
        ch.submit_fixed(write(512 + 2 * IO_BLOCKS as u64), 2, 3),
        Err(RefuseReason::Full)
    );
    assert_eq!(
        ch.submit_rw(true, 512 + 2 * IO_BLOCKS as u64, IO_BLOCKS, 2, 3),
        Err(RefuseReason::Full)
    );
    assert_eq!(
        wait_all(&mut ch, 2),
        vec![(1, Ok(0), Some(0)), (2, Ok(0), Some(1))]
    );
    ch.submit_fixed(write(512 + 2 * IO_BLOCKS as u64), 2, 3)
        .unwrap();
    assert_eq!(wait_all(&mut ch, 1), vec![(3, Ok(0), Some(2))]);
    // Act 2: passthrough reads (raw NVMe Read, opcode 02h) into the registered buffers, the
    // command naming nsid 1 (rewritten per path) and the LBA in CDW10-11.
    for i in 0..2u64 {
        bufs[i as usize].fill(0, IO_BYTES, 0);
        let lba = 512 + (i + 1) * IO_BLOCKS as u64;
        ch.submit_fixed(
            IoKind::Passthru {
                cmd: raw_rw(false, lba),
                idempotent: true,
            },
            i as u32,
            10 + i,
        )
        .unwrap();
    }
    // Assert: both completed on their buffers with the data the writes stored there.
    assert_eq!(
        wait_all(&mut ch, 2),
        vec![(10, Ok(0), Some(0)), (11, Ok(0), Some(1))]
    );
    for i in 0..2u64 {
        check(&bufs[i as usize], 512 + (i + 1) * IO_BLOCKS as u64, 9).unwrap();
    }
    assert_eq!(ch.outstanding(), 0);
}

/// Eight registered-buffer reads submitted back to back, then completed (each must succeed).
/// Returns how many reached each controller.
fn burst(w: &World, ch: &mut Channel) -> [u64; 2] {
    let reads = |i: usize| w.sim.controller(i).stats().io(NvmOpcode::READ.0);
    let before = [reads(0), reads(1)];
    // A channel takes up a published path change at its next poll, as an application's loop
    // would do between one burst and the next.
    assert_eq!(ch.poll(8, |_| panic!("nothing is outstanding")), 0);
    // The first four one by one, the last four through a Submitter (where the policy has one
    // pick): both must choose the paths the policy says.
    let read = |i: u32| IoKind::Read {
        lba: u64::from(i * IO_BLOCKS),
        blocks: IO_BLOCKS,
    };
    for i in 0..4u32 {
        ch.submit_fixed(read(i), i, u64::from(i)).unwrap();
    }
    let mut next = 4u32;
    if let Some(mut s) = ch.submitter() {
        while next < 8
            && s.read(
                u64::from(next * IO_BLOCKS),
                IO_BLOCKS,
                next,
                u64::from(next),
            )
            .is_ok()
        {
            next += 1;
        }
    }
    for i in next..8 {
        ch.submit_fixed(read(i), i, u64::from(i)).unwrap();
    }
    let start = Instant::now();
    let mut done = 0;
    while done < 8 {
        ch.poll(8, |c| {
            assert_eq!(c.result, Ok(0), "read {}", c.tag);
            done += 1;
        });
        assert!(start.elapsed() < Duration::from_secs(10), "burst stuck");
    }
    [reads(0) - before[0], reads(1) - before[1]]
}

/// A channel, active-passive on path 0 (with failback), of four slots.
fn active_passive_with_4_slots(w: &World) -> Channel {
    Channel::new(
        &w.ns,
        ChannelOptions {
            slots: 4,
            policy: Policy::ActivePassive {
                preferred: 0,
                failback: true,
            },
            ..chan_opts()
        },
    )
    .unwrap()
}

#[test]
fn a_submitter_takes_commands_on_the_picked_path_and_hands_back_what_it_cannot() {
    // Arrange: active-passive on path 0, four slots, six registered buffers; path 0 answers its
    // next four I/Os with a path error.
    let w = world(1);
    let _cp = MpathControl::new(std::slice::from_ref(&w.ns), ReconnectOptions::default()).spawn();
    let mut ch = active_passive_with_4_slots(&w);
    let bufs = register(&w, &mut ch, 6);
    let lba = |i: u32| 2048 + u64::from(i * IO_BLOCKS);
    // Round-robin over two usable paths picks per command: no run there.
    let mut rr = Channel::new(
        &w.ns,
        ChannelOptions {
            policy: Policy::RoundRobin { min_ios: 1 },
            ..chan_opts()
        },
    )
    .unwrap();
    assert!(rr.submitter().is_none());
    drop(rr);
    w.sim.controller(0).faults().fail_matching(
        FaultMatch::io(),
        Status::new(sct::PATH, path::INTERNAL_PATH_ERROR),
        Some(4),
    );
    for i in 0..5u32 {
        stamp(&bufs[i as usize], lba(i), 7);
    }

    // Act 1: five writes in one run: it takes four (the channel's slots) and hands back the
    // fifth, which submit_fixed then refuses as Full.
    {
        let mut s = ch.submitter().expect("active-passive has one pick");
        for i in 0..4u32 {
            s.write(lba(i), IO_BLOCKS, i, 100 + u64::from(i)).unwrap();
        }
        assert_eq!(s.write(lba(4), IO_BLOCKS, 4, 104), Err(NotTaken));
    }
    let fifth = IoKind::Write {
        lba: lba(4),
        blocks: IO_BLOCKS,
    };
    assert_eq!(ch.submit_fixed(fifth, 4, 104), Err(RefuseReason::Full));

    // Assert 1: the four complete once each, successfully: path 0's errors failed over.
    let done = collect(&mut ch, 4, 16, Duration::from_secs(10), || {});
    let want: Vec<_> = (100..104).map(|t| (t, Ok(0))).collect();
    assert_eq!(done, want);
    assert!(ch.stats().failovers >= 4, "{:?}", ch.stats());

    // Act 2: an unregistered buffer index is handed back (submit_fixed says why), then the
    // four blocks are read back through a run.
    for b in bufs.iter().take(4) {
        b.fill(0, IO_BYTES, 0);
    }
    {
        let mut s = ch.submitter().expect("one pick");
        assert_eq!(s.read(lba(0), IO_BLOCKS, 6, 299), Err(NotTaken));
    }
    let unregistered = IoKind::Read {
        lba: lba(0),
        blocks: IO_BLOCKS,
    };
    assert!(matches!(
        ch.submit_fixed(unregistered, 6, 299),
        Err(RefuseReason::Invalid(_))
    ));
    {
        let mut s = ch.submitter().expect("one pick");
        for i in 0..4u32 {
            s.read(lba(i), IO_BLOCKS, i, 200 + u64::from(i)).unwrap();
        }
    }

    // Assert 2: what was written comes back, and nothing is left outstanding.
    let done = collect(&mut ch, 4, 16, Duration::from_secs(10), || {});
    let want: Vec<_> = (200..204).map(|t| (t, Ok(0))).collect();
    assert_eq!(done, want);
    for i in 0..4u32 {
        check(&bufs[i as usize], lba(i), 7).unwrap();
    }
    assert_eq!(ch.outstanding(), 0);
}

#[test]
fn a_round_robin_run_takes_turns_over_both_paths_within_the_channels_room() {
    // Arrange: round-robin, two commands per turn, over both paths; four slots, six buffers.
    let w = world(1);
    let mut ch = Channel::new(
        &w.ns,
        ChannelOptions {
            slots: 4,
            policy: Policy::RoundRobin { min_ios: 2 },
            ..chan_opts()
        },
    )
    .unwrap();
    let bufs = register(&w, &mut ch, 6);
    let lba = |i: u32| 4096 + u64::from(i * IO_BLOCKS);
    // A run on one path does not exist here, and active-passive has no turns to take.
    assert!(ch.submitter().is_none());
    let mut ap = active_passive_with_4_slots(&w);
    assert!(ap.turns().is_none());
    drop(ap);
    let writes = |c: usize| w.sim.controller(c).stats().io(NvmOpcode::WRITE.0);
    let (w0, w1) = (writes(0), writes(1));
    for i in 0..5u32 {
        stamp(&bufs[i as usize], lba(i), 9);
    }

    // Act 1: five writes in one run: it takes four (the channel's slots), two per path, and
    // hands back the fifth, which submit_fixed then refuses as Full; an unregistered buffer is
    // handed back too.
    {
        let mut t = ch.turns().expect("round-robin over two usable paths");
        assert_eq!(t.write(lba(0), IO_BLOCKS, 6, 99), Err(NotTaken));
        for i in 0..4u32 {
            t.write(lba(i), IO_BLOCKS, i, 100 + u64::from(i)).unwrap();
        }
        assert_eq!(t.write(lba(4), IO_BLOCKS, 4, 104), Err(NotTaken));
    }
    let fifth = IoKind::Write {
        lba: lba(4),
        blocks: IO_BLOCKS,
    };
    assert_eq!(ch.submit_fixed(fifth, 4, 104), Err(RefuseReason::Full));
    assert_eq!(ch.outstanding(), 4);

    // Assert 1: the four complete once each, two on each controller.
    let done = collect(&mut ch, 4, 16, Duration::from_secs(10), || {});
    let want: Vec<_> = (100..104).map(|t| (t, Ok(0))).collect();
    assert_eq!(done, want);
    assert_eq!((writes(0) - w0, writes(1) - w1), (2, 2));

    // Act 2: read the four back through two runs, the first taking one read (a run leaves
    // nothing to undo when it ends: the channel counts each command as the run takes it).
    for b in bufs.iter().take(4) {
        b.fill(0, IO_BYTES, 0);
    }
    ch.turns()
        .expect("turns")
        .read(lba(0), IO_BLOCKS, 0, 200)
        .unwrap();
    assert_eq!(ch.outstanding(), 1);
    {
        let mut t = ch.turns().expect("turns");
        for i in 1..4u32 {
            t.read(lba(i), IO_BLOCKS, i, 200 + u64::from(i)).unwrap();
        }
        assert_eq!(t.read(lba(4), IO_BLOCKS, 4, 204), Err(NotTaken));
    }

    // Assert 2: what was written comes back, and nothing is left outstanding.
    let done = collect(&mut ch, 4, 16, Duration::from_secs(10), || {});
    let want: Vec<_> = (200..204).map(|t| (t, Ok(0))).collect();
    assert_eq!(done, want);
    for i in 0..4u32 {
        check(&bufs[i as usize], lba(i), 9).unwrap();
    }
    assert_eq!(ch.outstanding(), 0);
}

#[test]
fn a_leaked_submitter_leaves_the_channel_counting_and_working() {
    // Arrange: active-passive on path 0, four slots, four registered buffers, a CQT of 50 ms, no
    // control plane (a path that failed stays failed).
    let w = world(50);
    let mut ch = active_passive_with_4_slots(&w);
    let bufs = register(&w, &mut ch, 4);
    let read = |i: u32| IoKind::Read {
        lba: u64::from(i * IO_BLOCKS),
        blocks: IO_BLOCKS,
    };

    // Act 1: a run takes two of the four, then is leaked, never dropped.
    let mut s = ch.submitter().expect("one path");
    s.read(0, IO_BLOCKS, 0, 10).unwrap();
    s.read(u64::from(IO_BLOCKS), IO_BLOCKS, 1, 11).unwrap();
    std::mem::forget(s);

    // Assert 1: the channel counted both and delivers them; all four slots fill again, in a
    // run and one by one, no more.
    assert_eq!(ch.outstanding(), 2);
    let done = collect(&mut ch, 2, 8, Duration::from_secs(10), || {});
    assert_eq!(done, vec![(10, Ok(0)), (11, Ok(0))]);
    {
        let mut s = ch.submitter().expect("one path");
        for i in 0..3u32 {
            s.read(u64::from(i * IO_BLOCKS), IO_BLOCKS, i, 20 + u64::from(i))
                .unwrap();
        }
    }
    ch.submit_fixed(read(3), 3, 23).unwrap();
    assert_eq!(ch.submit_fixed(read(0), 0, 24), Err(RefuseReason::Full));
    let done = collect(&mut ch, 4, 8, Duration::from_secs(10), || {});
    let want: Vec<_> = (20..24).map(|t| (t, Ok(0))).collect();
    assert_eq!(done, want);
    assert_eq!(ch.outstanding(), 0);

    // Act 2: a leaked run whose limit is smaller than the channel's room once it is gone: a
    // write fails over from path 0 and waits out CQT on the requeue ring (held, not in flight)
    // while a run on path 1 starts with room for three, and is leaked.
    w.sim.controller(0).faults().fail_matching(
        FaultMatch::io(),
        Status::new(sct::PATH, path::INTERNAL_PATH_ERROR),
        Some(1),
    );
    stamp(&bufs[0], 4096, 3);
    let write = IoKind::Write {
        lba: 4096,
        blocks: IO_BLOCKS,
    };
    ch.submit_fixed(write, 0, 30).unwrap();
    ch.poll(8, |c| panic!("nothing completes yet: {:?}", c.tag));
    assert_eq!(ch.outstanding(), 1);
    let s = ch.submitter().expect("path 1 is the one usable path");
    std::mem::forget(s);
    let done = collect(&mut ch, 1, 8, Duration::from_secs(10), || {});
    assert_eq!(done, vec![(30, Ok(0))]);

    // Assert 2: the channel is empty, and all four slots take a command again: the fourth
    // meets the leaked limit of three, which the channel lifts and sends it again. The fifth
    // is refused for the channel's own bound.
    assert_eq!(ch.outstanding(), 0);
    for i in 0..4u32 {
        ch.submit_fixed(read(i), i, 40 + u64::from(i))
            .unwrap_or_else(|e| panic!("read {i}: {e:?}"));
    }
    assert_eq!(ch.submit_fixed(read(0), 0, 44), Err(RefuseReason::Full));
    let done = collect(&mut ch, 4, 8, Duration::from_secs(10), || {});
    let want: Vec<_> = (40..44).map(|t| (t, Ok(0))).collect();
    assert_eq!(done, want);
    assert_eq!(ch.outstanding(), 0);
}

/// Sets path `i`'s ANA state and waits until the control plane has published it.
fn set_ana(w: &World, i: usize, state: AnaState, want: vfnvme_mpath::PathStatus) {
    w.sim.controller(i).faults().set_ana_state(1, state);
    until("the ANA change to be published", || {
        w.ns.path(i).status() == want
    });
}

#[test]
fn policies_pick_paths_as_documented_and_switch_at_run_time() {
    use vfnvme_mpath::PathStatus::{NonOptimized, Optimized};
    // Arrange: two paths, a control plane that follows ANA changes, eight registered buffers.
    let w = world(1);
    let _cp = fast_control(&w);
    let mut ch = Channel::new(
        &w.ns,
        ChannelOptions {
            policy: Policy::ActivePassive {
                preferred: 1,
                failback: true,
            },
            ..chan_opts()
        },
    )
    .unwrap();
    let bufs: Vec<_> = (0..8)
        .map(|_| w.pool.alloc(IO_BYTES, 4096).unwrap())
        .collect();
    ch.register_buffers(bufs.into()).unwrap();

    // Active-passive: everything on the preferred path; on the optimized path while the
    // preferred one is only non-optimized; back on the preferred one when it recovers.
    assert_eq!(burst(&w, &mut ch), [0, 8], "preferred path");
    set_ana(&w, 1, AnaState::NON_OPTIMIZED, NonOptimized);
    assert_eq!(
        burst(&w, &mut ch),
        [8, 0],
        "optimized path over the preferred one"
    );
    set_ana(&w, 1, AnaState::OPTIMIZED, Optimized);
    assert_eq!(burst(&w, &mut ch), [0, 8], "failback");

    // Without failback, I/O stays where it went.
    ch.set_policy(Policy::ActivePassive {
        preferred: 1,
        failback: false,
    });
    assert_eq!(burst(&w, &mut ch), [0, 8], "still on the preferred path");
    set_ana(&w, 1, AnaState::NON_OPTIMIZED, NonOptimized);
    assert_eq!(burst(&w, &mut ch), [8, 0]);
    set_ana(&w, 1, AnaState::OPTIMIZED, Optimized);
    assert_eq!(burst(&w, &mut ch), [8, 0], "no failback");

    // Round-robin alternates, or takes turns of min_ios commands.
    ch.set_policy(Policy::RoundRobin { min_ios: 1 });
    assert_eq!(burst(&w, &mut ch), [4, 4], "round-robin");
    ch.set_policy(Policy::RoundRobin { min_ios: 8 });
    // The turn on path 1 (one command so far) runs to 8 commands, then path 0 takes its 8.
    assert_eq!(burst(&w, &mut ch), [1, 7], "turns of 8");
    assert_eq!(burst(&w, &mut ch), [7, 1], "turns of 8");

    // Least queue depth balances a burst, and prefers an optimized path over a shallower one.
    ch.set_policy(Policy::LeastQueueDepth);
    assert_eq!(burst(&w, &mut ch), [4, 4], "least queue depth");
    set_ana(&w, 0, AnaState::NON_OPTIMIZED, NonOptimized);
    assert_eq!(burst(&w, &mut ch), [0, 8], "optimized first");
    // With the optimized path gone, the non-optimized one takes everything (every policy).
    set_ana(
        &w,
        1,
        AnaState::INACCESSIBLE,
        vfnvme_mpath::PathStatus::Waiting,
    );
    assert_eq!(
        burst(&w, &mut ch),
        [8, 0],
        "non-optimized when nothing better"
    );
    ch.set_policy(Policy::RoundRobin { min_ios: 1 });
    assert_eq!(burst(&w, &mut ch), [8, 0]);
}

#[test]
fn a_path_handed_back_before_its_failed_commands_were_delivered_loses_none() {
    // Arrange: active-passive on path 0; sixteen registered reads queued on path 0 but not yet
    // rung (the doorbell goes at the next poll), so they are in its queue pair when it dies.
    let w = world(1);
    let control = fast_control(&w);
    let mut ch = active_passive_on_0(&w);
    let bufs: Arc<[vfnvme_hugepages::DmaBuf]> = (0..16)
        .map(|_| w.pool.alloc(IO_BYTES, 4096).unwrap())
        .collect::<Vec<_>>()
        .into();
    ch.register_buffers(bufs.clone()).unwrap();
    for i in 0..16u32 {
        let read = IoKind::Read {
            lba: 64 + (i * IO_BLOCKS) as u64,
            blocks: IO_BLOCKS,
        };
        ch.submit_fixed(read, i, i as u64).unwrap();
    }
    assert_eq!(ch.in_flight_per_path(), vec![16, 0]);
    // The set cannot change under outstanding commands.
    assert!(matches!(
        ch.register_buffers(bufs.clone()),
        Err(RefuseReason::Invalid(_))
    ));
    // Act: port 0 goes away and comes back, and the control plane hands the channel a new queue
    // pair for it, all before the channel has polled: the old queue pair still holds the sixteen.
    let c0 = w.sim.controller(0);
    c0.faults().surprise_remove();
    until("path 0 gone", || {
        w.ns.path(0).status() == vfnvme_mpath::PathStatus::Gone
    });
    c0.faults().restore();
    let ctrl = Controller::open(c0.clone(), w.pool.clone(), ControllerOptions::default()).unwrap();
    w.ns.reattach(0, ctrl).unwrap();
    // Poll one completion at a time, so that the old queue pair delivers its failed commands
    // over many polls while the new one waits in the inbox.
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < 16 {
        ch.poll(1, |c| done.push((c.tag, c.result.clone())));
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "lost commands: {} of 16 completed",
            done.len()
        );
    }
    // Assert: each completed once, successfully, and the channel holds nothing.
    done.sort_by_key(|d| d.0);
    assert_eq!(done, (0..16).map(|t| (t, Ok(0))).collect::<Vec<_>>());
    assert_eq!(ch.outstanding(), 0);
    assert!(ch.stats().failovers >= 16, "{:?}", ch.stats());
    // The new queue pair on path 0 was taken once the old one was idle: path 0 carries I/O.
    until("path 0 back", || {
        w.ns.path(0).status() == vfnvme_mpath::PathStatus::Optimized
    });
    let before = c0.stats().io(NvmOpcode::READ.0);
    let read = IoKind::Read {
        lba: 64,
        blocks: IO_BLOCKS,
    };
    let (mut got, mut pending) = (0, false);
    let start = Instant::now();
    // One read at a time; every wait is under the same deadline.
    while got < 8 && start.elapsed() < Duration::from_secs(20) {
        if !pending {
            pending = ch.submit_fixed(read, 0, 99).is_ok();
        }
        if pending && ch.poll(8, |c| assert_eq!(c.result, Ok(0))) > 0 {
            pending = false;
            got += 1;
        }
    }
    assert_eq!(got, 8, "reads after the path came back");
    assert!(c0.stats().io(NvmOpcode::READ.0) > before, "path 0 unused");
    drop(control);
}

/// `n` registered buffers for `ch`.
fn register(w: &World, ch: &mut Channel, n: usize) -> Arc<[vfnvme_hugepages::DmaBuf]> {
    let bufs: Arc<[vfnvme_hugepages::DmaBuf]> = (0..n)
        .map(|_| w.pool.alloc(IO_BYTES, 4096).unwrap())
        .collect::<Vec<_>>()
        .into();
    ch.register_buffers(bufs.clone()).unwrap();
    bufs
}

/// Submits `n` registered reads (tags 0..n, buffer i for tag i), queued but not rung.
fn submit_reads(ch: &mut Channel, n: u32) {
    for i in 0..n {
        let read = IoKind::Read {
            lba: 64 + u64::from(i * IO_BLOCKS),
            blocks: IO_BLOCKS,
        };
        ch.submit_fixed(read, i, u64::from(i)).unwrap();
    }
}

/// Polls `ch` (`max` per poll, running `between` after each) until `n` commands completed or
/// `limit` passed; returns what completed, sorted by tag.
fn collect(
    ch: &mut Channel,
    n: usize,
    max: usize,
    limit: Duration,
    mut between: impl FnMut(),
) -> Vec<(u64, Result<u32, vfnvme_mpath::IoError>)> {
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < n && start.elapsed() < limit {
        ch.poll(max, |c| done.push((c.tag, c.result.clone())));
        between();
    }
    done.sort_by_key(|d| d.0);
    done
}

#[test]
fn a_path_error_on_the_second_path_fails_over_to_the_first() {
    // Arrange: round-robin over both paths; path 1 (not path 0, so that a failure blamed on the
    // wrong path shows) answers every I/O with a path error for as long as the test runs.
    let w = world(1);
    let _cp = MpathControl::new(std::slice::from_ref(&w.ns), ReconnectOptions::default()).spawn();
    let mut ch = Channel::new(&w.ns, chan_opts()).unwrap();
    register(&w, &mut ch, 8);
    w.sim.controller(1).faults().fail_matching(
        FaultMatch::io(),
        Status::new(sct::PATH, path::INTERNAL_PATH_ERROR),
        None,
    );
    for round in 0..4 {
        // Act: eight registered reads, half of them first sent to path 1.
        submit_reads(&mut ch, 8);
        let done = collect(&mut ch, 8, 16, Duration::from_secs(10), || {});
        // Assert: each completes once, successfully: resent on path 0, the path that did not
        // fail (resent on path 1 again, a read would fail there for ever).
        let want: Vec<_> = (0..8).map(|t| (t, Ok(0))).collect();
        assert_eq!(done, want, "round {round}");
    }
    assert!(ch.stats().failovers >= 4, "{:?}", ch.stats());
}

#[test]
fn a_deferred_replacement_parks_the_old_queue_pairs_failed_commands_when_no_other_path_is_left() {
    use vfnvme_mpath::PathStatus::Gone;
    // Arrange: path 1 is gone before the channel exists; active-passive on path 0, sixteen
    // registered reads queued on path 0 but not rung.
    let w = world(1);
    let control = fast_control(&w);
    w.sim.controller(1).faults().surprise_remove();
    until("path 1 gone", || w.ns.path(1).status() == Gone);
    let mut ch = active_passive_on_0(&w);
    register(&w, &mut ch, 16);
    submit_reads(&mut ch, 16);
    assert_eq!(ch.in_flight_per_path(), vec![16, 0]);
    // Act: port 0 goes away and comes back as a new controller before the channel polls, so the
    // replacement queue pair waits in the inbox while the old one delivers its sixteen failures
    // one poll at a time.
    let c0 = w.sim.controller(0);
    c0.faults().surprise_remove();
    until("path 0 gone", || w.ns.path(0).status() == Gone);
    c0.faults().restore();
    let ctrl = Controller::open(c0.clone(), w.pool.clone(), ControllerOptions::default()).unwrap();
    w.ns.reattach(0, ctrl).unwrap();
    let mut early = Vec::new();
    let start = Instant::now();
    while ch.stats().failovers < 16 && start.elapsed() < Duration::from_secs(20) {
        ch.poll(1, |c| early.push((c.tag, c.result.clone())));
    }
    // Assert: none completed while the old queue pair drained, and the poll that delivered its
    // last failure took the replacement and resent all sixteen on it.
    assert_eq!(early, vec![], "completed while the old queue pair drained");
    assert_eq!(
        ch.in_flight_per_path(),
        vec![16, 0],
        "resent on the replacement at once"
    );
    let done = collect(&mut ch, 16, 1, Duration::from_secs(20), || {});
    // Each completed once, successfully.
    assert_eq!(done, (0..16).map(|t| (t, Ok(0))).collect::<Vec<_>>());
    assert_eq!(ch.stats().no_path, 0);
    assert_eq!(ch.outstanding(), 0);
    assert_eq!(ch.in_flight_per_path(), vec![0, 0]);
    drop(control);
}

#[test]
fn a_reset_completion_delivered_after_the_recovery_was_published_does_not_hold_the_path_back() {
    use vfnvme_mpath::PathStatus::Gone;
    // Arrange: a control plane stepped by hand; path 1 gone; four registered reads queued on
    // path 0 but not rung; the fast-fail time is short.
    let w = world(1);
    let mut cp = MpathControl::new(std::slice::from_ref(&w.ns), ReconnectOptions::default());
    w.sim.controller(1).faults().surprise_remove();
    for _ in 0..10 {
        cp.step();
    }
    assert_eq!(w.ns.path(1).status(), Gone);
    let mut ch = Channel::new(
        &w.ns,
        ChannelOptions {
            fast_fail_ms: 300,
            ..chan_opts()
        },
    )
    .unwrap();
    register(&w, &mut ch, 4);
    submit_reads(&mut ch, 4);
    // Act: path 0 resets under the four; the channel takes one Reset completion, then the control
    // plane re-creates the queues and publishes that the path is back, and the channel takes the
    // other three Reset completions after that publication.
    w.ns.path(0).ctrl.reset().unwrap();
    let mut first = Vec::new();
    ch.poll(1, |c| first.push((c.tag, c.result.clone())));
    cp.step();
    let mut done = collect(&mut ch, 4 - first.len(), 1, Duration::from_secs(2), || {
        cp.step();
    });
    done.extend(first);
    done.sort_by_key(|d| d.0);
    // Assert: all four were resent on path 0 and succeeded.
    assert_eq!(done, (0..4).map(|t| (t, Ok(0))).collect::<Vec<_>>());
    assert_eq!(ch.stats().no_path, 0);
}

#[test]
fn reattaching_a_path_retires_the_old_controller_so_its_commands_complete() {
    // Arrange: round-robin over both paths; path 0 holds every completion for a minute.
    let w = world(1);
    let old = w.ns.path(0).ctrl.clone();
    let c0 = w.sim.controller(0);
    let mut ch = Channel::new(&w.ns, chan_opts()).unwrap();
    register(&w, &mut ch, 4);
    c0.faults().delay_completions(Duration::from_secs(60));
    submit_reads(&mut ch, 4);
    let mut done = Vec::new();
    ch.poll(8, |c| done.push((c.tag, c.result.clone())));
    assert!(ch.in_flight_per_path()[0] > 0, "reads held on path 0");
    // Act: port 0 goes away and comes back, and is re-attached before any control plane ran (so
    // nothing noticed the old controller's removal); then the control plane starts.
    c0.faults().surprise_remove();
    c0.faults().restore();
    let ctrl = Controller::open(c0.clone(), w.pool.clone(), ControllerOptions::default()).unwrap();
    w.ns.reattach(0, ctrl).unwrap();
    let _cp = fast_control(&w);
    done.extend(collect(
        &mut ch,
        4 - done.len(),
        8,
        Duration::from_secs(10),
        || {},
    ));
    done.sort_by_key(|d| d.0);
    // Assert: the reads held on the old controller were resent and succeeded; it was retired.
    assert_eq!(done, (0..4).map(|t| (t, Ok(0))).collect::<Vec<_>>());
    assert_eq!(ch.outstanding(), 0);
    assert_eq!(old.state(), vfnvme::CtrlState::Removed);
    // The new controller on port 0 carries I/O (retiring the old one did not stop it).
    let reads_on_0 = c0.stats().io(NvmOpcode::READ.0);
    submit_reads(&mut ch, 4);
    let done = collect(&mut ch, 4, 8, Duration::from_secs(10), || {});
    assert_eq!(done, (0..4).map(|t| (t, Ok(0))).collect::<Vec<_>>());
    assert!(
        c0.stats().io(NvmOpcode::READ.0) > reads_on_0,
        "port 0 unused"
    );
}

#[test]
fn the_ana_state_is_read_again_after_a_controller_reset() {
    use vfnvme_mpath::PathStatus::{Optimized, Waiting};
    // Arrange: a control plane stepped by hand has seen path 0's group go inaccessible.
    let w = world(1);
    let mut cp = MpathControl::new(std::slice::from_ref(&w.ns), ReconnectOptions::default());
    let c0 = w.sim.controller(0);
    c0.faults().set_ana_state(1, AnaState::INACCESSIBLE);
    for _ in 0..50 {
        cp.step();
        if w.ns.path(0).status() == Waiting {
            break;
        }
    }
    assert_eq!(w.ns.path(0).status(), Waiting);
    // Act: the controller fails and its group becomes optimized while it is down (the change
    // notice is lost with the failure); the control plane resets it.
    c0.faults().set_cfs();
    c0.faults().set_ana_state(1, AnaState::OPTIMIZED);
    for _ in 0..50 {
        cp.step();
        if w.ns.path(0).status() == Optimized {
            break;
        }
    }
    // Assert: the control plane read the ANA log again after the reset.
    assert_eq!(w.ns.path(0).ctrl.state(), vfnvme::CtrlState::Live);
    assert_eq!(w.ns.path(0).status(), Optimized);
}

#[test]
fn a_write_that_gives_up_failing_over_completes_only_after_cqt_a_read_at_once() {
    // Arrange: CQT 400 ms; no failover allowed (max_failovers 0); active-passive on path 0, which
    // answers every I/O with a path error.
    let w = world(400);
    let mut ch = Channel::new(
        &w.ns,
        ChannelOptions {
            policy: Policy::ActivePassive {
                preferred: 0,
                failback: false,
            },
            max_failovers: 0,
            ..chan_opts()
        },
    )
    .unwrap();
    w.sim.controller(0).faults().fail_matching(
        FaultMatch::io(),
        Status::new(sct::PATH, path::INTERNAL_PATH_ERROR),
        None,
    );
    let c1 = w.sim.controller(1);
    let writes_on_1 = c1.stats().io(NvmOpcode::WRITE.0);
    let wbuf = w.pool.alloc(IO_BYTES, 4096).unwrap();
    stamp(&wbuf, 64, 1);
    let rbuf = w.pool.alloc(IO_BYTES, 4096).unwrap();
    // Act: a write and a read, both failing on path 0 and giving up.
    let start = Instant::now();
    ch.submit(IoDesc::write(64, IO_BLOCKS, wbuf, 1)).unwrap();
    ch.submit(IoDesc::read(128, IO_BLOCKS, rbuf, 2)).unwrap();
    let mut done = Vec::new();
    while done.len() < 2 && start.elapsed() < Duration::from_secs(20) {
        ch.poll(8, |c| done.push((c.tag, c.result.clone(), start.elapsed())));
    }
    done.sort_by_key(|d| d.0);
    // Assert: both gave up; the write only after the path's CQT (a copy may still land until
    // then), and it was not resent anywhere.
    assert_eq!(done.len(), 2, "{done:?}");
    for (tag, result, _) in &done {
        assert!(
            matches!(result, Err(vfnvme_mpath::IoError::TooManyFailovers { .. })),
            "tag {tag}: {result:?}"
        );
    }
    let write_done = done[0].2;
    assert!(
        write_done >= Duration::from_millis(400),
        "the write gave up after {write_done:?}, before CQT"
    );
    assert_eq!(c1.stats().io(NvmOpcode::WRITE.0), writes_on_1);
    assert_eq!(ch.outstanding(), 0);
}

#[test]
fn a_path_that_had_no_queue_pair_when_the_channel_was_created_is_used_once_it_is_back() {
    use vfnvme_mpath::PathStatus::{Gone, Optimized};
    // Arrange: controller 0 fails (fatal status, and its reset fails once), so a channel created
    // now gets no queue pair on path 0.
    let w = world(1);
    let c0 = w.sim.controller(0);
    c0.faults().fail_matching(
        FaultMatch::admin().opcode(vfnvme::spec::AdminOpcode::IDENTIFY.0),
        Status::new(sct::GENERIC, vfnvme::spec::status::generic::INTERNAL_ERROR),
        Some(1),
    );
    c0.faults().set_cfs();
    w.ns.path(0).ctrl.service();
    assert_eq!(w.ns.path(0).ctrl.state(), vfnvme::CtrlState::Failed);
    let mut ch = Channel::new(
        &w.ns,
        ChannelOptions {
            fast_fail_ms: 3_000,
            ..chan_opts()
        },
    )
    .unwrap();
    assert_eq!(ch.in_flight_per_path(), vec![0, 0]);
    // Act: the control plane reconnects path 0; then path 1 goes away.
    let _cp = fast_control(&w);
    until("path 0 back", || w.ns.path(0).status() == Optimized);
    w.sim.controller(1).faults().surprise_remove();
    until("path 1 gone", || w.ns.path(1).status() == Gone);
    let reads_on_0 = c0.stats().io(NvmOpcode::READ.0);
    register(&w, &mut ch, 1);
    submit_reads(&mut ch, 1);
    let done = collect(&mut ch, 1, 8, Duration::from_secs(20), || {});
    // Assert: the read completed on path 0.
    assert_eq!(done, vec![(0, Ok(0))]);
    assert_eq!(c0.stats().io(NvmOpcode::READ.0), reads_on_0 + 1);
}

#[test]
fn a_dropped_channel_keeps_the_buffers_of_its_commands_until_their_queues_are_deleted() {
    // Arrange: two reads in flight that the devices never complete, one on a registered buffer
    // and one on a buffer the channel owns; active-passive, so both are on path 0.
    let w = world(1);
    let mut ch = active_passive_on_0(&w);
    let fixed: Arc<[vfnvme_hugepages::DmaBuf]> = vec![w.pool.alloc(IO_BYTES, 4096).unwrap()].into();
    ch.register_buffers(fixed.clone()).unwrap();
    let owned = w.pool.alloc(IO_BYTES, 4096).unwrap();
    let dom = w.ns.path(0).ctrl.domain();
    let addrs = [
        fixed[0].iova(dom, 0).unwrap().0,
        owned.iova(dom, 0).unwrap().0,
    ];
    w.sim.controller(0).faults().drop_commands(2);
    ch.submit_fixed(
        IoKind::Read {
            lba: 0,
            blocks: IO_BLOCKS,
        },
        0,
        1,
    )
    .unwrap();
    ch.submit(IoDesc::read(8, IO_BLOCKS, owned, 2)).unwrap();
    ch.ring();
    assert_eq!(ch.in_flight_per_path(), vec![2, 0]);
    // Act: the application lets go of everything.
    drop(ch);
    drop(fixed);
    let taken: Vec<_> = (0..64)
        .map(|_| w.pool.alloc(IO_BYTES, 4096).unwrap())
        .collect();
    // Assert: neither buffer is handed out while the device may still write it; both are free
    // once the control plane has deleted the queues.
    for a in addrs {
        assert!(
            taken.iter().all(|b| b.iova(dom, 0).unwrap().0 != a),
            "a buffer of a command in flight was reused"
        );
    }
    drop(taken);
    w.ns.path(0).ctrl.service();
    let again: Vec<_> = (0..64)
        .map(|_| w.pool.alloc(IO_BYTES, 4096).unwrap())
        .collect();
    for a in addrs {
        assert!(again.iter().any(|b| b.iova(dom, 0).unwrap().0 == a));
    }
}
