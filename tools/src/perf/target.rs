//! Targets: parsing `-r`, resolving the simulator's defaults, and opening controllers and
//! namespaces.
//!
//! * PCIe: `0000:01:00.0`, `01:00.0`, or SPDK's `trtype:PCIe traddr:0000:01:00.0`. Opened by
//!   [`open_pcie`], the one place that touches the VFIO backend.
//! * Simulator: `sim[:opts]`, options comma-separated: `ctrls=N`, `ns_size=SIZE` (or `size=`),
//!   `null` or `ram`, `lba=512|4096`, `threaded` (device on its own thread instead of inline in
//!   the submitting thread). Defaults: 2 controllers, 4 KiB blocks, a null 16 GiB namespace for
//!   read workloads and a RAM 64 MiB one for anything that writes (a null namespace discards
//!   writes, so it cannot be verified).
//!
//! Without `--multipath`, the namespaces benchmarked are namespace 1 of every PCIe controller
//! and of controller 0 of each simulated subsystem (the others are further paths to the same
//! namespace). With `--multipath`, every controller is opened, controllers are grouped by
//! subsystem NQN, and namespace 1 of each subsystem becomes one multipath target.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use vfnvme::pci::vfio::VfioSystem;
use vfnvme::pci::PciFunction;
use vfnvme::sim::{Backing, NsConfig, SimSubsystem};
use vfnvme::{ControlPlane, Controller, ControllerOptions, NsInfo};
use vfnvme_hugepages::{DmaPool, PagePolicy};
use vfnvme_mpath::control::ControlThread;
use vfnvme_mpath::{MpNamespace, MpathControl, ReconnectOptions, Subsystem};

use super::args::{parse_size, Config, Workload};

/// Namespace id benchmarked on every controller.
pub const NSID: u32 = 1;

/// A simulated subsystem as written on the command line (unset options take defaults in
/// [`TargetSpec::resolve`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimSpec {
    /// Controllers.
    pub ctrls: Option<usize>,
    /// Namespace size in bytes.
    pub ns_size: Option<u64>,
    /// Null or RAM.
    pub backing: Option<Backing>,
    /// Block size.
    pub lba: Option<u32>,
    /// Device on its own thread.
    pub threaded: bool,
}

/// A parsed `-r` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// A PCIe function, normalized (`0000:01:00.0`).
    Pcie(String),
    /// The simulator.
    Sim(SimSpec),
}

/// A target with every default decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedTarget {
    /// A PCIe function.
    Pcie(String),
    /// A simulated subsystem.
    Sim {
        /// Controllers.
        ctrls: usize,
        /// Its one namespace.
        ns: NsConfig,
        /// Device runs in the submitting thread.
        inline: bool,
    },
}

impl std::fmt::Display for ResolvedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolvedTarget::Pcie(a) => write!(f, "trtype:PCIe traddr:{a}"),
            ResolvedTarget::Sim { ctrls, ns, inline } => write!(
                f,
                "sim:ctrls={ctrls},ns_size={},{},lba={}{}",
                ns.size_bytes,
                if ns.backing == Backing::Null {
                    "null"
                } else {
                    "ram"
                },
                ns.lba_size,
                if *inline { "" } else { ",threaded" }
            ),
        }
    }
}

