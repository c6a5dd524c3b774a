//! Creating, starting and removing devices: the decision happens on the manager's loop (policy
//! plan, quota counted with creates in flight), the kernel writes on a blocking thread with a
//! bound, and the result comes back as a `*Done` command that reconciles and replies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::owners::Owner;
use super::readings::{stamp, Reading};
use super::state::{Manager, Pending, LINK_RETRIES};
use super::{Caller, Completion, CreateRequest, DeviceView, RemoveRequest};
use crate::backend::{vf_device_uuid, Host};
use crate::manager::holders::{device_nodes, holders_of};
use crate::store::{Definition, Meta, Start, Store};
use vgpud_model::error::{Error, Result};
use vgpud_model::{BackendKind, Device, MdevUuid, Parent, ParentName, TypeId};
use vgpud_policy::{Action, Decision, Denial, DenialKind, Owned};

use super::Reply;

/// Everything a blocking create needs.
struct CreateJob {
    /// Where to try, best first; the next is tried when the kernel says "no room".
    candidates: Vec<(ParentName, TypeId, BackendKind)>,
    uuid: Option<MdevUuid>,
    /// The UUID of a device on an mdev parent when the caller gave none.
    generated: MdevUuid,
    attrs: Vec<(String, String)>,
    /// Store a definition too (with this start mode and metadata).
    define: Option<(Start, Meta)>,
    /// Scripts to run around each attempt (action `start`).
    callouts: Option<crate::callouts::Callouts>,
    /// The definition's start mode, as the scripts are told.
    autostart: bool,
}

pub(crate) struct CreateDone {
    pending: u64,
    /// A definition was stored with the device: re-read the definitions.
    defined: bool,
    /// The owner's record is written (by the job).
    owner: Owner,
    /// The device as read right after the create, and the capacity of every parent written to.
    result: Result<(ParentName, Device)>,
    reading: Reading,
    reply: Reply<DeviceView>,
}

pub(crate) struct RemoveDone {
    uuid: MdevUuid,
    /// The device and its parent's capacity (with every parent sharing it), read after the write.
    device: Result<Option<Device>>,
    reading: Reading,
    /// Some process held the device's group open when the remove was tried.
    held: bool,
    result: Result<()>,
    /// None when the caller was already answered (the bound ran out first).
    reply: Option<Reply<()>>,
}

/// Maps a policy refusal to the error the caller sees.
pub(super) fn denial_error(d: Denial, type_spec: &str) -> Error {
    match d.kind {
        DenialKind::AccessDenied => Error::AccessDenied(d.to_string()),
        DenialKind::PolicyDenied => Error::PolicyDenied {
            rule: d.rule,
            reason: d.reason,
        },
        DenialKind::NotFound => Error::Missing(d.reason),
        DenialKind::NoCapacity => Error::NoCapacityAnywhere(type_spec.to_owned()),
    }
}

pub(super) fn decision(d: Decision) -> Result<String> {
    match d {
        Decision::Allow { rule } => Ok(rule),
        Decision::Deny { rule, reason } => Err(Error::AccessDenied(format!(
            "{reason} (policy rule {rule:?})"
        ))),
    }
}

/// The kernel said "not here" in a way another parent may not: try the next candidate.
fn try_next(e: &Error) -> bool {
    matches!(e, Error::NoCapacity { .. } | Error::ParentGoingAway(_))
}

