//! Command line of `vfnvme-perf` and its validation into a [`Config`].
//!
//! Parsing (types, unknown flags, unknown workloads) is clap's; [`Args::validate`] checks what
//! depends on several flags or on the machine (core list) and returns a message that says what to
//! change. The binary turns either kind of error into exit code 2.

use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use vfnvme_mpath::Policy;

use super::target::{parse_target, ResolvedTarget, TargetSpec};

const LONG_ABOUT: &str = "\
Measures IOPS, bandwidth and latency of NVMe namespaces through the vfnvme polled userspace \
driver, in the manner of SPDK's spdk_nvme_perf.

Each core in the core list runs one pinned thread that owns its queue pairs (no locks, no \
interrupts): it keeps -q I/Os in flight per namespace, polls for completions and resubmits at \
once. Buffers are allocated once per queue slot; LBAs come from a wyrand PRNG mapped onto the \
namespace with a multiply-shift (no division on the I/O path).

Targets (-r) are PCIe functions bound to vfio-pci, or the built-in simulated NVM subsystem \
(the default), whose software controller runs inline in the submitting thread, so that a sim run \
measures the driver's own cost per I/O.

Latency is measured from submission to the poll that reaps the completion. The clock is read \
once per poll batch that returned completions: that reading is the completion time of every \
I/O in the batch and the submission time of the I/Os resubmitted right after it.";

const EXAMPLES: &str = "\
TARGETS (-r, repeatable):
  0000:01:00.0                         a PCIe function bound to vfio-pci
  'trtype:PCIe traddr:0000:01:00.0'    the same, in SPDK's transport-ID syntax
  sim                                  the simulated subsystem: 2 controllers, namespace 1;
                                       null (no data moved, 16G, 4 KiB blocks) for read and
                                       randread, RAM (64M, 4 KiB blocks) for anything that writes
  sim:ctrls=2,ns_size=1G,null,lba=4096 simulated, with options: ctrls=N, ns_size=SIZE, null|ram,
                                       lba=512|4096, threaded (device on its own thread)

  Without --multipath every core runs on namespace 1 of every PCIe controller named, and on
  controller 0 of a simulated subsystem (its other controllers are paths to the same namespace:
  use --multipath to spread over them). With --multipath, controllers of one NVM subsystem are
  grouped and each core runs through a multipath channel with one queue pair per path.

EXAMPLES:
  # 4 KiB random reads at queue depth 32 on the simulated subsystem, 5 s
  vfnvme-perf

  # queue depth 1 latency, with percentiles and a histogram
  vfnvme-perf -q 1 -o 4k -w randread -t 3 -LL

  # 70/30 random read/write mix, 128 KiB, cores 0 and 1, two queue pairs each
  vfnvme-perf -w randrw -M 70 -o 128k -c 0x3 -P 2 -r 0000:01:00.0

  # multipath over both simulated controllers, least queue depth
  vfnvme-perf --multipath --policy least-queue-depth

  # data integrity: writes stamped with LBA, generation and checksum, read back and checked
  vfnvme-perf -w verify -t 2

  # exactly 100000 I/Os per core, JSON report on stdout
  vfnvme-perf -d 100000 --json

EXIT STATUS:
  0 success, 1 I/O errors, verify mismatches or a failure to open a target, 2 bad arguments.";

/// What each I/O does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Sequential mix of reads (-M percent) and writes.
    Rw,
    /// Random mix of reads (-M percent) and writes.
    Randrw,
    /// Random writes of self-checking blocks and reads that check them (-M percent reads), then
    /// a read-back of every block written; exits 1 on any mismatch.
    Verify,
}

impl Workload {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::Randread => "randread",
            Workload::Randwrite => "randwrite",
            Workload::Rw => "rw",
            Workload::Randrw => "randrw",
            Workload::Verify => "verify",
        }
    }

    /// Random LBAs (else sequential).
    pub fn random(self) -> bool {
        matches!(
            self,
            Workload::Randread | Workload::Randwrite | Workload::Randrw | Workload::Verify
        )
    }

    /// Percentage of reads given `-M`.
    pub fn read_pct(self, mix: u8) -> u8 {
        match self {
            Workload::Read | Workload::Randread => 100,
            Workload::Write | Workload::Randwrite => 0,
            Workload::Rw | Workload::Randrw | Workload::Verify => mix,
        }
    }

    /// Writes anything.
    pub fn writes(self) -> bool {
        !matches!(self, Workload::Read | Workload::Randread)
    }
}

