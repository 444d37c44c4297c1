//! PCI addresses, and what sysfs and `/dev/vfio` say about a function before VFIO opens it: which
//! driver holds it, its IOMMU group, the group's device node, and the group's other members.
//! Every refusal becomes a [`pci::Error::Backend`](crate::pci::Error) whose detail names the fix.
//!
//! All paths are relative to a [`SysPaths`], so tests run on a fake sysfs tree.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::pci::Error;

/// A PCI address: domain, bus, device, function (`0000:01:00.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub dev: u8,
    /// Function number, 0..=7.
    pub func: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.dev, self.func
        )
    }
}

/// Why a PCI address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad PCI address '{input}': {why} (want DDDD:BB:DD.F, BB:DD.F or 'trtype:PCIe traddr:DDDD:BB:DD.F')")]
pub struct BdfParseError {
    /// What was given.
    pub input: String,
    /// What was wrong with it.
    pub why: &'static str,
}

impl Bdf {
    /// Parses `DDDD:BB:DD.F`, `BB:DD.F`, SPDK's dotted `DDDD.BB.DD.F`, or an SPDK transport ID
    /// such as `trtype:PCIe traddr:0000:01:00.0` (keys in any order, case-insensitive).
    ///
    /// # Errors
    /// [`BdfParseError`] naming what is wrong.
    pub fn parse(s: &str) -> Result<Bdf, BdfParseError> {
        let err = |why| BdfParseError {
            input: s.to_string(),
            why,
        };
        let s_trim = s.trim();
        let addr = if s_trim.contains(char::is_whitespace)
            || s_trim.to_ascii_lowercase().starts_with("trtype")
            || s_trim.to_ascii_lowercase().starts_with("traddr")
        {
            let mut traddr = None;
            for kv in s_trim.split_whitespace() {
                let (k, v) = kv
                    .split_once([':', '='])
                    .ok_or(err("transport ID field without ':'"))?;
                match k.to_ascii_lowercase().as_str() {
                    "trtype" if !v.eq_ignore_ascii_case("pcie") => {
                        return Err(err("only trtype PCIe is a local PCI function"))
                    }
                    "trtype" => {}
                    "traddr" => traddr = Some(v),
                    _ => {} // subnqn, hostnqn...: not ours
                }
            }
            traddr.ok_or(err("transport ID without traddr"))?
        } else {
            s_trim
        };
        Self::parse_addr(addr).ok_or(err("not a PCI address"))
    }

    fn parse_addr(a: &str) -> Option<Bdf> {
        let hex = |p: &str, max_len: usize| -> Option<u32> {
            if p.is_empty() || p.len() > max_len || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(p, 16).ok()
        };
        // Split off the function (after the last '.').
        let (rest, func) = a.rsplit_once('.')?;
        let parts: Vec<&str> = rest.split([':', '.']).collect();
        let (domain, bus, dev) = match parts.as_slice() {
            [d, b, v] => (hex(d, 8)?, hex(b, 2)?, hex(v, 2)?),
            [b, v] => (0, hex(b, 2)?, hex(v, 2)?),
            _ => return None,
        };
        let func = hex(func, 1)?;
        if domain > 0xffff || dev > 31 || func > 7 {
            return None;
        }
        Some(Bdf {
            domain: domain as u16,
            bus: bus as u8,
            dev: dev as u8,
            func: func as u8,
        })
    }
}

impl FromStr for Bdf {
    type Err = BdfParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Bdf::parse(s)
    }
}

/// Where sysfs and the VFIO device nodes are: `/sys` and `/dev/vfio` normally, a temporary tree
/// in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysPaths {
    /// The sysfs mount (`/sys`).
    pub sys: PathBuf,
    /// The VFIO device node directory (`/dev/vfio`).
    pub dev_vfio: PathBuf,
}

impl Default for SysPaths {
    fn default() -> Self {
        SysPaths {
            sys: PathBuf::from("/sys"),
            dev_vfio: PathBuf::from("/dev/vfio"),
        }
    }
}

/// The kind of VFIO group node a function has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// `/dev/vfio/N`: a real IOMMU group (type1 container).
    Iommu,
    /// `/dev/vfio/noiommu-N`: vfio's unsafe no-IOMMU mode.
    NoIommu,
}