/// Parses a PCI address `DDDD:BB:DD.F` or `BB:DD.F` into the normalized `dddd:bb:dd.f`.
///
/// # Errors
/// A message naming the bad address.
pub fn parse_bdf(s: &str) -> Result<String, String> {
    let bad = || format!("invalid PCI address {s:?}: expected DDDD:BB:DD.F such as 0000:01:00.0");
    let parts: Vec<&str> = s.trim().split(':').collect();
    let (dom, bus, devfn) = match parts.as_slice() {
        [d, b, df] => (*d, *b, *df),
        [b, df] => ("0", *b, *df),
        _ => return Err(bad()),
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
    let hex = |x: &str, max: u32| {
        if x.is_empty() || x.len() > 4 {
            return Err(bad());
        }
        u32::from_str_radix(x, 16)
            .ok()
            .filter(|v| *v <= max)
            .ok_or_else(bad)
    };
    let (d, b, v, f) = (
        hex(dom, 0xffff)?,
        hex(bus, 0xff)?,
        hex(dev, 0x1f)?,
        hex(func, 7)?,
    );
    Ok(format!("{d:04x}:{b:02x}:{v:02x}.{f:x}"))
}

/// Parses one `-r` argument.
///
/// # Errors
/// A message saying which forms are accepted.
pub fn parse_target(s: &str) -> Result<TargetSpec, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if lower == "sim" || lower.starts_with("sim:") {
        return parse_sim(t.get(4..).unwrap_or("")).map(TargetSpec::Sim);
    }
    if ["trtype:", "traddr:", "trtype=", "traddr="]
        .iter()
        .any(|k| lower.contains(k))
    {
        let mut trtype = None;
        let mut traddr = None;
        for kv in t.split_whitespace() {
            // SPDK takes `key:value` and `key=value`; the value of traddr holds colons itself.
            let (k, v) = match (kv.split_once(':'), kv.split_once('=')) {
                (Some((k1, v1)), Some((k2, v2))) => {
                    if k1.len() < k2.len() {
                        (k1, v1)
                    } else {
                        (k2, v2)
                    }
                }
                (Some(p), None) | (None, Some(p)) => p,
                (None, None) => {
                    return Err(format!(
                        "target {s:?}: {kv:?} is not key:value (e.g. trtype:PCIe \
                         traddr:0000:01:00.0)"
                    ))
                }
            };
            match k.to_ascii_lowercase().as_str() {
                "trtype" => trtype = Some(v.to_string()),
                "traddr" => traddr = Some(v.to_string()),
                "ns" if v.trim() == NSID.to_string() => {}
                "ns" => {
                    return Err(format!(
                        "target {s:?}: ns:{v}: vfnvme-perf benchmarks namespace {NSID} of each \
                         controller; other namespaces are not supported yet"
                    ))
                }
                // The host NQN matters to fabrics only.
                "hostnqn" => {}
                other => {
                    return Err(format!(
                        "target {s:?}: key {other:?} is not supported (trtype, traddr, ns, \
                         hostnqn)"
                    ))
                }
            }
        }
        match trtype.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("pcie") => {}
            Some(other) => {
                return Err(format!(
                    "target {s:?}: trtype {other:?} is not supported (only PCIe; or use -r sim)"
                ))
            }
            None => return Err(format!("target {s:?}: missing trtype:PCIe")),
        }
        let a = traddr.ok_or_else(|| format!("target {s:?}: missing traddr:DDDD:BB:DD.F"))?;
        return parse_bdf(&a)
            .map(TargetSpec::Pcie)
            .map_err(|e| format!("target {s:?}: {e}"));
    }
    parse_bdf(t).map(TargetSpec::Pcie).map_err(|_| {
        format!(
            "invalid target {s:?}: expected a PCI address (0000:01:00.0), \
             'trtype:PCIe traddr:0000:01:00.0', or sim[:ctrls=2,ns_size=1G,null|ram,lba=4096]"
        )
    })
}

fn parse_sim(opts: &str) -> Result<SimSpec, String> {
    let mut s = SimSpec::default();
    for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (o.to_ascii_lowercase(), None),
        };
        match (k.as_str(), v) {
            ("ctrls" | "controllers", Some(v)) => {
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or_else(|| format!("sim option ctrls={v}: want 1 to 16"))?;
                s.ctrls = Some(n);
            }
            ("ns_size" | "size", Some(v)) => {
                s.ns_size = Some(parse_size(v).map_err(|e| format!("sim option {k}: {e}"))?)
            }
            ("lba" | "lba_size", Some(v)) => match v {
                "512" => s.lba = Some(512),
                "4096" | "4k" => s.lba = Some(4096),
                _ => return Err(format!("sim option lba={v}: want 512 or 4096")),
            },
            ("null", None) => s.backing = Some(Backing::Null),
            ("ram", None) => s.backing = Some(Backing::Ram),
            ("threaded", None) => s.threaded = true,
            ("inline", None) => s.threaded = false,
            _ => {
                return Err(format!(
                    "unknown sim option {o:?} (known: ctrls=N, ns_size=SIZE, null, ram, \
                     lba=512|4096, threaded)"
                ))
            }
        }
    }
    Ok(s)
}

