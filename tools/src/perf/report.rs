//! Results: the SPDK-style table, percentiles and histogram, the error and verify summaries, the
//! JSON report, and the exit status.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::args::{format_cores, Config};
use super::verify::{Mismatch, MismatchKind};
use super::worker::{CoreResult, ErrorCounts, RowResult, Stats, VerifySummary};

/// Percentiles printed with `-L` (and always in JSON).
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

/// Everything measured, merged.
#[derive(Debug)]
pub struct Report {
    /// One per (namespace, core), in core order.
    pub rows: Vec<RowResult>,
    /// All rows merged.
    pub total: Stats,
    /// Sum of the rows' IOPS.
    pub total_iops: f64,
    /// Sum of the rows' MiB/s.
    pub total_mibs: f64,
    /// Verify results merged, with the rows' examples.
    pub verify: Option<VerifySummary>,
    /// Verify examples with the row they came from.
    pub verify_examples: Vec<(String, usize, Mismatch)>,
    /// I/Os abandoned at the drain limit.
    pub abandoned: u64,
}

/// I/Os per second.
pub fn iops(ios: u64, elapsed_ns: u64) -> f64 {
    if elapsed_ns == 0 {
        0.0
    } else {
        ios as f64 * 1e9 / elapsed_ns as f64
    }
}

