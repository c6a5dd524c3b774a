//! The manager's loop and its model. Reads of sysfs happen here; writes (which can block in
//! the kernel) run on blocking threads with a time bound and come back as `*Done` commands, so
//! the loop keeps answering everyone while a write hangs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::placement::{place, InFlight};
use super::{
    Caller, Change, Command, CreateRequest, DeviceView, ManagerConfig, RemoveRequest, Snapshot,
    Update,
};
use crate::backend::vf_device_uuid;
use crate::error::{Error, Result};
use crate::events::UEvent;
use crate::holders::{group_node, holders_of};
use crate::model::{BackendKind, Device, MdevUuid, Parent, ParentName, TypeId};

/// How often, and how far apart, a device without its `mdev_type` link is re-read.
const LINK_RETRIES: u32 = 20;
const LINK_RETRY_DELAY: Duration = Duration::from_millis(10);

pub(crate) struct CreateDone {
    parent: ParentName,
    type_id: TypeId,
    uuid: MdevUuid,
    result: Result<()>,
    reply: oneshot::Sender<Result<DeviceView>>,
}

pub(crate) struct RemoveDone {
    uuid: MdevUuid,
    parent: ParentName,
    result: Result<()>,
    /// None when the caller was already answered (the bound ran out first).
    reply: Option<oneshot::Sender<Result<()>>>,
}

pub(crate) struct Manager {
    config: ManagerConfig,
    me: mpsc::UnboundedSender<Command>,
    changes: mpsc::UnboundedSender<Update>,
    parents: BTreeMap<ParentName, Parent>,
    devices: BTreeMap<MdevUuid, DeviceView>,
    in_flight: InFlight,
    removing: BTreeSet<MdevUuid>,
}

impl Manager {
    pub(crate) fn new(
        config: ManagerConfig,
        me: mpsc::UnboundedSender<Command>,
        changes: mpsc::UnboundedSender<Update>,
    ) -> Self {
        Self {
            config,
            me,
            changes,
            parents: BTreeMap::new(),
            devices: BTreeMap::new(),
            in_flight: InFlight::new(),
            removing: BTreeSet::new(),
        }
    }

    fn publish(&self, change: Change) {
        // The receiver only goes away when the daemon is shutting down.
        let _ = self.changes.send(Update::Change(change));
    }

    /// Adopts everything that exists: nothing is created or destroyed.
    pub(crate) fn scan(&mut self) -> Result<()> {
        for p in self.config.host.parents()? {
            self.set_parent(p.name.clone(), Some(p));
        }
        for d in self.config.host.devices()? {
            let uuid = d.uuid;
            let view = self.view(d);
            self.set_device(uuid, Some(view));
        }
        tracing::info!(
            parents = self.parents.len(),
            devices = self.devices.len(),
            "adopted the host's mdev parents and devices"
        );
        Ok(())
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            self.handle(cmd);
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Snapshot(reply) => {
                let _ = reply.send(Snapshot {
                    parents: self.parents.values().cloned().collect(),
                    devices: self.devices.values().cloned().collect(),
                });
            }
            Command::Device(uuid, reply) => {
                if !self.devices.contains_key(&uuid) {
                    self.refresh_device(&uuid, None);
                }
                let _ = reply.send(self.devices.get(&uuid).cloned());
            }
            Command::Create(caller, req, reply) => match self.start_create(&caller, req, reply) {
                Ok(()) => {}
                Err((e, reply)) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Remove(caller, uuid, req, reply) => {
                self.start_remove(&caller, uuid, req, reply)
            }
            Command::Event(e) => self.on_event(&e),
            Command::RefreshDevice(uuid, parent, left) => {
                if self.refresh_device(&uuid, Some(&parent)) && left > 0 {
                    self.retry_link(uuid, parent, left - 1);
                }
            }
            Command::CreateDone(done) => self.finish_create(done),
            Command::RemoveDone(done) => self.finish_remove(done),
            Command::Barrier(reply) => {
                let _ = self.changes.send(Update::Barrier(reply));
            }
        }
    }

    // ---- the model ---------------------------------------------------------------------------

    fn view(&self, device: Device) -> DeviceView {
        let in_use = device.iommu_group.is_some_and(|g| {
            !holders_of(
                &self.config.proc_root,
                &group_node(&self.config.dev_root, g),
            )
            .is_empty()
        });
        let removing = self.removing.contains(&device.uuid);
        DeviceView {
            device,
            in_use,
            removing,
        }
    }