/// Default size of a simulated null namespace.
pub const SIM_NULL_SIZE: u64 = 16 << 30;
/// Default size of a simulated RAM namespace.
pub const SIM_RAM_SIZE: u64 = 64 << 20;

impl TargetSpec {
    /// Decides the simulator's defaults for `workload` and checks what can be checked before
    /// opening anything.
    ///
    /// # Errors
    /// Verify on a null namespace, an I/O size that is not a multiple of the block size, or a
    /// namespace smaller than one I/O.
    pub fn resolve(self, workload: Workload, io_size: u64) -> Result<ResolvedTarget, String> {
        let s = match self {
            TargetSpec::Pcie(a) => return Ok(ResolvedTarget::Pcie(a)),
            TargetSpec::Sim(s) => s,
        };
        let backing = s.backing.unwrap_or(if workload.writes() {
            Backing::Ram
        } else {
            Backing::Null
        });
        if backing == Backing::Null && workload == Workload::Verify {
            return Err(
                "-w verify needs a namespace that keeps data, but sim:null discards \
                 writes; use -r sim:ram (the default for verify)"
                    .into(),
            );
        }
        let lba = s.lba.unwrap_or(4096);
        if io_size & (lba as u64 - 1) != 0 {
            return Err(format!(
                "-o {io_size}: not a multiple of the block size {lba} of the simulated \
                 namespace (use -o {lba} or larger, or sim:lba=512)"
            ));
        }
        let size = s.ns_size.unwrap_or(match backing {
            Backing::Null => SIM_NULL_SIZE,
            Backing::Ram => SIM_RAM_SIZE,
        });
        if size < io_size {
            return Err(format!(
                "sim ns_size={size}: smaller than one I/O of {io_size} bytes"
            ));
        }
        Ok(ResolvedTarget::Sim {
            ctrls: s.ctrls.unwrap_or(2),
            ns: NsConfig {
                nsid: NSID,
                size_bytes: size,
                lba_size: lba,
                backing,
                metadata_size: 0,
            },
            inline: !s.threaded,
        })
    }
}

/// Opens PCIe functions through the VFIO backend ([`VfioSystem::open`]: one shared type1
/// container when the IOMMU groups allow it, or no-IOMMU mode for `noiommu-N` groups).
///
/// # Errors
/// The backend's error (function not bound to vfio-pci, no IOMMU group, permissions...), which
/// says how to fix it.
pub fn open_pcie(bdfs: &[String]) -> anyhow::Result<Vec<Arc<dyn PciFunction>>> {
    let funcs = VfioSystem::open(bdfs)
        .with_context(|| format!("opening {} through VFIO", bdfs.join(", ")))?;
    Ok(funcs
        .into_iter()
        .map(|f| f as Arc<dyn PciFunction>)
        .collect())
}

/// One namespace to benchmark.
#[derive(Clone)]
pub enum NsTarget {
    /// A namespace on one controller, through plain queue pairs.
    Direct {
        /// The controller.
        ctrl: Controller,
        /// The namespace.
        info: NsInfo,
        /// Name in reports.
        label: String,
    },
    /// A multipath namespace, through channels.
    Mpath {
        /// The namespace.
        ns: Arc<MpNamespace>,
        /// Name in reports.
        label: String,
    },
}

impl NsTarget {
    /// The namespace geometry.
    pub fn info(&self) -> NsInfo {
        match self {
            NsTarget::Direct { info, .. } => *info,
            NsTarget::Mpath { ns, .. } => ns.info,
        }
    }

    /// Name in reports.
    pub fn label(&self) -> &str {
        match self {
            NsTarget::Direct { label, .. } | NsTarget::Mpath { label, .. } => label,
        }
    }
}

/// Everything opened for a run. [`Opened::close`] stops the control plane and shuts the
/// controllers down.
pub struct Opened {
    /// DMA memory shared by all controllers.
    pub pool: Arc<DmaPool>,
    /// Every controller opened.
    pub ctrls: Vec<Controller>,
    /// Namespaces to run on.
    pub targets: Vec<NsTarget>,
    control: Option<ControlPlane>,
    mpath_control: Option<ControlThread>,
    sims: Vec<SimSubsystem>,
}

