//! `vfnvme-perf`: the benchmark, modelled on SPDK's `spdk_nvme_perf`.
//!
//! * [`args`]: command line and validation.
//! * [`target`]: `-r` targets (PCIe, simulator), opening controllers and namespaces, the control
//!   plane.
//! * [`worker`]: the per-core polled I/O loop.
//! * [`rng`]: the PRNG and division-free range mapping.
//! * [`verify`]: self-checking block contents.
//! * [`report`]: table, percentiles, histogram, JSON, exit status.
//!
//! [`run`] ties them together; the binary only parses, calls it and prints.

pub mod args;
pub mod lathist;
pub mod report;
pub mod rng;
pub mod target;
pub mod verify;
pub mod worker;

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use args::{Config, Workload};
use report::Report;
use target::NsTarget;
use worker::{CoreJob, NsPlan, Shared, WorkerParams};

/// Largest LBA range one worker verifies (bounds the generation table: 4 bytes per I/O unit).
pub const VERIFY_MAX_BYTES: u64 = 4 << 30;

/// An error in what the command line asked for that shows only once the targets are open (a
/// namespace too small for the workload): the tool exits 2, as for any bad argument.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Splits the namespaces among the cores: one [`NsPlan`] per (core, namespace).
///
/// Read and write workloads give every core the whole namespace (sequential ones start each
/// core at a different offset). `verify` gives every (core, namespace) pair its own disjoint
/// range — across all namespaces, so that two controllers of one subsystem never verify the
/// same blocks — of at most [`VERIFY_MAX_BYTES`].
///
/// # Errors
/// A namespace too small for verify at this queue depth and core count.
pub fn plan(cfg: &Config, targets: &[NsTarget]) -> Result<Vec<Vec<NsPlan>>, String> {
    let ncores = cfg.cores.len();
    let nt = targets.len();
    let workers = (ncores * nt) as u64;
    let mut out = Vec::with_capacity(ncores);
    for ci in 0..ncores {
        let mut plans = Vec::with_capacity(nt);
        for (ti, t) in targets.iter().enumerate() {
            let info = t.info();
            let bytes = (info.nsze as u128) << info.lba_shift;
            let units = (bytes / cfg.io_size as u128).min(u64::MAX as u128) as u64;
            let worker_index = ci * nt + ti;
            let (first_unit, units, seq_start) = if cfg.workload == Workload::Verify {
                let per = (units / workers).min(VERIFY_MAX_BYTES / cfg.io_size);
                let need = 2 * cfg.queue_depth as u64;
                if per < need {
                    return Err(format!(
                        "{}: too small for verify: each of the {workers} (core, namespace) pairs \
                         gets {per} I/O units of {} bytes but needs at least {need} (2 × -q); \
                         lower -q or -o, use fewer cores, or a larger sim:ns_size",
                        t.label(),
                        cfg.io_size
                    ));
                }
                (worker_index as u64 * per, per, 0)
            } else {
                let start = ((units as u128 * ci as u128) / ncores as u128) as u64;
                (0, units, start)
            };
            plans.push(NsPlan {
                target: t.clone(),
                first_unit,
                units,
                seq_start,
                worker_index,
            });
        }
        out.push(plans);
    }
    Ok(out)
}

/// Runs the benchmark described by `cfg`. `available` is the list of cores the process may run
/// on, taken before any thread was pinned (empty: do not pin).
///
/// # Errors
/// Opening targets, creating queues or buffers, or spawning threads.
pub fn run(cfg: &Config, available: &[core_affinity::CoreId]) -> anyhow::Result<Report> {
    let opened = match cfg.control_core {
        None => target::open(cfg)?,
        // Open from a thread pinned to the control core: the control-plane thread it starts
        // inherits that affinity, and the main thread keeps its own.
        Some(c) => {
            let id = available.iter().find(|x| x.id == c).copied();
            std::thread::scope(|s| {
                s.spawn(|| {
                    match id {
                        Some(id) if core_affinity::set_for_current(id) => {}
                        _ => log::warn!(
                            "--control-core {c}: could not pin; the control plane floats"
                        ),
                    }
                    target::open(cfg)
                })
                .join()
                .expect("the thread opening the targets panicked")
            })?
        }
    };
    let result = run_opened(cfg, available, &opened);
    opened.close();
    result
}