    fn set_parent(&mut self, name: ParentName, new: Option<Parent>) {
        let old = self.parents.get(&name);
        match (old, new) {
            (None, None) => {}
            (None, Some(p)) => {
                self.parents.insert(name, p.clone());
                self.publish(Change::ParentAdded(p));
            }
            (Some(_), None) => {
                self.parents.remove(&name);
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

    fn set_device(&mut self, uuid: MdevUuid, new: Option<DeviceView>) {
        let old = self.devices.get(&uuid);
        match (old, new) {
            (None, None) => {}
            (None, Some(d)) => {
                self.devices.insert(uuid, d.clone());
                self.publish(Change::DeviceAdded(d));
            }
            (Some(_), None) => {
                self.devices.remove(&uuid);
                self.publish(Change::DeviceRemoved(uuid));
            }
            (Some(o), Some(d)) => {
                if *o != d {
                    self.devices.insert(uuid, d.clone());
                    self.publish(Change::DeviceUpdated(d));
                }
            }
        }
    }

    /// Re-reads a parent and every parent sharing its capacity (the VFs of one GPU).
    fn refresh_parent(&mut self, name: &ParentName) {
        let mut names = vec![name.clone()];
        let physfn = self
            .parents
            .get(name)
            .and_then(|p| p.physfn.clone())
            .or_else(|| {
                self.config
                    .host
                    .parent(name)
                    .ok()
                    .flatten()
                    .and_then(|p| p.physfn)
            });
        if let Some(pf) = physfn {
            names.extend(
                self.parents
                    .values()
                    .filter(|p| p.physfn.as_ref() == Some(&pf) && p.name != *name)
                    .map(|p| p.name.clone()),
            );
        }
        for n in names {
            match self.config.host.parent(&n) {
                Ok(p) => self.set_parent(n, p),
                Err(e) => tracing::warn!("cannot read parent {n}: {e}"),
            }
        }
    }

    /// Re-reads one device; true when it exists but its type link is not there yet.
    fn refresh_device(&mut self, uuid: &MdevUuid, parent: Option<&ParentName>) -> bool {
        match self.config.host.device(uuid) {
            Ok(Some(d)) => {
                let unlinked = d.type_id.is_none();
                let view = self.view(d);
                self.set_device(*uuid, Some(view));
                unlinked
            }
            Ok(None) => {
                self.set_device(*uuid, None);
                false
            }
            Err(e) => {
                tracing::warn!("cannot read device {uuid} (parent {parent:?}): {e}");
                false
            }
        }
    }

    fn retry_link(&self, uuid: MdevUuid, parent: ParentName, left: u32) {
        let me = self.me.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINK_RETRY_DELAY).await;
            let _ = me.send(Command::RefreshDevice(uuid, parent, left));
        });
    }

    // ---- events ------------------------------------------------------------------------------

    fn on_event(&mut self, e: &UEvent) {
        tracing::debug!(action = %e.action, devpath = %e.devpath, seqnum = e.seqnum, "uevent");
        if e.subsystem == "mdev" {
            let Ok(uuid) = MdevUuid::parse(e.sysname()) else {
                return;
            };
            let parent = e
                .devpath
                .rsplit('/')
                .nth(1)
                .and_then(|p| ParentName::new(p).ok());
            if self.refresh_device(&uuid, parent.as_ref()) {
                if let Some(p) = &parent {
                    self.retry_link(uuid, p.clone(), LINK_RETRIES);
                }
            }
            if let Some(p) = parent {
                self.refresh_parent(&p);
            }
            return;
        }
        let Ok(name) = ParentName::new(e.sysname()) else {
            return;
        };
        self.refresh_parent(&name);
        // A parent that went away took its devices with it (their own events may be lost).
        let orphans: Vec<MdevUuid> = self
            .devices
            .values()
            .filter(|d| d.device.parent == name)
            .map(|d| d.device.uuid)
            .collect();
        if !self.parents.contains_key(&name) {
            for uuid in orphans {
                self.refresh_device(&uuid, Some(&name));
            }
        }
    }

    // ---- create ------------------------------------------------------------------------------

