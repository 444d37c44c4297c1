//! What `vfnvme-setup status` shows, read from sysfs and procfs below the [`Host`] root.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};
use vfnvme::pci::sysfs::{link_name, Bdf};
use vfnvme_hugepages::sysfs::{hugepages_per_node_at, hugetlbfs_mounts_in, NodeHugepages};

use super::Host;

/// The IOMMU group of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuGroup {
    /// No `iommu_group` link: no IOMMU (vfio-pci cannot take it without no-IOMMU mode).
    None,
    /// A real IOMMU group.
    Group(u32),
    /// vfio's unsafe no-IOMMU group (`/dev/vfio/noiommu-N`).
    NoIommu(u32),
}

impl std::fmt::Display for IommuGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IommuGroup::None => f.write_str("none"),
            IommuGroup::Group(g) => write!(f, "{g}"),
            IommuGroup::NoIommu(g) => write!(f, "noiommu-{g}"),
        }
    }
}

/// One mount of a block device (a line of `/proc/mounts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The device (`/dev/nvme0n1p1`).
    pub device: String,
    /// Where.
    pub mountpoint: String,
    /// Filesystem type.
    pub fstype: String,
}

/// A namespace block device of a controller and what uses it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockDev {
    /// The disk (`nvme0n1`; for native multipath, the head shared by the paths).
    pub disk: String,
    /// Its partitions (`nvme0n1p1`, ...).
    pub partitions: Vec<String>,
    /// Mounts of the disk or its partitions.
    pub mounts: Vec<Mount>,
    /// Swap areas on it.
    pub swaps: Vec<String>,
    /// Block devices stacked on it (`dm-0`, `md0`), from `holders/`.
    pub holders: Vec<String>,
}

impl BlockDev {
    /// Mounted, partitioned, swapped on or held: binding away from nvme would pull it from under
    /// its users.
    pub fn in_use(&self) -> bool {
        !self.partitions.is_empty()
            || !self.mounts.is_empty()
            || !self.swaps.is_empty()
            || !self.holders.is_empty()
    }

    /// Why it is in use, for messages: `nvme0n1p1 mounted at /data (ext4)`, ...
    pub fn uses(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .mounts
            .iter()
            .map(|m| {
                format!(
                    "{} mounted at {} ({})",
                    m.device.trim_start_matches("/dev/"),
                    m.mountpoint,
                    m.fstype
                )
            })
            .collect();
        v.extend(self.swaps.iter().map(|s| format!("{s} is swap")));
        v.extend(
            self.holders
                .iter()
                .map(|h| format!("{} held by {h}", self.disk)),
        );
        if v.is_empty() && !self.partitions.is_empty() {
            v.push(format!(
                "{} has partitions {}",
                self.disk,
                self.partitions.join(", ")
            ));
        }
        v
    }
}

/// One NVMe controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlStatus {
    /// PCI address.
    pub bdf: Bdf,
    /// PCI vendor id.
    pub vendor: Option<u16>,
    /// PCI device id.
    pub device: Option<u16>,
    /// NUMA node (`None`: no affinity, -1 in sysfs).
    pub numa_node: Option<u32>,
    /// Bound driver.
    pub driver: Option<String>,
    /// `driver_override`.
    pub driver_override: Option<String>,
    /// IOMMU group.
    pub iommu_group: IommuGroup,
    /// The kernel's controller name when bound to nvme (`nvme0`).
    pub nvme_name: Option<String>,
    /// Subsystem NQN, when the kernel nvme driver exposes it.
    pub subnqn: Option<String>,
    /// Model, when the kernel nvme driver exposes it.
    pub model: Option<String>,
    /// Serial number, when the kernel nvme driver exposes it.
    pub serial: Option<String>,
    /// Namespace block devices.
    pub block_devs: Vec<BlockDev>,
}

impl CtrlStatus {
    /// Every reason the controller is in use by the kernel (empty: free to bind).
    pub fn uses(&self) -> Vec<String> {
        self.block_devs.iter().flat_map(BlockDev::uses).collect()
    }
}

