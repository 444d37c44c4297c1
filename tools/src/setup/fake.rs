//! A fake machine for the tests: a sysfs/procfs tree in a temporary directory, and a "kernel"
//! hook that reacts to writes the way Linux does (unbind removes the driver link, drivers_probe
//! binds the override) and journals every write in order.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use vfnvme::pci::sysfs::Bdf;

use super::Host;

pub(crate) struct Fake {
    pub root: PathBuf,
}

fn w(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

impl Fake {
    pub fn new(tag: &str) -> Fake {
        let root = std::env::temp_dir().join(format!("vfnvme-setup-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers/nvme",
            "sys/bus/pci/drivers/vfio-pci",
            "sys/block",
            "dev/vfio",
            "run",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        w(&root.join("sys/bus/pci/drivers_probe"), "");
        w(&root.join("proc/mounts"), "sysfs /sys sysfs rw 0 0\n");
        w(
            &root.join("proc/swaps"),
            "Filename Type Size Used Priority\n",
        );
        w(&root.join("proc/sys/vm/nr_hugepages"), "0\n");
        w(
            &root.join("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"),
            "0\n",
        );
        let node = root.join("sys/devices/system/node/node0/hugepages/hugepages-2048kB");
        w(&node.join("nr_hugepages"), "0\n");
        w(&node.join("free_hugepages"), "0\n");
        Fake { root }
    }

    pub fn dev(&self, bdf: &str) -> PathBuf {
        self.root.join("sys/bus/pci/devices").join(bdf)
    }

    /// A PCI function of `class`, bound to `driver`, in IOMMU group `group`.
    pub fn function(&self, bdf: &str, class: &str, driver: Option<&str>, group: Option<u32>) {
        let d = self.dev(bdf);
        w(&d.join("class"), &format!("{class}\n"));
        w(&d.join("vendor"), "0x1b36\n");
        w(&d.join("device"), "0x0010\n");
        w(&d.join("numa_node"), "-1\n");
        w(&d.join("driver_override"), "(null)\n");
        if let Some(drv) = driver {
            symlink(
                self.root.join("sys/bus/pci/drivers").join(drv),
                d.join("driver"),
            )
            .unwrap();
        }
        if let Some(g) = group {
            let gd = self
                .root
                .join("sys/kernel/iommu_groups")
                .join(g.to_string());
            std::fs::create_dir_all(gd.join("devices")).unwrap();
            symlink(&gd, d.join("iommu_group")).unwrap();
        }
    }

    /// The kernel nvme driver's view of a controller: `nvme/<name>/` with its attributes and
    /// namespace nodes (and their `/sys/block` entries).
    pub fn nvme_ctrl(&self, bdf: &str, name: &str, subnqn: &str, disks: &[&str]) {
        let c = self.dev(bdf).join("nvme").join(name);
        w(&c.join("subsysnqn"), &format!("{subnqn}\n"));
        w(
            &c.join("model"),
            "QEMU NVMe Ctrl                          \n",
        );
        w(&c.join("serial"), "RIGSERIAL0          \n");
        for d in disks {
            std::fs::create_dir_all(c.join(d)).unwrap();
            if let Some(head) = super::scan::disk_of(d) {
                std::fs::create_dir_all(self.root.join("sys/block").join(head).join("holders"))
                    .unwrap();
            }
        }
    }

    pub fn partition(&self, disk: &str, part: &str) {
        std::fs::create_dir_all(self.root.join("sys/block").join(disk).join(part)).unwrap();
    }

    pub fn mount(&self, line: &str) {
        let p = self.root.join("proc/mounts");
        let mut s = std::fs::read_to_string(&p).unwrap();
        s.push_str(line);
        s.push('\n');
        std::fs::write(p, s).unwrap();
    }

    pub fn journal(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("journal"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap()
    }

    /// A host on this tree whose writes are played by [`kernel`].
    pub fn host(&self) -> Host {
        Host::new(self.root.clone()).with_kernel(Box::new(kernel))
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// What Linux does on these writes, plus a journal line `relative/path value`.
fn kernel(host: &Host, path: &Path, value: &str) {
    let rel = path.strip_prefix(&host.root).unwrap().display().to_string();
    let j = host.root.join("journal");
    let mut s = std::fs::read_to_string(&j).unwrap_or_default();
    s.push_str(&format!("{rel} {}\n", value.trim()));
    std::fs::write(&j, s).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    if name == "unbind" {
        let bdf = Bdf::parse(value).unwrap();
        let dev = host.paths.device_dir(bdf);
        std::fs::remove_file(dev.join("driver")).unwrap();
        let _ = std::fs::remove_dir_all(dev.join("nvme"));
    } else if name == "drivers_probe" {
        let bdf = Bdf::parse(value).unwrap();
        let dev = host.paths.device_dir(bdf);
        if dev.join("driver").exists() {
            return;
        }
        let drv = host
            .driver_override(bdf)
            .unwrap_or_else(|| "nvme".to_string());
        let dd = host.driver_dir(&drv);
        // A driver directory holding `refuse` stands for a driver whose probe fails.
        if dd.exists() && !dd.join("refuse").exists() {
            symlink(dd, dev.join("driver")).unwrap();
        }
    } else if name == "nr_hugepages" {
        // This kernel grants at most 100 pages.
        let n: u64 = value.trim().parse().unwrap();
        std::fs::write(path, n.min(100).to_string()).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::super::bind::{self, Outcome};
    use super::super::hugepages;
    use super::super::scan::{self, IommuGroup};
    use super::super::state::State;
    use super::*;

    const NVME: &str = "0x010802";
    const NQN: &str = "nqn.2019-08.org.qemu:rig-subsys0";

    fn b(s: &str) -> Bdf {
        Bdf::parse(s).unwrap()
    }

    /// The driver `bdf` is bound to.
    fn driver(h: &Host, bdf: &str) -> Option<String> {
        h.paths.driver_of(b(bdf))
    }

    /// 01:00.0 on nvme with nvme0n1p1 mounted at /data, 02:00.0 on vfio-pci (group 8),
    /// 03:00.0 on nvme and free, 04:00.0 a NIC.
    fn machine(tag: &str) -> Fake {
        let f = Fake::new(tag);
        f.function("0000:01:00.0", NVME, Some("nvme"), Some(7));
        f.nvme_ctrl("0000:01:00.0", "nvme0", NQN, &["nvme0c0n1"]);
        f.partition("nvme0n1", "nvme0n1p1");
        f.mount("/dev/nvme0n1p1 /data ext4 rw,relatime 0 0");
        f.function("0000:02:00.0", NVME, Some("vfio-pci"), Some(8));
        std::fs::write(f.dev("0000:02:00.0").join("driver_override"), "vfio-pci\n").unwrap();
        f.function("0000:03:00.0", NVME, Some("nvme"), None);
        f.nvme_ctrl("0000:03:00.0", "nvme1", "nqn.other", &["nvme1n1"]);
        f.function("0000:04:00.0", "0x020000", Some("e1000e"), Some(9));
        f
    }

    #[test]
    fn namespace_node_names() {
        assert_eq!(scan::disk_of("nvme0n1").as_deref(), Some("nvme0n1"));
        assert_eq!(scan::disk_of("nvme0c1n12").as_deref(), Some("nvme0n12"));
        assert_eq!(scan::disk_of("nvme10n2").as_deref(), Some("nvme10n2"));
        for bad in [
            "nvme0",
            "subsysnqn",
            "nvme0n",
            "nvmecn1",
            "nvme0c1",
            "power",
            "nvme0n1p1",
        ] {
            assert_eq!(scan::disk_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn status_reads_the_tree() {
        let f = machine("status");
        let s = scan::status(&f.host()).unwrap();
        let bdfs: Vec<String> = s.ctrls.iter().map(|c| c.bdf.to_string()).collect();
        assert_eq!(
            bdfs,
            ["0000:01:00.0", "0000:02:00.0", "0000:03:00.0"],
            "NIC left out"
        );
        let c0 = &s.ctrls[0];
        assert_eq!(c0.driver.as_deref(), Some("nvme"));
        assert_eq!((c0.vendor, c0.device), (Some(0x1b36), Some(0x0010)));
        assert_eq!(c0.numa_node, None);
        assert_eq!(c0.iommu_group, IommuGroup::Group(7));
        assert_eq!(c0.nvme_name.as_deref(), Some("nvme0"));
        assert_eq!(c0.subnqn.as_deref(), Some(NQN));
        assert_eq!(c0.model.as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(c0.block_devs.len(), 1);
        assert_eq!(
            c0.block_devs[0].disk, "nvme0n1",
            "path node mapped to its head"
        );
        assert_eq!(c0.block_devs[0].partitions, ["nvme0n1p1"]);
        assert_eq!(c0.uses(), ["nvme0n1p1 mounted at /data (ext4)".to_string()]);
        let c1 = &s.ctrls[1];
        assert_eq!(c1.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(c1.driver_override.as_deref(), Some("vfio-pci"));
        assert_eq!((c1.subnqn.as_deref(), c1.model.as_deref()), (None, None));
        assert!(c1.uses().is_empty());
        assert_eq!(s.ctrls[2].iommu_group, IommuGroup::None);
        assert_eq!(s.ctrls[0].driver_override, None, "(null) is no override");
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.hugepages_total, Some(0));
        assert!(s.vfio_pci_loaded && s.iommu_on);

        let t = s.text();
        assert!(t.contains("0000:01:00.0") && t.contains("1b36:0010"), "{t}");
        assert!(t.contains("YES: nvme0n1p1 mounted at /data (ext4)"), "{t}");
        assert!(t.contains("none") && t.contains("node0: 0 reserved"), "{t}");
        let j = s.json();
        assert_eq!(j["controllers"][0]["subnqn"], NQN);
        assert_eq!(j["controllers"][0]["in_use"], true);
        assert_eq!(j["controllers"][1]["iommu_group"], 8);
        assert_eq!(j["controllers"][2]["iommu"], "none");
        assert_eq!(j["hugepages"]["nodes"][0]["total"], 0);
    }

    #[test]
    fn noiommu_groups_are_recognized() {
        let f = Fake::new("noiommu");
        f.function("0000:01:00.0", NVME, Some("vfio-pci"), Some(0));
        std::fs::write(f.root.join("dev/vfio/noiommu-0"), "").unwrap();
        let s = scan::status(&f.host()).unwrap();
        assert_eq!(s.ctrls[0].iommu_group, IommuGroup::NoIommu(0));
        assert!(s.text().contains("noiommu-0"));
    }

    #[test]
    fn bind_writes_override_then_unbind_then_probe() {
        let f = machine("bind-order");
        let h = f.host();
        let o = bind::bind(&h, b("0000:03:00.0"), false).unwrap();
        assert_eq!(
            f.journal(),
            [
                "sys/bus/pci/devices/0000:03:00.0/driver_override vfio-pci",
                "sys/bus/pci/drivers/nvme/unbind 0000:03:00.0",
                "sys/bus/pci/drivers_probe 0000:03:00.0",
            ]
        );
        assert_eq!(
            f.read("sys/bus/pci/devices/0000:03:00.0/driver_override"),
            "vfio-pci"
        );
        assert_eq!(f.read("sys/bus/pci/drivers/nvme/unbind"), "0000:03:00.0");
        assert_eq!(f.read("sys/bus/pci/drivers_probe"), "0000:03:00.0");
        assert_eq!(driver(&h, "0000:03:00.0").as_deref(), Some("vfio-pci"));
        assert!(matches!(&o, Outcome::Moved { from: Some(d), .. } if d == "nvme"));
        assert_eq!(
            o.line(b("0000:03:00.0")),
            "0000:03:00.0: nvme -> vfio-pci (no IOMMU group)"
        );
        let st = State::load(&h).unwrap().unwrap();
        assert_eq!(st.devices["0000:03:00.0"].as_deref(), Some("nvme"));

        // Idempotent: nothing more is written, and the original driver stays recorded.
        let o = bind::bind(&h, b("0000:03:00.0"), false).unwrap();
        assert_eq!(o, Outcome::Already("vfio-pci".into()));
        assert_eq!(f.journal().len(), 3);
        let st = State::load(&h).unwrap().unwrap();
        assert_eq!(st.devices["0000:03:00.0"].as_deref(), Some("nvme"));
    }

    #[test]
    fn bind_refuses_a_mounted_namespace_without_force() {
        let f = machine("bind-mounted");
        let h = f.host();
        let e = bind::bind(&h, b("0000:01:00.0"), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refusing")
                && e.contains("nvme0n1p1 mounted at /data")
                && e.contains("--force"),
            "{e}"
        );
        assert!(f.journal().is_empty(), "nothing written: {:?}", f.journal());
        assert_eq!(driver(&h, "0000:01:00.0").as_deref(), Some("nvme"));
        assert!(State::load(&h).unwrap().is_none());

        // Named, a refusal is a failure (exit 1); by default the controller in use is skipped
        // and the others are bound (exit 0), as SPDK's setup.sh does.
        assert_eq!(bind::bind_many(&h, &[b("0000:01:00.0")], false).unwrap(), 1);
        assert_eq!(bind::bind_many(&h, &[], false).unwrap(), 0);
        assert_eq!(driver(&h, "0000:01:00.0").as_deref(), Some("nvme"));
        assert_eq!(driver(&h, "0000:03:00.0").as_deref(), Some("vfio-pci"));

        bind::bind(&h, b("0000:01:00.0"), true).unwrap();
        assert_eq!(driver(&h, "0000:01:00.0").as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn partitions_and_holders_count_as_in_use() {
        let f = Fake::new("holders");
        f.function("0000:01:00.0", NVME, Some("nvme"), Some(1));
        f.nvme_ctrl("0000:01:00.0", "nvme0", NQN, &["nvme0n1"]);
        f.partition("nvme0n1", "nvme0n1p1");
        let h = f.host();
        let e = bind::bind(&h, b("0000:01:00.0"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has partitions nvme0n1p1"), "{e}");
        std::fs::remove_dir(f.root.join("sys/block/nvme0n1/nvme0n1p1")).unwrap();
        std::fs::create_dir_all(f.root.join("sys/block/nvme0n1/holders/dm-0")).unwrap();
        let e = bind::bind(&h, b("0000:01:00.0"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nvme0n1 held by dm-0"), "{e}");
    }

    #[test]
    fn unbind_clears_the_override_then_unbinds_then_probes() {
        let f = machine("unbind");
        let h = f.host();
        bind::bind(&h, b("0000:03:00.0"), false).unwrap();
        let o = bind::unbind(&h, b("0000:03:00.0"), false).unwrap();
        assert_eq!(
            f.journal()[3..],
            [
                "sys/bus/pci/devices/0000:03:00.0/driver_override ",
                "sys/bus/pci/drivers/vfio-pci/unbind 0000:03:00.0",
                "sys/bus/pci/drivers_probe 0000:03:00.0",
            ]
        );
        assert_eq!(o.line(b("0000:03:00.0")), "0000:03:00.0: vfio-pci -> nvme");
        assert_eq!(h.driver_override(b("0000:03:00.0")), None);
        assert!(
            State::load(&h).unwrap().is_none(),
            "state emptied and removed"
        );
        assert_eq!(
            bind::unbind(&h, b("0000:03:00.0"), false).unwrap(),
            Outcome::Already("nvme".into())
        );
    }

    #[test]
    fn unbind_refuses_a_group_held_open() {
        let f = machine("held");
        let fd = f.root.join("proc/4242/fd");
        std::fs::create_dir_all(&fd).unwrap();
        symlink("/dev/vfio/8", fd.join("5")).unwrap();
        std::fs::write(f.root.join("proc/4242/comm"), "vfnvme-perf\n").unwrap();
        let h = f.host();
        let e = bind::unbind(&h, b("0000:02:00.0"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("4242 (vfnvme-perf)"), "{e}");
        assert!(f.journal().is_empty());
    }

    #[test]
    fn clear_errors_for_bad_targets() {
        let f = machine("errors");
        let h = f.host();
        let e = bind::bind(&h, b("0000:09:00.0"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PCI function 0000:09:00.0"), "{e}");
        let e = bind::bind(&h, b("0000:04:00.0"), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not an NVMe controller") && e.contains("0x020000"),
            "{e}"
        );
        std::fs::remove_dir(f.root.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
        let e = bind::bind(&h, b("0000:03:00.0"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("modprobe vfio-pci"), "{e}");
    }

    #[test]
    fn hugepages_report_the_grant_and_reset_restores() {
        let f = machine("huge");
        let h = f.host();
        std::fs::write(f.root.join("proc/sys/vm/nr_hugepages"), "4\n").unwrap();
        let r = hugepages::reserve(&h, 32, None).unwrap();
        assert_eq!((r.before, r.asked, r.granted), (4, 32, 32));
        assert!(
            r.message().contains("4 -> 32 x 2 MiB (granted; 64 MiB"),
            "{}",
            r.message()
        );
        let r = hugepages::reserve(&h, 500, None).unwrap();
        assert_eq!(r.granted, 100, "this fake kernel grants at most 100");
        assert!(r.message().contains("granted only 100 of 500"));
        assert!(r.shortfall_hint().contains("compact_memory"));
        let r = hugepages::reserve(&h, 8, Some(0)).unwrap();
        assert_eq!(r.granted, 8);
        assert!(hugepages::reserve(&h, 8, Some(3))
            .unwrap_err()
            .to_string()
            .contains("no NUMA node 3"));
        bind::bind(&h, b("0000:03:00.0"), false).unwrap();
        let st = State::load(&h).unwrap().unwrap();
        assert_eq!(
            st.hugepages_total,
            Some(4),
            "the first original value is kept"
        );
        assert_eq!(st.hugepages_nodes[&0], 0);

        assert_eq!(bind::reset(&h).unwrap(), 0);
        assert_eq!(driver(&h, "0000:03:00.0").as_deref(), Some("nvme"));
        assert_eq!(
            driver(&h, "0000:02:00.0").as_deref(),
            Some("vfio-pci"),
            "not bound by this tool: left alone"
        );
        assert_eq!(f.read("proc/sys/vm/nr_hugepages").trim(), "4");
        assert!(!h.state_file().exists());
    }

    #[test]
    fn reset_without_a_record_changes_nothing() {
        // Hugepages reserved by others (the kernel command line, a VM) and a controller that
        // something else put on vfio-pci are not this tool's to undo.
        let f = machine("reset-nostate");
        let h = f.host();
        std::fs::write(f.root.join("proc/sys/vm/nr_hugepages"), "16\n").unwrap();
        assert_eq!(bind::reset(&h).unwrap(), 0);
        assert_eq!(driver(&h, "0000:02:00.0").as_deref(), Some("vfio-pci"));
        assert_eq!(f.read("proc/sys/vm/nr_hugepages").trim(), "16");
        assert!(f.journal().is_empty(), "{:?}", f.journal());
        // A second reset after a real one (which removes the record) is the same.
        hugepages::reserve(&h, 32, None).unwrap();
        assert_eq!(bind::reset(&h).unwrap(), 0);
        assert_eq!(f.read("proc/sys/vm/nr_hugepages").trim(), "16");
        assert_eq!(bind::reset(&h).unwrap(), 0);
        assert_eq!(f.read("proc/sys/vm/nr_hugepages").trim(), "16");
    }

    #[test]
    fn hugepage_reset_restores_the_whole_picture_whatever_the_order_of_changes() {
        // A node change first, then a machine-wide one: both originals come back.
        let f = machine("huge-order");
        let h = f.host();
        let node0 = "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages";
        std::fs::write(f.root.join("proc/sys/vm/nr_hugepages"), "6\n").unwrap();
        std::fs::write(f.root.join(node0), "6\n").unwrap();
        hugepages::reserve(&h, 20, Some(0)).unwrap();
        hugepages::reserve(&h, 50, None).unwrap();
        let st = State::load(&h).unwrap().unwrap();
        assert_eq!(
            st.hugepages_total,
            Some(6),
            "the machine-wide count before any change"
        );
        assert_eq!(st.hugepages_nodes[&0], 6);
        assert_eq!(bind::reset(&h).unwrap(), 0);
        assert_eq!(f.read("proc/sys/vm/nr_hugepages").trim(), "6");
        assert_eq!(f.read(node0).trim(), "6");
        // The machine-wide count is put back before the nodes (a node's count moves the total).
        let j = f.journal();
        let total_at = j
            .iter()
            .rposition(|l| l == "proc/sys/vm/nr_hugepages 6")
            .expect("machine-wide count restored");
        let node_at = j
            .iter()
            .rposition(|l| *l == format!("{node0} 6"))
            .expect("node count restored");
        assert!(total_at < node_at, "{j:?}");
    }

    #[test]
    fn unbind_never_unbinds_nvme_from_a_controller_already_on_it() {
        // 01:00.0 is on nvme with a mounted disk, and a stray override (a bind that failed
        // half-way): only the override is cleared; writing to nvme's unbind would hot-remove the
        // mounted disk.
        let f = machine("stray-override");
        let h = f.host();
        std::fs::write(f.dev("0000:01:00.0").join("driver_override"), "vfio-pci\n").unwrap();
        let o = bind::unbind(&h, b("0000:01:00.0"), false).unwrap();
        assert_eq!(o, Outcome::Already("nvme".into()));
        assert_eq!(
            f.journal(),
            ["sys/bus/pci/devices/0000:01:00.0/driver_override "]
        );
        assert_eq!(h.driver_override(b("0000:01:00.0")), None);
        assert_eq!(driver(&h, "0000:01:00.0").as_deref(), Some("nvme"));
    }

    #[test]
    fn unbind_without_arguments_gives_back_only_what_this_tool_bound() {
        // 02:00.0 was put on vfio-pci by something else (a VM); 03:00.0 by this tool.
        let f = machine("unbind-default");
        let h = f.host();
        assert_eq!(bind::unbind_many(&h, &[], false).unwrap(), 0);
        assert!(f.journal().is_empty(), "{:?}", f.journal());
        bind::bind(&h, b("0000:03:00.0"), false).unwrap();
        assert_eq!(bind::unbind_many(&h, &[], false).unwrap(), 0);
        assert_eq!(driver(&h, "0000:03:00.0").as_deref(), Some("nvme"));
        assert_eq!(
            driver(&h, "0000:02:00.0").as_deref(),
            Some("vfio-pci"),
            "not bound by this tool: left alone"
        );
        // Named, it is given back.
        bind::unbind_many(&h, &[b("0000:02:00.0")], false).unwrap();
        assert_eq!(driver(&h, "0000:02:00.0").as_deref(), Some("nvme"));
    }

    #[test]
    fn a_bind_that_vfio_pci_refuses_gives_the_controller_back() {
        let f = machine("bind-refused");
        let mut h = f.host();
        h.bind_timeout = std::time::Duration::from_millis(50);
        std::fs::write(f.root.join("sys/bus/pci/drivers/vfio-pci/refuse"), "").unwrap();
        let e = bind::bind(&h, b("0000:03:00.0"), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vfio-pci did not bind") && e.contains("back on nvme"),
            "{e}"
        );
        assert_eq!(driver(&h, "0000:03:00.0").as_deref(), Some("nvme"));
        assert_eq!(h.driver_override(b("0000:03:00.0")), None);
        assert!(State::load(&h)
            .unwrap()
            .is_none_or(|s| !s.devices.contains_key("0000:03:00.0")));
    }

    #[test]
    fn an_unbind_that_nvme_refuses_keeps_the_record() {
        let f = machine("unbind-refused");
        let mut h = f.host();
        h.bind_timeout = std::time::Duration::from_millis(50);
        bind::bind(&h, b("0000:03:00.0"), false).unwrap();
        std::fs::write(f.root.join("sys/bus/pci/drivers/nvme/refuse"), "").unwrap();
        let e = bind::unbind(&h, b("0000:03:00.0"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not bind") && e.contains("retries"), "{e}");
        let st = State::load(&h).unwrap().unwrap();
        assert!(
            st.devices.contains_key("0000:03:00.0"),
            "reset still knows it"
        );
        std::fs::remove_file(f.root.join("sys/bus/pci/drivers/nvme/refuse")).unwrap();
        assert_eq!(bind::reset(&h).unwrap(), 0);
        assert_eq!(driver(&h, "0000:03:00.0").as_deref(), Some("nvme"));
    }

    #[test]
    fn a_failed_bind_after_a_failed_unbind_keeps_the_original_driver_on_record() {
        let f = machine("refused-twice");
        let mut h = f.host();
        h.bind_timeout = std::time::Duration::from_millis(50);
        let refuse = |d: &str| f.root.join(format!("sys/bus/pci/drivers/{d}/refuse"));
        bind::bind(&h, b("0000:03:00.0"), false).unwrap();
        std::fs::write(refuse("nvme"), "").unwrap();
        assert!(bind::unbind(&h, b("0000:03:00.0"), false).is_err());
        std::fs::write(refuse("vfio-pci"), "").unwrap();
        assert!(bind::bind(&h, b("0000:03:00.0"), false).is_err());
        let st = State::load(&h).unwrap().unwrap();
        assert_eq!(st.devices["0000:03:00.0"].as_deref(), Some("nvme"));
        std::fs::remove_file(refuse("nvme")).unwrap();
        std::fs::remove_file(refuse("vfio-pci")).unwrap();
        assert_eq!(bind::reset(&h).unwrap(), 0);
        assert_eq!(driver(&h, "0000:03:00.0").as_deref(), Some("nvme"));
    }

    #[test]
    fn reset_leaves_a_controller_that_had_no_driver_without_one() {
        let f = machine("no-driver");
        let h = f.host();
        std::fs::remove_file(f.dev("0000:03:00.0").join("driver")).unwrap();
        bind::bind(&h, b("0000:03:00.0"), false).unwrap();
        assert_eq!(driver(&h, "0000:03:00.0").as_deref(), Some("vfio-pci"));
        assert_eq!(bind::reset(&h).unwrap(), 0);
        assert_eq!(h.paths.driver_of(b("0000:03:00.0")), None);
        assert_eq!(h.driver_override(b("0000:03:00.0")), None);
    }
}
