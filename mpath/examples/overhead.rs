//! The common-path cost of a multipath channel against a bare queue pair, without a benchmark
//! tool around them: 4 KiB reads at queue depth 32 on the inline simulator's null namespace,
//! through a `QueuePair` (`qp`: a `u64` tag per command; `qpd`: the same 24-byte descriptor per
//! command that the channel keeps, written into the queue pair's record the same way, as an
//! application that remembers what each command was must) or a `Channel` (`ch`: registered
//! buffers, `submit_rw` per command; `chs`: the same through a `Submitter` per run after a
//! poll, or `Turns` where the policy is round-robin over several paths). Every loop checks
//! every completion's status, as any application must (the channel does it for its own
//! disposition), and the example fails if one is an error.
//!
//! Instruction counts: `valgrind --tool=callgrind target/release/examples/overhead
//! {qp|qpd|ch|chs} N [POLICY [PATHS]]` (the policy as `vfnvme-perf --policy` takes it,
//! round-robin by default; the number of paths, 1 by default), twice with different `N`, the
//! difference divided by the difference of `N`.
//!
//! Wall-clock time, paired: `overhead ab [ROUNDS [N]]` builds `qp`, `qpd` and `chs` side by side
//! (each on its own simulated controller) and times them in turn, `N` I/Os each (500000), for
//! `ROUNDS` rounds (41), the order rotated every round. A shared host's noise (a neighbour, a
//! frequency step) lasts longer than one round, so it moves the three of a round together: the
//! median of the per-round ratios is the measure, the medians of the times are there to compare.

use std::sync::Arc;
use std::time::Instant;

use vfnvme::sim::{NsConfig, SimSubsystem};
use vfnvme::{Controller, ControllerOptions, NsInfo, QueueOptions, QueuePair};
use vfnvme_hugepages::{DmaBuf, DmaPool, PagePolicy};
use vfnvme_mpath::{Channel, ChannelOptions, Policy, Run, Subsystem};

const QD: usize = 32;

/// What an application keeps per command to know, at completion, what it was (the shape of the
/// channel's own descriptor: tag, first block, and one word of blocks, buffer and kind), three
/// whole words.
#[derive(Clone, Copy, Default)]
struct Desc {
    tag: u64,
    lba: u64,
    meta: u64,
}

impl Desc {
    #[inline(always)]
    fn set(&mut self, tag: u64, lba: u64, blocks: u32, buf: u32) {
        self.tag = tag;
        self.lba = lba;
        self.meta = blocks as u64 | (buf as u64) << 32 | 1 << 62;
    }
}

/// One of the loops under test, built once and run any number of times: each run submits up to
/// `QD` reads, keeps that many in flight until `n` have completed, and returns with none in
/// flight and the number of completions that were errors.
enum Workload {
    /// A bare queue pair, a `u64` tag per command.
    Qp {
        qp: QueuePair,
        ns: NsInfo,
        bufs: Vec<DmaBuf>,
        _ctrl: Controller,
    },
    /// A bare queue pair keeping the channel's 24-byte descriptor per command.
    Qpd {
        qp: QueuePair<Desc>,
        ns: NsInfo,
        bufs: Vec<DmaBuf>,
        _ctrl: Controller,
    },
    /// A channel; `run` takes a `Submitter` after each poll when `submitter` is set.
    Ch { ch: Channel, submitter: bool },
}

/// A simulated subsystem of `paths` controllers sharing one null namespace, opened.
fn controllers(paths: usize, pool: &Arc<DmaPool>) -> Vec<Controller> {
    let sim = SimSubsystem::builder()
        .controllers(paths)
        .namespace(NsConfig::null(1, 1 << 30))
        .build();
    (0..paths)
        .map(|i| {
            Controller::open(
                sim.controller(i),
                pool.clone(),
                ControllerOptions::default(),
            )
        })
        .collect::<Result<_, _>>()
        .expect("the simulated controllers open")
}

