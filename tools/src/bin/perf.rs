//! `vfnvme-perf`: NVMe benchmark for the vfnvme userspace driver. See `vfnvme-perf --help`.
#![forbid(unsafe_code)]

use clap::{CommandFactory, Parser};
use vfnvme_tools::perf::{self, args::Args};

fn main() {
    // List the cores before any thread is pinned: afterwards only the pinned one is reported.
    let available = core_affinity::get_core_ids().unwrap_or_default();
    let args = Args::parse();
    let ids: Vec<usize> = available.iter().map(|c| c.id).collect();
    let cfg = match args.validate((!ids.is_empty()).then_some(ids.as_slice())) {
        Ok(c) => c,
        Err(msg) => Args::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit(),
    };
    perf::init_logger(cfg.verbose);
    let report = match perf::run(&cfg, &available) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A bad argument found only once the targets are open exits as bad arguments do.
            let usage = e.downcast_ref::<perf::UsageError>().is_some();
            std::process::exit(if usage { 2 } else { 1 });
        }
    };
    if cfg.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json(&cfg)).expect("JSON")
        );
    } else {
        print!("{}", report.text(&cfg));
    }
    let code = report.exit_code();
    if code != 0 {
        let mut why = Vec::new();
        if report.errors().total() > 0 {
            why.push(format!("{} I/O errors", report.errors().total()));
        }
        if report.mismatches() > 0 {
            why.push(format!("{} verify mismatches", report.mismatches()));
        }
        if report.abandoned > 0 {
            why.push(format!("{} I/Os never completed", report.abandoned));
        }
        eprintln!("vfnvme-perf: FAILED: {}", why.join(", "));
    }
    std::process::exit(code);
}
