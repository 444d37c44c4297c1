//! `vfnvme-setup hugepages N [--node K]`: set the 2 MiB reserve and report what the kernel
//! granted.

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::state::State;
use super::Host;

/// What a reservation got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    /// NUMA node, or machine-wide.
    pub node: Option<u32>,
    /// Pages before.
    pub before: u64,
    /// Pages asked for.
    pub asked: u64,
    /// Pages the kernel granted.
    pub granted: u64,
}

impl Reserved {
    /// One line for the user.
    pub fn message(&self) -> String {
        let scope = match self.node {
            Some(n) => format!("on NUMA node {n}"),
            None => "machine-wide".into(),
        };
        let got = if self.granted == self.asked && self.asked < self.before {
            "released".to_string()
        } else if self.granted == self.asked {
            "granted".to_string()
        } else {
            format!("granted only {} of {}", self.granted, self.asked)
        };
        format!(
            "hugepages {scope}: {} -> {} x 2 MiB ({got}; {} MiB reserved)",
            self.before,
            self.granted,
            self.granted * 2
        )
    }

    /// What to do when the kernel granted fewer pages than asked.
    pub fn shortfall_hint(&self) -> String {
        format!(
            "the kernel granted {} of the {} hugepages asked for: memory is too fragmented or \
             too small. Reserve early after boot (or `hugepages=N` on the kernel command line), \
             or try `echo 3 > /proc/sys/vm/drop_caches; echo 1 > /proc/sys/vm/compact_memory` \
             and ask again",
            self.granted, self.asked
        )
    }
}

/// The `nr_hugepages` file for `node` (or machine-wide).
pub fn nr_hugepages_path(host: &Host, node: Option<u32>) -> PathBuf {
    match node {
        None => host.proc("sys/vm/nr_hugepages"),
        Some(n) => host.paths.sys.join(format!(
            "devices/system/node/node{n}/hugepages/hugepages-2048kB/nr_hugepages"
        )),
    }
}

fn read_count(host: &Host, p: &std::path::Path) -> anyhow::Result<u64> {
    let s = host
        .read(p)
        .with_context(|| format!("reading {}", p.display()))?;
    s.parse()
        .with_context(|| format!("{}: not a number: {s:?}", p.display()))
}

/// The NUMA nodes with a 2 MiB hugepage reserve, and each one's count.
fn node_counts(host: &Host) -> Vec<(u32, u64)> {
    let Ok(rd) = std::fs::read_dir(host.paths.sys.join("devices/system/node")) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, u64)> = rd
        .flatten()
        .filter_map(|e| {
            let n: u32 = e.file_name().to_str()?.strip_prefix("node")?.parse().ok()?;
            let c = read_count(host, &nr_hugepages_path(host, Some(n))).ok()?;
            Some((n, c))
        })
        .collect();
    out.sort();
    out
}

/// Sets the reserve and reads back what was granted. At the first change the state file gets
/// the whole original picture, the machine-wide count and every node's, for `reset`: a later
/// change of either kind moves the other.
///
/// # Errors
/// No such NUMA node, or the write was refused.
pub fn reserve(host: &Host, pages: u64, node: Option<u32>) -> anyhow::Result<Reserved> {
    let total = read_count(host, &nr_hugepages_path(host, None));
    let nodes = node_counts(host);
    let p = nr_hugepages_path(host, node);
    if !p.exists() {
        return set(host, pages, node); // says what is missing
    }
    State::update(host, |s| {
        if s.hugepages_total.is_none() && s.hugepages_nodes.is_empty() {
            s.hugepages_total = total.as_ref().ok().copied();
            s.hugepages_nodes.extend(nodes);
        }
    })?;
    set(host, pages, node)
}

/// Puts a reserve back to a recorded count (for `reset`: nothing is recorded).
///
/// # Errors
/// As [`reserve`].
pub fn restore(host: &Host, pages: u64, node: Option<u32>) -> anyhow::Result<Reserved> {
    set(host, pages, node)
}

fn set(host: &Host, pages: u64, node: Option<u32>) -> anyhow::Result<Reserved> {
    let p = nr_hugepages_path(host, node);
    if !p.exists() {
        match node {
            Some(n) => bail!(
                "no NUMA node {n} with 2 MiB hugepages ({} is missing); `vfnvme-setup status` \
                 lists the nodes",
                p.display()
            ),
            None => bail!("{} is missing: is procfs mounted?", p.display()),
        }
    }
    let before = read_count(host, &p)?;
    host.write(&p, &pages.to_string())?;
    let granted = read_count(host, &p)?;
    Ok(Reserved {
        node,
        before,
        asked: pages,
        granted,
    })
}