impl Workload {
    /// Builds the loop `mode` names (`qp`, `qpd`, `ch` or `chs`) on a simulator of its own.
    fn new(mode: &str, policy: Policy, paths: usize, pool: &Arc<DmaPool>) -> Workload {
        let mut ctrls = controllers(paths.max(1), pool);
        let bufs: Vec<DmaBuf> = (0..QD).map(|_| pool.alloc(4096, 4096).unwrap()).collect();
        match mode {
            "qp" | "qpd" => {
                let ctrl = ctrls.remove(0);
                let ns = ctrl.namespace(1).unwrap().info;
                let opts = QueueOptions::default();
                if mode == "qp" {
                    let qp = ctrl.io_queue_pair(opts).unwrap();
                    Workload::Qp {
                        qp,
                        ns,
                        bufs,
                        _ctrl: ctrl,
                    }
                } else {
                    let qp = ctrl.io_queue_pair_with::<Desc>(opts).unwrap();
                    Workload::Qpd {
                        qp,
                        ns,
                        bufs,
                        _ctrl: ctrl,
                    }
                }
            }
            "ch" | "chs" => {
                let ns = Subsystem::group(ctrls)
                    .unwrap()
                    .remove(0)
                    .namespace(1)
                    .unwrap();
                let opts = ChannelOptions {
                    slots: QD,
                    policy,
                    ..Default::default()
                };
                let mut ch = Channel::new(&ns, opts).unwrap();
                let shared: Arc<[DmaBuf]> = bufs.into();
                ch.register_buffers(shared).unwrap();
                Workload::Ch {
                    ch,
                    submitter: mode == "chs",
                }
            }
            other => panic!("unknown mode {other:?}: qp, qpd, ch, chs or ab"),
        }
    }

    /// Runs `n` reads through the loop; returns how many completed with an error.
    fn run(&mut self, n: u64) -> u64 {
        match self {
            Workload::Qp { qp, ns, bufs, .. } => run_qp(qp, ns, bufs, n),
            Workload::Qpd { qp, ns, bufs, .. } => run_qpd(qp, ns, bufs, n),
            // One loop per mode: in one function, the two shared their registers.
            Workload::Ch {
                ch,
                submitter: true,
            } => run_ch::<true>(ch, n),
            Workload::Ch {
                ch,
                submitter: false,
            } => run_ch::<false>(ch, n),
        }
    }
}

#[inline(never)]
fn run_qp(qp: &mut QueuePair, ns: &NsInfo, bufs: &[DmaBuf], n: u64) -> u64 {
    let (mut done, mut sent, mut errors) = (0u64, 0u64, 0u64);
    for (i, b) in bufs.iter().enumerate().take(n as usize) {
        qp.read(ns, i as u64, 1, b, 0, i as u64).unwrap();
        sent += 1;
    }
    let mut ready = Vec::with_capacity(QD);
    while done < n {
        qp.poll(QD, |c| {
            errors += u64::from(!c.outcome.is_success());
            ready.push(c.tag)
        })
        .unwrap();
        for t in ready.drain(..) {
            done += 1;
            if sent < n {
                qp.read(ns, sent & 0xffff, 1, &bufs[t as usize], 0, t)
                    .unwrap();
                sent += 1;
            }
        }
    }
    errors
}

#[inline(never)]
fn run_qpd(qp: &mut QueuePair<Desc>, ns: &NsInfo, bufs: &[DmaBuf], n: u64) -> u64 {
    // A function, not a closure: the closure was not inlined (a call per I/O).
    #[inline(always)]
    fn read(qp: &mut QueuePair<Desc>, ns: &NsInfo, bufs: &[DmaBuf], lba: u64, i: u64) {
        qp.read_with(ns, lba, 1, &bufs[i as usize], 0, |d| {
            d.set(i, lba, 1, i as u32)
        })
        .unwrap()
    }
    let (mut done, mut sent, mut errors) = (0u64, 0u64, 0u64);
    for i in 0..(QD as u64).min(n) {
        read(qp, ns, bufs, i, i);
        sent += 1;
    }
    let mut ready = Vec::with_capacity(QD);
    while done < n {
        qp.poll(QD, |c| {
            errors += u64::from(!c.outcome.is_success());
            ready.push(c.tag.tag)
        })
        .unwrap();
        for t in ready.drain(..) {
            done += 1;
            if sent < n {
                read(qp, ns, bufs, sent & 0xffff, t);
                sent += 1;
            }
        }
    }
    errors
}

#[inline(never)]
fn run_ch<const SUBMITTER: bool>(ch: &mut Channel, n: u64) -> u64 {
    let (mut done, mut sent, mut errors) = (0u64, 0u64, 0u64);
    for i in 0..(QD as u64).min(n) {
        ch.submit_rw(false, i, 1, i as u32, i).unwrap();
        sent += 1;
    }
    let mut ready = Vec::with_capacity(QD);
    let mut left = Vec::with_capacity(QD);
    while done < n {
        ch.poll(QD, |c| {
            errors += u64::from(c.result.is_err());
            ready.push(c.tag)
        });
        if SUBMITTER {
            // The run after a poll through one Submitter (or, for round-robin over several
            // paths, through its Turns); what it does not take (nothing, here) goes through
            // submit_rw once the run is dropped.
            let ran = match ch.submitter() {
                Some(mut s) => {
                    run_reads(&mut s, &mut ready, &mut left, &mut done, &mut sent, n);
                    true
                }
                None => false,
            };
            if !ran {
                if let Some(mut s) = ch.turns() {
                    run_reads(&mut s, &mut ready, &mut left, &mut done, &mut sent, n);
                }
            }
            for t in left.drain(..) {
                // Counted as done above; sent < n was checked there.
                ch.submit_rw(false, sent & 0xffff, 1, t as u32, t).unwrap();
                sent += 1;
            }
        }
        for t in ready.drain(..) {
            done += 1;
            if sent < n {
                ch.submit_rw(false, sent & 0xffff, 1, t as u32, t).unwrap();
                sent += 1;
            }
        }
    }
    errors
}

