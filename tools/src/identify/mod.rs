//! `vfnvme-identify`: what nvme-cli's `id-ctrl` and `id-ns` show, decoded, for controllers
//! opened over VFIO or in the built-in simulator, grouped by NVM subsystem.
//!
//! * this module: the command line, targets, opening and grouping ([`run`]);
//! * [`decode`]: field decoders (bit sets, units, identifiers);
//! * [`report`]: the human and JSON renderings.

pub mod decode;
pub mod report;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use vfnvme::pci::sysfs::Bdf;
use vfnvme::pci::vfio::VfioSystem;
use vfnvme::pci::PciFunction;
use vfnvme::sim::{NsConfig, SimSubsystem};
use vfnvme::{Controller, ControllerOptions, Namespace};
use vfnvme_hugepages::{DmaPool, PagePolicy};
use vfnvme_mpath::subsystem::same_namespace;
use vfnvme_mpath::Subsystem;

const EXAMPLES: &str = "\
Targets:
  0000:01:00.0, 01:00.0, 'trtype:PCIe traddr:0000:01:00.0'
      a PCIe NVMe controller, opened through VFIO: it must be bound to vfio-pci first
      (`sudo vfnvme-setup bind 0000:01:00.0`), and you need access to its /dev/vfio node.
  sim, sim:ctrls=N,ns=N,ns_size=SIZE,lba=512|4096
      the built-in simulated NVM subsystem (default: 2 controllers sharing one 1 GiB
      namespace of 4 KiB blocks); needs no hardware and no privileges.

Examples:
  vfnvme-identify sim                          # try it: two controllers, one subsystem
  vfnvme-identify sim:ctrls=3,ns=2 -n 2        # only namespace 2
  sudo vfnvme-identify 0000:01:00.0 0000:02:00.0
  sudo vfnvme-identify -r 'trtype:PCIe traddr:0000:01:00.0' --json | jq '.subsystems[0].subnqn'

Controllers that report the same subsystem NQN are shown together: the subsystem, its
controllers (each decoded), then each namespace once with the controllers that reach it.
Exit status: 0 done, 1 a controller could not be opened or the namespace is missing,
2 bad command line.";

/// `vfnvme-identify` command line.
#[derive(Debug, Parser)]
#[command(
    name = "vfnvme-identify",
    version,
    about = "Decoded Identify Controller and Identify Namespace data, grouped by NVM subsystem",
    long_about = "Show the decoded Identify Controller and Identify Namespace data of NVMe \
                  controllers driven by vfnvme (like nvme-cli's id-ctrl and id-ns), grouped by \
                  NVM subsystem: PCIe controllers bound to vfio-pci, or the built-in simulator.",
    after_help = EXAMPLES
)]
pub struct Args {
    /// Targets (see below); may be given as positional arguments or with -r.
    #[arg(value_name = "TARGET", value_parser = parse_target)]
    pub targets: Vec<Target>,
    /// A target (repeatable), SPDK style.
    #[arg(short = 'r', long = "target", value_name = "TARGET", value_parser = parse_target)]
    pub more: Vec<Target>,
    /// Only this namespace.
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub nsid: Option<u32>,
    /// Print JSON (a stable structure, see the README) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Log more (repeat for debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// One target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A PCIe function.
    Pcie(Bdf),
    /// A simulated subsystem.
    Sim(SimTarget),
}

/// A simulated subsystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimTarget {
    /// Controllers.
    pub ctrls: usize,
    /// Namespaces (NSIDs 1..=N), all shared.
    pub namespaces: u32,
    /// Bytes per namespace.
    pub ns_size: u64,
    /// Block size.
    pub lba: u32,
}

impl Default for SimTarget {
    fn default() -> Self {
        SimTarget {
            ctrls: 2,
            namespaces: 1,
            ns_size: 1 << 30,
            lba: 4096,
        }
    }
}

fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&v[..i], 1 << 20),
        (i, 'g' | 'G') => (&v[..i], 1 << 30),
        (i, 't' | 'T') => (&v[..i], 1 << 40),
        _ => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Parses one target.
///
/// # Errors
/// A message listing the accepted forms.
pub fn parse_target(s: &str) -> Result<Target, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if lower == "sim" || lower.starts_with("sim:") {
        let mut sim = SimTarget::default();
        for o in t[3..].trim_start_matches(':').split(',').map(str::trim) {
            if o.is_empty() {
                continue;
            }
            let (k, v) = o.split_once('=').unwrap_or((o, ""));
            let bad = || {
                format!(
                    "sim option {o:?}: {}",
                    match k {
                        "ctrls" => "want ctrls=1..16",
                        "ns" => "want ns=1..16",
                        "ns_size" | "size" => "want a size such as 64M or 1G (at least 1M)",
                        "lba" => "want lba=512 or lba=4096",
                        _ => "unknown (known: ctrls=N, ns=N, ns_size=SIZE, lba=512|4096)",
                    }
                )
            };
            match k {
                "ctrls" => {
                    sim.ctrls = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=16).contains(n))
                        .ok_or_else(bad)?
                }
                "ns" => {
                    sim.namespaces = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=16).contains(n))
                        .ok_or_else(bad)?
                }
                "ns_size" | "size" => {
                    sim.ns_size = parse_size(v).filter(|&n| n >= 1 << 20).ok_or_else(bad)?
                }
                "lba" => {
                    sim.lba = v
                        .parse()
                        .ok()
                        .filter(|n| *n == 512 || *n == 4096)
                        .ok_or_else(bad)?
                }
                _ => return Err(bad()),
            }
        }
        return Ok(Target::Sim(sim));
    }
    Bdf::parse(t)
        .map(Target::Pcie)
        .map_err(|e| format!("{e}; or `sim` for the built-in simulated subsystem (see --help)"))
}

