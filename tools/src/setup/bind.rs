//! `bind`, `unbind` and `reset`: moving controllers between the kernel nvme driver and vfio-pci
//! through `driver_override`, the way the kernel documents it:
//!
//! 1. write the new driver's name to `driver_override` (empty to clear it),
//! 2. unbind from the current driver (`drivers/<current>/unbind`),
//! 3. write the address to `/sys/bus/pci/drivers_probe`, which binds the override (or, with it
//!    cleared, whichever driver matches).

use anyhow::{bail, Context};
use vfnvme::pci::sysfs::Bdf;

use super::scan::{self, IommuGroup};
use super::state::State;
use super::Host;

/// What happened to one controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Already where it was asked to go.
    Already(String),
    /// Moved.
    Moved {
        /// The driver it had (`None`: unbound).
        from: Option<String>,
        /// The driver it has now (`None`: no driver claimed it).
        to: Option<String>,
        /// Extra information (IOMMU group and node).
        detail: String,
    },
}

impl Outcome {
    /// One line for the user.
    pub fn line(&self, bdf: Bdf) -> String {
        match self {
            Outcome::Already(d) => format!("{bdf}: already bound to {d}"),
            Outcome::Moved { from, to, detail } => format!(
                "{bdf}: {} -> {}{}",
                from.as_deref().unwrap_or("(no driver)"),
                to.as_deref().unwrap_or("(no driver)"),
                detail
            ),
        }
    }
}

fn group_detail(host: &Host, bdf: Bdf) -> String {
    match scan::one(host, bdf).iommu_group {
        IommuGroup::Group(g) => format!(" (IOMMU group {g}, /dev/vfio/{g})"),
        IommuGroup::NoIommu(g) => format!(" (no-IOMMU group {g}, /dev/vfio/noiommu-{g})"),
        IommuGroup::None => " (no IOMMU group)".into(),
    }
}

/// Moves `bdf` to vfio-pci. Refuses a controller whose namespaces are in use unless `force`.
///
/// # Errors
/// Not an NVMe controller, in use, vfio-pci not available, a refused write, or vfio-pci did
/// not bind.
pub fn bind(host: &Host, bdf: Bdf, force: bool) -> anyhow::Result<Outcome> {
    host.check_nvme(bdf)?;
    let st = scan::one(host, bdf);
    let current = st.driver.clone();
    if current.as_deref() == Some("vfio-pci") {
        if host.driver_override(bdf).as_deref() != Some("vfio-pci") {
            // Keep it there across a rescan (and let `reset` recognize it).
            host.write(
                &host.paths.device_dir(bdf).join("driver_override"),
                "vfio-pci",
            )?;
        }
        return Ok(Outcome::Already("vfio-pci".into()));
    }
    let uses = st.uses();
    if !uses.is_empty() {
        if !force {
            bail!(
                "{bdf}{}: refusing to bind to vfio-pci: {} — unmount/deactivate first, or \
                 pass --force to take it anyway (whatever uses it loses its disk)",
                st.nvme_name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                uses.join("; ")
            );
        }
        eprintln!(
            "vfnvme-setup: warning: {bdf}: --force: binding although {}",
            uses.join("; ")
        );
    }
    if st.iommu_group == IommuGroup::None {
        let noiommu = host.read(
            &host
                .paths
                .sys
                .join("module/vfio/parameters/enable_unsafe_noiommu_mode"),
        );
        if noiommu.as_deref() != Some("Y") {
            log::warn!("{bdf} has no IOMMU group: vfio-pci will likely refuse it");
        }
    }
    host.ensure_driver("vfio-pci", "vfio-pci")?;
    // An earlier record (of a bind, or an unbind that failed) keeps the original driver.
    let mut recorded_now = false;
    State::update(host, |s| {
        s.devices.entry(bdf.to_string()).or_insert_with(|| {
            recorded_now = true;
            current.clone()
        });
    })?;
    let dev = host.paths.device_dir(bdf);
    host.write(&dev.join("driver_override"), "vfio-pci")?;
    if let Some(d) = &current {
        host.write(&host.driver_dir(d).join("unbind"), &bdf.to_string())
            .with_context(|| format!("unbinding {bdf} from {d}"))?;
    }
    host.write(&host.drivers_probe(), &bdf.to_string())?;
    let now = host.wait_for_driver(bdf, "vfio-pci");
    if now.as_deref() != Some("vfio-pci") {
        // Put it back as it was rather than leave it with no driver and a stray override.
        let back = give_back(host, bdf, current.as_deref());
        if recorded_now {
            State::update(host, |s| {
                s.devices.remove(&bdf.to_string());
            })?;
        }
        bail!(
            "{bdf}: vfio-pci did not bind; {back}. See `dmesg | tail` — without an IOMMU \
             group vfio-pci needs no-IOMMU mode (`modprobe vfio enable_unsafe_noiommu_mode=1`)"
        );
    }
    Ok(Outcome::Moved {
        from: current,
        to: now,
        detail: group_detail(host, bdf),
    })
}

