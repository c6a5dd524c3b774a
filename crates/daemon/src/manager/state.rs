//! The manager's loop and its model. Reads of sysfs happen here; writes (which can block in
//! the kernel) run on blocking threads with a time bound and come back as `*Done` commands, so
//! the loop keeps answering everyone while a write hangs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::owners::Owners;
use super::{
    Change, Command, Completion, Completions, DeviceView, ManagerConfig, Request, Snapshot, Update,
};
use crate::events::{Affected, UEvent};
use crate::manager::holders::{device_nodes, held_among};
use crate::store::{Definition, Meta, Start};
use vgpud_model::error::Result;
use vgpud_model::{Device, MdevUuid, Parent, ParentName};
use vgpud_policy::Policy;

/// How often, and how far apart, a device without its `mdev_type` link is re-read.
pub(super) const LINK_RETRIES: u32 = 20;
const LINK_RETRY_DELAY: Duration = Duration::from_millis(10);
/// How often live devices are checked for holders: a VM opening a VFIO group sends no event.
/// The check walks /proc off the loop; launching or stopping a guest and removing a device
/// check at once.
const HOLDERS_POLL: Duration = Duration::from_secs(2);

/// A create sent to the kernel and not answered yet (counts against limits and capacity).
#[derive(Debug, Clone)]
pub(super) struct Pending {
    /// Stamped when the job started: its reading is newer than this.
    pub stamp: u64,
    /// Every UUID the job may create (one per candidate parent): their events wait for it.
    pub uuids: Vec<MdevUuid>,
    pub parent: ParentName,
    pub type_id: vgpud_model::TypeId,
    pub uuid: Option<MdevUuid>,
    pub owner_uid: Option<u32>,
    pub owner_groups: Vec<String>,
}

pub(crate) struct Manager {
    pub(super) config: ManagerConfig,
    pub(super) me: Completions,
    changes: mpsc::UnboundedSender<Update>,
    pub(super) parents: BTreeMap<ParentName, Parent>,
    /// Live devices as sysfs shows them.
    pub(super) live: BTreeMap<MdevUuid, Device>,
    /// Definitions by UUID (one UUID may be defined under several parents).
    pub(super) definitions: BTreeMap<MdevUuid, Vec<(Definition, Option<Meta>)>>,
    /// What is published: the union of live devices and definitions.
    pub(super) devices: BTreeMap<MdevUuid, DeviceView>,
    pub(super) owners: Owners,
    pub(super) policy: Policy,
    pub(super) pending: BTreeMap<u64, Pending>,
    pub(super) next_pending: u64,
    /// Removes in flight, with the stamp taken when each started.
    pub(super) removing: BTreeMap<MdevUuid, u64>,
    /// The stamp of the last reading applied per parent and device.
    pub(super) stamps: super::readings::Stamps,
    /// Events about devices with a job in flight, checked against the job's reading when it lands.
    pub(super) deferred: BTreeMap<MdevUuid, Vec<UEvent>>,
    /// Parents that appeared since the last convergence (autostart, ensure rules).
    pub(super) appeared: Vec<ParentName>,
    /// What ensure rules cannot meet.
    pub(super) problems: Vec<String>,
    /// Definition files skipped as invalid, as "<path>: <reason>".
    pub(super) definition_problems: Vec<String>,
    pub(super) guests: BTreeMap<u64, super::guests::Guest>,
    pub(super) next_guest: u64,
    /// Live devices whose VFIO group some process held open at the last check.
    held: BTreeSet<MdevUuid>,
    /// A /proc walk is running off the loop; `Some(true)` once a newer check made its answer stale.
    polling_holders: Option<bool>,
    /// Parents whose autostart or ensure rules are retried (the vendor side was not ready).
    pub(super) retries: super::retry::Retries,
    pub(super) next_retry: u64,
    /// What the last change of the NVIDIA scheduler file asks of the administrator.
    pub(super) scheduler_problem: Option<String>,
}

/// Which of `targets` are held open, in one pass over /proc.
/// A live device as far as holding it goes: its IOMMU group and its sysfs directory.
pub(super) type Holdable = (MdevUuid, Option<u32>, PathBuf);