fn run_opened(
    cfg: &Config,
    available: &[core_affinity::CoreId],
    opened: &target::Opened,
) -> anyhow::Result<Report> {
    let plans = plan(cfg, &opened.targets).map_err(|e| anyhow::Error::new(UsageError(e)))?;
    let params = WorkerParams {
        queue_depth: cfg.queue_depth,
        io_size: cfg.io_size,
        workload: cfg.workload,
        read_pct: cfg.read_pct,
        qpairs: cfg.qpairs,
        io_queue_size: cfg.io_queue_size,
        io_timeout_ms: cfg.io_timeout_ms,
        policy: cfg.policy,
        warmup_ns: cfg.warmup.as_nanos() as u64,
        duration_ns: cfg.duration.map(|d| d.as_nanos() as u64),
        number_ios: cfg.number_ios,
        seed: cfg.seed,
        inject_mismatch: cfg.inject_mismatch,
    };
    let ncores = cfg.cores.len();
    let shared = Arc::new(Shared::new(ncores));
    // Ctrl-C stops the run like the end of -t: the cores drain what is in flight and the results
    // so far are printed (as SPDK's perf does). Only the first run in a process gets the handler.
    let on_signal = shared.clone();
    let _ = ctrlc::set_handler(move || {
        if !on_signal.abort.swap(true, Ordering::Relaxed) {
            eprintln!("\nvfnvme-perf: interrupted; draining, then the results so far");
        }
    });
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(ncores);
    for (ci, plans) in plans.into_iter().enumerate() {
        let core = cfg.cores[ci];
        let job = CoreJob {
            core,
            core_index: ci,
            pin: available.iter().find(|c| c.id == core).copied(),
            plans,
        };
        let (p, pool, sh, tx) = (
            params.clone(),
            opened.pool.clone(),
            shared.clone(),
            tx.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("perf-core{core}"))
            .spawn(move || worker::run_core(job, p, pool, sh, tx))
            .context("spawning a worker thread")?;
        handles.push(h);
    }
    drop(tx);
    let mut setup_errors = Vec::new();
    for _ in 0..ncores {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => setup_errors.push(e),
            Err(_) => setup_errors.push("a worker thread died during setup".into()),
        }
    }
    if !setup_errors.is_empty() {
        shared.abort.store(true, Ordering::Relaxed);
    }
    shared.start.wait();
    let started = Instant::now();
    if setup_errors.is_empty() {
        progress_loop(cfg, &shared, &handles, started);
    }
    let mut cores = Vec::with_capacity(ncores);
    for h in handles {
        match h.join() {
            Ok(r) => cores.push(r),
            Err(_) => setup_errors.push("a worker thread panicked".into()),
        }
    }
    if !setup_errors.is_empty() {
        bail!("{}", setup_errors.join("\n"));
    }
    Ok(Report::new(cfg, cores))
}

/// Prints a progress line every second on stderr until the workers finish: rewritten in place
/// (`\r`) on a terminal, one short line per second otherwise.
fn progress_loop(
    cfg: &Config,
    shared: &Shared,
    handles: &[std::thread::JoinHandle<worker::CoreResult>],
    started: Instant,
) {
    let tty = std::io::stderr().is_terminal();
    let mut last_ios = 0u64;
    let mut last_t = started;
    let mut next = started + Duration::from_secs(1);
    let mut printed = false;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        if now < next {
            continue;
        }
        next += Duration::from_secs(1);
        let ios: u64 = shared
            .progress
            .iter()
            .map(|p| p.ios.load(Ordering::Relaxed))
            .sum();
        let errors: u64 = shared
            .progress
            .iter()
            .map(|p| p.errors.load(Ordering::Relaxed))
            .sum();
        let dt = (now - last_t).as_secs_f64();
        let rate = ios.saturating_sub(last_ios) as f64 / dt;
        last_ios = ios;
        last_t = now;
        let elapsed = (now - started).as_secs_f64();
        let phase = if now - started < cfg.warmup {
            " (warm-up)"
        } else {
            ""
        };
        let line = format!(
            "[{elapsed:6.1} s] {rate:>12.0} IOPS {:>10.2} MiB/s {errors:>6} errors{phase}",
            rate * cfg.io_size as f64 / (1024.0 * 1024.0)
        );
        let mut e = std::io::stderr().lock();
        if tty {
            let _ = write!(e, "\r{line}   ");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
        printed = true;
    }
    if tty && printed {
        let _ = writeln!(std::io::stderr());
    }
}

struct StderrLogger(log::LevelFilter);

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.0
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
        }
    }

    fn flush(&self) {}
}

/// Installs a stderr logger: warnings and errors, plus info (-v), debug (-vv) or trace (-vvv).
pub fn init_logger(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger(level)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
