//! Guest suite: the driver over real VFIO, in the QEMU rig (tests/vm). Every test here is
//! `#[ignore]`: plain `cargo test` skips them (there is no VFIO on the host). `tests/vm/ci.sh`
//! runs this binary inside the guest with `--ignored`, once with the vIOMMU and once in no-IOMMU
//! mode (`noiommu_*` tests).
//!
//! The guest exports `VFNVME_VM_BDFS` (the controllers' PCI addresses, bound to vfio-pci) and
//! `VFNVME_VM_NOIOMMU`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfnvme::pci::vfio::{VfioFunction, VfioSystem};
use vfnvme::pci::PciFunction;
use vfnvme::{
    Completion, Controller, ControllerOptions, CtrlState, NsInfo, Outcome, QueueOptions, QueuePair,
};
use vfnvme_hugepages::{DmaBuf, DmaPool, PagePolicy};
use vfnvme_mpath::{
    Channel, ChannelOptions, MpathControl, PathStatus, Policy, ReconnectOptions, Subsystem,
};
use vfnvme_tests::{verify_worker, Tally};

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

// ---------------------------------------------------------------------------------------------
// Hot-unplug: the guest asks the host for QMP device_del / device_add through the run dir
// (tests/vm/qmp-watch.py, started by run-guest.sh for every boot).
// ---------------------------------------------------------------------------------------------

/// The rig's controller whose removal the unplug tests request: QEMU id `nvme1`, index 1 of
/// `VFNVME_VM_BDFS` (0000:02:00.0).
const UNPLUG_ID: &str = "nvme1";
const UNPLUG_INDEX: usize = 1;