fn mibs(iops: f64, io_size: u64) -> f64 {
    iops * io_size as f64 / (1024.0 * 1024.0)
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn avg_us(s: &Stats) -> f64 {
    if s.ios == 0 {
        0.0
    } else {
        s.lat_sum_ns as f64 / s.ios as f64 / 1000.0
    }
}

fn min_us(s: &Stats) -> f64 {
    if s.ios == 0 {
        0.0
    } else {
        us(s.lat_min_ns)
    }
}

impl Report {
    /// Merges the cores' results.
    pub fn new(cfg: &Config, cores: Vec<CoreResult>) -> Report {
        let mut total = Stats::new();
        let mut rows = Vec::new();
        let mut verify: Option<VerifySummary> = None;
        let mut verify_examples = Vec::new();
        let mut total_iops = 0.0;
        let mut abandoned = 0;
        for c in cores {
            abandoned += c.abandoned;
            for r in c.rows {
                total.merge(&r.stats);
                total_iops += iops(r.stats.ios, r.elapsed_ns);
                if let Some(v) = &r.verify {
                    let t = verify.get_or_insert_with(VerifySummary::default);
                    t.blocks_checked += v.blocks_checked;
                    t.readback_ios += v.readback_ios;
                    t.injected += v.injected;
                    for (a, b) in t.by_kind.iter_mut().zip(v.by_kind) {
                        *a += b;
                    }
                    for m in &v.examples {
                        verify_examples.push((r.label.clone(), r.core, *m));
                    }
                }
                rows.push(r);
            }
        }
        Report {
            rows,
            total_mibs: mibs(total_iops, cfg.io_size),
            total,
            total_iops,
            verify,
            verify_examples,
            abandoned,
        }
    }

    /// Failed I/Os.
    pub fn errors(&self) -> &ErrorCounts {
        &self.total.errors
    }

    /// Verify mismatches.
    pub fn mismatches(&self) -> u64 {
        self.verify.as_ref().map_or(0, |v| v.mismatches())
    }

    /// 0 when clean; 1 for I/O errors, mismatches or abandoned I/Os.
    pub fn exit_code(&self) -> i32 {
        if self.errors().total() > 0 || self.mismatches() > 0 || self.abandoned > 0 {
            1
        } else {
            0
        }
    }

    /// The text report (stdout).
    pub fn text(&self, cfg: &Config) -> String {
        let mut o = String::new();
        let names: Vec<String> = self
            .rows
            .iter()
            .map(|r| format!("{} from core {:>2}", r.label, r.core))
            .collect();
        let w = names.iter().map(|n| n.len()).max().unwrap_or(0).max(28);
        let rule = "=".repeat(w + 60);
        let _ = writeln!(
            o,
            "{:>width$}",
            "Latency(us)",
            width = w + 3 + 12 + 1 + 10 + 1 + 10 + 1 + 10 + 1 + 10
        );
        let _ = writeln!(
            o,
            "{:<w$} : {:>12} {:>10} {:>10} {:>10} {:>10}",
            "Device Information", "IOPS", "MiB/s", "Average", "min", "max"
        );
        for (r, n) in self.rows.iter().zip(&names) {
            let i = iops(r.stats.ios, r.elapsed_ns);
            let _ = writeln!(
                o,
                "{:<w$} : {:>12.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                n,
                i,
                mibs(i, cfg.io_size),
                avg_us(&r.stats),
                min_us(&r.stats),
                us(r.stats.lat_max_ns)
            );
        }
        let _ = writeln!(o, "{rule}");
        let _ = writeln!(
            o,
            "{:<w$} : {:>12.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            "Total",
            self.total_iops,
            self.total_mibs,
            avg_us(&self.total),
            min_us(&self.total),
            us(self.total.lat_max_ns)
        );
        if cfg.latency >= 1 && self.total.ios > 0 {
            let _ = writeln!(o, "\nSummary latency data (all cores, all namespaces):");
            let _ = writeln!(o, "{}", "=".repeat(48));
            let hist = self.total.hist();
            for p in PERCENTILES {
                let v = hist.value_at_quantile(p / 100.0);
                let _ = writeln!(o, "  {:>9.5}% : {:>12.3}us", p, us(v));
            }
        }
        if cfg.latency >= 2 && self.total.ios > 0 {
            let _ = writeln!(o, "\nLatency histogram (all cores, all namespaces):");
            let _ = writeln!(o, "{}", "=".repeat(64));
            let _ = writeln!(
                o,
                "{:>27}  {:>11}  {:>12}",
                "Range in us", "Cumulative", "IO count"
            );
            for b in histogram_buckets(&self.total) {
                let _ = writeln!(
                    o,
                    "{:>12.3} - {:>12.3}: {:>10.4}%  ({:>10})",
                    us(b.0),
                    us(b.1),
                    b.3,
                    b.2
                );
            }
        }
        let errs = self.errors().entries();
        if !errs.is_empty() {
            let _ = writeln!(
                o,
                "\nI/O errors: {} (by NVMe status)",
                self.errors().total()
            );
            for e in &errs {
                let _ = writeln!(o, "  {:>12}  {}", e.count, e.label);
            }
        }
        if self.abandoned > 0 {
            let _ = writeln!(
                o,
                "\n{} I/Os never completed (abandoned after the drain limit)",
                self.abandoned
            );
        }
        if let Some(v) = &self.verify {
            let m = v.mismatches();
            let _ = write!(
                o,
                "\nVerify: {} blocks checked ({} reads in the final read-back), {} mismatch{}",
                v.blocks_checked,
                v.readback_ios,
                m,
                if m == 1 { "" } else { "es" }
            );
            if m > 0 {
                let kinds: Vec<String> = MismatchKind::NAMES
                    .iter()
                    .zip(v.by_kind)
                    .filter(|(_, c)| *c > 0)
                    .map(|(n, c)| format!("{c} {n}"))
                    .collect();
                let _ = write!(o, " ({})", kinds.join(", "));
            }
            let _ = writeln!(o);
            for (label, core, ex) in &self.verify_examples {
                let _ = writeln!(o, "  MISMATCH {label} core {core}: {ex}");
            }
            if v.injected > 0 {
                let _ = writeln!(
                    o,
                    "  ({} expected generation{} corrupted on purpose by --inject-mismatch)",
                    v.injected,
                    if v.injected == 1 { "" } else { "s" }
                );
            }
        }
        o
    }

    /// The JSON report.
    pub fn json(&self, cfg: &Config) -> Value {
        let stats = |s: &Stats, i: f64| {
            json!({
                "ios": s.ios,
                "reads": s.reads,
                "writes": s.ios - s.reads,
                "iops": i,
                "mib_per_s": mibs(i, cfg.io_size),
                "latency_us": {
                    "avg": avg_us(s),
                    "min": min_us(s),
                    "max": us(s.lat_max_ns),
                },
                "errors": s.errors.total(),
            })
        };
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut v = stats(&r.stats, iops(r.stats.ios, r.elapsed_ns));
                v["device"] = json!(r.label);
                v["core"] = json!(r.core);
                v["elapsed_s"] = json!(r.elapsed_ns as f64 / 1e9);
                v
            })
            .collect();
        let hist = self.total.hist();
        let percentiles: serde_json::Map<String, Value> = PERCENTILES
            .iter()
            .map(|p| {
                let v = if self.total.ios == 0 {
                    0.0
                } else {
                    us(hist.value_at_quantile(p / 100.0))
                };
                (format!("p{p}"), json!(v))
            })
            .collect();
        let errors: Vec<Value> = self
            .errors()
            .entries()
            .into_iter()
            .map(|e| {
                json!({
                    "status": e.label,
                    "sct": e.code.map(|c| c.0),
                    "sc": e.code.map(|c| c.1),
                    "count": e.count,
                })
            })
            .collect();
        let mut out = json!({
            "config": {
                "queue_depth": cfg.queue_depth,
                "io_size": cfg.io_size,
                "workload": cfg.workload.name(),
                "read_pct": cfg.read_pct,
                "time_s": cfg.duration.map(|d| d.as_secs_f64()),
                "warmup_s": cfg.warmup.as_secs_f64(),
                "number_ios": cfg.number_ios,
                "cores": format_cores(&cfg.cores),
                "targets": cfg.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                "qpairs": cfg.qpairs,
                "io_queue_size": cfg.io_queue_size,
                "multipath": cfg.multipath,
                "policy": if cfg.multipath { Some(cfg.policy_name.clone()) } else { None },
                "seed": cfg.seed,
            },
            "rows": rows,
            "total": stats(&self.total, self.total_iops),
            "percentiles_us": percentiles,
            "errors": errors,
            "abandoned": self.abandoned,
            "exit_code": self.exit_code(),
        });
        out["total"]["iops"] = json!(self.total_iops);
        out["total"]["mib_per_s"] = json!(self.total_mibs);
        if cfg.latency >= 2 {
            out["histogram_us"] = histogram_buckets(&self.total)
                .into_iter()
                .map(|b| json!({"from": us(b.0), "to": us(b.1), "count": b.2, "cumulative_pct": b.3}))
                .collect();
        }
        if let Some(v) = &self.verify {
            out["verify"] = json!({
                "blocks_checked": v.blocks_checked,
                "readback_ios": v.readback_ios,
                "mismatches": v.mismatches(),
                "wrong_lba": v.by_kind[0],
                "stale_generation": v.by_kind[1],
                "bad_checksum": v.by_kind[2],
                "injected": v.injected,
                "examples": self.verify_examples.iter()
                    .map(|(l, c, m)| format!("{l} core {c}: {m}"))
                    .collect::<Vec<_>>(),
            });
        }
        out
    }
}