    #[allow(clippy::result_large_err)]
    fn start_create(
        &mut self,
        caller: &Caller,
        req: CreateRequest,
        reply: oneshot::Sender<Result<DeviceView>>,
    ) -> std::result::Result<(), (Error, oneshot::Sender<Result<DeviceView>>)> {
        let placement = match place(
            &self.parents,
            &req.type_spec,
            req.parent.as_ref(),
            &self.in_flight,
        ) {
            Ok(p) => p,
            Err(e) => return Err((e, reply)),
        };
        let vendor = self
            .parents
            .get(&placement.parent)
            .is_some_and(|p| p.backend == BackendKind::NvidiaVendor);
        let uuid = match (req.uuid, vendor) {
            (Some(u), _) => u,
            (None, true) => vf_device_uuid(&placement.parent),
            (None, false) => MdevUuid::new_v4(),
        };
        if self.devices.contains_key(&uuid) {
            return Err((Error::AlreadyExists(uuid.to_string()), reply));
        }
        tracing::info!(
            caller = ?caller.bus_name, uid = ?caller.uid, %uuid,
            parent = %placement.parent, type_id = %placement.type_id, "creating a device"
        );
        *self
            .in_flight
            .entry((placement.parent.clone(), placement.type_id.clone()))
            .or_default() += 1;
        let host = self.config.host.clone();
        let me = self.me.clone();
        let bound = self.config.create_timeout;
        let (parent, type_id, attrs) = (placement.parent, placement.type_id, req.attrs);
        let (p2, t2, u2) = (parent.clone(), type_id.clone(), uuid);
        tokio::spawn(async move {
            let work = tokio::task::spawn_blocking(move || {
                host.create(&p2, &t2, &u2)?;
                for (name, value) in &attrs {
                    if let Err(e) = host.set_device_attr(&u2, name, value) {
                        // A device half set up is worse than none: undo the create.
                        if let Err(undo) = host.remove(&u2) {
                            tracing::error!(
                                "cannot remove {u2} after its attribute failed: {undo}"
                            );
                        }
                        return Err(Error::Failed(format!(
                            "writing attribute {name} of {u2} failed, the device was removed: {e}"
                        )));
                    }
                }
                Ok(())
            });
            let result = match tokio::time::timeout(bound, work).await {
                Ok(Ok(r)) => r,
                Ok(Err(join)) => Err(Error::Failed(format!("the create thread failed: {join}"))),
                Err(_) => Err(Error::TimedOut {
                    what: format!("creating {uuid}"),
                }),
            };
            let _ = me.send(Command::CreateDone(CreateDone {
                parent,
                type_id,
                uuid,
                result,
                reply,
            }));
        });
        Ok(())
    }

    fn finish_create(&mut self, done: CreateDone) {
        let key = (done.parent.clone(), done.type_id.clone());
        if let Some(n) = self.in_flight.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&key);
            }
        }
        self.refresh_parent(&done.parent);
        let result = done.result.and_then(|()| {
            if self.refresh_device(&done.uuid, Some(&done.parent)) {
                self.retry_link(done.uuid, done.parent.clone(), LINK_RETRIES);
            }
            self.devices.get(&done.uuid).cloned().ok_or_else(|| {
                Error::Failed(format!(
                    "device {} vanished right after it was created",
                    done.uuid
                ))
            })
        });
        match &result {
            Ok(_) => tracing::info!(uuid = %done.uuid, "device created"),
            Err(e) => tracing::error!(uuid = %done.uuid, "create failed: {e}"),
        }
        let _ = done.reply.send(result);
    }

    // ---- remove ------------------------------------------------------------------------------

    fn start_remove(
        &mut self,
        caller: &Caller,
        uuid: MdevUuid,
        req: RemoveRequest,
        reply: oneshot::Sender<Result<()>>,
    ) {
        if !self.devices.contains_key(&uuid) {
            self.refresh_device(&uuid, None);
        }
        let Some(view) = self.devices.get(&uuid) else {
            let _ = reply.send(Err(Error::UnknownDevice(uuid.to_string())));
            return;
        };
        if self.removing.contains(&uuid) {
            let _ = reply.send(Err(Error::Busy(format!(
                "device {uuid} (a remove is already in progress)"
            ))));
            return;
        }
        let holders = view
            .device
            .iommu_group
            .map(|g| {
                holders_of(
                    &self.config.proc_root,
                    &group_node(&self.config.dev_root, g),
                )
            })
            .unwrap_or_default();
        if !holders.is_empty() && !req.force {
            let who: Vec<String> = holders
                .iter()
                .map(|h| format!("pid {} ({})", h.pid, h.comm))
                .collect();
            let _ = reply.send(Err(Error::Busy(format!(
                "device {uuid} is held open by {}; stop that VM or remove with force",
                who.join(", ")
            ))));
            return;
        }
        tracing::info!(caller = ?caller.bus_name, uid = ?caller.uid, %uuid, force = req.force, "removing a device");
        let parent = view.device.parent.clone();
        self.removing.insert(uuid);
        self.refresh_device(&uuid, Some(&parent));
        let host = self.config.host.clone();
        let me = self.me.clone();
        let bound = req.timeout.unwrap_or(self.config.remove_timeout);
        let u2 = uuid;
        tokio::spawn(async move {
            let mut work = tokio::task::spawn_blocking(move || host.remove(&u2));
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
            let _ = me.send(Command::RemoveDone(RemoveDone {
                uuid,
                parent,
                result,
                reply,
            }));
        });
    }

    fn finish_remove(&mut self, done: RemoveDone) {
        self.removing.remove(&done.uuid);
        self.refresh_device(&done.uuid, Some(&done.parent));
        self.refresh_parent(&done.parent);
        match &done.result {
            Ok(()) => tracing::info!(uuid = %done.uuid, "device removed"),
            Err(e) => tracing::error!(uuid = %done.uuid, "remove failed: {e}"),
        }
        if let Some(reply) = done.reply {
            let _ = reply.send(done.result);
        }
    }
}
