//! vfio_probe: proves the VFIO backend on real VFIO (the QEMU rig) without the driver core.
//!
//! ```text
//! vfio_probe [--noiommu] [--hold-secs N] [--ready-file PATH] [BDF...]
//! ```
//!
//! Opens every controller (default: `$VFNVME_VM_BDFS`) in one VFIO container, prints CAP/VS,
//! maps a `DmaPool`, and runs a hand-built admin Identify Controller on each controller. With
//! `--hold-secs N` it then keeps the functions open for up to N seconds, polling
//! `removal_requested()`; a function whose removal is requested is released (BAR unmapped,
//! device fd closed) and the probe waits for its sysfs node to go. `--ready-file` is touched
//! when holding starts (for host-side orchestration). `--noiommu` (or `VFNVME_VM_NOIOMMU=1`)
//! asks for no-IOMMU mode and hugepage DMA memory.
//!
//! Exit code 0 when every step worked.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfnvme::pci::vfio::{IommuMode, VfioFunction, VfioOptions, VfioSystem};
use vfnvme::pci::PciFunction;
use vfnvme::spec::identify::IdentifyController;
use vfnvme::spec::regs::{cq_head_doorbell, offset, sq_tail_doorbell, Cap};
use vfnvme::spec::Sqe;
use vfnvme_hugepages::{DmaBuf, DmaPool, PagePolicy};
use zerocopy::{FromBytes, IntoBytes};

struct StderrLogger;
impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}
static LOGGER: StderrLogger = StderrLogger;

type Res<T> = Result<T, String>;