/// Tries the candidates in order; `tried` collects the parents actually written to (only
/// those need re-reading afterwards).
fn run_create(
    host: &Host,
    store: Option<&Store>,
    job: CreateJob,
    tried: &mut Vec<ParentName>,
) -> Result<(ParentName, Device)> {
    let generated = job.generated;
    let mut last = Error::NoCapacityAnywhere("the requested type".into());
    for (parent, type_id, backend) in &job.candidates {
        tried.push(parent.clone());
        let uuid = candidate_uuid(job.uuid, generated, parent, *backend);
        let attempt = || create_one(host, store, &job, parent, type_id, uuid);
        let result = match &job.callouts {
            Some(callouts) => {
                let device = crate::callouts::CalloutDevice {
                    uuid: uuid.to_string(),
                    parent: parent.to_string(),
                    type_id: type_id.to_string(),
                    autostart: job.autostart,
                    attrs: job.attrs.clone(),
                };
                callouts.around(&device, crate::callouts::Action::Start, attempt)
            }
            None => attempt(),
        };
        match result {
            Ok(device) => return Ok((parent.clone(), device)),
            Err(e) if try_next(&e) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// The UUID a create on `parent` makes: the caller's, an NVIDIA VF's own, or `generated`.
fn candidate_uuid(
    asked: Option<MdevUuid>,
    generated: MdevUuid,
    parent: &ParentName,
    backend: BackendKind,
) -> MdevUuid {
    match (asked, backend) {
        (Some(u), _) => u,
        (None, BackendKind::NvidiaVendor) => vf_device_uuid(parent),
        (None, BackendKind::Mdev) => generated,
    }
}

/// Snapshots of `names`' parents as the model has them, each once.
fn snapshots(
    names: impl IntoIterator<Item = ParentName>,
    known: &[(ParentName, Vec<Parent>)],
) -> Vec<Parent> {
    let mut out: Vec<Parent> = Vec::new();
    for n in names {
        for p in known.iter().filter(|(k, _)| *k == n).flat_map(|(_, g)| g) {
            if !out.iter().any(|o| o.name == p.name) {
                out.push(p.clone());
            }
        }
    }
    out
}

/// One attempt on one parent: the create, its attributes in order, and the definition if asked
/// for; a failed later step removes the device again.
fn create_one(
    host: &Host,
    store: Option<&Store>,
    job: &CreateJob,
    parent: &ParentName,
    type_id: &TypeId,
    uuid: MdevUuid,
) -> Result<Device> {
    let device = host.create(parent, type_id, &uuid)?;
    let undo = |why: String| {
        if let Err(e) = host.remove(&uuid) {
            tracing::error!("cannot remove {uuid} after a failed setup: {e}");
        }
        Err(Error::Failed(why))
    };
    for (name, value) in &job.attrs {
        if let Err(e) = host.set_device_attr(&uuid, name, value) {
            return undo(format!(
                "writing attribute {name} of {uuid} failed, so the device was removed again: {e}"
            ));
        }
    }
    if let (Some(store), Some((start, meta))) = (store, &job.define) {
        let def = Definition {
            parent: parent.clone(),
            uuid,
            mdev_type: type_id.clone(),
            start: *start,
            attrs: job.attrs.clone(),
        };
        if let Err(e) = store.define(&def, meta) {
            return undo(format!(
                "storing the definition of {uuid} failed, so the device was removed again: {e}"
            ));
        }
    }
    Ok(device)
}

impl Manager {
    pub(super) fn owned(&self) -> Vec<Owned> {
        let mut v: Vec<Owned> = self
            .live
            .values()
            .map(|d| {
                let o = self.owners.get(&d.uuid);
                Owned {
                    uuid: d.uuid,
                    parent: d.parent.clone(),
                    type_id: d.type_id.clone(),
                    owner_uid: o.and_then(|o| o.uid),
                    owner_groups: o.map(|o| o.groups.clone()).unwrap_or_default(),
                }
            })
            .collect();
        for p in self.pending.values() {
            if p.uuid.is_some_and(|u| self.live.contains_key(&u)) {
                continue;
            }
            v.push(Owned {
                uuid: p.uuid.unwrap_or_else(MdevUuid::new_v4),
                parent: p.parent.clone(),
                type_id: None,
                owner_uid: p.owner_uid,
                owner_groups: p.owner_groups.clone(),
            });
        }
        v
    }

    /// A device as the call-out scripts are told about it: its definition's start mode and
    /// attributes when it has one on this parent.
    pub(super) fn callout_device(
        &self,
        uuid: &MdevUuid,
        parent: &ParentName,
        type_id: Option<&TypeId>,
    ) -> crate::callouts::CalloutDevice {
        let def = self
            .definitions
            .get(uuid)
            .and_then(|defs| defs.iter().find(|(d, _)| d.parent == *parent))
            .map(|(d, _)| d);
        match def {
            Some(def) => {
                let mut device = defined_device(def);
                if let Some(t) = type_id {
                    device.type_id = t.to_string();
                }
                device
            }
            None => crate::callouts::CalloutDevice {
                uuid: uuid.to_string(),
                parent: parent.to_string(),
                type_id: type_id.map(|t| t.to_string()).unwrap_or_default(),
                autostart: false,
                attrs: Vec::new(),
            },
        }
    }

    /// Runs `operation` inside the call-outs of `action` for `device` (directly without scripts).
    pub(super) fn with_callouts<T>(
        &self,
        device: &crate::callouts::CalloutDevice,
        action: crate::callouts::Action,
        operation: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match &self.config.callouts {
            Some(c) => c.around(device, action, operation),
            None => operation(),
        }
    }

    fn backend_of(&self, parent: &ParentName) -> BackendKind {
        self.parents
            .get(parent)
            .map_or(BackendKind::Mdev, |p| p.backend)
    }

    pub(super) fn start_create(
        &mut self,
        caller: Caller,
        req: CreateRequest,
        reply: Reply<DeviceView>,
    ) {
        if let Some(u) = &req.uuid {
            if self.devices.contains_key(u) {
                let error = if self.live.contains_key(u) {
                    Error::AlreadyExists(u.to_string())
                } else {
                    Error::AlreadyDefined(u.to_string())
                };
                let _ = reply.send(Err(error));
                return;
            }
        }
        if (req.persistent || req.autostart) && self.config.store.is_none() {
            let _ = reply.send(Err(Error::Unsupported(
                "this daemon has no definitions directory".into(),
            )));
            return;
        }
        let parents: Vec<&vgpud_model::Parent> = self.parents.values().collect();
        let plan = self.policy.plan_create(
            &caller.subject(),
            &req.type_spec,
            req.parent.as_ref(),
            req.numa_node,
            &parents,
            &self.owned(),
        );
        let plan = match plan {
            Ok(p) => p,
            Err(d) => {
                let _ = reply.send(Err(denial_error(d, &req.type_spec)));
                return;
            }
        };
        let Some(first) = plan.candidates.first() else {
            let _ = reply.send(Err(Error::NoCapacityAnywhere(req.type_spec.clone())));
            return;
        };
        let owner = Owner {
            uid: if caller.is_internal() {
                None
            } else {
                caller.uid
            },
            groups: caller.groups.clone(),
            origin: caller.origin.clone(),
            rule: first.rule.clone(),
        };
        let candidates = plan
            .candidates
            .iter()
            .map(|c| {
                (
                    c.parent.clone(),
                    c.type_id.clone(),
                    self.backend_of(&c.parent),
                )
            })
            .collect();
        let start = if req.autostart {
            Start::Auto
        } else {
            Start::Manual
        };
        let job = CreateJob {
            candidates,
            uuid: req.uuid,
            generated: MdevUuid::new_v4(),
            attrs: req.attrs,
            define: (req.persistent || req.autostart)
                .then(|| (start, Meta::now(owner.uid, owner.origin.clone()))),
            callouts: self.config.callouts.clone(),
            autostart: req.autostart,
        };
        tracing::info!(caller = %caller.origin, uid = ?caller.uid, type_spec = %req.type_spec, first = %first.parent, rule = %first.rule, "creating a device");
        self.launch_create(first.parent.clone(), job, owner, reply);
    }

    /// Starts a defined device on its (present) parent.
    pub(super) fn start_defined(
        &mut self,
        caller: Caller,
        uuid: MdevUuid,
        reply: Reply<DeviceView>,
    ) {
        if self.live.contains_key(&uuid) {
            let _ = reply.send(Err(Error::AlreadyStarted(uuid.to_string())));
            return;
        }
        let defs = self.definitions.get(&uuid).cloned().unwrap_or_default();
        let Some((def, meta)) = defs
            .iter()
            .find(|(d, _)| self.parents.contains_key(&d.parent))
            .cloned()
        else {
            let e = if defs.is_empty() {
                Error::UnknownDevice(format!("{uuid} (no definition)"))
            } else {
                Error::UnknownParent(format!(
                    "{} (the parent of {uuid} is not present)",
                    defs[0].0.parent
                ))
            };
            let _ = reply.send(Err(e));
            return;
        };
        let owner_uid = meta.as_ref().and_then(|m| m.owner_uid);
        let parent = self.parents.get(&def.parent);
        if let Err(e) = decision(self.policy.decide(
            &caller.subject(),
            Action::ManageDefinitions,
            parent,
            Some(&def.mdev_type),
            owner_uid,
        )) {
            let _ = reply.send(Err(e));
            return;
        }
        let owner = Owner {
            uid: owner_uid,
            groups: Vec::new(),
            origin: meta
                .map(|m| m.origin)
                .unwrap_or_else(|| caller.origin.clone()),
            rule: "definition".into(),
        };
        let job = CreateJob {
            candidates: vec![(
                def.parent.clone(),
                def.mdev_type.clone(),
                self.backend_of(&def.parent),
            )],
            uuid: Some(uuid),
            generated: uuid,
            attrs: def.attrs.clone(),
            define: None,
            callouts: self.config.callouts.clone(),
            autostart: def.start == Start::Auto,
        };
        tracing::info!(caller = %caller.origin, %uuid, parent = %def.parent, "starting a defined device");
        self.launch_create(def.parent, job, owner, reply);
    }

    /// Each candidate with the snapshots of its parent and every parent sharing its capacity,
    /// so the job can read back what its write changed.
    fn capacity_groups(&self, candidates: &[ParentName]) -> Vec<(ParentName, Vec<Parent>)> {
        candidates
            .iter()
            .map(|c| {
                let group = self
                    .with_siblings(c)
                    .iter()
                    .filter_map(|n| self.parents.get(n).cloned())
                    .collect();
                (c.clone(), group)
            })
            .collect()
    }

    fn launch_create(
        &mut self,
        first: ParentName,
        job: CreateJob,
        owner: Owner,
        reply: Reply<DeviceView>,
    ) {
        let id = self.next_pending;
        self.next_pending += 1;
        let type_id = job
            .candidates
            .iter()
            .find(|(p, _, _)| *p == first)
            .map(|(_, t, _)| t.clone())
            .unwrap_or_else(|| job.candidates[0].1.clone());
        let uuids: Vec<MdevUuid> = job
            .candidates
            .iter()
            .map(|(p, _, b)| candidate_uuid(job.uuid, job.generated, p, *b))
            .collect();
        self.pending.insert(
            id,
            Pending {
                stamp: stamp(),
                uuids,
                parent: first,
                type_id,
                uuid: job.uuid,
                owner_uid: owner.uid,
                owner_groups: owner.groups.clone(),
            },
        );
        let host = self.config.host.clone();
        let store = self.config.store.clone();
        let owners_dir = self.owners.dir().map(|d| d.to_path_buf());
        let me = self.me.clone();
        let bound = self.config.create_timeout;
        let defined = job.define.is_some();
        // If the bound runs out we do not know how far it got: re-read every candidate then.
        let candidates: Vec<ParentName> =
            job.candidates.iter().map(|(p, _, _)| p.clone()).collect();
        let groups = self.capacity_groups(&candidates);
        let reader = host.clone();
        tokio::spawn(async move {
            let record = owner.clone();
            let work = tokio::task::spawn_blocking(move || {
                let mut tried = Vec::new();
                let result = run_create(&host, store.as_ref(), job, &mut tried);
                if let (Ok((_, device)), Some(dir)) = (&result, &owners_dir) {
                    if let Err(e) = super::owners::write_record(dir, &device.uuid, &record) {
                        tracing::warn!("cannot record the owner of {}: {e}", device.uuid);
                    }
                }
                (tried, result)
            });
            let (tried, result) = match tokio::time::timeout(bound, work).await {
                Ok(Ok(r)) => r,
                Ok(Err(join)) => (
                    candidates,
                    Err(Error::Failed(format!("the create thread failed: {join}"))),
                ),
                Err(_) => (
                    candidates,
                    Err(Error::TimedOut {
                        what: "creating the device".into(),
                    }),
                ),
            };
            let reading = tokio::task::spawn_blocking(move || {
                Reading::parents(&reader, &snapshots(tried, &groups))
            })
            .await
            .unwrap_or_else(|_| Reading::none());
            let _ = me.send(Completion::CreateDone(CreateDone {
                pending: id,
                defined,
                owner,
                result,
                reading,
                reply,
            }));
        });
    }

    /// Applies what a job read after its write.
    fn take_reading(&mut self, reading: Reading) {
        for (name, parent) in reading.parents {
            self.take_parent(name, reading.stamp, parent);
        }
    }

    pub(super) fn finish_create(&mut self, done: CreateDone) {
        let uuids = self
            .pending
            .remove(&done.pending)
            .map(|p| p.uuids)
            .unwrap_or_default();
        let stamp = done.reading.stamp;
        self.take_reading(done.reading);
        let result = done.result.and_then(|(parent, created)| {
            let uuid = created.uuid;
            self.owners.insert(uuid, done.owner.clone());
            if done.defined {
                self.load_definitions();
            }
            let unlinked = created.type_id.is_none();
            self.take_device(&uuid, stamp, Ok(Some(created)));
            if unlinked {
                self.retry_link(uuid, LINK_RETRIES);
            }
            tracing::info!(%uuid, %parent, "device created");
            self.devices.get(&uuid).cloned().ok_or_else(|| {
                Error::Failed(format!("device {uuid} vanished right after it was created"))
            })
        });
        self.job_landed(&uuids);
        if let Err(e) = &result {
            tracing::error!("create failed: {e}");
        }
        let _ = done.reply.send(result);
    }

    pub(super) fn start_remove(
        &mut self,
        caller: &Caller,
        uuid: MdevUuid,
        req: RemoveRequest,
        reply: Reply<()>,
    ) {
        if !self.live.contains_key(&uuid) {
            self.refresh_device(&uuid);
        }
        let Some(dev) = self.live.get(&uuid).cloned() else {
            let e = if self.definitions.contains_key(&uuid) {
                Error::InvalidArgument(format!(
                    "{uuid} is defined but not started; undefine it to delete it"
                ))
            } else {
                Error::UnknownDevice(uuid.to_string())
            };
            let _ = reply.send(Err(e));
            return;
        };
        let owner_uid = self.devices.get(&uuid).and_then(|v| v.owner_uid);
        let parent = self.parents.get(&dev.parent);
        if let Err(e) = decision(self.policy.decide(
            &caller.subject(),
            Action::RemoveDevice,
            parent,
            dev.type_id.as_ref(),
            owner_uid,
        )) {
            let _ = reply.send(Err(e));
            return;
        }
        if self.removing.contains_key(&uuid) {
            let _ = reply.send(Err(Error::Busy(format!(
                "device {uuid} is busy: a remove is already in progress"
            ))));
            return;
        }
        if let (Some(g), false) = (self.guest_of(&uuid), req.force) {
            let _ = reply.send(Err(Error::Busy(format!(
                "device {uuid} is attached to guest {} ({}, pid {}); stop the guest or remove with force",
                g.id,
                vgpud_api::names::guest_path(g.id).as_str(),
                g.pid
            ))));
            return;
        }
        tracing::info!(caller = %caller.origin, uid = ?caller.uid, %uuid, force = req.force, "removing a device");
        self.removing.insert(uuid, stamp());
        self.recompose(&uuid);
        let host = self.config.host.clone();
        let me = self.me.clone();
        let bound = req.timeout.unwrap_or(self.config.remove_timeout);
        let group = snapshots(
            [dev.parent.clone()],
            &self.capacity_groups(std::slice::from_ref(&dev.parent)),
        );
        let reader = host.clone();
        let (last_parent, backend) = (dev.parent.clone(), dev.backend);
        // Who holds the device open (its group or its cdev) is asked off the loop (a walk of
        // /proc); a node that does not exist cannot be held.
        let (iommu_group, sysfs_dir) = (dev.iommu_group, dev.sysfs_path.clone());
        let dev_root = self.config.dev_root.clone();
        let proc_root = self.config.proc_root.clone();
        let force = req.force;
        let callouts = self.config.callouts.clone();
        let callout_device = self.callout_device(&uuid, &dev.parent, dev.type_id.as_ref());
        let held = Arc::new(AtomicBool::new(false));
        let seen_held = held.clone();
        tokio::spawn(async move {
            let mut work = tokio::task::spawn_blocking(move || {
                let mut holders: Vec<_> = device_nodes(&dev_root, iommu_group, &sysfs_dir)
                    .iter()
                    .flat_map(|n| holders_of(&proc_root, n))
                    .collect();
                holders.sort_by_key(|h| h.pid);
                holders.dedup_by_key(|h| h.pid);
                seen_held.store(!holders.is_empty(), Ordering::Relaxed);
                if !holders.is_empty() && !force {
                    let who: Vec<String> = holders
                        .iter()
                        .map(|h| format!("pid {} ({})", h.pid, h.comm))
                        .collect();
                    return Err(Error::Busy(format!(
                        "device {uuid} is held open by {}; stop that VM or remove with force",
                        who.join(", ")
                    )));
                }
                match &callouts {
                    Some(c) => c.around(&callout_device, crate::callouts::Action::Stop, || {
                        host.remove(&uuid)
                    }),
                    None => host.remove(&uuid),
                }
            });
            let joined = |r: std::result::Result<Result<()>, tokio::task::JoinError>| {
                r.unwrap_or_else(|join| {
                    Err(Error::Failed(format!("the remove thread failed: {join}")))
                })
            };
            let (result, reply) = match tokio::time::timeout(bound, &mut work).await {
                Ok(r) => (joined(r), Some(reply)),
                Err(_) => {
                    let _ = reply.send(Err(Error::TimedOut {
                        what: format!("removing {uuid} (it goes away once its holder lets go)"),
                    }));
                    (joined(work.await), None)
                }
            };
            let (device, reading) = tokio::task::spawn_blocking(move || {
                let reading = Reading::parents(&reader, &group);
                (
                    reader.device_on(&uuid, Some((&last_parent, backend))),
                    reading,
                )
            })
            .await
            .unwrap_or_else(|join| {
                let e = Error::Failed(format!("the read-back thread failed: {join}"));
                (Err(e), Reading::none())
            });
            let _ = me.send(Completion::RemoveDone(RemoveDone {
                uuid,
                device,
                reading,
                held: held.load(Ordering::Relaxed),
                result,
                reply,
            }));
        });
    }

    pub(super) fn finish_remove(&mut self, done: RemoveDone) {
        self.removing.remove(&done.uuid);
        self.apply_holders(vec![(done.uuid, done.held)]);
        let stamp = done.reading.stamp;
        self.take_device(&done.uuid, stamp, done.device);
        self.take_reading(done.reading);
        self.job_landed(&[done.uuid]);
        match &done.result {
            Ok(()) => tracing::info!(uuid = %done.uuid, "device removed"),
            Err(e) => tracing::error!(uuid = %done.uuid, "remove failed: {e}"),
        }
        if let Some(reply) = done.reply {
            let _ = reply.send(done.result);
        }
    }
}

/// The device a callout script is told about, as its definition has it.
pub(super) fn defined_device(def: &Definition) -> crate::callouts::CalloutDevice {
    crate::callouts::CalloutDevice {
        uuid: def.uuid.to_string(),
        parent: def.parent.to_string(),
        type_id: def.mdev_type.to_string(),
        autostart: def.start == Start::Auto,
        attrs: def.attrs.clone(),
    }
}