/// Command line of `vfnvme-perf`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "vfnvme-perf",
    version,
    about = "NVMe benchmark for the vfnvme userspace driver (in the style of spdk_nvme_perf)",
    long_about = LONG_ABOUT,
    after_help = "Run with --help for targets, examples and exit codes.",
    after_long_help = EXAMPLES
)]
pub struct Args {
    /// I/Os kept in flight per namespace per core.
    #[arg(
        short = 'q',
        long = "queue-depth",
        value_name = "N",
        default_value_t = 32
    )]
    pub queue_depth: u32,

    /// Bytes per I/O: 4096, 4k, 128K, 1m (binary units; a multiple of the block size).
    #[arg(short = 'o', long = "io-size", value_name = "SIZE", default_value = "4k",
          value_parser = parse_size_arg)]
    pub io_size: u64,

    /// I/O pattern.
    #[arg(short = 'w', long = "workload", value_enum, default_value_t = Workload::Randread)]
    pub workload: Workload,

    /// Percentage of reads for rw, randrw and verify (0-100).
    #[arg(
        short = 'M',
        long = "rwmixread",
        value_name = "PCT",
        default_value_t = 50
    )]
    pub rwmixread: u32,

    /// Seconds to measure (default 5; without -t, -d alone bounds the run).
    #[arg(short = 't', long = "time", value_name = "SECS")]
    pub time: Option<f64>,

    /// Seconds of warm-up before measuring; its I/Os are not in the results.
    #[arg(
        short = 'a',
        long = "warmup",
        value_name = "SECS",
        default_value_t = 0.0
    )]
    pub warmup: f64,

    /// Stop after N measured I/Os per core instead of after a time.
    #[arg(short = 'd', long = "number-ios", value_name = "N")]
    pub number_ios: Option<u64>,

    /// Cores as a hex mask, e.g. 0x3 for cores 0 and 1 (default: core 0).
    #[arg(
        short = 'c',
        long = "core-mask",
        value_name = "MASK",
        conflicts_with = "cores"
    )]
    pub core_mask: Option<String>,

    /// Cores as a list, e.g. 0,2-3.
    #[arg(long = "cores", value_name = "LIST")]
    pub cores: Option<String>,

    /// Target: a PCIe address, 'trtype:PCIe traddr:ADDR', or sim[:OPTS]; repeatable (default sim).
    #[arg(short = 'r', long = "target", value_name = "TARGET")]
    pub targets: Vec<String>,

    /// Queue pairs per namespace per core; the queue depth is spread over them.
    #[arg(short = 'P', long = "qpairs", value_name = "N", default_value_t = 1)]
    pub qpairs: u32,

    /// Entries per I/O queue (must exceed -q).
    #[arg(long = "io-queue-size", value_name = "N", default_value_t = 256)]
    pub io_queue_size: u32,

    /// Run on multipath namespaces: controllers of one NVM subsystem become paths.
    #[arg(long)]
    pub multipath: bool,

    /// Multipath policy: round-robin, least-queue-depth or active-passive (default round-robin).
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<String>,

    /// Latency percentiles; twice (-LL) also a latency histogram.
    #[arg(short = 'L', long = "latency", action = ArgAction::Count)]
    pub latency: u8,

    /// Print one JSON object with config, per-core and total results on stdout (no table).
    #[arg(long)]
    pub json: bool,

    /// Verify only, for testing the checker: expect a wrong generation in N I/O units (each of
    /// -o bytes: every block of a unit is then reported).
    #[arg(long = "inject-mismatch", value_name = "N")]
    pub inject_mismatch: Option<u64>,

    /// PRNG seed (runs with the same seed issue the same LBAs).
    #[arg(long, value_name = "N", default_value_t = 0x5eed)]
    pub seed: u64,

    /// Command timeout in milliseconds.
    #[arg(long = "io-timeout-ms", value_name = "MS", default_value_t = 30_000)]
    pub io_timeout_ms: u32,

    /// Do not use shadow doorbells (Doorbell Buffer Config) even where the controller offers
    /// them. On an emulated controller they save an MMIO per completion batch, which helps at low
    /// queue depth, but the device then reads and writes the shadow pages for every command,
    /// which can cost more at high queue depth; this measures both.
    #[arg(long = "no-shadow-doorbells")]
    pub no_shadow_doorbells: bool,

    /// Core for the control-plane thread (health checks, aborts, resets, reconnects, ANA
    /// changes), which wakes every 10 ms. Default: not pinned, so the OS places it. Give it a
    /// core the I/O cores do not use on a large machine; on a small VM, an I/O core can be better
    /// than waking another vCPU.
    #[arg(long = "control-core", value_name = "CORE")]
    pub control_core: Option<usize>,

    /// More log output (-v info, -vv debug, -vvv trace) on stderr.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
}

