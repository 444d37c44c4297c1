//! The machine as `vfnvme-setup` sees it: every path below one root (`/` normally, a fake tree
//! in tests), and every write to sysfs in one place ([`Host::write`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use vfnvme::pci::sysfs::{Bdf, SysPaths};

/// PCI class code of an NVMe controller (mass storage, non-volatile memory, NVMe).
pub const NVME_CLASS: &str = "0x010802";

/// A callback that plays the kernel's part after a write, for tests on a fake tree.
pub type KernelHook = Box<dyn Fn(&Host, &Path, &str) + Send + Sync>;

/// The machine below a root directory.
pub struct Host {
    /// The directory standing in for `/`.
    pub root: PathBuf,
    /// sysfs and `/dev/vfio` below the root.
    pub paths: SysPaths,
    /// The real machine (root is `/`): modprobe runs, root is required for changes.
    pub real: bool,
    /// How long to wait for a driver to bind after `drivers_probe`.
    pub bind_timeout: Duration,
    kernel: Option<KernelHook>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("root", &self.root)
            .field("real", &self.real)
            .finish()
    }
}

impl Host {
    /// The real machine.
    pub fn real() -> Host {
        let mut h = Host::new(PathBuf::from("/"));
        h.real = true;
        h
    }

    /// The tree below `root` (a fake machine unless `root` is `/`).
    pub fn new(root: PathBuf) -> Host {
        let real = root == Path::new("/");
        Host {
            paths: SysPaths {
                sys: root.join("sys"),
                dev_vfio: root.join("dev/vfio"),
            },
            root,
            real,
            bind_timeout: Duration::from_secs(3),
            kernel: None,
        }
    }

    /// Installs a callback run after every write (tests: plays the kernel).
    pub fn with_kernel(mut self, hook: KernelHook) -> Host {
        self.kernel = Some(hook);
        self.bind_timeout = Duration::from_millis(50);
        self
    }

    /// `/sys/bus/pci/devices`.
    pub fn pci_devices(&self) -> PathBuf {
        self.paths.sys.join("bus/pci/devices")
    }

    /// `/sys/bus/pci/drivers/<name>`.
    pub fn driver_dir(&self, name: &str) -> PathBuf {
        self.paths.sys.join("bus/pci/drivers").join(name)
    }

    /// `/sys/bus/pci/drivers_probe`.
    pub fn drivers_probe(&self) -> PathBuf {
        self.paths.sys.join("bus/pci/drivers_probe")
    }

    /// `/sys/block`.
    pub fn sys_block(&self) -> PathBuf {
        self.paths.sys.join("block")
    }

    /// A path below `/proc`.
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.root.join("proc").join(rel)
    }

    /// The state file, `/run/vfnvme-setup.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("run/vfnvme-setup.json")
    }

    /// Reads a small text file, trimmed; `None` when it does not exist or cannot be read.
    pub fn read(&self, p: &Path) -> Option<String> {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Writes `value` to a sysfs/procfs file, then lets the test kernel (if any) react.
    ///
    /// # Errors
    /// The write's error, explained (permission → run as root).
    pub fn write(&self, p: &Path, value: &str) -> anyhow::Result<()> {
        if let Err(e) = std::fs::write(p, value) {
            let shown = value.trim();
            return Err(match e.kind() {
                std::io::ErrorKind::PermissionDenied => anyhow!(
                    "writing '{shown}' to {}: permission denied (run as root)",
                    p.display()
                ),
                std::io::ErrorKind::NotFound => anyhow!(
                    "writing '{shown}' to {}: no such file (is sysfs mounted? is the driver \
                     loaded?)",
                    p.display()
                ),
                _ => anyhow!("writing '{shown}' to {}: {e}", p.display()),
            });
        }
        log::debug!("wrote {:?} to {}", value, p.display());
        if let Some(k) = &self.kernel {
            k(self, p, value);
        }
        Ok(())
    }

    /// The function's `driver_override` (`None` when empty or `(null)`).
    pub fn driver_override(&self, bdf: Bdf) -> Option<String> {
        self.read(&self.paths.device_dir(bdf).join("driver_override"))
            .filter(|s| !s.is_empty() && s != "(null)")
    }

    /// Waits until `bdf` is bound to `driver` (the kernel binds during the `drivers_probe`
    /// write, but give it a moment). Returns the driver it ended up with.
    pub fn wait_for_driver(&self, bdf: Bdf, driver: &str) -> Option<String> {
        let start = Instant::now();
        loop {
            let d = self.paths.driver_of(bdf);
            if d.as_deref() == Some(driver) || start.elapsed() >= self.bind_timeout {
                return d;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Loads a kernel module unless its PCI driver directory already exists. On a fake tree
    /// nothing is run.
    ///
    /// # Errors
    /// modprobe failed or the driver is still missing afterwards.
    pub fn ensure_driver(&self, driver: &str, module: &str) -> anyhow::Result<()> {
        if self.driver_dir(driver).exists() {
            return Ok(());
        }
        if self.real {
            let out = std::process::Command::new("modprobe")
                .arg(module)
                .output()
                .with_context(|| format!("running modprobe {module}"))?;
            if !out.status.success() {
                bail!(
                    "modprobe {module} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            if module == "vfio-pci" {
                // Best effort: the type1 IOMMU backend vfnvme uses.
                let _ = std::process::Command::new("modprobe")
                    .arg("vfio_iommu_type1")
                    .output();
            }
        }
        if !self.driver_dir(driver).exists() {
            bail!(
                "the {driver} driver is not available ({} is missing; `modprobe {module}`)",
                self.driver_dir(driver).display()
            );
        }
        Ok(())
    }

    /// Refuses changes without root on the real machine.
    ///
    /// # Errors
    /// Not root.
    pub fn require_root(&self, what: &str) -> anyhow::Result<()> {
        if !self.real {
            return Ok(());
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok());
        match euid {
            Some(0) | None => Ok(()),
            Some(u) => bail!(
                "`vfnvme-setup {what}` changes sysfs and needs root (running as uid {u}): \
                 run it with sudo"
            ),
        }
    }

    /// Checks that `bdf` exists and is an NVMe controller.
    ///
    /// # Errors
    /// No such function, or another PCI class.
    pub fn check_nvme(&self, bdf: Bdf) -> anyhow::Result<()> {
        let dir = self.paths.device_dir(bdf);
        if !dir.exists() {
            bail!(
                "no PCI function {bdf} (no {}): check the address with `vfnvme-setup status`",
                dir.display()
            );
        }
        let class = self.read(&dir.join("class")).unwrap_or_default();
        if class != NVME_CLASS {
            bail!(
                "{bdf} is not an NVMe controller (PCI class {}, want {NVME_CLASS})",
                if class.is_empty() { "unknown" } else { &class }
            );
        }
        Ok(())
    }

    /// Every NVMe controller (PCI class 0x010802), sorted by address.
    ///
    /// # Errors
    /// `/sys/bus/pci/devices` cannot be listed.
    pub fn nvme_functions(&self) -> anyhow::Result<Vec<Bdf>> {
        let dir = self.pci_devices();
        let rd = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {} (is sysfs mounted?)", dir.display()))?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(bdf) = Bdf::parse(&name) else { continue };
            if self.read(&e.path().join("class")).as_deref() == Some(NVME_CLASS) {
                out.push(bdf);
            }
        }
        out.sort();
        Ok(out)
    }
}