/// A minimal stderr logger, so that the driver's removal and release messages show in the log.
fn init_logging() {
    struct L;
    impl log::Log for L {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Info
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: L = L;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// A QMP request handed to the host's watcher.
struct QmpRequest {
    what: String,
    done: PathBuf,
    sent: Instant,
}

const QMP_DIR: &str = "/rig/qmp";

/// Asks the host to run `line` (`device_del nvmeI [TIMEOUT_S]` or `device_add nvmeI`) on this
/// guest's QMP socket. Returns at once; [`QmpRequest::wait`] collects the answer.
fn qmp_request(line: &str) -> QmpRequest {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = Path::new(QMP_DIR);
    assert!(
        dir.is_dir(),
        "{QMP_DIR} does not exist: the host's QMP request watcher (tests/vm/qmp-watch.py, started \
         by tests/vm/run-guest.sh unless RIG_QMP_WATCH=0) is not running for this boot"
    );
    let name = format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = dir.join(format!(".req-{name}"));
    let req = dir.join(format!("req-{name}"));
    std::fs::write(&tmp, format!("{line}\n")).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, &req).unwrap_or_else(|e| panic!("{}: {e}", req.display()));
    eprintln!("qmp: requested `{line}` ({})", req.display());
    QmpRequest {
        what: line.to_string(),
        done: dir.join(format!("done-{name}")),
        sent: Instant::now(),
    }
}

impl QmpRequest {
    /// The host's answer, once there is one: `Ok(text)` for "ok text", `Err(text)` otherwise.
    fn poll(&self) -> Option<Result<String, String>> {
        let text = std::fs::read_to_string(&self.done).ok()?;
        let text = text.trim().to_string();
        Some(match text.strip_prefix("ok ") {
            Some(t) => Ok(t.to_string()),
            None => Err(text),
        })
    }

    /// Waits up to `timeout` for the answer.
    fn wait(&self, timeout: Duration) -> Result<String, String> {
        loop {
            if let Some(r) = self.poll() {
                eprintln!(
                    "qmp: `{}` answered after {:.2} s: {r:?}",
                    self.what,
                    self.sent.elapsed().as_secs_f64()
                );
                return r;
            }
            if self.sent.elapsed() > timeout {
                return Err(format!(
                    "no answer to `{}` within {timeout:?} (see the run dir's qmp/watcher.log)",
                    self.what
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls `f` every 10 ms until it is true; panics after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sysfs_dev(bdf: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(bdf)
}

fn driver_of(bdf: &str) -> Option<String> {
    std::fs::read_link(sysfs_dev(bdf).join("driver"))
        .ok()
        .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// After `device_add`: waits for the function to appear and binds it to vfio-pci again
/// (`driver_override` + `drivers_probe`, as tests/vm/guest-bind.sh does), then waits for its
/// group node.
fn rebind_vfio(bdf: &str) {
    let dev = sysfs_dev(bdf);
    wait_until(
        &format!("{bdf} to reappear"),
        Duration::from_secs(30),
        || dev.join("class").exists(),
    );
    let class = std::fs::read_to_string(dev.join("class")).unwrap_or_default();
    assert_eq!(
        class.trim(),
        "0x010802",
        "{bdf} came back as an NVMe function"
    );
    match driver_of(bdf).as_deref() {
        Some("vfio-pci") => {}
        Some(other) => {
            eprintln!("{bdf}: unbinding from {other}");
            std::fs::write(dev.join("driver/unbind"), bdf).expect("unbind");
        }
        None => {}
    }
    std::fs::write(dev.join("driver_override"), "vfio-pci").expect("driver_override");
    let t0 = Instant::now();
    while driver_of(bdf).as_deref() != Some("vfio-pci") {
        // The probe can race with the tail of the hot-add; try again for a while.
        if let Err(e) = std::fs::write("/sys/bus/pci/drivers_probe", bdf) {
            eprintln!("{bdf}: drivers_probe: {e}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{bdf} did not bind to vfio-pci (driver {:?})",
            driver_of(bdf)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let group = std::fs::read_link(dev.join("iommu_group")).expect("iommu_group link");
    let group = group.file_name().unwrap().to_string_lossy().into_owned();
    let node = Path::new("/dev/vfio").join(&group);
    let noiommu = Path::new("/dev/vfio").join(format!("noiommu-{group}"));
    wait_until(
        &format!("{}", node.display()),
        Duration::from_secs(10),
        || node.exists() || noiommu.exists(),
    );
    eprintln!("{bdf}: back on vfio-pci, iommu group {group}");
}

/// Brings the unplugged controller back: device_add, rebind, open (a new VFIO container, so a
/// new DMA domain; `Controller::open` maps the pool into it) and bring-up.
fn replug(pool: &Arc<DmaPool>, bdf: &str) -> (Arc<VfioFunction>, Controller) {
    wait_until(
        &format!("{bdf} to leave sysfs before device_add"),
        Duration::from_secs(10),
        || !sysfs_dev(bdf).exists(),
    );
    qmp_request(&format!("device_add {UNPLUG_ID}"))
        .wait(Duration::from_secs(30))
        .expect("device_add");
    rebind_vfio(bdf);
    let f = VfioSystem::open(&[bdf])
        .expect("reopen the re-added controller")
        .remove(0);
    let pf: Arc<dyn PciFunction> = f.clone();
    let ctrl = Controller::open(pf, pool.clone(), ControllerOptions::default())
        .expect("bring-up of the re-added controller");
    (f, ctrl)
}

/// Issue A: a controller held by the driver is unplugged with QMP `device_del`; the control
/// plane notices the removal request, fails what was in flight, releases the function (so the
/// kernel finishes the removal and QEMU reports DEVICE_DELETED), and the path reports Gone.
/// `device_add` brings it back and the driver re-attaches it.
#[test]
#[ignore = "guest only: run by tests/vm/ci.sh"]
fn vfio_hot_unplug_releases_and_reattaches() {
    if noiommu_boot() {
        eprintln!("skipped: this boot is the no-IOMMU one");
        return;
    }
    init_logging();
    let bdf = bdfs()[UNPLUG_INDEX].clone();
    let g = open(PagePolicy::PreferHuge);
    let subnqn = g.ctrls[UNPLUG_INDEX].identify().subnqn();
    let subs = Subsystem::group(g.ctrls.clone()).unwrap();
    let ns = subs[0].namespace(1).unwrap();
    assert_eq!(ns.path_count(), 2);
    let info = ns.info;
    let (c0, c1) = (&g.ctrls[0], &g.ctrls[UNPLUG_INDEX]);

    // Commands in flight on the doomed controller: rung, never reaped.
    let mut q1 = c1.io_queue_pair(QueueOptions::default()).unwrap();
    let buf = g.pool.alloc(4096, 4096).unwrap();
    for tag in 0..4 {
        q1.read(&info, tag * 8, 8, &buf, 0, tag).unwrap();
    }
    q1.ring();

    // Removal while held: run the control plane's service step until it lets go.
    let t0 = Instant::now();
    let del = qmp_request(&format!("device_del {UNPLUG_ID} 60"));
    let mut answer = None;
    while c1.state() != CtrlState::Removed {
        c0.service();
        c1.service();
        if answer.is_none() {
            answer = del.poll();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{bdf} not Removed 30 s after device_del (state {}, QMP answer {answer:?})",
            c1.state()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "{bdf}: Removed {:.2} s after device_del",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        g.funcs[UNPLUG_INDEX].is_released(),
        "the control plane released the function"
    );
    assert!(g.funcs[UNPLUG_INDEX].is_gone());
    assert_eq!(
        c1.function().read32(0x1c),
        u32::MAX,
        "BAR0 reads all-ones after release"
    );
    assert_eq!(
        ns.path(UNPLUG_INDEX).status(),
        PathStatus::Gone,
        "the path reports Gone"
    );
    let r = match answer {
        Some(r) => r,
        None => del.wait(Duration::from_secs(60)),
    };
    let r = r.expect("DEVICE_DELETED: the kernel finished the removal after the release");
    assert!(r.contains("DEVICE_DELETED"), "{r}");
    wait_until(
        &format!("{bdf} to leave sysfs"),
        Duration::from_secs(10),
        || !sysfs_dev(&bdf).exists(),
    );
    // What was in flight fails with Removed, exactly once; new commands are refused.
    let mut failed = Vec::new();
    for _ in 0..10 {
        q1.poll(64, |c| failed.push(c)).expect("no bad completions");
    }
    let mut tags: Vec<u64> = failed.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(
        tags,
        vec![0, 1, 2, 3],
        "each in-flight command completes once"
    );
    assert!(
        failed.iter().all(|c| c.outcome == Outcome::Removed),
        "{failed:?}"
    );
    assert!(
        q1.read(&info, 0, 8, &buf, 0, 9).is_err(),
        "a removed controller refuses I/O"
    );
    drop(q1);
    // The other controller is unaffected.
    assert_eq!(c0.service(), CtrlState::Live);
    let mut q0 = c0.io_queue_pair(QueueOptions::default()).unwrap();
    write_then_read(&g, &mut q0, 0, None, &info, 1 << 16, 8192, 0, 0xa1);

    // Back: device_add, rebind, reopen, identify, re-attach, I/O through it.
    let (f, ctrl) = replug(&g.pool, &bdf);
    eprintln!(
        "{bdf}: re-attached: cntlid {} subnqn {} (group {}, domain {:?})",
        ctrl.identify().cntlid,
        ctrl.identify().subnqn(),
        f.iommu_group(),
        f.domain()
    );
    assert_eq!(ctrl.identify().subnqn(), subnqn, "same subsystem");
    assert_eq!(ctrl.state(), CtrlState::Live);
    ns.reattach(UNPLUG_INDEX, ctrl.clone())
        .expect("re-attach the path");
    assert!(ns.path(UNPLUG_INDEX).status().usable());
    // Write through the re-attached controller, read through the other one, and back.
    let g2 = Guest {
        funcs: vec![g.funcs[0].clone(), f],
        ctrls: vec![c0.clone(), ctrl.clone()],
        pool: g.pool.clone(),
    };
    let mut q1 = ctrl.io_queue_pair(QueueOptions::default()).unwrap();
    write_then_read(
        &g2,
        &mut q1,
        1,
        Some((&mut q0, 0)),
        &info,
        1 << 17,
        65536,
        0,
        0xa2,
    );
    write_then_read(
        &g2,
        &mut q0,
        0,
        Some((&mut q1, 1)),
        &info,
        1 << 18,
        12288,
        512,
        0xa3,
    );
    assert_eq!(ctrl.service(), CtrlState::Live);
}

// The verify workload of tests/tests/sim_mpath.rs, over real VFIO: every block carries its LBA,
// a generation and a checksum.

/// Issue B: the verify workload on two cores over both controllers (round-robin) while one of
/// them is unplugged with QMP `device_del`: I/O continues on the other with no errors; after
/// `device_add` the path is re-attached and carries I/O again.
#[test]
#[ignore = "guest only: run by tests/vm/ci.sh"]
fn vfio_multipath_verify_survives_unplug() {
    if noiommu_boot() {
        eprintln!("skipped: this boot is the no-IOMMU one");
        return;
    }
    init_logging();
    let bdf = bdfs()[UNPLUG_INDEX].clone();
    let g = open(PagePolicy::PreferHuge);
    let subnqn = g.ctrls[0].identify().subnqn();
    let subs = Subsystem::group(g.ctrls.clone()).unwrap();
    let ns = subs[0].namespace(1).unwrap();
    assert_eq!(ns.path_count(), 2);
    let control = MpathControl::new(
        std::slice::from_ref(&ns),
        ReconnectOptions {
            reconnect_delay: Duration::from_millis(100),
            ctrl_loss_timeout: Duration::from_secs(60),
            interval: Duration::from_millis(2),
        },
    )
    .spawn();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers: Vec<_> = (0..2)
        .map(|core| {
            let (ns, pool, stop, tally) = (ns.clone(), g.pool.clone(), stop.clone(), tally.clone());
            std::thread::Builder::new()
                .name(format!("verify-{core}"))
                .spawn(move || {
                    let opts = ChannelOptions {
                        queue: QueueOptions {
                            size: 32,
                            ..Default::default()
                        },
                        policy: Policy::RoundRobin { min_ios: 1 },
                        slots: 64,
                        default_cqt_ms: 5,
                        ..Default::default()
                    };
                    let ch = Channel::new(&ns, opts).unwrap();
                    verify_worker(core, ch, &pool, 8, (1 << 20) + core * 4096, &stop, &tally)
                })
                .unwrap()
        })
        .collect();
    let t0 = Instant::now();
    let path = |p: usize| tally.per_path[p].load(Ordering::Relaxed);
    let completed = || tally.completed.load(Ordering::Relaxed);
    let alive = || workers.iter().all(|w| !w.is_finished());
    let progress = |what: &str, f: &mut dyn FnMut() -> bool| {
        wait_until(what, Duration::from_secs(20), || {
            assert!(
                alive(),
                "a verify worker died (see its panic above) while waiting for {what}"
            );
            f()
        })
    };
    progress("both paths to carry I/O", &mut || {
        path(0) >= 64 && path(1) >= 64
    });
    eprintln!(
        "t={:.2}s before unplug: per path {:?}, completed {}",
        t0.elapsed().as_secs_f64(),
        [path(0), path(1)],
        completed()
    );

    // Unplug nvme1 under load.
    let del = qmp_request(&format!("device_del {UNPLUG_ID} 60"));
    progress("the path to go", &mut || {
        ns.path(UNPLUG_INDEX).status() == PathStatus::Gone
    });
    let r = del
        .wait(Duration::from_secs(60))
        .expect("DEVICE_DELETED under load: the control plane released the function");
    assert!(r.contains("DEVICE_DELETED"), "{r}");
    assert!(g.funcs[UNPLUG_INDEX].is_released());
    std::thread::sleep(Duration::from_millis(200));
    let (gone1, gone_done) = (path(1), completed());
    progress("I/O to go on over path 0 alone", &mut || {
        completed() >= gone_done + 200
    });
    assert_eq!(path(1), gone1, "nothing is sent to the removed path");
    eprintln!(
        "t={:.2}s unplugged: per path {:?}, completed {}",
        t0.elapsed().as_secs_f64(),
        [path(0), path(1)],
        completed()
    );

    // Back: device_add, rebind, reopen, re-attach; round-robin uses it again.
    let (_f, ctrl) = replug(&g.pool, &bdf);
    assert_eq!(ctrl.identify().subnqn(), subnqn, "same subsystem");
    ns.reattach(UNPLUG_INDEX, ctrl).expect("re-attach the path");
    progress("the re-attached path to carry I/O", &mut || {
        path(1) >= gone1 + 64
    });
    assert!(ns.path(UNPLUG_INDEX).status().usable());
    let back = (path(0), path(1));
    progress("more I/O over both paths", &mut || {
        path(0) >= back.0 + 32 && path(1) >= back.1 + 32
    });
    eprintln!(
        "t={:.2}s re-attached: per path {:?}, completed {}",
        t0.elapsed().as_secs_f64(),
        [path(0), path(1)],
        completed()
    );

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("verify worker failed");
    }
    drop(control);
    let t = &tally;
    let (sub, done, ver) = (
        t.submitted.load(Ordering::Relaxed),
        t.completed.load(Ordering::Relaxed),
        t.verified.load(Ordering::Relaxed),
    );
    eprintln!(
        "B: {sub} submitted, {done} completed, {ver} reads verified, {} failovers, per path {:?}, {:.2} s",
        t.failovers.load(Ordering::Relaxed),
        [path(0), path(1)],
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(sub, done, "every command completed exactly once");
    assert!(ver > 0);
}
