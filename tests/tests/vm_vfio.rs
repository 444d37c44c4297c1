//! Guest suite: the driver over real VFIO, in the QEMU rig (tests/vm). Every test here is
//! `#[ignore]`: plain `cargo test` skips them (there is no VFIO on the host). `tests/vm/ci.sh`
//! runs this binary inside the guest with `--ignored`, once with the vIOMMU and once in no-IOMMU
//! mode (`noiommu_*` tests).
//!
//! The guest exports `VFNVME_VM_BDFS` (the controllers' PCI addresses, bound to vfio-pci) and
//! `VFNVME_VM_NOIOMMU`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vfnvme::pci::vfio::{VfioFunction, VfioSystem};
use vfnvme::pci::PciFunction;
use vfnvme::{Completion, Controller, ControllerOptions, NsInfo, QueueOptions, QueuePair};
use vfnvme_hugepages::{DmaBuf, DmaPool, PagePolicy};
use vfnvme_mpath::Subsystem;

fn bdfs() -> Vec<String> {
    let v: Vec<String> = std::env::var("VFNVME_VM_BDFS")
        .expect("VFNVME_VM_BDFS is set by the guest rig; run through tests/vm/ci.sh")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(v.len() >= 2, "the rig has two controllers, got {v:?}");
    v
}

fn noiommu_boot() -> bool {
    std::env::var("VFNVME_VM_NOIOMMU").as_deref() == Ok("1")
}

struct Guest {
    funcs: Vec<Arc<VfioFunction>>,
    ctrls: Vec<Controller>,
    pool: Arc<DmaPool>,
}

fn open(policy: PagePolicy) -> Guest {
    let funcs = VfioSystem::open(&bdfs()).expect("open both controllers through VFIO");
    let pool = DmaPool::new(policy);
    let ctrls = funcs
        .iter()
        .map(|f| {
            let f: Arc<dyn PciFunction> = f.clone();
            Controller::open(f, pool.clone(), ControllerOptions::default()).expect("bring-up")
        })
        .collect();
    Guest { funcs, ctrls, pool }
}

fn wait(qp: &mut QueuePair, ctrl: &Controller, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut spins = 0u32;
    while out.len() < n {
        qp.poll(64, |c| out.push(c)).expect("no bad completions");
        spins += 1;
        if spins.is_multiple_of(1024) {
            ctrl.service();
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions",
            out.len()
        );
    }
    out
}

fn pattern(buf: &DmaBuf, seed: u64) {
    let v: Vec<u8> = (0..buf.len())
        .map(|i| (seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64 * 13) >> 5) as u8)
        .collect();
    buf.write(0, &v);
}

/// Writes `bytes` at `lba` through `wq` and reads them back through `rq` (the same queue pair
/// when `rq` is `None`), checking the data.
#[allow(clippy::too_many_arguments)]
fn write_then_read(
    g: &Guest,
    wq: &mut QueuePair,
    wc: usize,
    rq: Option<(&mut QueuePair, usize)>,
    ns: &NsInfo,
    lba: u64,
    bytes: usize,
    offset: usize,
    seed: u64,
) {
    let wbuf = g.pool.alloc(bytes + offset, 4096).unwrap();
    let rbuf = g.pool.alloc(bytes + offset, 4096).unwrap();
    pattern(&wbuf, seed);
    rbuf.fill(0, rbuf.len(), 0x5a);
    let blocks = (bytes as u64 >> ns.lba_shift) as u32;
    wq.write(ns, lba, blocks, &wbuf, offset, 1).unwrap();
    let c = wait(wq, &g.ctrls[wc], 1);
    assert!(
        c[0].outcome.is_success(),
        "write {bytes}@{offset}: {}",
        c[0].outcome
    );
    let (rq, rc) = match rq {
        Some((q, c)) => (q, c),
        None => (wq, wc),
    };
    rq.read(ns, lba, blocks, &rbuf, offset, 2).unwrap();
    let c = wait(rq, &g.ctrls[rc], 1);
    assert!(
        c[0].outcome.is_success(),
        "read {bytes}@{offset}: {}",
        c[0].outcome
    );
    assert!(
        wbuf.equal(offset, &rbuf, offset, bytes),
        "data written through ctrl {wc} differs when read through ctrl {rc} ({bytes} bytes at offset {offset})"
    );
}