/// After a failed bind: clears the override and lets `original` (the driver the controller had)
/// take it again. Returns what happened, for the error message.
fn give_back(host: &Host, bdf: Bdf, original: Option<&str>) -> String {
    // Best effort, each step whether or not the one before took.
    let _ = host.write(&host.paths.device_dir(bdf).join("driver_override"), "\n");
    if let Some(d) = host.paths.driver_of(bdf) {
        let _ = host.write(&host.driver_dir(&d).join("unbind"), &bdf.to_string());
    }
    let Some(orig) = original else {
        return "it is left with no driver, as it was".into();
    };
    let _ = host.write(&host.drivers_probe(), &bdf.to_string());
    match host.wait_for_driver(bdf, orig) {
        Some(d) if d == orig => format!("it is back on {orig}"),
        now => format!(
            "and {orig} did not take it back (driver now {}): `vfnvme-setup unbind {bdf}` \
             retries",
            now.as_deref().unwrap_or("none")
        ),
    }
}

/// Processes holding the VFIO group node of `group`: `["1234 (vfnvme-perf)"]`.
pub fn group_holders(host: &Host, group: IommuGroup) -> Vec<String> {
    let node = match group {
        IommuGroup::Group(g) => format!("/dev/vfio/{g}"),
        IommuGroup::NoIommu(g) => format!("/dev/vfio/noiommu-{g}"),
        IommuGroup::None => return Vec::new(),
    };
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(host.root.join("proc")) else {
        return out;
    };
    for e in rd.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|f| std::fs::read_link(f.path()).is_ok_and(|t| t.as_os_str() == node.as_str()))
        {
            let comm = host.read(&e.path().join("comm")).unwrap_or_default();
            out.push(format!("{pid} ({comm})"));
        }
    }
    out.sort();
    out
}