/// A validated run configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// I/Os in flight per namespace per core.
    pub queue_depth: usize,
    /// Bytes per I/O.
    pub io_size: u64,
    /// Workload.
    pub workload: Workload,
    /// Percentage of reads (0-100), resolved from the workload and -M.
    pub read_pct: u8,
    /// Measuring time (None: until -d I/Os).
    pub duration: Option<Duration>,
    /// Warm-up.
    pub warmup: Duration,
    /// I/Os per core.
    pub number_ios: Option<u64>,
    /// Cores, ascending.
    pub cores: Vec<usize>,
    /// Targets, with the simulator's defaults resolved.
    pub targets: Vec<ResolvedTarget>,
    /// Queue pairs per namespace per core.
    pub qpairs: usize,
    /// Entries per I/O queue.
    pub io_queue_size: u16,
    /// Multipath channels.
    pub multipath: bool,
    /// Multipath policy.
    pub policy: Policy,
    /// Its name.
    pub policy_name: String,
    /// 0 none, 1 percentiles, 2 histogram too.
    pub latency: u8,
    /// JSON report.
    pub json: bool,
    /// Verify: I/O units whose expected generation is corrupted.
    pub inject_mismatch: u64,
    /// PRNG seed.
    pub seed: u64,
    /// Command timeout.
    pub io_timeout_ms: u32,
    /// Use shadow doorbells where offered.
    pub shadow_doorbells: bool,
    /// Core of the control-plane thread (`None`: not pinned).
    pub control_core: Option<usize>,
    /// Log verbosity.
    pub verbose: u8,
}

/// Largest I/O accepted.
pub const MAX_IO_SIZE: u64 = 8 << 20;

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

/// Parses a size: a decimal number with an optional binary suffix `k`, `m`, `g`, `t` (any case,
/// optionally followed by `b` or `ib`): `4096`, `4k`, `128K`, `1m`, `1GiB`.
///
/// # Errors
/// A message naming the bad input.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number with an optional k/m/g/t suffix, e.g. 4k or 4096"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: number too large"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown suffix {suffix:?} (use k, m, g or t, e.g. 128k)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Parses a core list: `0,2-3`, optionally in brackets (`[0,2-3]`, SPDK's form). Sorted, no
/// duplicates.
///
/// # Errors
/// A message naming the bad part.
pub fn parse_core_list(s: &str) -> Result<Vec<usize>, String> {
    let t = s.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(t);
    let mut out = Vec::new();
    for part in t.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("invalid core list {s:?}: empty entry"));
        }
        let num = |x: &str| {
            x.trim().parse::<usize>().map_err(|_| {
                format!("invalid core list {s:?}: {x:?} is not a core number (e.g. 0,2-3)")
            })
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let a = num(part)?;
                (a, a)
            }
        };
        if a > b {
            return Err(format!(
                "invalid core list {s:?}: range {part} is backwards"
            ));
        }
        if b >= 4096 {
            return Err(format!("invalid core list {s:?}: core {b} is out of range"));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Parses a hex core mask (`0x3`, `3`, `0XfF`), or a bracketed list (`[0,2-3]`) as SPDK allows.
///
/// # Errors
/// A message naming the bad mask.
pub fn parse_core_mask(s: &str) -> Result<Vec<usize>, String> {
    let t = s.trim();
    if t.starts_with('[') {
        return parse_core_list(t);
    }
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid core mask {s:?}: expected hex such as 0x3 (cores 0 and 1); for a list use --cores 0,2-3"
        ));
    }
    let hex = hex.trim_start_matches('0');
    if hex.len() > 32 {
        return Err(format!("invalid core mask {s:?}: more than 128 cores"));
    }
    let mask = u128::from_str_radix(if hex.is_empty() { "0" } else { hex }, 16)
        .map_err(|e| format!("invalid core mask {s:?}: {e}"))?;
    if mask == 0 {
        return Err(format!("invalid core mask {s:?}: selects no core"));
    }
    Ok((0..128).filter(|i| mask >> i & 1 == 1).collect())
}

