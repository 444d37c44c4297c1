//! The state file (`/run/vfnvme-setup.json`): what the machine looked like before this tool
//! changed it, so that `reset` can put it back. `/run` is a tmpfs: a reboot forgets it, as it
//! forgets the bindings.
//!
//! ```json
//! {"version": 1, "devices": {"0000:01:00.0": {"driver": "nvme"}}, "hugepages": {"total": 0}}
//! ```

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::{json, Value};

use super::Host;

/// The remembered original state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Per PCI address: the driver it had before the first `bind` (`None`: unbound).
    pub devices: BTreeMap<String, Option<String>>,
    /// Machine-wide 2 MiB reserve before the first `hugepages` (of either kind).
    pub hugepages_total: Option<u64>,
    /// Each NUMA node's 2 MiB reserve before the first `hugepages` (of either kind).
    pub hugepages_nodes: BTreeMap<u32, u64>,
}

impl State {
    /// The controllers recorded.
    pub fn bdfs(&self) -> Vec<vfnvme::pci::sysfs::Bdf> {
        self.devices
            .keys()
            .filter_map(|b| vfnvme::pci::sysfs::Bdf::parse(b).ok())
            .collect()
    }

    /// Reads the state file; `Ok(None)` when there is none.
    ///
    /// # Errors
    /// The file exists but does not parse.
    pub fn load(host: &Host) -> anyhow::Result<Option<State>> {
        let p = host.state_file();
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        let v: Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not valid JSON (delete it to start afresh)",
                p.display()
            )
        })?;
        let mut s = State::default();
        if let Some(d) = v["devices"].as_object() {
            for (bdf, e) in d {
                s.devices
                    .insert(bdf.clone(), e["driver"].as_str().map(str::to_string));
            }
        }
        s.hugepages_total = v["hugepages"]["total"].as_u64();
        if let Some(n) = v["hugepages"]["nodes"].as_object() {
            for (k, c) in n {
                if let (Ok(k), Some(c)) = (k.parse(), c.as_u64()) {
                    s.hugepages_nodes.insert(k, c);
                }
            }
        }
        Ok(Some(s))
    }

    /// Writes the state file (creating `/run` in a fake tree).
    ///
    /// # Errors
    /// The write fails.
    pub fn save(&self, host: &Host) -> anyhow::Result<()> {
        let p = host.state_file();
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let devices: serde_json::Map<String, Value> = self
            .devices
            .iter()
            .map(|(b, d)| (b.clone(), json!({ "driver": d })))
            .collect();
        let nodes: serde_json::Map<String, Value> = self
            .hugepages_nodes
            .iter()
            .map(|(n, c)| (n.to_string(), json!(c)))
            .collect();
        let v = json!({
            "version": 1,
            "devices": devices,
            "hugepages": { "total": self.hugepages_total, "nodes": nodes },
        });
        std::fs::write(&p, serde_json::to_string_pretty(&v).expect("JSON") + "\n")
            .with_context(|| format!("writing {}", p.display()))
    }

    /// Nothing left to restore.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.hugepages_total.is_none() && self.hugepages_nodes.is_empty()
    }

    /// Applies `f` to the stored state and saves it (or deletes the file once empty).
    ///
    /// # Errors
    /// Load or save failed.
    pub fn update(host: &Host, f: impl FnOnce(&mut State)) -> anyhow::Result<()> {
        let mut s = State::load(host)?.unwrap_or_default();
        f(&mut s);
        if s.is_empty() {
            let _ = std::fs::remove_file(host.state_file());
            Ok(())
        } else {
            s.save(host)
        }
    }
}