/// Gives `bdf` back to the kernel nvme driver.
///
/// # Errors
/// Not an NVMe controller, the VFIO group is held by a process (unless `force`), the nvme
/// driver is not available, or nvme did not bind.
pub fn unbind(host: &Host, bdf: Bdf, force: bool) -> anyhow::Result<Outcome> {
    host.check_nvme(bdf)?;
    let st = scan::one(host, bdf);
    let current = st.driver.clone();
    if current.as_deref() == Some("nvme") {
        // Already there. A stray override (left by a bind that failed half-way, say) is
        // cleared, but the driver is not touched: unbinding nvme would hot-remove its disks.
        if st.driver_override.is_some() {
            host.write(&host.paths.device_dir(bdf).join("driver_override"), "\n")?;
        }
        State::update(host, |s| {
            s.devices.remove(&bdf.to_string());
        })?;
        return Ok(Outcome::Already("nvme".into()));
    }
    if current.as_deref() != Some("vfio-pci") && current.is_some() {
        // On some other driver: its namespaces may be in use, as `bind` checks.
        let uses = st.uses();
        if !uses.is_empty() && !force {
            bail!(
                "{bdf}: refusing to move it from {} to nvme: {} — stop using it first, or pass \
                 --force",
                current.as_deref().unwrap_or("?"),
                uses.join("; ")
            );
        }
    }
    if current.as_deref() == Some("vfio-pci") {
        let holders = group_holders(host, st.iommu_group);
        if !holders.is_empty() && !force {
            bail!(
                "{bdf}: its VFIO group {} is open in process {}: stop it first (the unbind \
                 would block until it exits), or pass --force",
                st.iommu_group,
                holders.join(", ")
            );
        }
    }
    host.ensure_driver("nvme", "nvme")?;
    let dev = host.paths.device_dir(bdf);
    if st.driver_override.is_some() {
        host.write(&dev.join("driver_override"), "\n")?;
    }
    if let Some(d) = &current {
        host.write(&host.driver_dir(d).join("unbind"), &bdf.to_string())
            .with_context(|| format!("unbinding {bdf} from {d}"))?;
    }
    host.write(&host.drivers_probe(), &bdf.to_string())?;
    let now = host.wait_for_driver(bdf, "nvme");
    if now.as_deref() != Some("nvme") {
        // The record stays, so that `reset` (or another `unbind`) still knows the controller.
        bail!(
            "{bdf}: the nvme driver did not bind (driver now {}); see `dmesg | tail`, then \
             `vfnvme-setup unbind {bdf}` retries",
            now.as_deref().unwrap_or("none")
        );
    }
    State::update(host, |s| {
        s.devices.remove(&bdf.to_string());
    })?;
    Ok(Outcome::Moved {
        from: current,
        to: now,
        detail: String::new(),
    })
}

fn targets(host: &Host, bdfs: &[Bdf]) -> anyhow::Result<Vec<Bdf>> {
    if !bdfs.is_empty() {
        return Ok(bdfs.to_vec());
    }
    let all = host.nvme_functions()?;
    if all.is_empty() {
        bail!("no NVMe controllers (PCI class 0x010802) on this machine");
    }
    Ok(all)
}