/// Non-empty latency buckets doubling from 128 ns: (from ns, to ns, count, cumulative %).
pub fn histogram_buckets(s: &Stats) -> Vec<(u64, u64, u64, f64)> {
    let mut out = Vec::new();
    if s.ios == 0 {
        return out;
    }
    let mut from = 0;
    let mut seen = 0u64;
    let hist = s.hist();
    let total = hist.len();
    for v in hist.iter_log(128, 2.0) {
        let to = v.value_iterated_to();
        let n = v.count_since_last_iteration();
        seen += n;
        if n > 0 {
            out.push((from, to, n, seen as f64 * 100.0 / total as f64));
        }
        // `to` is the last value of this bucket (inclusive): the next one starts after it.
        from = to + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(iops(1000, 1_000_000_000), 1000.0);
        assert_eq!(iops(5, 0), 0.0);
        assert_eq!(mibs(256.0, 4096), 1.0);
    }

    #[test]
    fn buckets_cover_everything() {
        let mut s = Stats::new();
        for v in [100u64, 200, 300, 5_000, 1_000_000] {
            s.lat.record(v);
            s.ios += 1;
        }
        let b = histogram_buckets(&s);
        assert_eq!(b.iter().map(|x| x.2).sum::<u64>(), 5);
        assert!((b.last().unwrap().3 - 100.0).abs() < 1e-9);
        // Each range starts after the last value of the one before it, and holds its values.
        for w in b.windows(2) {
            assert!(w[0].1 < w[1].0, "{:?} overlaps {:?}", w[0], w[1]);
        }
        for v in [100u64, 200, 300, 5_000] {
            assert!(
                b.iter().any(|x| x.0 <= v && v <= x.1),
                "{v} in no range: {b:?}"
            );
        }
    }
}