/// One controller's identity as opened.
#[derive(Clone)]
pub struct CtrlEntry {
    /// Its name (PCI address or simulated name).
    pub name: String,
    /// The controller.
    pub ctrl: Controller,
}

/// One namespace of a subsystem: the controllers that reach it and its data. A NSID whose data
/// differ between controllers (private namespaces) gives one entry per distinct namespace.
#[derive(Clone)]
pub struct NsEntry {
    /// NSID.
    pub nsid: u32,
    /// Controllers attached to it.
    pub ctrls: Vec<String>,
    /// Its Identify data (from the first controller).
    pub ns: Namespace,
}

/// A subsystem: its NQN, controllers and namespaces.
#[derive(Clone)]
pub struct SubsysEntry {
    /// Subsystem NQN.
    pub subnqn: String,
    /// Controllers.
    pub ctrls: Vec<CtrlEntry>,
    /// Namespaces (in NSID order).
    pub namespaces: Vec<NsEntry>,
}

/// Builds the per-subsystem view of opened controllers, restricted to `nsid` when given.
/// Uses [`Subsystem::group`]; when it reports an inconsistency (for example two controllers
/// share a SUBNQN but do not claim multi-controller), the warning is returned and the
/// controllers are shown one subsystem each.
pub fn group(ctrls: Vec<Controller>, nsid: Option<u32>) -> (Vec<SubsysEntry>, Option<String>) {
    let (groups, warning): (Vec<(String, Vec<Controller>)>, _) =
        match Subsystem::group(ctrls.clone()) {
            Ok(g) => (g.into_iter().map(|s| (s.subnqn, s.ctrls)).collect(), None),
            Err(e) => (
                ctrls
                    .into_iter()
                    .map(|c| (c.identify().subnqn(), vec![c]))
                    .collect(),
                Some(format!("{e}; showing each controller on its own")),
            ),
        };
    let out = groups
        .into_iter()
        .map(|(subnqn, ctrls)| {
            let mut by_nsid: BTreeMap<u32, Vec<NsEntry>> = BTreeMap::new();
            for c in &ctrls {
                for ns in c.namespaces() {
                    let id = ns.info.nsid;
                    if nsid.is_some_and(|n| n != id) {
                        continue;
                    }
                    let list = by_nsid.entry(id).or_default();
                    match list.iter_mut().find(|e| same_namespace(&e.ns, &ns)) {
                        Some(e) => e.ctrls.push(c.name().to_string()),
                        None => list.push(NsEntry {
                            nsid: id,
                            ctrls: vec![c.name().to_string()],
                            ns,
                        }),
                    }
                }
            }
            SubsysEntry {
                subnqn,
                ctrls: ctrls
                    .into_iter()
                    .map(|c| CtrlEntry {
                        name: c.name().to_string(),
                        ctrl: c,
                    })
                    .collect(),
                namespaces: by_nsid.into_values().flatten().collect(),
            }
        })
        .collect();
    (out, warning)
}

/// Controllers opened for a report; [`Opened::close`] shuts them down.
pub struct Opened {
    /// Every controller, in target order.
    pub ctrls: Vec<Controller>,
    pool: Arc<DmaPool>,
    sims: Vec<SimSubsystem>,
}

impl Opened {
    /// Shuts every controller down (orderly CC.SHN), unmaps the DMA memory from their domains
    /// while the VFIO containers are still open, and drops the simulators.
    pub fn close(mut self) {
        Controller::detach_all(&self.ctrls, &self.pool);
        self.ctrls.clear();
        self.sims.clear();
    }
}

