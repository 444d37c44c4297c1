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

/// Sets the reserve and reads back what was granted, remembering the first original value in
/// the state file for `reset`.
///
/// # Errors
/// No such NUMA node, or the write was refused.
pub fn reserve(host: &Host, pages: u64, node: Option<u32>) -> anyhow::Result<Reserved> {
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
    State::update(host, |s| match node {
        None => {
            s.hugepages_total.get_or_insert(before);
        }
        Some(n) => {
            s.hugepages_nodes.entry(n).or_insert(before);
        }
    })?;
    host.write(&p, &pages.to_string())?;
    let granted = read_count(host, &p)?;
    Ok(Reserved {
        node,
        before,
        asked: pages,
        granted,
    })
}
