//! End-to-end tests of the `vfnvme-setup` and `vfnvme-identify` binaries.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const IDENTIFY: &str = env!("CARGO_BIN_EXE_vfnvme-identify");
const SETUP: &str = env!("CARGO_BIN_EXE_vfnvme-setup");

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("VFNVME_SYSFS_ROOT")
        .output()
        .expect("spawn")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn identify_sim_shows_the_subsystem_both_controllers_and_namespace_1() {
    let o = run(IDENTIFY, &["sim"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = stdout(&o);
    assert!(
        t.contains("NVM subsystem nqn.2026-11.io.vfnvme:sim-"),
        "{t}"
    );
    assert!(t.contains("subnqn    : nqn.2026-11.io.vfnvme:sim-"), "{t}");
    assert!(t.contains("(cntlid 1)") && t.contains("(cntlid 2)"), "{t}");
    assert!(t.contains("Namespace 1 (on all 2 controllers"), "{t}");
    assert!(t.contains("Doorbell Buffer Config"), "{t}");
    assert!(t.contains("<== in use"), "{t}");
}

#[test]
fn identify_json_parses() {
    let o = run(IDENTIFY, &["-r", "sim:ctrls=3,ns=2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let s = &v["subsystems"][0];
    assert!(s["subnqn"].as_str().unwrap().starts_with("nqn."));
    assert_eq!(s["controllers"].as_array().unwrap().len(), 3);
    assert_eq!(s["namespaces"].as_array().unwrap().len(), 2);
    assert_eq!(s["namespaces"][1]["nsid"], 2);
    assert_eq!(
        s["namespaces"][0]["controllers"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        s["controllers"][0]["oacs"]["flags"][0],
        "Doorbell Buffer Config"
    );

    let o = run(IDENTIFY, &["sim:ns=2", "-n", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(
        v["subsystems"][0]["namespaces"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn identify_bad_targets_fail_with_a_message() {
    let o = run(IDENTIFY, &["nvme0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("bad PCI address 'nvme0'"),
        "{}",
        stderr(&o)
    );

    let o = run(IDENTIFY, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no target"), "{}", stderr(&o));

    let o = run(IDENTIFY, &["sim", "-n", "7"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("namespace 7 is not active"),
        "{}",
        stderr(&o)
    );

    // A PCI function that does not exist (or is not on vfio-pci): the backend's explanation.
    let o = run(IDENTIFY, &["0000:7f:1f.7"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("0000:7f:1f.7"), "{}", stderr(&o));
}

#[test]
fn help_teaches() {
    let o = run(SETUP, &["--help"]);
    assert!(o.status.success());
    let t = stdout(&o);
    for w in [
        "status",
        "bind",
        "unbind",
        "hugepages",
        "reset",
        "Examples:",
        "--force",
    ] {
        assert!(t.contains(w), "{w} missing from:\n{t}");
    }
    let o = run(IDENTIFY, &["--help"]);
    assert!(o.status.success());
    let t = stdout(&o);
    assert!(
        t.contains("Examples:") && t.contains("vfnvme-identify sim"),
        "{t}"
    );
}

struct Tree(PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn w(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

fn fake_tree() -> Tree {
    let root = std::env::temp_dir().join(format!("vfnvme-setup-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let drivers = root.join("sys/bus/pci/drivers");
    std::fs::create_dir_all(drivers.join("nvme")).unwrap();
    std::fs::create_dir_all(drivers.join("vfio-pci")).unwrap();
    for (bdf, drv, group) in [("0000:01:00.0", "nvme", 7), ("0000:02:00.0", "vfio-pci", 8)] {
        let d = root.join("sys/bus/pci/devices").join(bdf);
        w(&d.join("class"), "0x010802\n");
        w(&d.join("vendor"), "0x1b36\n");
        w(&d.join("device"), "0x0010\n");
        w(&d.join("numa_node"), "0\n");
        w(&d.join("driver_override"), "(null)\n");
        symlink(drivers.join(drv), d.join("driver")).unwrap();
        let g = root.join("sys/kernel/iommu_groups").join(group.to_string());
        std::fs::create_dir_all(&g).unwrap();
        symlink(&g, d.join("iommu_group")).unwrap();
    }
    let c = root.join("sys/bus/pci/devices/0000:01:00.0/nvme/nvme0");
    w(&c.join("subsysnqn"), "nqn.2019-08.org.qemu:rig-subsys0\n");
    w(&c.join("model"), "QEMU NVMe Ctrl\n");
    std::fs::create_dir_all(c.join("nvme0c0n1")).unwrap();
    std::fs::create_dir_all(root.join("sys/block/nvme0n1/holders")).unwrap();
    w(
        &root.join("proc/mounts"),
        "/dev/nvme0n1 /mnt/data xfs rw 0 0\nnone /dev/hugepages hugetlbfs rw 0 0\n",
    );
    w(&root.join("proc/sys/vm/nr_hugepages"), "32\n");
    let n = root.join("sys/devices/system/node/node0/hugepages/hugepages-2048kB");
    w(&n.join("nr_hugepages"), "32\n");
    w(&n.join("free_hugepages"), "30\n");
    Tree(root)
}

#[test]
fn setup_status_on_a_fake_tree() {
    let t = fake_tree();
    let root = t.0.to_str().unwrap();
    let o = run(SETUP, &["status", "--sysfs-root", root]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("0000:01:00.0") && s.contains("0000:02:00.0"),
        "{s}"
    );
    assert!(s.contains("nqn.2019-08.org.qemu:rig-subsys0"), "{s}");
    assert!(s.contains("YES: nvme0n1 mounted at /mnt/data (xfs)"), "{s}");
    assert!(s.contains("node0: 32 reserved, 30 free"), "{s}");
    assert!(s.contains("hugetlbfs mounts: /dev/hugepages"), "{s}");

    let o = run(SETUP, &["status", "--json", "--sysfs-root", root]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["controllers"][0]["driver"], "nvme");
    assert_eq!(v["controllers"][0]["in_use"], true);
    assert_eq!(v["controllers"][1]["iommu_group"], 8);
    assert_eq!(v["hugepages"]["total"], 32);

    // bind refuses the mounted controller and says why; the tree is untouched.
    let o = run(SETUP, &["bind", "0000:01:00.0", "--sysfs-root", root]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/mnt/data"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(t.0.join("sys/bus/pci/devices/0000:01:00.0/driver_override"))
            .unwrap(),
        "(null)\n"
    );
    // Already on vfio-pci: nothing to do.
    let o = run(SETUP, &["bind", "02:00.0", "--sysfs-root", root]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("already bound to vfio-pci"));
    // Bad addresses are usage errors.
    let o = run(SETUP, &["bind", "0000:01:00", "--sysfs-root", root]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(SETUP, &["bind", "0000:05:00.0", "--sysfs-root", root]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no PCI function 0000:05:00.0"),
        "{}",
        stderr(&o)
    );
}