fn seconds(what: &str, flag: &str, v: f64, allow_zero: bool) -> Result<Duration, String> {
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) || v > 1e7 {
        return Err(format!(
            "{flag} {v}: {what} must be {} seconds",
            if allow_zero {
                "0 or more"
            } else {
                "more than 0"
            }
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Args {
    /// Checks the arguments together and against the machine's cores (`available`, listed before
    /// any thread is pinned; `None` if the platform cannot list them).
    ///
    /// # Errors
    /// A message saying what is wrong and what to do.
    pub fn validate(&self, available: Option<&[usize]>) -> Result<Config, String> {
        let q = self.queue_depth;
        if q == 0 {
            return Err("-q 0: the queue depth must be at least 1".into());
        }
        if !(2..=4096).contains(&self.io_queue_size) {
            return Err(format!(
                "--io-queue-size {}: must be between 2 and 4096 entries",
                self.io_queue_size
            ));
        }
        if self.qpairs == 0 || self.qpairs > 64 {
            return Err(format!("-P {}: queue pairs must be 1 to 64", self.qpairs));
        }
        if self.qpairs > q {
            return Err(format!(
                "-P {} with -q {q}: every queue pair needs at least one I/O; raise -q or lower -P",
                self.qpairs
            ));
        }
        let per_qp = q.div_ceil(self.qpairs);
        if per_qp >= self.io_queue_size {
            return Err(format!(
                "-q {q} needs {per_qp} entries per queue pair but --io-queue-size is {} (a queue \
                 holds one fewer command than its entries): raise --io-queue-size above {per_qp} \
                 or lower -q",
                self.io_queue_size
            ));
        }
        let io_size = self.io_size;
        if io_size == 0 || io_size & 511 != 0 {
            return Err(format!(
                "-o {io_size}: the I/O size must be a non-zero multiple of 512 bytes"
            ));
        }
        if io_size > MAX_IO_SIZE {
            return Err(format!(
                "-o {io_size}: at most {} MiB per I/O",
                MAX_IO_SIZE >> 20
            ));
        }
        if self.rwmixread > 100 {
            return Err(format!(
                "-M {}: the read percentage must be 0 to 100",
                self.rwmixread
            ));
        }
        let duration = match (self.time, self.number_ios) {
            (Some(t), _) => Some(seconds("the run time", "-t", t, false)?),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(5)),
        };
        let warmup = seconds("the warm-up", "-a", self.warmup, true)?;
        if self.number_ios == Some(0) {
            return Err("-d 0: the number of I/Os must be at least 1".into());
        }
        let cores = match (&self.core_mask, &self.cores) {
            (Some(m), _) => parse_core_mask(m)?,
            (None, Some(l)) => parse_core_list(l)?,
            (None, None) => vec![0],
        };
        if let Some(avail) = available {
            if let Some(bad) = cores.iter().find(|c| !avail.contains(c)) {
                return Err(format!(
                    "core {bad} does not exist or is not allowed for this process (available: {})",
                    format_cores(avail)
                ));
            }
            if let Some(c) = self.control_core.filter(|c| !avail.contains(c)) {
                return Err(format!(
                    "--control-core {c}: core {c} does not exist or is not allowed for this \
                     process (available: {})",
                    format_cores(avail)
                ));
            }
        }
        if self.inject_mismatch.is_some() && self.workload != Workload::Verify {
            return Err("--inject-mismatch only applies to -w verify".into());
        }
        if self.policy.is_some() && !self.multipath {
            return Err("--policy only applies with --multipath".into());
        }
        let policy_name = self
            .policy
            .clone()
            .unwrap_or_else(|| "round-robin".to_string());
        let policy: Policy = policy_name.parse().map_err(|e| format!("--policy: {e}"))?;
        let specs: Vec<TargetSpec> = if self.targets.is_empty() {
            vec![parse_target("sim")?]
        } else {
            self.targets
                .iter()
                .map(|t| parse_target(t))
                .collect::<Result<_, _>>()?
        };
        let targets: Vec<ResolvedTarget> = specs
            .into_iter()
            .map(|s| s.resolve(self.workload, io_size))
            .collect::<Result<_, _>>()?;
        let read_pct = self.workload.read_pct(self.rwmixread as u8);
        Ok(Config {
            queue_depth: q as usize,
            io_size,
            workload: self.workload,
            read_pct,
            duration,
            warmup,
            number_ios: self.number_ios,
            cores,
            targets,
            qpairs: self.qpairs as usize,
            io_queue_size: self.io_queue_size as u16,
            multipath: self.multipath,
            policy,
            policy_name,
            latency: self.latency,
            json: self.json,
            inject_mismatch: self.inject_mismatch.unwrap_or(0),
            seed: self.seed,
            io_timeout_ms: self.io_timeout_ms,
            shadow_doorbells: !self.no_shadow_doorbells,
            control_core: self.control_core,
            verbose: self.verbose,
        })
    }
}

/// Formats a core list compactly: `0-3,6`.
pub fn format_cores(cores: &[usize]) -> String {
    let mut v = cores.to_vec();
    v.sort_unstable();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        let mut all = vec!["vfnvme-perf"];
        all.extend_from_slice(v);
        Args::try_parse_from(all).expect("parses")
    }

    fn err(v: &[&str]) -> String {
        args(v).validate(Some(&[0, 1, 2, 3])).unwrap_err()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("128K"), Ok(128 << 10));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512b"), Ok(512));
        assert!(parse_size("").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("4x").unwrap_err().contains("suffix"));
        assert!(parse_size("-4k").is_err());
        assert!(parse_size("1.5k").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("17179869184t")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn core_lists_and_masks() {
        assert_eq!(parse_core_list("0,2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(parse_core_list("[3,1]"), Ok(vec![1, 3]));
        assert_eq!(parse_core_list("1-1,1"), Ok(vec![1]));
        assert!(parse_core_list("3-1").is_err());
        assert!(parse_core_list("a").is_err());
        assert!(parse_core_list("1,,2").is_err());
        assert_eq!(parse_core_mask("0x3"), Ok(vec![0, 1]));
        assert_eq!(parse_core_mask("3"), Ok(vec![0, 1]));
        assert_eq!(parse_core_mask("0XA"), Ok(vec![1, 3]));
        assert_eq!(parse_core_mask("[0,2]"), Ok(vec![0, 2]));
        assert!(parse_core_mask("0x0").unwrap_err().contains("no core"));
        assert!(parse_core_mask("0xg").is_err());
        assert!(parse_core_mask("").is_err());
        assert_eq!(format_cores(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn defaults() {
        let c = args(&[]).validate(Some(&[0])).unwrap();
        assert_eq!(c.queue_depth, 32);
        assert_eq!(c.io_size, 4096);
        assert_eq!(c.workload, Workload::Randread);
        assert_eq!(c.read_pct, 100);
        assert_eq!(c.duration, Some(Duration::from_secs(5)));
        assert_eq!(c.cores, vec![0]);
        assert_eq!(c.targets.len(), 1);
        let c = args(&["-d", "100"]).validate(None).unwrap();
        assert_eq!(c.duration, None);
        let c = args(&["-w", "randrw", "-M", "70"]).validate(None).unwrap();
        assert_eq!(c.read_pct, 70);
    }

    #[test]
    fn validation_errors() {
        assert!(err(&["-q", "0"]).contains("at least 1"));
        assert!(err(&["-q", "256"]).contains("--io-queue-size"));
        assert!(err(&["-q", "64", "--io-queue-size", "64"]).contains("--io-queue-size"));
        assert!(err(&["-M", "101", "-w", "rw"]).contains("0 to 100"));
        assert!(err(&["-c", "0x10"]).contains("core 4 does not exist"));
        assert!(err(&["--cores", "0,9"]).contains("core 9"));
        assert!(err(&["-c", "zz"]).contains("core mask"));
        assert!(err(&["-o", "1000"]).contains("multiple of 512"));
        assert!(err(&["-t", "0"]).contains("more than 0"));
        assert!(err(&["-d", "0"]).contains("at least 1"));
        assert!(err(&["--inject-mismatch", "1"]).contains("verify"));
        assert!(err(&["--policy", "round-robin"]).contains("--multipath"));
        assert!(err(&["--multipath", "--policy", "fastest"]).contains("unknown policy"));
        assert!(err(&["-P", "4", "-q", "2"]).contains("-P"));
        assert!(err(&["-w", "verify", "-r", "sim:null"]).contains("null"));
        assert!(err(&["-r", "sim:lba=4096", "-o", "512"]).contains("block size"));
        assert!(err(&["-r", "pcie:zz"]).contains("target"));
    }

    #[test]
    fn clap_rejects_unknown_workload_and_bad_size() {
        let all = ["vfnvme-perf", "-w", "randomread"];
        assert!(Args::try_parse_from(all).is_err());
        let all = ["vfnvme-perf", "-o", "4q"];
        let e = Args::try_parse_from(all).unwrap_err().to_string();
        assert!(e.contains("suffix"), "{e}");
        let all = ["vfnvme-perf", "-c", "0x1", "--cores", "0"];
        assert!(Args::try_parse_from(all).is_err());
    }
}