fn holders_walk(
    proc_root: &Path,
    dev_root: &Path,
    targets: Vec<Holdable>,
) -> Vec<(MdevUuid, bool)> {
    let per_device: Vec<(MdevUuid, Vec<PathBuf>)> = targets
        .into_iter()
        .map(|(u, group, sysfs)| (u, device_nodes(dev_root, group, &sysfs)))
        .collect();
    let nodes: Vec<PathBuf> = per_device.iter().flat_map(|(_, n)| n.clone()).collect();
    let held = held_among(proc_root, &nodes);
    per_device
        .into_iter()
        .map(|(u, n)| (u, n.iter().any(|n| held.contains(n))))
        .collect()
}

impl Manager {
    pub(crate) fn new(
        config: ManagerConfig,
        me: Completions,
        changes: mpsc::UnboundedSender<Update>,
    ) -> Result<Self> {
        let owners = Owners::open(config.state_dir.as_deref())?;
        let policy = config.policy.clone();
        Ok(Self {
            config,
            me,
            changes,
            parents: BTreeMap::new(),
            live: BTreeMap::new(),
            definitions: BTreeMap::new(),
            devices: BTreeMap::new(),
            owners,
            policy,
            pending: BTreeMap::new(),
            next_pending: 0,
            removing: BTreeMap::new(),
            stamps: Default::default(),
            deferred: BTreeMap::new(),
            appeared: Vec::new(),
            problems: Vec::new(),
            definition_problems: Vec::new(),
            guests: BTreeMap::new(),
            next_guest: 1,
            held: BTreeSet::new(),
            polling_holders: None,
            retries: BTreeMap::new(),
            next_retry: 0,
            scheduler_problem: None,
        })
    }

    /// Everything published as the Manager's Problems.
    pub(super) fn all_problems(&self) -> Vec<String> {
        let mut all = self.problems.clone();
        all.extend(self.definition_problems.iter().cloned());
        all.extend(self.retry_problems());
        all.extend(self.scheduler_problem.iter().cloned());
        all
    }