/// Opens every target: PCIe functions through VFIO (all in one call, so they can share a
/// container), simulated subsystems in process.
///
/// # Errors
/// The VFIO backend's error (not bound to vfio-pci, no IOMMU group, permissions: it says how to
/// fix it), or a controller that does not come up.
pub fn open(targets: &[Target]) -> anyhow::Result<Opened> {
    let pool = DmaPool::new(PagePolicy::PreferHuge);
    let mut funcs: Vec<Arc<dyn PciFunction>> = Vec::new();
    let mut sims = Vec::new();
    let mut bdfs: Vec<String> = Vec::new();
    for t in targets {
        match t {
            Target::Pcie(b) => {
                let s = b.to_string();
                if !bdfs.contains(&s) {
                    bdfs.push(s);
                }
            }
            Target::Sim(s) => {
                let mut bld = SimSubsystem::builder().controllers(s.ctrls);
                for n in 1..=s.namespaces {
                    bld = bld.namespace(NsConfig {
                        lba_size: s.lba,
                        ..NsConfig::null(n, s.ns_size)
                    });
                }
                let sim = bld
                    .try_build()
                    .map_err(|e| anyhow::anyhow!("building the simulated subsystem: {e}"))?;
                for i in 0..s.ctrls {
                    funcs.push(sim.controller(i));
                }
                sims.push(sim);
            }
        }
    }
    if !bdfs.is_empty() {
        let f = VfioSystem::open(&bdfs)
            .with_context(|| format!("opening {} through VFIO", bdfs.join(", ")))?;
        funcs.extend(f.into_iter().map(|f| f as Arc<dyn PciFunction>));
    }
    let opts = ControllerOptions {
        async_events: false,
        io_queues: 1,
        ..ControllerOptions::default()
    };
    let mut ctrls = Vec::new();
    for f in funcs {
        let name = f.name().to_string();
        match Controller::open(f, pool.clone(), opts) {
            Ok(c) => ctrls.push(c),
            Err(e) => {
                for c in &ctrls {
                    let _ = c.shutdown();
                }
                return Err(e).with_context(|| format!("bringing up controller {name}"));
            }
        }
    }
    Ok(Opened { ctrls, pool, sims })
}

/// Runs a parsed command line, printing the report. Returns the exit code.
pub fn run(args: &Args) -> i32 {
    crate::perf::init_logger(args.verbose);
    let targets: Vec<Target> = args.targets.iter().chain(&args.more).copied().collect();
    if targets.is_empty() {
        eprintln!(
            "vfnvme-identify: error: no target: give PCI addresses (0000:01:00.0) or `sim` \
             (see --help)"
        );
        return 2;
    }
    match report_for(&targets, args.nsid, args.json) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("vfnvme-identify: error: {e:#}");
            1
        }
    }
}

/// Opens the targets, renders the report (text or JSON), and closes them.
///
/// # Errors
/// Opening failed, or `nsid` is not active anywhere.
pub fn report_for(targets: &[Target], nsid: Option<u32>, json: bool) -> anyhow::Result<String> {
    let opened = open(targets)?;
    let (subs, warning) = group(opened.ctrls.clone(), nsid);
    if let Some(w) = warning {
        eprintln!("vfnvme-identify: warning: {w}");
    }
    let out = if let Some(n) = nsid.filter(|_| subs.iter().all(|s| s.namespaces.is_empty())) {
        opened.close();
        bail!("namespace {n} is not active on any of the controllers");
    } else if json {
        serde_json::to_string_pretty(&report::json(&subs)).expect("JSON") + "\n"
    } else {
        report::text(&subs)
    };
    opened.close();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("sim").unwrap(),
            Target::Sim(SimTarget::default())
        );
        assert_eq!(
            parse_target("sim:ctrls=3,ns=2,ns_size=64M,lba=512").unwrap(),
            Target::Sim(SimTarget {
                ctrls: 3,
                namespaces: 2,
                ns_size: 64 << 20,
                lba: 512
            })
        );
        assert_eq!(
            parse_target("trtype:PCIe traddr:0000:01:00.0").unwrap(),
            Target::Pcie(Bdf::parse("01:00.0").unwrap())
        );
        assert!(parse_target("sim:ctrls=0")
            .unwrap_err()
            .contains("ctrls=1..16"));
        assert!(parse_target("sim:fast").unwrap_err().contains("unknown"));
        assert!(parse_target("nvme0").unwrap_err().contains("sim"));
    }

    #[test]
    fn sim_groups_into_one_subsystem() {
        let t = [parse_target("sim:ctrls=2,ns=2").unwrap()];
        let opened = open(&t).unwrap();
        let (subs, w) = group(opened.ctrls.clone(), None);
        assert!(w.is_none());
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].ctrls.len(), 2);
        let nsids: Vec<u32> = subs[0].namespaces.iter().map(|n| n.nsid).collect();
        assert_eq!(nsids, [1, 2]);
        assert_eq!(subs[0].namespaces[0].ctrls.len(), 2, "shared by both");
        let (subs2, _) = group(opened.ctrls.clone(), Some(2));
        assert_eq!(subs2[0].namespaces.len(), 1);
        let text = report::text(&subs);
        assert!(text.contains(&subs[0].subnqn), "{text}");
        assert!(text.contains("Doorbell Buffer Config"), "{text}");
        assert!(text.contains("in use"), "{text}");
        let j = report::json(&subs);
        assert_eq!(j["subsystems"][0]["controllers"][1]["cntlid"], 2);
        assert_eq!(j["subsystems"][0]["namespaces"][0]["nsid"], 1);
        opened.close();
        let e = report_for(&t, Some(9), false).unwrap_err().to_string();
        assert!(e.contains("namespace 9"), "{e}");
    }
}