/// Everything `status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// NVMe controllers.
    pub ctrls: Vec<CtrlStatus>,
    /// 2 MiB hugepages per NUMA node.
    pub nodes: Vec<NodeHugepages>,
    /// Machine-wide 2 MiB reserve (`/proc/sys/vm/nr_hugepages`).
    pub hugepages_total: Option<u64>,
    /// Machine-wide free 2 MiB pages.
    pub hugepages_free: Option<u64>,
    /// hugetlbfs mount points.
    pub hugetlbfs: Vec<String>,
    /// The vfio-pci driver is loaded.
    pub vfio_pci_loaded: bool,
    /// IOMMU groups exist (an IOMMU is on).
    pub iommu_on: bool,
}

fn hex16(s: Option<String>) -> Option<u16> {
    s.and_then(|s| u16::from_str_radix(s.trim_start_matches("0x"), 16).ok())
}

/// Parses `/proc/mounts` text.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (device, mountpoint, fstype) = (f.next()?, f.next()?, f.next()?);
            Some(Mount {
                device: device.to_string(),
                // /proc/mounts escapes spaces as \040.
                mountpoint: mountpoint.replace("\\040", " "),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// The head disk of an nvme namespace node: `nvme0c1n1` (a native-multipath path) → `nvme0n1`,
/// `nvme2n1` → itself; `None` for names that are not namespace nodes.
pub fn disk_of(name: &str) -> Option<String> {
    let rest = name.strip_prefix("nvme")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (subsys, ns) = rest.split_once('n')?;
    if !digits(ns) {
        return None;
    }
    let subsys = match subsys.split_once('c') {
        Some((s, c)) if digits(s) && digits(c) => s,
        None if digits(subsys) => subsys,
        _ => return None,
    };
    Some(format!("nvme{subsys}n{ns}"))
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn block_dev(host: &Host, disk: &str, mounts: &[Mount], swaps: &[String]) -> BlockDev {
    let dir = host.sys_block().join(disk);
    let partitions: Vec<String> = dir_names(&dir)
        .into_iter()
        .filter(|n| {
            n.strip_prefix(disk)
                .and_then(|r| r.strip_prefix('p'))
                .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    let mut names = vec![disk.to_string()];
    names.extend(partitions.iter().cloned());
    let mut holders = dir_names(&dir.join("holders"));
    for p in &partitions {
        holders.extend(dir_names(&dir.join(p).join("holders")));
    }
    let is_ours = |dev: &str| {
        dev.strip_prefix("/dev/")
            .is_some_and(|d| names.iter().any(|n| n == d))
    };
    BlockDev {
        disk: disk.to_string(),
        mounts: mounts
            .iter()
            .filter(|m| is_ours(&m.device))
            .cloned()
            .collect(),
        swaps: swaps.iter().filter(|s| is_ours(s)).cloned().collect(),
        holders,
        partitions,
    }
}

/// Reads one controller's status.
pub fn controller(host: &Host, bdf: Bdf, mounts: &[Mount], swaps: &[String]) -> CtrlStatus {
    let dir = host.paths.device_dir(bdf);
    let driver = host.paths.driver_of(bdf);
    let group = link_name(&dir.join("iommu_group")).and_then(|g| g.parse::<u32>().ok());
    let iommu_group = match group {
        None => IommuGroup::None,
        Some(g) => {
            let name = host.read(
                &host
                    .paths
                    .sys
                    .join("kernel/iommu_groups")
                    .join(g.to_string())
                    .join("name"),
            );
            if name.as_deref() == Some("vfio-noiommu")
                || host.paths.dev_vfio.join(format!("noiommu-{g}")).exists()
            {
                IommuGroup::NoIommu(g)
            } else {
                IommuGroup::Group(g)
            }
        }
    };
    let nvme_name = dir_names(&dir.join("nvme")).into_iter().next();
    let (mut subnqn, mut model, mut serial) = (None, None, None);
    let mut block_devs: Vec<BlockDev> = Vec::new();
    if let Some(n) = &nvme_name {
        let cdir = dir.join("nvme").join(n);
        subnqn = host.read(&cdir.join("subsysnqn")).filter(|s| !s.is_empty());
        model = host.read(&cdir.join("model")).filter(|s| !s.is_empty());
        serial = host.read(&cdir.join("serial")).filter(|s| !s.is_empty());
        let mut disks: Vec<String> = dir_names(&cdir).iter().filter_map(|e| disk_of(e)).collect();
        disks.sort();
        disks.dedup();
        block_devs = disks
            .iter()
            .map(|d| block_dev(host, d, mounts, swaps))
            .collect();
    }
    CtrlStatus {
        bdf,
        vendor: hex16(host.read(&dir.join("vendor"))),
        device: hex16(host.read(&dir.join("device"))),
        numa_node: host
            .read(&dir.join("numa_node"))
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|n| u32::try_from(n).ok()),
        driver,
        driver_override: host.driver_override(bdf),
        iommu_group,
        nvme_name,
        subnqn,
        model,
        serial,
        block_devs,
    }
}

/// Current mounts and swap devices.
pub fn mounts_and_swaps(host: &Host) -> (Vec<Mount>, Vec<String>) {
    let mounts = parse_mounts(&std::fs::read_to_string(host.proc("mounts")).unwrap_or_default());
    let swaps = std::fs::read_to_string(host.proc("swaps"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    (mounts, swaps)
}

/// Reads one controller with fresh mount information.
pub fn one(host: &Host, bdf: Bdf) -> CtrlStatus {
    let (m, s) = mounts_and_swaps(host);
    controller(host, bdf, &m, &s)
}

/// Reads everything `status` shows.
///
/// # Errors
/// `/sys/bus/pci/devices` cannot be listed.
pub fn status(host: &Host) -> anyhow::Result<Status> {
    let (mounts, swaps) = mounts_and_swaps(host);
    let ctrls = host
        .nvme_functions()?
        .into_iter()
        .map(|b| controller(host, b, &mounts, &swaps))
        .collect();
    let num = |p: &Path| host.read(p).and_then(|s| s.parse::<u64>().ok());
    let mounts_text = std::fs::read_to_string(host.proc("mounts")).unwrap_or_default();
    Ok(Status {
        ctrls,
        nodes: hugepages_per_node_at(&host.root).unwrap_or_default(),
        hugepages_total: num(&host.proc("sys/vm/nr_hugepages")),
        hugepages_free: num(&host
            .paths
            .sys
            .join("kernel/mm/hugepages/hugepages-2048kB/free_hugepages")),
        hugetlbfs: hugetlbfs_mounts_in(&mounts_text)
            .into_iter()
            .map(|p| p.display().to_string())
            .collect(),
        vfio_pci_loaded: host.driver_dir("vfio-pci").exists(),
        iommu_on: !dir_names(&host.paths.sys.join("kernel/iommu_groups")).is_empty(),
    })
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

fn table(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

impl Status {
    /// The human report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if self.ctrls.is_empty() {
            out.push_str("No NVMe controllers (PCI class 0x010802).\n");
        } else {
            let mut rows = vec![[
                "BDF",
                "Vendor:Dev",
                "NUMA",
                "Driver",
                "IOMMU",
                "Ctrl",
                "Model",
                "Subsystem NQN",
                "In use",
            ]
            .map(String::from)
            .to_vec()];
            for c in &self.ctrls {
                let vd = match (c.vendor, c.device) {
                    (Some(v), Some(d)) => format!("{v:04x}:{d:04x}"),
                    _ => "-".into(),
                };
                let mut driver = opt(&c.driver).to_string();
                if let Some(o) = &c.driver_override {
                    if c.driver.as_deref() != Some(o) {
                        driver.push_str(&format!(" (override {o})"));
                    }
                }
                let uses = c.uses();
                let in_use = if uses.is_empty() {
                    if c.block_devs.is_empty() {
                        "-".to_string()
                    } else {
                        let disks: Vec<&str> =
                            c.block_devs.iter().map(|b| b.disk.as_str()).collect();
                        format!("no ({})", disks.join(", "))
                    }
                } else {
                    format!("YES: {}", uses.join("; "))
                };
                rows.push(vec![
                    c.bdf.to_string(),
                    vd,
                    c.numa_node.map_or("-".into(), |n| n.to_string()),
                    driver,
                    c.iommu_group.to_string(),
                    opt(&c.nvme_name).to_string(),
                    opt(&c.model).to_string(),
                    opt(&c.subnqn).to_string(),
                    in_use,
                ]);
            }
            let _ = writeln!(out, "NVMe controllers:");
            out.push_str(&table(&rows));
            if self
                .ctrls
                .iter()
                .any(|c| c.driver.as_deref() != Some("nvme"))
            {
                out.push_str(
                    "(model and subsystem NQN are known only while the kernel nvme driver holds \
                     a controller; `vfnvme-identify` reads them over VFIO)\n",
                );
            }
        }
        let _ = writeln!(
            out,
            "\nvfio-pci driver: {}; IOMMU: {}",
            if self.vfio_pci_loaded {
                "loaded"
            } else {
                "not loaded"
            },
            if self.iommu_on {
                "on (IOMMU groups present)"
            } else {
                "off (no IOMMU groups)"
            }
        );
        out.push_str("\nHugepages (2 MiB):\n");
        for n in &self.nodes {
            let _ = writeln!(
                out,
                "  node{}: {} reserved, {} free ({} MiB reserved)",
                n.node,
                n.total,
                n.free,
                n.total * 2
            );
        }
        match (self.hugepages_total, self.hugepages_free) {
            (Some(t), f) => {
                let _ = writeln!(
                    out,
                    "  total: {t} reserved, {} free ({} MiB reserved)",
                    f.map_or("?".into(), |f| f.to_string()),
                    t * 2
                );
            }
            (None, _) => out.push_str("  total: unknown (/proc/sys/vm/nr_hugepages unreadable)\n"),
        }
        let _ = writeln!(
            out,
            "hugetlbfs mounts: {}",
            if self.hugetlbfs.is_empty() {
                "none (vfnvme maps hugepages with MAP_HUGETLB and does not need one)".into()
            } else {
                self.hugetlbfs.join(", ")
            }
        );
        out
    }

    /// The JSON report.
    pub fn json(&self) -> Value {
        let ctrls: Vec<Value> = self
            .ctrls
            .iter()
            .map(|c| {
                let (group, kind) = match c.iommu_group {
                    IommuGroup::None => (None, "none"),
                    IommuGroup::Group(g) => (Some(g), "iommu"),
                    IommuGroup::NoIommu(g) => (Some(g), "noiommu"),
                };
                json!({
                    "bdf": c.bdf.to_string(),
                    "vendor": c.vendor.map(|v| format!("{v:04x}")),
                    "device": c.device.map(|v| format!("{v:04x}")),
                    "numa_node": c.numa_node,
                    "driver": c.driver,
                    "driver_override": c.driver_override,
                    "iommu_group": group,
                    "iommu": kind,
                    "nvme_name": c.nvme_name,
                    "subnqn": c.subnqn,
                    "model": c.model,
                    "serial": c.serial,
                    "in_use": !c.uses().is_empty(),
                    "uses": c.uses(),
                    "block_devices": c.block_devs.iter().map(|b| json!({
                        "disk": b.disk,
                        "partitions": b.partitions,
                        "mounts": b.mounts.iter().map(|m| json!({
                            "device": m.device, "mountpoint": m.mountpoint, "fstype": m.fstype,
                        })).collect::<Vec<_>>(),
                        "swaps": b.swaps,
                        "holders": b.holders,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "controllers": ctrls,
            "vfio_pci_loaded": self.vfio_pci_loaded,
            "iommu": self.iommu_on,
            "hugepages": {
                "page_size": 2 << 20,
                "total": self.hugepages_total,
                "free": self.hugepages_free,
                "nodes": self.nodes.iter().map(|n| json!({
                    "node": n.node, "total": n.total, "free": n.free,
                })).collect::<Vec<_>>(),
                "hugetlbfs_mounts": self.hugetlbfs,
            },
        })
    }
}