/// Write/read verify through each controller and across them, with PRP lists (3 pages and up,
/// an unaligned first page, MDTS, MDTS plus one page split), then queue wrap-around.
fn io_suite(g: &Guest) {
    let ns = g.ctrls[0].namespace(1).expect("namespace 1 on ctrl 0").info;
    let mut q0 = g.ctrls[0].io_queue_pair(QueueOptions::default()).unwrap();
    let mut q1 = g.ctrls[1].io_queue_pair(QueueOptions::default()).unwrap();
    let mdts = g.ctrls[0].info().mdts_bytes.min(512 << 10) as usize;
    let shapes = [
        (4096, 0),
        (8192, 0),
        (12288, 0),
        (8192, 512),
        (65536, 0),
        (mdts, 0),
        (mdts + 4096, 0),
    ];
    let mut lba = 0;
    for (i, &(bytes, off)) in shapes.iter().enumerate() {
        let step = (bytes as u64 >> ns.lba_shift) + 64;
        write_then_read(
            g,
            &mut q0,
            0,
            Some((&mut q1, 1)),
            &ns,
            lba,
            bytes,
            off,
            i as u64,
        );
        lba += step;
        write_then_read(
            g,
            &mut q1,
            1,
            Some((&mut q0, 0)),
            &ns,
            lba,
            bytes,
            off,
            100 + i as u64,
        );
        lba += step;
        write_then_read(g, &mut q0, 0, None, &ns, lba, bytes, off, 200 + i as u64);
        lba += step;
        write_then_read(g, &mut q1, 1, None, &ns, lba, bytes, off, 300 + i as u64);
        lba += step;
    }
    // Wrap-around: a 16-entry queue driven full for many laps, on both controllers.
    for (c, ctrl) in g.ctrls.iter().enumerate() {
        let mut qp = ctrl
            .io_queue_pair(QueueOptions {
                size: 16,
                ..Default::default()
            })
            .unwrap();
        let buf = g.pool.alloc(4096, 4096).unwrap();
        let mut tag = 0u64;
        for _lap in 0..20 {
            while qp.read(&ns, tag % 256, 8, &buf, 0, tag).is_ok() {
                tag += 1;
            }
            assert_eq!(qp.in_flight(), 15);
            let done = wait(&mut qp, ctrl, 15);
            assert!(done.iter().all(|d| d.outcome.is_success()), "ctrl {c}");
        }
    }
}

#[test]
#[ignore = "guest only: run by tests/vm/ci.sh"]
fn vfio_bringup_and_identify_both_controllers() {
    if noiommu_boot() {
        eprintln!("skipped: this boot is the no-IOMMU one");
        return;
    }
    let g = open(PagePolicy::PreferHuge);
    let (a, b) = (g.ctrls[0].identify(), g.ctrls[1].identify());
    assert_eq!(a.subnqn(), b.subnqn(), "one subsystem");
    assert_ne!(a.cntlid, b.cntlid, "distinct controllers");
    assert!(a.multi_controller() && b.multi_controller());
    assert_eq!(
        g.funcs[0].domain(),
        g.funcs[1].domain(),
        "one container, one IOVA space"
    );
    let subs = Subsystem::group(g.ctrls.clone()).unwrap();
    assert_eq!(subs.len(), 1);
    let ns = subs[0]
        .namespace(1)
        .expect("namespace 1 shared and matched by its identifiers");
    assert_eq!(ns.path_count(), 2);
    for (c, f) in g.ctrls.iter().zip(&g.funcs) {
        println!(
            "{}: cntlid {} sn {:?} mn {:?} subnqn {} mdts {} shadow doorbells {} request irq {}",
            c.name(),
            c.identify().cntlid,
            c.identify().serial(),
            c.identify().model(),
            c.identify().subnqn(),
            c.info().mdts_bytes,
            c.info().shadow_doorbells,
            f.request_irq_armed()
        );
    }
}

#[test]
#[ignore = "guest only: run by tests/vm/ci.sh"]
fn vfio_io_verify_hugepages() {
    if noiommu_boot() {
        eprintln!("skipped: this boot is the no-IOMMU one");
        return;
    }
    let g = open(PagePolicy::RequireHuge);
    io_suite(&g);
}

#[test]
#[ignore = "guest only: run by tests/vm/ci.sh"]
fn vfio_io_verify_4k_pages() {
    if noiommu_boot() {
        eprintln!("skipped: this boot is the no-IOMMU one");
        return;
    }
    let g = open(PagePolicy::Small);
    io_suite(&g);
}

#[test]
#[ignore = "guest only: run by tests/vm/ci.sh"]
fn noiommu_io_verify_hugepages() {
    if !noiommu_boot() {
        eprintln!("skipped: not the no-IOMMU boot");
        return;
    }
    let g = open(PagePolicy::RequireHuge);
    assert!(g.funcs.iter().all(|f| f.is_noiommu()));
    io_suite(&g);
}