/// Opens every target of `cfg`: controllers, namespaces, multipath grouping, and the control
/// plane (a [`ControlPlane`] thread servicing the controllers, or with `--multipath` an
/// [`MpathControl`] thread, which services them itself).
///
/// # Errors
/// A controller that does not come up, a missing namespace, an I/O size that does not fit the
/// namespace, or the VFIO backend's error for PCIe targets.
pub fn open(cfg: &Config) -> anyhow::Result<Opened> {
    let pool = DmaPool::new(PagePolicy::PreferHuge);
    let mut sims = Vec::new();
    let mut funcs: Vec<Arc<dyn PciFunction>> = Vec::new();
    let mut pcie = Vec::new();
    for t in &cfg.targets {
        match t {
            ResolvedTarget::Pcie(a) => pcie.push(a.clone()),
            ResolvedTarget::Sim { ctrls, ns, inline } => {
                let sim = SimSubsystem::builder()
                    .controllers(*ctrls)
                    .namespace(*ns)
                    .inline(*inline)
                    .try_build()
                    .map_err(|e| anyhow::anyhow!("building the simulated subsystem: {e}"))?;
                let n = if cfg.multipath { *ctrls } else { 1 };
                for i in 0..n {
                    funcs.push(sim.controller(i));
                }
                sims.push(sim);
            }
        }
    }
    if !pcie.is_empty() {
        funcs.extend(open_pcie(&pcie)?);
    }
    let opts = ControllerOptions {
        shadow_doorbells: cfg.shadow_doorbells,
        ..ControllerOptions::default()
    };
    let mut ctrls = Vec::new();
    for f in funcs {
        let name = f.name().to_string();
        let c = Controller::open(f, pool.clone(), opts)
            .with_context(|| format!("opening controller {name}"))?;
        ctrls.push(c);
    }
    let mut targets = Vec::new();
    if cfg.multipath {
        for s in Subsystem::group(ctrls.clone()).context("grouping controllers by subsystem")? {
            let ns = s
                .namespace(NSID)
                .with_context(|| format!("multipath namespace {NSID} of {}", s.subnqn))?;
            let names: Vec<String> = s.ctrls.iter().map(|c| c.name().to_string()).collect();
            let label = format!("mpath {} NSID {NSID}", names.join("+"));
            targets.push(NsTarget::Mpath { ns, label });
        }
    } else {
        for c in &ctrls {
            let ns = c.namespace(NSID).with_context(|| {
                format!(
                    "{}: namespace {NSID} is not active on this controller",
                    c.name()
                )
            })?;
            targets.push(NsTarget::Direct {
                ctrl: c.clone(),
                info: ns.info,
                label: format!("{} NSID {NSID}", c.name()),
            });
        }
    }
    for t in &targets {
        let info = t.info();
        let lba = info.lba_size();
        // Block sizes are powers of two.
        if cfg.io_size & (lba - 1) != 0 {
            bail!(
                "{}: -o {} is not a multiple of the block size {lba}",
                t.label(),
                cfg.io_size
            );
        }
        if info.nsze.saturating_mul(lba) < cfg.io_size {
            bail!("{}: namespace is smaller than one I/O", t.label());
        }
    }
    let (control, mpath_control) = if cfg.multipath {
        let nss: Vec<Arc<MpNamespace>> = targets
            .iter()
            .filter_map(|t| match t {
                NsTarget::Mpath { ns, .. } => Some(ns.clone()),
                NsTarget::Direct { .. } => None,
            })
            .collect();
        (
            None,
            Some(MpathControl::new(&nss, ReconnectOptions::default()).spawn()),
        )
    } else {
        (
            Some(ControlPlane::spawn(
                ctrls.clone(),
                Duration::from_millis(10),
            )),
            None,
        )
    };
    Ok(Opened {
        pool,
        ctrls,
        targets,
        control,
        mpath_control,
        sims,
    })
}

