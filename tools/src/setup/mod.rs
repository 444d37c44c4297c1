//! `vfnvme-setup`: what SPDK users expect of `scripts/setup.sh` — list the NVMe controllers and
//! who holds them, hand them to vfio-pci and back, reserve hugepages, and undo it all.
//!
//! * [`host`]: the machine seen through a configurable root (`/` normally, a fake tree in
//!   tests): sysfs paths, `/proc/mounts`, the state file, and every write to sysfs.
//! * [`scan`]: what `status` shows: controllers, their drivers, IOMMU groups, subsystem NQNs,
//!   models, block devices in use; hugepages per node and hugetlbfs mounts.
//! * [`bind`]: `bind`, `unbind` and `reset` through `driver_override`.
//! * [`hugepages`]: `hugepages N [--node K]`.
//! * [`state`]: `/run/vfnvme-setup.json`, what `reset` restores.
//!
//! [`run`] executes a parsed command line and returns the exit code; the binary only parses.

pub mod bind;
pub mod host;
pub mod hugepages;
pub mod scan;
pub mod state;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vfnvme::pci::sysfs::Bdf;

pub use host::Host;

const EXAMPLES: &str = "\
Examples:
  vfnvme-setup status                      # controllers, drivers, IOMMU groups, hugepages
  vfnvme-setup status --json               # the same for scripts
  sudo vfnvme-setup bind                   # every NVMe controller not in use -> vfio-pci
  sudo vfnvme-setup bind 0000:01:00.0      # one controller (also 01:00.0, or
                                           #   'trtype:PCIe traddr:0000:01:00.0')
  sudo vfnvme-setup hugepages 512          # 512 x 2 MiB = 1 GiB, machine-wide
  sudo vfnvme-setup hugepages 256 --node 1 # 256 pages on NUMA node 1
  sudo vfnvme-setup unbind 0000:01:00.0    # back to the kernel nvme driver
  sudo vfnvme-setup reset                  # undo everything this tool did

bind refuses a controller whose namespaces are mounted, partitioned, used as swap or held by
another block device (LVM, dm, md) unless --force: unmount first.
What bind and hugepages changed is remembered in /run/vfnvme-setup.json for reset.
Exit status: 0 done, 1 failed or refused (the message says why), 2 bad command line.";

/// `vfnvme-setup` command line.
#[derive(Debug, Parser)]
#[command(
    name = "vfnvme-setup",
    version,
    about = "Prepare a machine for vfnvme: NVMe controllers to vfio-pci and back, hugepages",
    long_about = "Prepare a machine for vfnvme, the polled userspace NVMe driver (like SPDK's \
                  scripts/setup.sh): list the NVMe controllers and what holds them, move them \
                  between the kernel nvme driver and vfio-pci through driver_override, reserve \
                  2 MiB hugepages, and undo it all with `reset`.",
    after_help = EXAMPLES
)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Directory standing in for `/` (its sys/, proc/, run/, dev/vfio): for tests. Also read
    /// from the environment variable `VFNVME_SYSFS_ROOT`.
    #[arg(long, global = true, hide = true)]
    pub sysfs_root: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the NVMe controllers (driver, IOMMU group, subsystem, use), hugepages and hugetlbfs.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move controllers to vfio-pci (default: every NVMe controller not in use; one in use is
    /// skipped unless named with --force). Idempotent.
    Bind {
        /// PCI addresses (0000:01:00.0, 01:00.0 or 'trtype:PCIe traddr:0000:01:00.0').
        bdfs: Vec<Bdf>,
        /// Bind even when a namespace is mounted, partitioned or held (data loss risk).
        #[arg(long)]
        force: bool,
    },
    /// Give controllers back to the kernel nvme driver (default: every one this tool bound;
    /// others on vfio-pci, a VM's say, are listed and left alone).
    Unbind {
        /// PCI addresses.
        bdfs: Vec<Bdf>,
        /// Unbind even when a process holds the VFIO group (the write blocks until it lets go).
        #[arg(long)]
        force: bool,
    },
    /// Reserve N 2 MiB hugepages (machine-wide, or on one NUMA node) and report what was granted.
    Hugepages {
        /// Pages of 2 MiB.
        pages: u64,
        /// NUMA node to reserve on.
        #[arg(long)]
        node: Option<u32>,
    },
    /// Undo what this tool recorded: hugepages back to what they were, controllers back to the
    /// driver they had. With no record, nothing changes.
    Reset,
}

/// Runs a parsed command line, printing to stdout/stderr. Returns the exit code.
pub fn run(args: &Args) -> i32 {
    let root = args
        .sysfs_root
        .clone()
        .or_else(|| std::env::var_os("VFNVME_SYSFS_ROOT").map(PathBuf::from));
    let host = match root {
        Some(r) => Host::new(r),
        None => Host::real(),
    };
    let mutating = !matches!(args.command, Command::Status { .. });
    if mutating {
        if let Err(e) = host.require_root(command_name(&args.command)) {
            eprintln!("vfnvme-setup: error: {e}");
            return 1;
        }
    }
    let result = match &args.command {
        Command::Status { json } => scan::status(&host).map(|s| {
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s.json()).expect("JSON serializes")
                );
            } else {
                print!("{}", s.text());
            }
            0
        }),
        Command::Bind { bdfs, force } => bind::bind_many(&host, bdfs, *force),
        Command::Unbind { bdfs, force } => bind::unbind_many(&host, bdfs, *force),
        Command::Hugepages { pages, node } => hugepages::reserve(&host, *pages, *node).map(|r| {
            println!("{}", r.message());
            if r.granted < r.asked {
                eprintln!("vfnvme-setup: warning: {}", r.shortfall_hint());
                1
            } else {
                0
            }
        }),
        Command::Reset => bind::reset(&host),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vfnvme-setup: error: {e:#}");
            1
        }
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Status { .. } => "status",
        Command::Bind { .. } => "bind",
        Command::Unbind { .. } => "unbind",
        Command::Hugepages { .. } => "hugepages",
        Command::Reset => "reset",
    }
}

#[cfg(test)]
pub(crate) mod fake;