/// Resubmits the `ready` tags through `run` (reads while fewer than `n` were sent), counting
/// them done; those it does not take go to `left`.
#[inline(always)]
fn run_reads(
    run: &mut impl Run,
    ready: &mut Vec<u64>,
    left: &mut Vec<u64>,
    done: &mut u64,
    sent: &mut u64,
    n: u64,
) {
    for t in ready.drain(..) {
        *done += 1;
        if *sent < n {
            if run.read(*sent & 0xffff, 1, t as u32, t).is_err() {
                left.push(t);
                continue;
            }
            *sent += 1;
        }
    }
}

/// The median of `v` (sorted in place); `v` is not empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// `overhead ab [ROUNDS [N]]`: the paired wall-clock comparison (see the crate doc).
fn paired(rounds: usize, n: u64, pool: &Arc<DmaPool>) {
    const MODES: [&str; 3] = ["qp", "qpd", "chs"];
    let mut loads: Vec<Workload> = MODES
        .iter()
        .map(|m| Workload::new(m, Policy::default(), 1, pool))
        .collect();
    for w in &mut loads {
        assert_eq!(w.run(n.min(100_000)), 0, "warm-up reads succeed");
    }
    let mut ns_per_io: [Vec<f64>; 3] = Default::default();
    eprintln!("{rounds} rounds of {n} reads per mode, order rotated each round");
    for r in 0..rounds {
        for k in 0..MODES.len() {
            let i = (r + k) % MODES.len();
            let t = Instant::now();
            let errors = loads[i].run(n);
            ns_per_io[i].push(t.elapsed().as_nanos() as f64 / n as f64);
            assert_eq!(errors, 0, "every read succeeds on the null namespace");
        }
        if (r + 1) % 10 == 0 {
            eprintln!("  round {}/{rounds}", r + 1);
        }
    }
    let ratio = |a: usize, b: usize| -> f64 {
        let mut v: Vec<f64> = (0..rounds)
            .map(|r| ns_per_io[a][r] / ns_per_io[b][r])
            .collect();
        median(&mut v)
    };
    let (chs_qp, chs_qpd, qpd_qp) = (ratio(2, 0), ratio(2, 1), ratio(1, 0));
    let mut best = [0.0; 3];
    let mut med = [0.0; 3];
    for i in 0..MODES.len() {
        best[i] = ns_per_io[i].iter().copied().fold(f64::INFINITY, f64::min);
        med[i] = median(&mut ns_per_io[i].clone());
    }
    println!("mode  ns/IO median  ns/IO best");
    for i in 0..MODES.len() {
        println!("{:4}  {:12.2}  {:10.2}", MODES[i], med[i], best[i]);
    }
    println!(
        "time ratios, median over rounds: chs/qp {chs_qp:.4} ({:+.2}%), chs/qpd {chs_qpd:.4} \
         ({:+.2}%), qpd/qp {qpd_qp:.4} ({:+.2}%)",
        (chs_qp - 1.0) * 100.0,
        (chs_qpd - 1.0) * 100.0,
        (qpd_qp - 1.0) * 100.0
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "ch".into());
    let pool = DmaPool::new(PagePolicy::Small);
    if mode == "ab" {
        let rounds = args
            .next()
            .map_or(41, |r| r.parse().expect("ROUNDS is a number"));
        let n = args
            .next()
            .map_or(500_000, |n| n.parse().expect("N is a number"));
        assert!(rounds > 0 && n > 0, "ROUNDS and N are at least 1");
        return paired(rounds, n, &pool);
    }
    let n: u64 = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("N is a number"));
    let policy: Policy = match args.next() {
        Some(p) => p.parse().unwrap_or_else(|e| panic!("{e}")),
        None => Policy::default(),
    };
    let paths: usize = args
        .next()
        .map_or(1, |p| p.parse().expect("PATHS is a number"));
    let errors = Workload::new(&mode, policy, paths, &pool).run(n);
    println!("{mode}: {n} I/Os, {errors} errors");
    assert_eq!(errors, 0, "every read succeeds on the null namespace");
}