fn wait_rdy(f: &dyn PciFunction, want: bool, timeout: Duration) -> Res<Duration> {
    let t0 = Instant::now();
    loop {
        let csts = f.read32(offset::CSTS);
        if csts == u32::MAX {
            return Err(format!("{}: CSTS reads all-ones (device gone)", f.name()));
        }
        if csts & 2 != 0 && want {
            return Err(format!("{}: CSTS.CFS set", f.name()));
        }
        if (csts & 1 != 0) == want {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return Err(format!(
                "{}: timeout waiting for CSTS.RDY={}",
                f.name(),
                want as u8
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Enable the controller with a 16-entry admin queue pair and run Identify Controller.
fn identify(f: &VfioFunction, pool: &Arc<DmaPool>) -> Res<IdentifyController> {
    let name = f.name().to_string();
    let dom = f.domain();
    let cap = Cap::from_bits(f.read64(offset::CAP));
    let to = Duration::from_millis(cap.timeout_ms().max(500) + 1000);
    let dstrd = cap.dstrd();

    f.write32(offset::CC, 0);
    wait_rdy(f, false, to)?;
    let alloc = |what: &str| -> Res<DmaBuf> {
        let b = pool
            .alloc(4096, 4096)
            .map_err(|e| format!("{name}: alloc {what}: {e}"))?;
        b.fill(0, 4096, 0);
        Ok(b)
    };
    let asq = alloc("ASQ")?;
    let acq = alloc("ACQ")?;
    let buf = alloc("identify buffer")?;
    let iova = |b: &DmaBuf| {
        b.iova(dom, 0)
            .ok_or(format!("{name}: buffer not mapped in {dom}"))
    };
    let (asq_iova, acq_iova, buf_iova) = (iova(&asq)?, iova(&acq)?, iova(&buf)?);
    println!(
        "{name}: ASQ iova {asq_iova} (va {:#x}), ACQ iova {acq_iova}, buffer iova {buf_iova}",
        asq.va()
    );

    f.set_bus_master(true).map_err(|e| e.to_string())?;
    f.write32(offset::AQA, (15 << 16) | 15);
    f.write64(offset::ASQ, asq_iova.0);
    f.write64(offset::ACQ, acq_iova.0);
    f.write32(offset::CC, (4 << 20) | (6 << 16) | 1);
    let took = wait_rdy(f, true, to)?;
    println!(
        "{name}: controller enabled in {:.1} ms",
        took.as_secs_f64() * 1e3
    );

    let mut sqe = Sqe::identify(1, 0, 0);
    sqe.set_cid(0x42);
    sqe.prp1 = buf_iova.0;
    asq.write(0, sqe.as_bytes());
    fence(Ordering::Release);
    let t0 = Instant::now();
    f.write32(sq_tail_doorbell(0, dstrd), 1);
    loop {
        let dw3 = acq.load_u32_acquire(12);
        if dw3 & (1 << 16) != 0 {
            let cid = dw3 as u16;
            let status = (dw3 >> 17) & 0x7fff;
            f.write32(cq_head_doorbell(0, dstrd), 1);
            println!(
                "{name}: identify completed in {:.1} us: cid {cid:#x} status {status:#x}",
                t0.elapsed().as_secs_f64() * 1e6
            );
            if cid != 0x42 || status != 0 {
                return Err(format!(
                    "{name}: bad completion cid {cid:#x} status {status:#x}"
                ));
            }
            break;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            return Err(format!("{name}: identify timed out"));
        }
        std::hint::spin_loop();
    }
    let mut raw = vec![0u8; 4096];
    buf.read(0, &mut raw);
    let id = IdentifyController::read_from_bytes(&raw[..])
        .map_err(|_| format!("{name}: identify data does not parse"))?;
    // Leave the controller disabled so the queue memory can be given back.
    f.write32(offset::CC, 0);
    wait_rdy(f, false, to)?;
    Ok(id)
}

fn run() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let mut noiommu = std::env::var("VFNVME_VM_NOIOMMU").is_ok_and(|v| v == "1");
    let mut hold_secs = None;
    let mut ready_file = None;
    let mut bdfs = Vec::new();
    let mut sigbus_check = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--noiommu" => noiommu = true,
            "--sigbus-check" => sigbus_check = true,
            "--hold-secs" => {
                hold_secs = Some(
                    args.next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or("--hold-secs N")?,
                )
            }
            "--ready-file" => ready_file = Some(args.next().ok_or("--ready-file PATH")?),
            _ => bdfs.push(a),
        }
    }
    if bdfs.is_empty() {
        bdfs = std::env::var("VFNVME_VM_BDFS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
    }
    if bdfs.is_empty() {
        return Err("no controllers: give BDFs or set VFNVME_VM_BDFS".into());
    }

    let opts = VfioOptions {
        mode: if noiommu {
            IommuMode::NoIommu
        } else {
            IommuMode::Type1
        },
        ..Default::default()
    };
    let funcs = VfioSystem::open_with(&bdfs, &opts).map_err(|e| format!("open: {e}"))?;
    for f in &funcs {
        let cap = f.read64(offset::CAP);
        let vs = f.read32(offset::VS);
        println!(
            "{}: group {} {} domain {} BAR0 {:#x} bytes CAP={cap:#018x} VS={}.{}.{} req-irq-armed={}",
            f.name(),
            f.iommu_group(),
            if f.is_noiommu() { "no-IOMMU" } else { "type1" },
            f.domain(),
            f.bar0_len(),
            vs >> 16,
            (vs >> 8) & 0xff,
            vs & 0xff,
            f.request_irq_armed()
        );
        if cap == u64::MAX {
            return Err(format!("{}: CAP reads all-ones", f.name()));
        }
        if !f.request_irq_armed() {
            return Err(format!("{}: device-request IRQ not armed", f.name()));
        }
        if f.removal_requested() {
            return Err(format!("{}: removal requested already?", f.name()));
        }
    }
    let doms: std::collections::BTreeSet<_> = funcs.iter().map(|f| f.domain()).collect();
    println!(
        "{} function(s) in {} DMA domain(s)",
        funcs.len(),
        doms.len()
    );
    if doms.len() != 1 {
        return Err("functions do not share one DMA domain".into());
    }
    match funcs[0].reset_function() {
        Ok(()) => println!("{}: function reset OK", funcs[0].name()),
        Err(e) => println!("{}: function reset: {e}", funcs[0].name()),
    }

    let pool = DmaPool::new(if noiommu {
        PagePolicy::RequireHuge
    } else {
        PagePolicy::PreferHuge
    });
    for f in &funcs {
        pool.add_mapper(f.dma_mapper())
            .map_err(|e| format!("add_mapper: {e}"))?;
    }
    let mut serial = None;
    for f in &funcs {
        let id = identify(f, &pool)?;
        println!(
            "{}: IDENTIFY CTRL: vid={:#06x} sn='{}' mn='{}' fr='{}' cntlid={} cmic={:#x} subnqn='{}'",
            f.name(),
            id.vid,
            id.serial(),
            id.model(),
            id.firmware(),
            id.cntlid,
            id.cmic,
            id.subnqn()
        );
        if let Some(s) = &serial {
            if *s != id.serial() {
                return Err("controllers report different serial numbers".into());
            }
        }
        serial = Some(id.serial());
    }
    println!("pool: {} region(s)", pool.region_count());

    if sigbus_check {
        let f = funcs.last().expect("at least one");
        let before = f.read32(offset::VS);
        f.set_memory_decoding(false).map_err(|e| e.to_string())?;
        let after = f.read32(offset::VS);
        println!(
            "{}: memory decoding off: VS {before:#x} -> {after:#x}, is_gone={} (SIGBUS caught)",
            f.name(),
            f.is_gone()
        );
        if after != u32::MAX || !f.is_gone() {
            return Err(format!(
                "{}: the SIGBUS guard did not turn BAR0 into all-ones",
                f.name()
            ));
        }
        f.set_memory_decoding(true).map_err(|e| e.to_string())?;
    }
    if let Some(secs) = hold_secs {
        hold(&funcs, secs, ready_file.as_deref())?;
    }
    drop(pool);
    drop(funcs);
    println!("vfio_probe: OK");
    Ok(())
}

fn hold(funcs: &[Arc<VfioFunction>], secs: u64, ready_file: Option<&str>) -> Res<()> {
    println!(
        "holding {} function(s) for up to {secs} s, polling removal_requested()",
        funcs.len()
    );
    if let Some(p) = ready_file {
        std::fs::write(p, b"ready\n").map_err(|e| format!("{p}: {e}"))?;
    }
    let t0 = Instant::now();
    let mut released = 0;
    while t0.elapsed() < Duration::from_secs(secs) && released == 0 {
        for f in funcs {
            if f.is_released() || !f.removal_requested() {
                continue;
            }
            let t = t0.elapsed().as_secs_f64();
            println!(
                "{}: removal_requested() = true at t={t:.2}s; CSTS={:#x}",
                f.name(),
                f.read32(offset::CSTS)
            );
            f.release();
            println!(
                "{}: released at t={:.2}s; BAR0 now reads {:#x} (is_gone={}); set_bus_master -> {:?}",
                f.name(),
                t0.elapsed().as_secs_f64(),
                f.read32(offset::CSTS),
                f.is_gone(),
                f.set_bus_master(true).err().map(|e| e.to_string())
            );
            let node = format!("/sys/bus/pci/devices/{}", f.name());
            let tw = Instant::now();
            while std::path::Path::new(&node).exists() && tw.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let gone = !std::path::Path::new(&node).exists();
            println!(
                "{}: sysfs node {} at t={:.2}s",
                f.name(),
                if gone { "GONE" } else { "still present" },
                t0.elapsed().as_secs_f64()
            );
            if !gone {
                return Err(format!(
                    "{}: the kernel did not finish removing the device",
                    f.name()
                ));
            }
            released += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for f in funcs.iter().filter(|f| !f.is_released()) {
        let csts = f.read32(offset::CSTS);
        println!("{}: still held, CSTS={csts:#x}", f.name());
        if csts == u32::MAX {
            return Err(format!(
                "{}: the surviving controller reads all-ones",
                f.name()
            ));
        }
    }
    if released == 0 {
        println!("no removal requested within {secs} s");
    }
    Ok(())
}

fn main() {
    log::set_logger(&LOGGER).expect("logger");
    log::set_max_level(log::LevelFilter::Info);
    if let Err(e) = run() {
        eprintln!("vfio_probe: FAIL: {e}");
        std::process::exit(1);
    }
}
