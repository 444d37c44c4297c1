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
            wants: Mutex::new(Vec::new()),
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

/// A queue pair left for a channel: the path index, the path it was made on, the queue pair.
pub(crate) type Arrival = (usize, Arc<PathInfo>, QueuePair<Cmd>);

/// Where the control plane leaves queue pairs for a channel (a path came back as a new
/// controller). One per channel; the channel takes them when the generation moves.
pub(crate) type Inbox = Arc<Mutex<Vec<Arrival>>>;
type WeakInbox = std::sync::Weak<Mutex<Vec<Arrival>>>;

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
    /// Channels that have no queue pair on a path (it was down when they were made), by path:
    /// the control plane makes one once the path is usable ([`MpNamespace::serve_wants`]).
    wants: Mutex<Vec<(WeakInbox, usize)>>,
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

    /// A channel (its `inbox`) has no queue pair on path `i`: the control plane makes one, off
    /// the I/O thread, once the path is usable. Asking again changes nothing.
    pub(crate) fn want_queue_pair(&self, inbox: &Inbox, i: usize) {
        add_want(&mut self.wants.lock().unwrap(), (Arc::downgrade(inbox), i));
    }

    /// Control plane: makes the queue pairs that channels asked for ([`Self::want_queue_pair`])
    /// on paths that are usable now, and leaves them in the channels' inboxes. Returns true if
    /// it left any (the caller publishes, so that the channels take them).
    pub(crate) fn serve_wants(&self) -> bool {
        // Taken out, so that a channel asking meanwhile never waits on queue creation.
        let mut wants = std::mem::take(&mut *self.wants.lock().unwrap());
        wants.retain(|(w, _)| w.strong_count() > 0);
        if wants.is_empty() {
            return false;
        }
        let inboxes: Vec<(WeakInbox, QueueOptions)> = self.inboxes.lock().unwrap().clone();
        let mut served = false;
        wants.retain(|(w, i)| {
            let path = self.path(*i);
            if !path.status().usable() {
                return true;
            }
            let (Some(inbox), Some(opts)) = (
                w.upgrade(),
                inboxes.iter().find(|(x, _)| x.ptr_eq(w)).map(|(_, o)| *o),
            ) else {
                return false;
            };
            match path.ctrl.io_queue_pair_with(opts) {
                Ok(qp) => {
                    log::info!(
                        "{}: queue pair for a channel that had none",
                        path.ctrl.name()
                    );
                    inbox.lock().unwrap().push((*i, path, qp));
                    served = true;
                    false
                }
                Err(e) => {
                    log::warn!(
                        "{}: queue pair for a channel: {e}; will retry",
                        path.ctrl.name()
                    );
                    true
                }
            }
        });
        // What is left waits for a later step (with what channels asked for meanwhile).
        let mut now = self.wants.lock().unwrap();
        for w in wants {
            add_want(&mut now, w);
        }
        served
    }

    /// Replaces path `i` with a new controller for the same port (a device that came back after
    /// removal), creating a queue pair for every channel, and retires the old controller
    /// ([`Controller::retire`]): nothing services it any more, so what its queue pairs still
    /// hold fails over from them instead of waiting for ever. Control plane only.
    ///
    /// A channel keeps using its old queue pair on the path until that has delivered all it
    /// held, and meanwhile counts the path as `Waiting`; it takes the new queue pair's
    /// parameters (CQT, CRDT, ANATT, block size) from the new controller.
    ///
    /// # Errors
    /// [`Error::NamespaceMismatch`] if the new controller's namespace is not the same one;
    /// controller errors from creating queue pairs (nothing is changed then).
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
        let path = Arc::new(PathInfo::new(ctrl));
        // Held to the end: a channel created meanwhile registers after this and finds the new
        // path, or before and gets a queue pair here.
        let mut inboxes = self.inboxes.lock().unwrap();
        inboxes.retain(|(w, _)| w.strong_count() > 0);
        // Every channel's queue pair first, so that an error changes nothing.
        let mut made = Vec::with_capacity(inboxes.len());
        for (w, opts) in inboxes.iter() {
            if let Some(inbox) = w.upgrade() {
                made.push((inbox, path.ctrl.io_queue_pair_with(*opts)?));
            }
        }
        {
            let mut paths = self.paths.write().unwrap();
            let old = std::mem::replace(&mut paths[i], path.clone());
            // Retired while the paths are locked: a channel that sees the old controller's
            // commands fail looks the path up, finds it re-attached and has them wait for the
            // replacement rather than fail for want of a path.
            retire(&old.ctrl, &path.ctrl);
        }
        // Only now the queue pairs: a channel takes one only with its path in place.
        for (inbox, qp) in made {
            inbox.lock().unwrap().push((i, path.clone(), qp));
        }
        drop(inboxes);
        self.publish();
        Ok(())
    }
}

/// Adds a channel's wish for a queue pair on a path, unless it is there already.
fn add_want(wants: &mut Vec<(WeakInbox, usize)>, want: (WeakInbox, usize)) {
    if !wants.iter().any(|(x, j)| *j == want.1 && x.ptr_eq(&want.0)) {
        wants.push(want);
    }
}

/// Retires `old`, replaced by `new`. When both drive the same PCI function object (the software
/// controller brought back by `restore`), retiring `old` turns that function's bus mastering
/// off under `new`, which brought it up with bus mastering on: turn it on again.
fn retire(old: &Controller, new: &Controller) {
    if old.state() == vfnvme::CtrlState::Removed {
        return;
    }
    log::info!("{}: replaced by {}; retiring it", old.name(), new.name());
    old.retire();
    if Arc::ptr_eq(old.function(), new.function()) {
        if let Err(e) = new.function().set_bus_master(true) {
            log::warn!(
                "{}: bus mastering after retiring {}: {e}",
                new.name(),
                old.name()
            );
        }
    }
}
