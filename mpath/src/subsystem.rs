//! Subsystems and multipath namespaces.

use std::sync::{Arc, Mutex, RwLock};

use vfnvme::spec::identify::NsIdentifier;
use vfnvme::{Controller, Namespace, NsInfo, QueueOptions, QueuePair};

use crate::channel::Cmd;
use crate::path::{Generation, PathInfo, PathStatus};
use crate::Error;

/// Controllers that share one SUBNQN.
pub struct Subsystem {
    /// The subsystem NQN.
    pub subnqn: String,
    /// Its controllers, in the order given.
    pub ctrls: Vec<Controller>,
}

impl Subsystem {
    /// Groups controllers by SUBNQN. A group of several must all report the multi-controller CMIC
    /// bit and distinct CNTLIDs.
    ///
    /// # Errors
    /// [`Error::Inconsistent`] when that does not hold.
    pub fn group(ctrls: Vec<Controller>) -> Result<Vec<Subsystem>, Error> {
        let mut out: Vec<Subsystem> = Vec::new();
        for c in ctrls {
            let nqn = c.identify().subnqn();
            match out.iter_mut().find(|s| s.subnqn == nqn) {
                Some(s) => s.ctrls.push(c),
                None => out.push(Subsystem {
                    subnqn: nqn,
                    ctrls: vec![c],
                }),
            }
        }
        for s in &out {
            if s.ctrls.len() < 2 {
                continue;
            }
            let mut ids = Vec::new();
            for c in &s.ctrls {
                let id = c.identify();
                if !id.multi_controller() {
                    return Err(Error::Inconsistent {
                        subnqn: s.subnqn.clone(),
                        detail: format!(
                            "{} does not report CMIC multi-controller (cmic {:#x})",
                            c.name(),
                            id.cmic
                        ),
                    });
                }
                if ids.contains(&id.cntlid) {
                    return Err(Error::Inconsistent {
                        subnqn: s.subnqn.clone(),
                        detail: format!("two controllers report cntlid {}", id.cntlid),
                    });
                }
                ids.push(id.cntlid);
            }
        }
        Ok(out)
    }

    /// The multipath namespace `nsid` over every controller that has it.
    ///
    /// # Errors
    /// [`Error::NoNamespace`], or [`Error::NamespaceMismatch`] when the identifiers (NGUID, EUI64,
    /// UUID), block size or capacity differ between controllers.
    pub fn namespace(&self, nsid: u32) -> Result<Arc<MpNamespace>, Error> {
        let mut paths = Vec::new();
        let mut first: Option<(String, Namespace)> = None;
        for c in &self.ctrls {
            let Some(ns) = c.namespace(nsid) else {
                continue;
            };
            if let Some((fname, f)) = &first {
                if !same_namespace(f, &ns) {
                    return Err(Error::NamespaceMismatch {
                        subnqn: self.subnqn.clone(),
                        nsid,
                        a: fname.clone(),
                        b: c.name().to_string(),
                    });
                }
            } else {
                first = Some((c.name().to_string(), ns.clone()));
            }
            paths.push(Arc::new(PathInfo::new(c.clone())));
        }
        let Some((_, ns)) = first else {
            return Err(Error::NoNamespace {
                subnqn: self.subnqn.clone(),
                nsid,
            });
        };
        Ok(Arc::new(MpNamespace {
            subnqn: self.subnqn.clone(),
            info: ns.info,
            anagrpid: ns.identify.anagrpid,
            paths: RwLock::new(paths),
            generation: Generation::default(),
            inboxes: Mutex::new(Vec::new()),
        }))
    }

    /// The first live controller, for admin passthrough.
    pub fn any_live(&self) -> Option<&Controller> {
        self.ctrls
            .iter()
            .find(|c| c.state() == vfnvme::CtrlState::Live)
    }
}

/// The unique identifiers of a namespace: descriptor list plus non-zero NGUID/EUI64.
fn identifiers(ns: &Namespace) -> Vec<NsIdentifier> {
    let mut v: Vec<NsIdentifier> = ns
        .ids
        .iter()
        .filter(|i| !matches!(i, NsIdentifier::Csi(_)) && i.bytes().iter().any(|&b| b != 0))
        .cloned()
        .collect();
    if ns.identify.nguid.iter().any(|&b| b != 0) {
        v.push(NsIdentifier::Nguid(ns.identify.nguid));
    }
    if ns.identify.eui64.iter().any(|&b| b != 0) {
        v.push(NsIdentifier::Eui64(ns.identify.eui64));
    }
    v.sort_by(|a, b| (a.nidt(), a.bytes()).cmp(&(b.nidt(), b.bytes())));
    v.dedup();
    v
}