/// What sysfs says about a function that VFIO can open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// The function.
    pub bdf: Bdf,
    /// Its sysfs directory (`/sys/bus/pci/devices/<bdf>`).
    pub sysfs_dir: PathBuf,
    /// IOMMU group number.
    pub group: u32,
    /// The group's node in `/dev/vfio`.
    pub node: PathBuf,
    /// Which kind of node it is.
    pub kind: GroupKind,
}

fn backend(bdf: Bdf, op: &'static str, detail: String) -> Error {
    Error::Backend {
        function: bdf.to_string(),
        op,
        detail,
    }
}

/// The last component of the symlink at `p` (a driver or an IOMMU group), if it is one.
pub fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

impl SysPaths {
    /// `/sys/bus/pci/devices/<bdf>`.
    pub fn device_dir(&self, bdf: Bdf) -> PathBuf {
        self.sys.join("bus/pci/devices").join(bdf.to_string())
    }

    /// The driver bound to a function, if any.
    pub fn driver_of(&self, bdf: Bdf) -> Option<String> {
        link_name(&self.device_dir(bdf).join("driver"))
    }

    /// Checks that `bdf` exists, is bound to vfio-pci and has an IOMMU group with a VFIO node,
    /// preferring `want` when both kinds of node could apply (`None`: whichever exists).
    ///
    /// # Errors
    /// [`Error::Backend`] (op "locate") with the fix in `detail`: no such function, not bound to
    /// vfio-pci, no IOMMU group (no IOMMU and no no-IOMMU mode), no group node, or a node of the
    /// other kind than asked for.
    pub fn locate(&self, bdf: Bdf, want: Option<GroupKind>) -> Result<GroupInfo, Error> {
        let dir = self.device_dir(bdf);
        if !dir.exists() {
            return Err(backend(
                bdf,
                "locate",
                format!(
                    "no PCI function {bdf} in {}: check the address (`lspci -D -d ::0108`)",
                    dir.parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            ));
        }
        match self.driver_of(bdf) {
            Some(d) if d == "vfio-pci" => {}
            Some(d) => {
                return Err(backend(
                    bdf,
                    "locate",
                    format!(
                        "bound to driver '{d}', not vfio-pci: hand it over with \
                         `vfnvme-setup bind {bdf}`"
                    ),
                ))
            }
            None => {
                return Err(backend(
                    bdf,
                    "locate",
                    format!(
                    "not bound to any driver: bind it to vfio-pci with `vfnvme-setup bind {bdf}`"
                ),
                ))
            }
        }
        let group = link_name(&dir.join("iommu_group"))
            .and_then(|g| g.parse::<u32>().ok())
            .ok_or_else(|| {
                backend(
                    bdf,
                    "locate",
                    "no IOMMU group: the kernel runs without an IOMMU; enable intel_iommu=on \
                     (or amd_iommu=on) on the kernel command line, or use no-IOMMU mode \
                     (`modprobe vfio enable_unsafe_noiommu_mode=1`, root only, unsafe)"
                        .to_string(),
                )
            })?;
        let iommu = self.dev_vfio.join(group.to_string());
        let noiommu = self.dev_vfio.join(format!("noiommu-{group}"));
        let (node, kind) = match (want, iommu.exists(), noiommu.exists()) {
            (Some(GroupKind::Iommu) | None, true, _) => (iommu, GroupKind::Iommu),
            (Some(GroupKind::NoIommu) | None, _, true) => (noiommu, GroupKind::NoIommu),
            (Some(GroupKind::Iommu), false, true) => {
                return Err(backend(
                    bdf,
                    "locate",
                    format!(
                        "only {} exists: vfio runs in no-IOMMU mode here; ask for no-IOMMU mode \
                         (IommuMode::NoIommu) or enable an IOMMU",
                        noiommu.display()
                    ),
                ))
            }
            (Some(GroupKind::NoIommu), true, false) => {
                return Err(backend(
                    bdf,
                    "locate",
                    format!(
                        "no-IOMMU mode asked for, but the function has a real IOMMU group ({}); \
                         use the IOMMU (IommuMode::Auto)",
                        iommu.display()
                    ),
                ))
            }
            _ => {
                return Err(backend(
                    bdf,
                    "locate",
                    format!(
                        "IOMMU group {group} has no node {} (nor noiommu-{group}): is the \
                         vfio-pci module loaded and devtmpfs mounted?",
                        iommu.display()
                    ),
                ))
            }
        };
        Ok(GroupInfo {
            bdf,
            sysfs_dir: dir,
            group,
            node,
            kind,
        })
    }

    /// The members of IOMMU group `group` other than `except`, each with its driver:
    /// `["0000:00:1f.3 (driver snd_hda_intel)", ...]`.
    pub fn group_members(&self, group: u32, except: Bdf) -> Vec<String> {
        let dir = self
            .sys
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices");
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name == except.to_string() {
                    continue;
                }
                let drv = link_name(&e.path().join("driver"));
                out.push(format!(
                    "{name} (driver {})",
                    drv.as_deref().unwrap_or("none")
                ));
            }
        }
        out.sort();
        out
    }

    /// The error for a group VFIO calls not viable: lists the other members that must also be
    /// bound to vfio-pci (or unbound).
    pub fn not_viable_error(&self, info: &GroupInfo) -> Error {
        let others = self.group_members(info.group, info.bdf);
        let list = if others.is_empty() {
            "no other members found in sysfs".to_string()
        } else {
            others.join(", ")
        };
        backend(
            info.bdf,
            "open group",
            format!(
                "IOMMU group {} is not viable: every function in it must be bound to vfio-pci or \
                 to no driver; other members: {list} (bind them with `vfnvme-setup bind <bdf>`)",
                info.group
            ),
        )
    }

    /// The error for an open of the group node that failed with `e`.
    pub fn open_group_error(&self, info: &GroupInfo, e: &std::io::Error) -> Error {
        let detail = match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
                "permission denied on {}: run as root, or `chown $USER {}` (and raise the \
                 locked-memory limit, `ulimit -l`)",
                info.node.display(),
                info.node.display()
            ),
            _ if e.raw_os_error() == Some(libc::EBUSY) => format!(
                "{} is busy: another process holds the group",
                info.node.display()
            ),
            _ => format!("open {}: {e}", info.node.display()),
        };
        backend(info.bdf, "open group", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn bdf_forms() {
        let want = Bdf {
            domain: 0,
            bus: 1,
            dev: 0,
            func: 0,
        };
        assert_eq!(Bdf::parse("0000:01:00.0").unwrap(), want);
        assert_eq!(Bdf::parse("01:00.0").unwrap(), want);
        assert_eq!(Bdf::parse("0000.01.00.0").unwrap(), want);
        assert_eq!(Bdf::parse("trtype:PCIe traddr:0000:01:00.0").unwrap(), want);
        assert_eq!(Bdf::parse("traddr:0000:01:00.0 trtype:pcie").unwrap(), want);
        assert_eq!(Bdf::parse("  trtype=PCIe  traddr=01:00.0 ").unwrap(), want);
        assert!(Bdf::parse("10000:ab:1f.7").is_err(), "domain above 0xffff");
        assert_eq!(
            Bdf::parse("abcd:ef:1f.7").unwrap().to_string(),
            "abcd:ef:1f.7"
        );
        for bad in [
            "",
            "0000:01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "0000:001:00.0",
            "zz:00.0",
            "trtype:RDMA traddr:0000:01:00.0",
            "trtype:PCIe",
            "0000:01:00.0 extra",
        ] {
            assert!(Bdf::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    struct FakeSys {
        root: PathBuf,
        paths: SysPaths,
    }

    impl FakeSys {
        fn new(tag: &str) -> FakeSys {
            let root =
                std::env::temp_dir().join(format!("vfnvme-sysfs-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
            std::fs::create_dir_all(root.join("sys/bus/pci/drivers")).unwrap();
            std::fs::create_dir_all(root.join("dev/vfio")).unwrap();
            let paths = SysPaths {
                sys: root.join("sys"),
                dev_vfio: root.join("dev/vfio"),
            };
            FakeSys { root, paths }
        }

        fn function(&self, bdf: &str, driver: Option<&str>, group: Option<u32>) {
            let d = self.paths.sys.join("bus/pci/devices").join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            if let Some(drv) = driver {
                let dd = self.paths.sys.join("bus/pci/drivers").join(drv);
                std::fs::create_dir_all(&dd).unwrap();
                symlink(&dd, d.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let gd = self
                    .paths
                    .sys
                    .join("kernel/iommu_groups")
                    .join(g.to_string());
                std::fs::create_dir_all(gd.join("devices")).unwrap();
                symlink(&gd, d.join("iommu_group")).unwrap();
                symlink(&d, gd.join("devices").join(bdf)).unwrap();
            }
        }

        fn node(&self, name: &str) {
            std::fs::write(self.paths.dev_vfio.join(name), b"").unwrap();
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn detail(e: Error) -> String {
        match e {
            Error::Backend { detail, .. } => detail,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn classification_of_sysfs_states() {
        let fs = FakeSys::new("classify");
        let b = |s: &str| Bdf::parse(s).unwrap();
        fs.function("0000:01:00.0", Some("vfio-pci"), Some(7));
        fs.node("7");
        fs.function("0000:02:00.0", Some("nvme"), Some(8));
        fs.function("0000:03:00.0", None, Some(9));
        fs.function("0000:04:00.0", Some("vfio-pci"), None);
        fs.function("0000:05:00.0", Some("vfio-pci"), Some(2));
        fs.node("noiommu-2");
        fs.function("0000:06:00.0", Some("vfio-pci"), Some(3));
        fs.function("0000:06:00.1", Some("snd_hda_intel"), None);
        symlink(
            fs.paths.sys.join("bus/pci/devices/0000:06:00.1"),
            fs.paths
                .sys
                .join("kernel/iommu_groups/3/devices/0000:06:00.1"),
        )
        .unwrap();

        let ok = fs.paths.locate(b("0000:01:00.0"), None).unwrap();
        assert_eq!(ok.group, 7);
        assert_eq!(ok.kind, GroupKind::Iommu);
        assert_eq!(ok.node, fs.paths.dev_vfio.join("7"));

        let d = detail(fs.paths.locate(b("0000:09:00.0"), None).unwrap_err());
        assert!(d.contains("no PCI function 0000:09:00.0"), "{d}");

        let d = detail(fs.paths.locate(b("0000:02:00.0"), None).unwrap_err());
        assert!(
            d.contains("'nvme'") && d.contains("vfnvme-setup bind 0000:02:00.0"),
            "{d}"
        );

        let d = detail(fs.paths.locate(b("0000:03:00.0"), None).unwrap_err());
        assert!(d.contains("not bound to any driver"), "{d}");

        let d = detail(fs.paths.locate(b("0000:04:00.0"), None).unwrap_err());
        assert!(
            d.contains("intel_iommu=on") && d.contains("no-IOMMU"),
            "{d}"
        );

        let n = fs.paths.locate(b("0000:05:00.0"), None).unwrap();
        assert_eq!(n.kind, GroupKind::NoIommu);
        let d = detail(
            fs.paths
                .locate(b("0000:05:00.0"), Some(GroupKind::Iommu))
                .unwrap_err(),
        );
        assert!(d.contains("no-IOMMU mode"), "{d}");
        let d = detail(
            fs.paths
                .locate(b("0000:01:00.0"), Some(GroupKind::NoIommu))
                .unwrap_err(),
        );
        assert!(d.contains("real IOMMU group"), "{d}");

        let d = detail(fs.paths.locate(b("0000:06:00.0"), None).unwrap_err());
        assert!(d.contains("has no node"), "{d}");

        fs.node("3");
        let info = fs.paths.locate(b("0000:06:00.0"), None).unwrap();
        let d = detail(fs.paths.not_viable_error(&info));
        assert!(
            d.contains("0000:06:00.1 (driver snd_hda_intel)") && !d.contains("0000:06:00.0 "),
            "{d}"
        );

        let d = detail(fs.paths.open_group_error(
            &ok,
            &std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        ));
        assert!(d.contains("run as root") && d.contains("chown"), "{d}");
    }
}