fn each(bdfs: &[Bdf], mut f: impl FnMut(Bdf) -> anyhow::Result<Outcome>) -> anyhow::Result<i32> {
    let mut failed = 0;
    for &b in bdfs {
        match f(b) {
            Ok(o) => println!("{}", o.line(b)),
            Err(e) => {
                eprintln!("vfnvme-setup: error: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "vfnvme-setup: {failed} of {} controller(s) not done",
            bdfs.len()
        );
        return Ok(1);
    }
    Ok(0)
}

/// `bind [BDF...]`: every controller given, each one tried; the exit code is 1 when any failed
/// or was refused. By default every NVMe controller that is not in use (as SPDK's `setup.sh`
/// does: the boot disk is skipped, with a line saying why, not counted as a failure).
///
/// # Errors
/// No controllers.
pub fn bind_many(host: &Host, bdfs: &[Bdf], force: bool) -> anyhow::Result<i32> {
    let mut t = targets(host, bdfs)?;
    if bdfs.is_empty() && !force {
        t.retain(|&b| {
            let st = scan::one(host, b);
            let uses = st.uses();
            if uses.is_empty() || st.driver.as_deref() == Some("vfio-pci") {
                return true;
            }
            println!(
                "{b}: skipped, in use: {} (name it, with --force, to take it anyway)",
                uses.join("; ")
            );
            false
        });
        if t.is_empty() {
            println!("every NVMe controller is in use: nothing bound");
            return Ok(0);
        }
    }
    each(&t, |b| bind(host, b, force))
}

/// `unbind [BDF...]`: default every controller this tool bound (recorded in its state file).
/// Others on vfio-pci (a VM's passthrough device, say) are listed, not touched: name them to
/// give them back.
///
/// # Errors
/// The state file does not parse.
pub fn unbind_many(host: &Host, bdfs: &[Bdf], force: bool) -> anyhow::Result<i32> {
    let t = if bdfs.is_empty() {
        let v = recorded(host)?;
        if v.is_empty() {
            println!("no controller bound by vfnvme-setup is recorded: nothing to do");
            hint_unrecorded(host, &v);
            return Ok(0);
        }
        hint_unrecorded(host, &v);
        v
    } else {
        bdfs.to_vec()
    };
    each(&t, |b| unbind(host, b, force))
}

/// Takes `bdf` off vfio-pci and leaves it with no driver (what it had before `bind`).
fn release(host: &Host, bdf: Bdf) -> anyhow::Result<Outcome> {
    let st = scan::one(host, bdf);
    let holders = group_holders(host, st.iommu_group);
    if !holders.is_empty() {
        bail!(
            "{bdf}: its VFIO group {} is open in process {}: stop it first",
            st.iommu_group,
            holders.join(", ")
        );
    }
    detach(host, bdf, st.driver.as_deref())?;
    State::update(host, |s| {
        s.devices.remove(&bdf.to_string());
    })?;
    Ok(Outcome::Moved {
        from: st.driver,
        to: None,
        detail: " (it had no driver before bind)".into(),
    })
}

/// Clears `bdf`'s driver override and unbinds it from `driver`, its current one: it is left
/// with no driver.
fn detach(host: &Host, bdf: Bdf, driver: Option<&str>) -> anyhow::Result<()> {
    host.write(&host.paths.device_dir(bdf).join("driver_override"), "\n")?;
    if let Some(d) = driver {
        host.write(&host.driver_dir(d).join("unbind"), &bdf.to_string())
            .with_context(|| format!("unbinding {bdf} from {d}"))?;
    }
    Ok(())
}

/// The controllers in the state file.
fn recorded(host: &Host) -> anyhow::Result<Vec<Bdf>> {
    Ok(State::load(host)?.map(|s| s.bdfs()).unwrap_or_default())
}

/// Names the NVMe controllers on vfio-pci that are not in `done` (not bound by this tool).
fn hint_unrecorded(host: &Host, done: &[Bdf]) {
    let others: Vec<String> = host
        .nvme_functions()
        .unwrap_or_default()
        .into_iter()
        .filter(|b| !done.contains(b))
        .filter(|&b| {
            host.paths.driver_of(b).as_deref() == Some("vfio-pci")
                || host.driver_override(b).is_some()
        })
        .map(|b| b.to_string())
        .collect();
    if !others.is_empty() {
        println!(
            "left alone, not bound by vfnvme-setup: {} (`vfnvme-setup unbind BDF` gives one \
             back)",
            others.join(", ")
        );
    }
}

/// `reset`: undoes what this tool recorded in its state file. Hugepages first — the kernel
/// nvme driver needs memory to probe — the machine-wide count, then each NUMA node's (the
/// whole picture is recorded at the first change), then the controllers go back to the driver
/// they had. With no record, nothing is changed: hugepages reserved by others (the kernel
/// command line, DPDK, VMs) and controllers on vfio-pci for a VM are not this tool's.
///
/// # Errors
/// The state file does not parse.
pub fn reset(host: &Host) -> anyhow::Result<i32> {
    let Some(state) = State::load(host)? else {
        println!("nothing recorded by vfnvme-setup: hugepages and controllers left as they are");
        hint_unrecorded(host, &[]);
        return Ok(0);
    };
    let mut code = 0;
    let bdfs = state.bdfs();
    let restore = |pages: u64, node: Option<u32>| match super::hugepages::restore(host, pages, node)
    {
        Ok(r) => {
            println!("{}", r.message());
            true
        }
        Err(e) => {
            eprintln!("vfnvme-setup: error: {e:#}");
            false
        }
    };
    if let Some(t) = state.hugepages_total {
        code |= !restore(t, None) as i32;
    }
    for (&n, &c) in &state.hugepages_nodes {
        code |= !restore(c, Some(n)) as i32;
    }
    // After the hugepages: rebinding nvme needs memory.
    if bdfs.is_empty() {
        println!("no controllers to give back");
    } else if each(&bdfs, |b| match state.devices.get(&b.to_string()) {
        // It had no driver before `bind`: leave it without one.
        Some(None) => release(host, b),
        _ => unbind(host, b, false),
    })? != 0
    {
        code = 1;
    }
    if code == 0 {
        let _ = std::fs::remove_file(host.state_file());
    }
    Ok(code)
}