/// Same namespace: same size and block size, at least one unique identifier, and identical
/// identifiers wherever both report one kind.
pub fn same_namespace(a: &Namespace, b: &Namespace) -> bool {
    if a.info != b.info {
        return false;
    }
    let (ia, ib) = (identifiers(a), identifiers(b));
    if ia.is_empty() || ib.is_empty() {
        return false;
    }
    let mut common = false;
    for x in &ia {
        if let Some(y) = ib.iter().find(|y| y.nidt() == x.nidt()) {
            if x != y {
                return false;
            }
            common = true;
        }
    }
    common
}

/// Where the control plane leaves queue pairs for a channel (a path came back as a new
/// controller). One per channel; the channel takes them when the generation moves.
pub(crate) type Inbox = Arc<Mutex<Vec<(usize, QueuePair<Cmd>)>>>;
type WeakInbox = std::sync::Weak<Mutex<Vec<(usize, QueuePair<Cmd>)>>>;

/// One namespace over all the controllers (paths) that reach it.
pub struct MpNamespace {
    /// Subsystem NQN.
    pub subnqn: String,
    /// Namespace id, block size and capacity (the same on every path).
    pub info: NsInfo,
    /// ANA group of the namespace.
    pub anagrpid: u32,
    paths: RwLock<Vec<Arc<PathInfo>>>,
    generation: Generation,
    inboxes: Mutex<Vec<(WeakInbox, QueueOptions)>>,
}

impl MpNamespace {
    /// The paths, in order.
    pub fn paths(&self) -> Vec<Arc<PathInfo>> {
        self.paths.read().unwrap().clone()
    }

    /// Number of paths.
    pub fn path_count(&self) -> usize {
        self.paths.read().unwrap().len()
    }

    /// Path `i`.
    pub fn path(&self, i: usize) -> Arc<PathInfo> {
        self.paths.read().unwrap()[i].clone()
    }

    /// Status of every path now.
    pub fn statuses(&self) -> Vec<PathStatus> {
        self.paths
            .read()
            .unwrap()
            .iter()
            .map(|p| p.status())
            .collect()
    }

    /// Current generation of the path states.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Publishes a path-state change to the channels.
    pub fn publish(&self) {
        self.generation.bump();
    }

    pub(crate) fn register_inbox(&self, inbox: &Inbox, opts: QueueOptions) {
        self.inboxes
            .lock()
            .unwrap()
            .push((Arc::downgrade(inbox), opts));
    }

    /// Replaces path `i` with a new controller for the same port (a device that came back after
    /// removal), creating a queue pair for every channel. Control plane only.
    ///
    /// # Errors
    /// [`Error::NamespaceMismatch`] if the new controller's namespace is not the same one;
    /// controller errors from creating queue pairs.
    pub fn reattach(&self, i: usize, ctrl: Controller) -> Result<(), Error> {
        let ns = ctrl.namespace(self.info.nsid).ok_or(Error::NoNamespace {
            subnqn: self.subnqn.clone(),
            nsid: self.info.nsid,
        })?;
        if ns.info != self.info {
            return Err(Error::NamespaceMismatch {
                subnqn: self.subnqn.clone(),
                nsid: self.info.nsid,
                a: self.path(i).ctrl.name().to_string(),
                b: ctrl.name().to_string(),
            });
        }
        let mut inboxes = self.inboxes.lock().unwrap();
        inboxes.retain(|(w, _)| w.strong_count() > 0);
        for (w, opts) in inboxes.iter() {
            if let Some(inbox) = w.upgrade() {
                let qp = ctrl.io_queue_pair_with(*opts)?;
                inbox.lock().unwrap().push((i, qp));
            }
        }
        self.paths.write().unwrap()[i] = Arc::new(PathInfo::new(ctrl));
        self.publish();
        Ok(())
    }
}