impl Opened {
    /// Stops the control plane, then shuts every controller down (orderly CC.SHN) and unmaps the
    /// DMA memory from their domains. Call after the workers, and their queue pairs, are gone.
    pub fn close(mut self) {
        self.targets.clear();
        drop(self.mpath_control.take());
        drop(self.control.take());
        Controller::detach_all(&self.ctrls, &self.pool);
        self.ctrls.clear();
        self.sims.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(parse_bdf("0000:01:00.0").unwrap(), "0000:01:00.0");
        assert_eq!(parse_bdf("01:1f.7").unwrap(), "0000:01:1f.7");
        assert_eq!(parse_bdf("0000:AB:00.1").unwrap(), "0000:ab:00.1");
        assert!(parse_bdf("0000:01:20.0").is_err());
        assert!(parse_bdf("0000:01:00.8").is_err());
        assert!(parse_bdf("0000:01:00").is_err());
        assert!(parse_bdf("sim").is_err());
    }

    #[test]
    fn target_forms() {
        assert_eq!(
            parse_target("trtype:PCIe traddr:0000:01:00.0").unwrap(),
            TargetSpec::Pcie("0000:01:00.0".into())
        );
        assert_eq!(
            parse_target("0000:02:00.0").unwrap(),
            TargetSpec::Pcie("0000:02:00.0".into())
        );
        // SPDK's other spellings: `=` for `:`, and the namespace and host NQN keys.
        for form in [
            "trtype=PCIe traddr=0000:01:00.0",
            "trtype:pcie traddr=0000:01:00.0 ns:1",
            "trtype:PCIe traddr:0000:01:00.0 ns=1 hostnqn:nqn.2014-08.org.example:host",
        ] {
            assert_eq!(
                parse_target(form).unwrap(),
                TargetSpec::Pcie("0000:01:00.0".into()),
                "{form}"
            );
        }
        assert!(parse_target("trtype:PCIe traddr:0000:01:00.0 ns:2")
            .unwrap_err()
            .contains("not supported yet"));
        assert!(parse_target("trtype:PCIe traddr:0000:01:00.0 subnqn:x")
            .unwrap_err()
            .contains("\"subnqn\" is not supported"));
        assert!(parse_target("trtype:RDMA traddr:1.2.3.4")
            .unwrap_err()
            .contains("only PCIe"));
        assert!(parse_target("trtype:PCIe").unwrap_err().contains("traddr"));
        assert!(parse_target("nvme0n1")
            .unwrap_err()
            .contains("invalid target"));
        assert_eq!(
            parse_target("sim").unwrap(),
            TargetSpec::Sim(SimSpec::default())
        );
        let TargetSpec::Sim(s) = parse_target("sim:ctrls=3,ns_size=1G,null,lba=512").unwrap()
        else {
            panic!()
        };
        assert_eq!(s.ctrls, Some(3));
        assert_eq!(s.ns_size, Some(1 << 30));
        assert_eq!(s.backing, Some(Backing::Null));
        assert_eq!(s.lba, Some(512));
        assert!(parse_target("sim:ctrls=0").is_err());
        assert!(parse_target("sim:lba=1024").is_err());
        assert!(parse_target("sim:fast")
            .unwrap_err()
            .contains("unknown sim option"));
    }

    #[test]
    fn sim_defaults_follow_the_workload() {
        let r = TargetSpec::Sim(SimSpec::default())
            .resolve(Workload::Randread, 4096)
            .unwrap();
        let ResolvedTarget::Sim { ctrls, ns, inline } = r else {
            panic!()
        };
        assert_eq!(
            (ctrls, ns.backing, ns.size_bytes, ns.lba_size, inline),
            (2, Backing::Null, SIM_NULL_SIZE, 4096, true)
        );
        let r = TargetSpec::Sim(SimSpec::default())
            .resolve(Workload::Verify, 4096)
            .unwrap();
        let ResolvedTarget::Sim { ns, .. } = r else {
            panic!()
        };
        assert_eq!((ns.backing, ns.size_bytes), (Backing::Ram, SIM_RAM_SIZE));
        let null = SimSpec {
            backing: Some(Backing::Null),
            ..SimSpec::default()
        };
        assert!(TargetSpec::Sim(null)
            .resolve(Workload::Verify, 4096)
            .is_err());
    }

    #[test]
    fn pcie_is_reported_clearly() {
        let e = open_pcie(&["0000:01:00.0".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("0000:01:00.0"), "{e}");
    }
}
