//! The hugepage reserve per NUMA node and hugetlbfs mounts, for `vfnvme-setup`.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

fn read_u64(path: &Path) -> Result<u64> {
    let s = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    s.trim().parse().map_err(|_| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a number: {s:?}"),
        ),
    })
}

/// 2 MiB hugepage counts of one NUMA node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHugepages {
    /// NUMA node number.
    pub node: u32,
    /// Pages reserved.
    pub total: u64,
    /// Pages not in use.
    pub free: u64,
}

fn node_dir(root: &Path, node: u32) -> PathBuf {
    root.join(format!(
        "sys/devices/system/node/node{node}/hugepages/hugepages-2048kB"
    ))
}

/// Hugepage counts per NUMA node, read below `root` (`/` normally; tests pass a fake tree).
///
/// # Errors
/// [`Error::Io`] when the node directory cannot be listed.
pub fn hugepages_per_node_at(root: &Path) -> Result<Vec<NodeHugepages>> {
    let dir = root.join("sys/devices/system/node");
    let rd = std::fs::read_dir(&dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str().and_then(|s| s.strip_prefix("node")) else {
            continue;
        };
        let Ok(node) = n.parse::<u32>() else { continue };
        let d = node_dir(root, node);
        if !d.exists() {
            continue;
        }
        out.push(NodeHugepages {
            node,
            total: read_u64(&d.join("nr_hugepages"))?,
            free: read_u64(&d.join("free_hugepages"))?,
        });
    }
    out.sort_by_key(|n| n.node);
    Ok(out)
}

/// Hugepage counts per NUMA node of this machine.
///
/// # Errors
/// As [`hugepages_per_node_at`].
pub fn hugepages_per_node() -> Result<Vec<NodeHugepages>> {
    hugepages_per_node_at(Path::new("/"))
}

/// Free 2 MiB pages over the whole machine.
///
/// # Errors
/// [`Error::Io`] when `/sys/kernel/mm/hugepages` cannot be read.
pub fn free_hugepages_total() -> Result<u64> {
    read_u64(Path::new(
        "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
    ))
}

/// Reserved 2 MiB pages over the whole machine.
///
/// # Errors
/// [`Error::Io`] when the count cannot be read.
pub fn total_hugepages() -> Result<u64> {
    read_u64(Path::new("/proc/sys/vm/nr_hugepages"))
}

/// Sets the machine-wide 2 MiB reserve and returns what the kernel actually granted (it may give
/// fewer when memory is fragmented). Needs root.
///
/// # Errors
/// [`Error::Io`] when the write is refused.
pub fn set_total_hugepages(pages: u64) -> Result<u64> {
    let p = Path::new("/proc/sys/vm/nr_hugepages");
    std::fs::write(p, pages.to_string()).map_err(|source| Error::Io {
        path: p.display().to_string(),
        source,
    })?;
    read_u64(p)
}

/// Sets the 2 MiB reserve of one NUMA node and returns what the kernel granted.
///
/// # Errors
/// [`Error::Io`] when the write is refused.
pub fn set_node_hugepages(node: u32, pages: u64) -> Result<u64> {
    let p = node_dir(Path::new("/"), node).join("nr_hugepages");
    std::fs::write(&p, pages.to_string()).map_err(|source| Error::Io {
        path: p.display().to_string(),
        source,
    })?;
    read_u64(&p)
}

/// Mount points of hugetlbfs, parsed from a `/proc/mounts`-format text.
pub fn hugetlbfs_mounts_in(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "hugetlbfs").then(|| PathBuf::from(dir))
        })
        .collect()
}

/// Mount points of hugetlbfs on this machine.
///
/// # Errors
/// [`Error::Io`] when `/proc/mounts` cannot be read.
pub fn hugetlbfs_mounts() -> Result<Vec<PathBuf>> {
    let s = std::fs::read_to_string("/proc/mounts").map_err(|source| Error::Io {
        path: "/proc/mounts".into(),
        source,
    })?;
    Ok(hugetlbfs_mounts_in(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parsing_finds_only_hugetlbfs() {
        let m = "proc /proc proc rw 0 0\nnone /dev/hugepages hugetlbfs rw,pagesize=2M 0 0\n\
                 tmpfs /tmp tmpfs rw 0 0\nbad\nhugetlbfs /mnt/huge1G hugetlbfs rw 0 0\n";
        assert_eq!(
            hugetlbfs_mounts_in(m),
            vec![
                PathBuf::from("/dev/hugepages"),
                PathBuf::from("/mnt/huge1G")
            ]
        );
        assert!(hugetlbfs_mounts_in("").is_empty());
    }

    #[test]
    fn per_node_counts_from_a_fake_tree() {
        let root = std::env::temp_dir().join(format!("vfnvme-sysfs-{}", std::process::id()));
        for (node, total, free) in [(0u32, 8u64, 3u64), (1, 4, 4)] {
            let d = node_dir(&root, node);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("nr_hugepages"), format!("{total}\n")).unwrap();
            std::fs::write(d.join("free_hugepages"), format!("{free}\n")).unwrap();
        }
        std::fs::create_dir_all(root.join("sys/devices/system/node/possible_junk")).unwrap();
        let v = hugepages_per_node_at(&root).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            v,
            vec![
                NodeHugepages {
                    node: 0,
                    total: 8,
                    free: 3
                },
                NodeHugepages {
                    node: 1,
                    total: 4,
                    free: 4
                }
            ]
        );
    }

    #[test]
    fn garbage_count_is_an_error() {
        let root = std::env::temp_dir().join(format!("vfnvme-sysfs-bad-{}", std::process::id()));
        let d = node_dir(&root, 0);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("nr_hugepages"), "lots\n").unwrap();
        std::fs::write(d.join("free_hugepages"), "1\n").unwrap();
        let r = hugepages_per_node_at(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(matches!(r, Err(Error::Io { .. })));
    }
}