    /// A reply for vgpud's own requests (autostart, ensure rules).
    pub(super) fn internal_reply<T: Send + 'static>(
        &self,
    ) -> (super::Reply<T>, tokio::sync::oneshot::Receiver<Result<T>>) {
        super::Reply::channel(&self.changes)
    }

    pub(super) fn publish(&self, change: Change) {
        // The receiver only goes away when the daemon is shutting down.
        let _ = self.changes.send(Update::Change(change));
    }

    /// Adopts everything that exists: nothing is created or destroyed that nobody asked for.
    pub(crate) fn scan(&mut self) -> Result<()> {
        for p in self.config.host.parents()? {
            self.set_parent(p.name.clone(), Some(p));
        }
        for d in self.config.host.devices()? {
            self.live.insert(d.uuid, d);
        }
        let live = self.live.clone();
        self.owners.retain(|u| live.contains_key(u));
        let targets = self.holdable(live.keys().copied());
        let held = holders_walk(&self.config.proc_root, &self.config.dev_root, targets);
        self.held = held
            .into_iter()
            .filter(|(_, h)| *h)
            .map(|(u, _)| u)
            .collect();
        self.load_definitions();
        let uuids: Vec<MdevUuid> = self
            .live
            .keys()
            .chain(self.definitions.keys())
            .copied()
            .collect();
        for u in uuids {
            self.recompose(&u);
        }
        tracing::info!(
            parents = self.parents.len(),
            devices = self.live.len(),
            definitions = self.definitions.len(),
            "adopted the host's mdev parents, devices and definitions"
        );
        Ok(())
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        // Parents present at start count as registering: autostart and ensure rules apply.
        self.converge_appeared();
        let me = self.me.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOLDERS_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if me.send(Completion::PollHolders).is_err() {
                    break;
                }
            }
        });
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Event(first) => {
                    // Events come in bursts (add+bind, a whole unplug): re-read each parent and
                    // device once per burst, not once per event.
                    let mut batch = vec![first];
                    let mut after = None;
                    while let Ok(next) = rx.try_recv() {
                        match next {
                            Command::Event(e) if batch.len() < 1024 => batch.push(e),
                            other => {
                                after = Some(other);
                                break;
                            }
                        }
                    }
                    self.on_events(&batch);
                    if let Some(cmd) = after {
                        self.handle(cmd);
                    }
                }
                cmd => self.handle(cmd),
            }
            self.converge_appeared();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Request(r) => self.handle_request(r),
            Command::Event(e) => self.on_events(std::slice::from_ref(&e)),
            Command::DefinitionsChanged => self.load_definitions(),
            Command::Done(c) => self.handle_completion(c),
        }
    }

    fn handle_request(&mut self, request: Request) {
        match request {
            Request::Plan(reply) => {
                let _ = reply.send(self.plan());
            }
            Request::Capacity(caller, filter, reply) => {
                let parents: Vec<&vgpud_model::Parent> = self.parents.values().collect();
                let _ = reply.send(self.policy.capacity(
                    &caller.subject(),
                    &parents,
                    &self.owned(),
                    &filter,
                ));
            }
            Request::Snapshot(reply) => {
                let _ = reply.send(Snapshot {
                    parents: self.parents.values().cloned().collect(),
                    devices: self.devices.values().cloned().collect(),
                    problems: self.all_problems(),
                });
            }
            Request::Device(uuid, reply) => {
                if !self.devices.contains_key(&uuid) {
                    self.refresh_device(&uuid);
                }
                let _ = reply.send(Ok(self.devices.get(&uuid).cloned()));
            }
            Request::Create(caller, req, reply) => self.start_create(caller, req, reply),
            Request::Remove(caller, uuid, req, reply) => {
                self.start_remove(&caller, uuid, req, reply)
            }
            Request::Define(caller, req, reply) => {
                let r = self.define(&caller, req);
                let _ = reply.send(r);
            }
            Request::Undefine(caller, uuid, reply) => {
                let r = self.undefine(&caller, &uuid);
                let _ = reply.send(r);
            }
            Request::Start(caller, uuid, reply) => self.start_defined(caller, uuid, reply),
            Request::SetAutostart(caller, uuid, on, reply) => {
                let r = self.set_autostart(&caller, &uuid, on);
                let _ = reply.send(r);
            }
            Request::ReloadPolicy(caller, reply) => {
                let r = self.reload(&caller);
                let _ = reply.send(r);
            }
            Request::Modify(caller, uuid, req, reply) => {
                self.start_modify(caller, uuid, req, reply)
            }
            Request::LaunchGuest(caller, devices, opts, reply) => {
                let r = self.launch_guest(&caller, &devices, opts);
                let _ = reply.send(r);
            }
            Request::StopGuest(caller, id, reply) => self.stop_guest(&caller, id, reply),
            Request::ForgetGuest(caller, id, reply) => {
                let r = self.forget_guest(Some(&caller), id);
                let _ = reply.send(r);
            }
        }
    }

    fn handle_completion(&mut self, done: Completion) {
        match done {
            Completion::RefreshDevice(uuid, left) => {
                if self.refresh_device(&uuid) && left > 0 {
                    self.retry_link(uuid, left - 1);
                }
            }
            Completion::CheckHolders(uuids) => self.check_holders(&uuids),
            Completion::PollHolders => self.poll_holders(),
            Completion::HoldersPolled(checked) => {
                let stale = self.polling_holders.take() == Some(true);
                if !stale {
                    self.apply_holders(checked);
                }
            }
            Completion::RetryFailed {
                parent,
                what,
                error,
                may_pass,
            } => self.retry_failed(parent, what, error, may_pass),
            Completion::RetrySucceeded(parent) => self.retry_succeeded(&parent),
            Completion::RetryDue(parent, generation) => self.retry_due(parent, generation),
            Completion::ModifyDone(done) => self.finish_modify(done),
            Completion::CreateDone(done) => self.finish_create(done),
            Completion::RemoveDone(done) => self.finish_remove(done),
            Completion::GuestExited(id, status) => self.guest_exited(id, status),
            Completion::RetentionOver(id) => {
                let _ = self.forget_guest(None, id);
            }
        }
    }

    // ---- the model ---------------------------------------------------------------------------

    pub(super) fn set_parent(&mut self, name: ParentName, new: Option<Parent>) {
        let old = self.parents.get(&name);
        match (old, new) {
            (None, None) => {}
            (None, Some(p)) => {
                self.parents.insert(name.clone(), p.clone());
                self.appeared.push(name);
                self.publish(Change::ParentAdded(p));
            }
            (Some(_), None) => {
                self.parents.remove(&name);
                self.retries_forget(&name);
                self.publish(Change::ParentRemoved(name));
            }
            (Some(o), Some(p)) => {
                if *o != p {
                    self.parents.insert(name, p.clone());
                    self.publish(Change::ParentUpdated(p));
                }
            }
        }
    }

    /// Recomputes what is published for `uuid` from the live device, its definitions and owner.
    pub(super) fn recompose(&mut self, uuid: &MdevUuid) {
        let live = self.live.get(uuid).cloned();
        let defs = self.definitions.get(uuid).cloned().unwrap_or_default();
        let def = live
            .as_ref()
            .and_then(|d| defs.iter().find(|(x, _)| x.parent == d.parent))
            .or(defs.first())
            .cloned();
        let view = match (live, def) {
            (None, None) => None,
            (live, def) => {
                let parent = live
                    .as_ref()
                    .map(|d| d.parent.clone())
                    .or_else(|| def.as_ref().map(|(d, _)| d.parent.clone()));
                let Some(parent) = parent else { return };
                let type_id = live
                    .as_ref()
                    .and_then(|d| d.type_id.clone())
                    .or_else(|| def.as_ref().map(|(d, _)| d.mdev_type.clone()));
                let owner = self.owners.get(uuid);
                let meta = def.as_ref().and_then(|(_, m)| m.as_ref());
                let in_use = live.is_some() && self.held.contains(uuid);
                Some(DeviceView {
                    uuid: *uuid,
                    parent,
                    type_id,
                    defined: def.is_some(),
                    autostart: def.as_ref().is_some_and(|(d, _)| d.start == Start::Auto),
                    live,
                    in_use,
                    removing: self.removing.contains_key(uuid),
                    owner_uid: owner
                        .and_then(|o| o.uid)
                        .or_else(|| meta.and_then(|m| m.owner_uid)),
                    origin: owner
                        .map(|o| o.origin.clone())
                        .or_else(|| meta.map(|m| m.origin.clone())),
                })
            }
        };
        let old = self.devices.get(uuid);
        match (old, view) {
            (None, None) => {}
            (None, Some(v)) => {
                self.devices.insert(*uuid, v.clone());
                self.publish(Change::DeviceAdded(v));
            }
            (Some(_), None) => {
                self.devices.remove(uuid);
                self.publish(Change::DeviceRemoved(*uuid));
            }
            (Some(o), Some(v)) => {
                if *o != v {
                    self.devices.insert(*uuid, v.clone());
                    self.publish(Change::DeviceUpdated(v));
                }
            }
        }
    }

    /// `name` and every parent sharing its capacity (the VFs of one GPU).
    pub(super) fn with_siblings(&self, name: &ParentName) -> Vec<ParentName> {
        let mut names = vec![name.clone()];
        // A parent not in the model (yet, or any more) has its siblings found from sysfs.
        let physfn = match self.parents.get(name) {
            Some(p) => p.physfn.clone(),
            None => self
                .config
                .host
                .parent(name)
                .ok()
                .flatten()
                .and_then(|p| p.physfn),
        };
        if let Some(pf) = physfn {
            names.extend(
                self.parents
                    .values()
                    .filter(|p| p.physfn.as_ref() == Some(&pf) && p.name != *name)
                    .map(|p| p.name.clone()),
            );
        }
        names
    }

    /// Re-reads parents and every parent sharing their capacity, each once.
    pub(super) fn refresh_parents(&mut self, names: &[ParentName]) {
        let mut all: Vec<ParentName> = names.iter().flat_map(|n| self.with_siblings(n)).collect();
        all.sort();
        all.dedup();
        for n in all {
            let stamp = super::readings::stamp();
            let reading = self.config.host.parent(&n);
            self.take_parent(n, stamp, reading);
        }
    }

    /// Applies a reading of a parent unless a newer one was applied already.
    pub(super) fn take_parent(
        &mut self,
        name: ParentName,
        stamp: u64,
        reading: Result<Option<Parent>>,
    ) {
        match reading {
            Ok(p) => {
                if self.stamps.parent_fresh(&name, stamp) {
                    self.set_parent(name, p);
                }
            }
            Err(e) => tracing::warn!("cannot read parent {name}: {e}"),
        }
    }

    /// After devices came or went on `names`: re-reads what that changes (the
    /// `available_instances` of each parent and of every parent sharing its capacity), each
    /// once. A parent not in the model yet is read in full.
    pub(super) fn refresh_availability(&mut self, names: &[ParentName]) {
        let mut all: Vec<ParentName> = names.iter().flat_map(|n| self.with_siblings(n)).collect();
        all.sort();
        all.dedup();
        for n in all {
            let stamp = super::readings::stamp();
            let fresh = match self.parents.get(&n) {
                Some(known) => self.config.host.refresh_availability(known),
                None => self.config.host.parent(&n),
            };
            self.take_parent(n, stamp, fresh);
        }
    }

    /// Re-reads one device; true when it exists but its type link is not there yet.
    pub(super) fn refresh_device(&mut self, uuid: &MdevUuid) -> bool {
        let stamp = super::readings::stamp();
        let on = self.live.get(uuid).map(|d| (&d.parent, d.backend));
        let reading = self.config.host.device_on(uuid, on);
        self.take_device(uuid, stamp, reading)
    }

    /// Applies a reading of a device unless a newer one was applied already; true when it
    /// exists but its type link is not there yet.
    pub(super) fn take_device(
        &mut self,
        uuid: &MdevUuid,
        stamp: u64,
        reading: Result<Option<Device>>,
    ) -> bool {
        if reading.is_ok() && !self.stamps.device_fresh(uuid, stamp) {
            return false;
        }
        let unlinked = match reading {
            Ok(Some(d)) => {
                let unlinked = d.type_id.is_none();
                self.live.insert(*uuid, d);
                unlinked
            }
            Ok(None) => {
                if self.live.remove(uuid).is_some() {
                    self.owners.forget(uuid);
                }
                self.held.remove(uuid);
                false
            }
            Err(e) => {
                tracing::warn!("cannot read device {uuid}: {e}");
                false
            }
        };
        self.recompose(uuid);
        unlinked
    }

    // ---- holders ------------------------------------------------------------------------------

    /// Each of `uuids` that is live, as far as holding it goes (no I/O here).
    fn holdable(&self, uuids: impl IntoIterator<Item = MdevUuid>) -> Vec<Holdable> {
        uuids
            .into_iter()
            .filter_map(|u| {
                let dev = self.live.get(&u)?;
                Some((u, dev.iommu_group, dev.sysfs_path.clone()))
            })
            .collect()
    }

    /// Checks `uuids` for holders now, on the loop (a guest started or stopped).
    pub(super) fn check_holders(&mut self, uuids: &[MdevUuid]) {
        if let Some(stale) = &mut self.polling_holders {
            *stale = true;
        }
        let targets = self.holdable(uuids.iter().copied());
        let checked = holders_walk(&self.config.proc_root, &self.config.dev_root, targets);
        self.apply_holders(checked);
    }

    /// Starts the periodic check of every live device off the loop.
    fn poll_holders(&mut self) {
        if self.polling_holders.is_some() {
            return;
        }
        let targets = self.holdable(self.live.keys().copied());
        if targets.is_empty() && self.held.is_empty() {
            return;
        }
        self.polling_holders = Some(false);
        let proc_root = self.config.proc_root.clone();
        let dev_root = self.config.dev_root.clone();
        let me = self.me.clone();
        tokio::task::spawn_blocking(move || {
            let checked = holders_walk(&proc_root, &dev_root, targets);
            let _ = me.send(Completion::HoldersPolled(checked));
        });
    }

    pub(super) fn apply_holders(&mut self, checked: Vec<(MdevUuid, bool)>) {
        for (uuid, held) in checked {
            let changed = if held && self.live.contains_key(&uuid) {
                self.held.insert(uuid)
            } else {
                self.held.remove(&uuid)
            };
            if changed {
                self.recompose(&uuid);
            }
        }
    }

    pub(super) fn retry_link(&self, uuid: MdevUuid, left: u32) {
        let me = self.me.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINK_RETRY_DELAY).await;
            let _ = me.send(Completion::RefreshDevice(uuid, left));
        });
    }

    // ---- events ------------------------------------------------------------------------------

    /// A create or remove of this device is in flight.
    pub(super) fn in_flight(&self, uuid: &MdevUuid) -> bool {
        self.removing.contains_key(uuid) || self.pending.values().any(|p| p.uuids.contains(uuid))
    }

    /// A job landed: its held events that its reading does not explain are read now, and
    /// stamps no reading still to come can contest are forgotten.
    pub(super) fn job_landed(&mut self, uuids: &[MdevUuid]) {
        let mut unexplained = Vec::new();
        for uuid in uuids {
            if self.in_flight(uuid) {
                continue;
            }
            for e in self.deferred.remove(uuid).unwrap_or_default() {
                if !super::readings::explained(&e, self.live.get(uuid)) {
                    unexplained.push(e);
                }
            }
        }
        if !unexplained.is_empty() {
            self.on_events(&unexplained);
        }
        let oldest = self
            .pending
            .values()
            .map(|p| p.stamp)
            .chain(self.removing.values().copied())
            .min();
        if oldest.is_none() || self.stamps.len() > 4096 {
            self.stamps.prune(oldest);
        }
    }

    fn on_events(&mut self, events: &[UEvent]) {
        let mut devices: Vec<(MdevUuid, Option<ParentName>)> = Vec::new();
        // Parents whose own events came (read in full) and parents of devices that came or
        // went (only their availability changed).
        let mut parents: Vec<ParentName> = Vec::new();
        let mut hosting: Vec<ParentName> = Vec::new();
        let mut registered_parents: Vec<ParentName> = Vec::new();
        for e in events {
            tracing::debug!(action = %e.action, devpath = %e.devpath, seqnum = e.seqnum, "uevent");
            match e.affected() {
                Affected::Device { uuid, parent } => {
                    if self.in_flight(&uuid) {
                        // The job's own reading, taken after its write, will tell.
                        self.deferred.entry(uuid).or_default().push(e.clone());
                    } else if !super::readings::explained(e, self.live.get(&uuid)) {
                        devices.push((uuid, parent));
                    }
                }
                Affected::Parent { name, registered } => {
                    // A parent (re)registering is when autostart and ensure rules apply, even if
                    // the model did not see it go: events can be handled after the state has
                    // moved on.
                    if registered {
                        registered_parents.push(name.clone());
                    }
                    parents.push(name);
                }
                Affected::Nothing => {}
            }
        }
        devices.sort();
        devices.dedup();
        parents.sort();
        parents.dedup();
        for (uuid, parent) in devices {
            let was = self.live.get(&uuid).map(|d| d.parent.clone());
            if self.refresh_device(&uuid) {
                self.retry_link(uuid, LINK_RETRIES);
            }
            let now = self.live.get(&uuid).map(|d| d.parent.clone());
            // Capacity changed only if the device came or went as far as the model knew: the
            // events of vgpud's own creates and removes find the model already up to date.
            if was != now {
                hosting.extend(was.into_iter().chain(now).chain(parent));
            }
        }
        hosting.sort();
        hosting.dedup();
        hosting.retain(|p| parents.binary_search(p).is_err());
        self.refresh_parents(&parents);
        self.refresh_availability(&hosting);
        for name in parents.iter().chain(&hosting) {
            if !self.parents.contains_key(name) {
                // A parent that went away took its devices with it (their events may be lost).
                let orphans: Vec<MdevUuid> = self
                    .live
                    .values()
                    .filter(|d| d.parent == *name)
                    .map(|d| d.uuid)
                    .collect();
                for uuid in orphans {
                    self.refresh_device(&uuid);
                }
            }
        }
        for name in registered_parents {
            if self.parents.contains_key(&name) {
                self.appeared.push(name);
            }
        }
    }
}
