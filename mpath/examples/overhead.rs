//! The common-path cost of a multipath channel against a bare queue pair, without a benchmark
//! tool around them: `N` 4 KiB reads at queue depth 32 on the inline simulator's null namespace,
//! through a `QueuePair` (`qp`: a `u64` tag per command; `qpd`: the same 24-byte descriptor per
//! command that the channel keeps, written into the queue pair's record the same way, as an
//! application that remembers what each command was must) or a `Channel` (`ch`: registered
//! buffers, `submit_fixed` per command; `chs`: the same through a `Submitter` per run after a
//! poll; optional third and fourth arguments: the policy, as `vfnvme-perf --policy` takes it,
//! round-robin by default, and the number of paths, 1 by default). Every loop checks every
//! completion's status, as any application must (the channel does it for its own disposition),
//! and the example fails if one is an error. Meant for instruction counts:
//! `valgrind --tool=callgrind target/release/examples/overhead {qp|qpd|ch|chs} N [POLICY [PATHS]]`,
//! twice with different `N`, difference divided by the difference of `N`.

use std::sync::Arc;

use vfnvme::sim::{NsConfig, SimSubsystem};
use vfnvme::{Controller, ControllerOptions, NsInfo, QueueOptions};
use vfnvme_hugepages::{DmaBuf, DmaPool, PagePolicy};
use vfnvme_mpath::{Channel, ChannelOptions, IoKind, Policy, Subsystem};

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

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "ch".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let policy: Policy = match args.next() {
        Some(p) => p.parse().unwrap_or_else(|e| panic!("{e}")),
        None => Policy::default(),
    };
    let paths: usize = args
        .next()
        .map_or(1, |p| p.parse().expect("PATHS is a number"));
    let sim = SimSubsystem::builder()
        .controllers(paths.max(1))
        .namespace(NsConfig::null(1, 1 << 30))
        .build();
    let pool = DmaPool::new(PagePolicy::Small);
    let mut ctrls: Vec<Controller> = (0..paths.max(1))
        .map(|i| {
            Controller::open(
                sim.controller(i),
                pool.clone(),
                ControllerOptions::default(),
            )
            .unwrap()
        })
        .collect();
    let bufs: Vec<DmaBuf> = (0..QD).map(|_| pool.alloc(4096, 4096).unwrap()).collect();
    let mut done = 0u64;
    let mut sent = 0u64;
    let mut errors = 0u64;
    if mode == "qp" {
        let ctrl = ctrls.remove(0);
        let ns = ctrl.namespace(1).unwrap().info;
        let mut qp = ctrl.io_queue_pair(QueueOptions::default()).unwrap();
        for (i, b) in bufs.iter().enumerate() {
            qp.read(&ns, i as u64, 1, b, 0, i as u64).unwrap();
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
                    qp.read(&ns, sent & 0xffff, 1, &bufs[t as usize], 0, t)
                        .unwrap();
                    sent += 1;
                }
            }
        }
    } else if mode == "qpd" {
        let ctrl = ctrls.remove(0);
        let ns = ctrl.namespace(1).unwrap().info;
        let mut qp = ctrl
            .io_queue_pair_with::<Desc>(QueueOptions::default())
            .unwrap();
        // A function, not a closure: the closure was not inlined (a call per I/O).
        #[inline(always)]
        fn read(qp: &mut vfnvme::QueuePair<Desc>, ns: &NsInfo, bufs: &[DmaBuf], lba: u64, i: u64) {
            qp.read_with(ns, lba, 1, &bufs[i as usize], 0, |d| {
                d.set(i, lba, 1, i as u32)
            })
            .unwrap()
        }
        for i in 0..QD as u64 {
            read(&mut qp, &ns, &bufs, i, i);
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
                    read(&mut qp, &ns, &bufs, sent & 0xffff, t);
                    sent += 1;
                }
            }
        }
    } else {
        let ns = Subsystem::group(ctrls)
            .unwrap()
            .remove(0)
            .namespace(1)
            .unwrap();
        let mut ch = Channel::new(
            &ns,
            ChannelOptions {
                slots: QD,
                policy,
                ..Default::default()
            },
        )
        .unwrap();
        let shared: Arc<[DmaBuf]> = bufs.into();
        ch.register_buffers(shared).unwrap();
        for i in 0..QD {
            ch.submit_fixed(
                IoKind::Read {
                    lba: i as u64,
                    blocks: 1,
                },
                i as u32,
                i as u64,
            )
            .unwrap();
            sent += 1;
        }
        let mut ready = Vec::with_capacity(QD);
        while done < n {
            ch.poll(QD, |c| {
                errors += u64::from(c.result.is_err());
                ready.push(c.tag)
            });
            if mode == "chs" {
                // The run after a poll through one Submitter, what it does not take through
                // submit_fixed (nothing, here).
                if let Some(mut s) = ch.submitter() {
                    while let Some(&t) = ready.last() {
                        if sent >= n {
                            break;
                        }
                        if s.read(sent & 0xffff, 1, t as u32, t).is_err() {
                            break;
                        }
                        ready.pop();
                        done += 1;
                        sent += 1;
                    }
                }
            }
            for t in ready.drain(..) {
                done += 1;
                if sent < n {
                    let kind = IoKind::Read {
                        lba: sent & 0xffff,
                        blocks: 1,
                    };
                    ch.submit_fixed(kind, t as u32, t).unwrap();
                    sent += 1;
                }
            }
        }
    }
    println!("{mode}: {done} I/Os, {errors} errors");
    assert_eq!(errors, 0, "every read succeeds on the null namespace");
}
