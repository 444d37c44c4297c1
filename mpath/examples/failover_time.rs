//! Measures failover time on the simulated dual-controller subsystem: from the fault on path 0
//! (and from its detection) to the first read completed on path 1, under a QD 32 read load with
//! the active-passive policy. Run: `cargo run --release -p vfnvme-mpath --example failover_time`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vfnvme::sim::{FaultMatch, NsConfig, SimSubsystem};
use vfnvme::spec::status::{path, sct};
use vfnvme::spec::{NvmOpcode, Status};
use vfnvme::{Controller, ControllerOptions, QueueOptions};
use vfnvme_hugepages::{DmaPool, PagePolicy};
use vfnvme_mpath::{
    Channel, ChannelOptions, IoDesc, MpathControl, PathStatus, Policy, ReconnectOptions, Subsystem,
};

fn run(kind: &str) -> (Duration, Option<Duration>) {
    let sim = SimSubsystem::builder()
        .controllers(2)
        .namespace(NsConfig::ram(1, 16 << 20))
        .build();
    let pool = DmaPool::new(PagePolicy::Small);
    let ctrls = (0..2)
        .map(|i| {
            Controller::open(
                sim.controller(i),
                pool.clone(),
                ControllerOptions::default(),
            )
            .unwrap()
        })
        .collect();
    let ns = Subsystem::group(ctrls)
        .unwrap()
        .remove(0)
        .namespace(1)
        .unwrap();
    let _cp = MpathControl::new(
        std::slice::from_ref(&ns),
        ReconnectOptions {
            interval: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .spawn();
    let mut ch = Channel::new(
        &ns,
        ChannelOptions {
            policy: Policy::ActivePassive {
                preferred: 0,
                failback: false,
            },
            queue: QueueOptions {
                size: 64,
                timeout_ms: 50,
            },
            ..Default::default()
        },
    )
    .unwrap();
    let mut free: Vec<_> = (0..32).map(|_| pool.alloc(4096, 4096).unwrap()).collect();
    let mut tag = 0u64;
    let c1 = sim.controller(1);
    let mut fault_at = None;
    let mut detected_at = None;
    let start = Instant::now();
    let reads_on_1 = |c: &Arc<vfnvme::sim::SimController>| c.stats().io(NvmOpcode::READ.0);
    let mut base1 = reads_on_1(&c1);
    loop {
        while let Some(b) = free.pop() {
            tag += 1;
            if let Err(r) = ch.submit(IoDesc::read(tag % 4096 * 8, 8, b, tag)) {
                free.push(r.desc.data.unwrap());
                break;
            }
        }
        let mut done_on_1 = false;
        ch.poll(64, |c| {
            assert!(c.result.is_ok(), "{:?}", c.result);
            free.push(c.data.take().unwrap());
        });
        if fault_at.is_some() && reads_on_1(&c1) > base1 {
            done_on_1 = true;
        }
        if fault_at.is_none() && start.elapsed() > Duration::from_millis(200) {
            base1 = reads_on_1(&c1);
            let c0 = sim.controller(0);
            fault_at = Some(Instant::now());
            match kind {
                "path-error" => {
                    c0.faults().fail_matching(
                        FaultMatch::io(),
                        Status::new(sct::PATH, path::ANA_INACCESSIBLE),
                        None,
                    );
                }
                "surprise-removal" => {
                    c0.faults().surprise_remove();
                }
                "dropped-commands" => {
                    c0.faults().drop_matching(FaultMatch::io(), None);
                }
                _ => unreachable!(),
            }
        }
        if fault_at.is_some()
            && detected_at.is_none()
            && ns.path(0).status() != PathStatus::Optimized
        {
            detected_at = Some(Instant::now());
        }
        if done_on_1 {
            let t0 = fault_at.unwrap();
            let now = Instant::now();
            return (
                now - t0,
                detected_at.map(|d| now.saturating_duration_since(d)),
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{kind}: no failover"
        );
    }
}

fn main() {
    println!("fault              fault -> first read on path 1   path-state change -> first read on path 1");
    for kind in ["path-error", "surprise-removal", "dropped-commands"] {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(run(kind));
        }
        let f: Vec<String> = v.iter().map(|x| format!("{:.1?}", x.0)).collect();
        let d: Vec<String> = v
            .iter()
            .map(|x| x.1.map_or("-".into(), |d| format!("{d:.1?}")))
            .collect();
        println!("{kind:18} {:40} {}", f.join(" "), d.join(" "));
    }
}
