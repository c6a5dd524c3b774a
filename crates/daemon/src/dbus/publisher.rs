//! Keeps the object tree on the bus equal to the manager's model: applies each `Change` by
//! adding, updating (with PropertiesChanged) or removing objects. ObjectManager at the root
//! turns additions and removals into InterfacesAdded / InterfacesRemoved.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Mutex;
use zbus::zvariant::OwnedObjectPath;
use zbus::Connection;

use super::device::DeviceObj;
use super::guest::GuestObj;
use super::names;
use super::objects::{Ctx, ParentObj, TypeObj};
use crate::manager::{Change, DeviceView, Update};
use vgpud_model::{MdevUuid, Parent, ParentName, TypeId};

#[derive(Default)]
struct Published {
    parents: BTreeMap<ParentName, Parent>,
    devices: BTreeMap<MdevUuid, DeviceView>,
    guests: BTreeMap<u64, crate::manager::guests::GuestState>,
}

/// Cloneable; one lock serializes every change so the tree is never seen half-applied.
#[derive(Clone)]
pub struct Publisher {
    conn: Connection,
    state: Arc<Mutex<Published>>,
    /// What the objects it registers act through.
    ctx: Arc<Ctx>,
}

impl Publisher {
    pub fn new(conn: Connection, ctx: Arc<Ctx>) -> Self {
        Self {
            conn,
            state: Arc::default(),
            ctx,
        }
    }

    pub async fn update(&self, update: Update) {
        match update {
            Update::Change(c) => self.apply(c).await,
            Update::Answer(answer) => answer(),
        }
    }

    pub async fn apply(&self, change: Change) {
        let mut state = self.state.lock().await;
        if let Err(e) = self.apply_locked(&mut state, change).await {
            tracing::warn!("updating the D-Bus objects failed: {e}");
        }
    }

    /// What is on the bus now, for a metrics scrape.
    pub async fn metrics_view(&self) -> crate::metrics::View {
        let state = self.state.lock().await;
        crate::metrics::View {
            parents: state.parents.values().cloned().collect(),
            devices: state.devices.values().cloned().collect(),
            guests: state.guests.values().copied().collect(),
        }
    }

    async fn apply_locked(&self, state: &mut Published, change: Change) -> zbus::Result<()> {
        let server = self.conn.object_server();
        let ctx = self.ctx.clone();
        match change {
            Change::ParentAdded(p) | Change::ParentUpdated(p) => {
                let path = names::parent_path(&p.name);
                let old = state.parents.get(&p.name).cloned();
                // Types first, so a client that sees the parent can resolve its Types.
                for t in &p.types {
                    let tpath = names::type_path(&p.name, &t.id);
                    let devices = type_devices(state, &p.name, &t.id);
                    match server.interface::<_, TypeObj>(&tpath).await {
                        Ok(iref) => {
                            iref.get()
                                .await
                                .update(t.clone(), iref.signal_emitter())
                                .await?
                        }
                        Err(_) => {
                            server
                                .at(
                                    &tpath,
                                    TypeObj {
                                        data: std::sync::Mutex::new(super::objects::TypeData {
                                            ty: t.clone(),
                                            devices,
                                        }),
                                        ctx: ctx.clone(),
                                    },
                                )
                                .await?;
                        }
                    }
                }
                if let Some(old) = &old {
                    for t in old
                        .types
                        .iter()
                        .filter(|t| !p.types.iter().any(|n| n.id == t.id))
                    {
                        server
                            .remove::<TypeObj, _>(&names::type_path(&p.name, &t.id))
                            .await?;
                    }
                }
                match server.interface::<_, ParentObj>(&path).await {
                    Ok(iref) => {
                        iref.get()
                            .await
                            .update(p.clone(), iref.signal_emitter())
                            .await?
                    }
                    Err(_) => {
                        server
                            .at(
                                &path,
                                ParentObj {
                                    parent: std::sync::Mutex::new(p.clone()),
                                },
                            )
                            .await?;
                    }
                }
                state.parents.insert(p.name.clone(), p);
            }
            Change::ParentRemoved(name) => {
                if let Some(old) = state.parents.remove(&name) {
                    for t in &old.types {
                        server
                            .remove::<TypeObj, _>(&names::type_path(&name, &t.id))
                            .await?;
                    }
                }
                server
                    .remove::<ParentObj, _>(&names::parent_path(&name))
                    .await?;
            }
            Change::DeviceAdded(d) | Change::DeviceUpdated(d) => {
                let path = names::device_path(&d.uuid);
                let old_type = state.devices.get(&d.uuid).and_then(|o| o.type_id.clone());
                state.devices.insert(d.uuid, d.clone());
                match server.interface::<_, DeviceObj>(&path).await {
                    Ok(iref) => {
                        iref.get()
                            .await
                            .update(d.clone(), iref.signal_emitter())
                            .await?
                    }
                    Err(_) => {
                        server
                            .at(
                                &path,
                                DeviceObj {
                                    view: std::sync::Mutex::new(d.clone()),
                                    ctx: ctx.clone(),
                                },
                            )
                            .await?;
                    }
                }
                if old_type != d.type_id {
                    if let Some(t) = &old_type {
                        self.refresh_type_devices(state, &d.parent, t).await?;
                    }
                    if let Some(t) = &d.type_id {
                        self.refresh_type_devices(state, &d.parent, t).await?;
                    }
                }
            }
            Change::Guest(g) => {
                state.guests.insert(g.id, g.state);
                let path = names::guest_path(g.id);
                match server.interface::<_, GuestObj>(&path).await {
                    Ok(iref) => iref.get().await.update(g, iref.signal_emitter()).await?,
                    Err(_) => {
                        server
                            .at(
                                &path,
                                GuestObj {
                                    view: std::sync::Mutex::new(g),
                                    ctx: ctx.clone(),
                                },
                            )
                            .await?;
                    }
                }
            }
            Change::GuestRemoved(id) => {
                server.remove::<GuestObj, _>(&names::guest_path(id)).await?;
            }
            Change::Problems(problems) => {
                if let Ok(iref) = server
                    .interface::<_, super::objects::ManagerObj>(names::ROOT_PATH)
                    .await
                {
                    iref.get()
                        .await
                        .set_problems(problems, iref.signal_emitter())
                        .await?;
                }
            }
            Change::DeviceRemoved(uuid) => {
                server
                    .remove::<DeviceObj, _>(&names::device_path(&uuid))
                    .await?;
                if let Some(old) = state.devices.remove(&uuid) {
                    if let Some(t) = &old.type_id {
                        self.refresh_type_devices(state, &old.parent, t).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn refresh_type_devices(
        &self,
        state: &Published,
        parent: &ParentName,
        type_id: &TypeId,
    ) -> zbus::Result<()> {
        let path = names::type_path(parent, type_id);
        if let Ok(iref) = self
            .conn
            .object_server()
            .interface::<_, TypeObj>(&path)
            .await
        {
            let devices = type_devices(state, parent, type_id);
            iref.get()
                .await
                .set_devices(devices, iref.signal_emitter())
                .await?;
        }
        Ok(())
    }
}

/// What an update changes, for telling which later one supersedes it.
#[derive(PartialEq, Eq, Hash)]
enum Key {
    Parent(ParentName),
    Device(MdevUuid),
}

fn key(update: &Update) -> Option<Key> {
    match update {
        Update::Change(Change::ParentAdded(p) | Change::ParentUpdated(p)) => {
            Some(Key::Parent(p.name.clone()))
        }
        Update::Change(Change::ParentRemoved(n)) => Some(Key::Parent(n.clone())),
        Update::Change(Change::DeviceAdded(d) | Change::DeviceUpdated(d)) => {
            Some(Key::Device(d.uuid))
        }
        Update::Change(Change::DeviceRemoved(u)) => Some(Key::Device(*u)),
        _ => None,
    }
}

/// `batch` without the parent and device updates that a later change of the same object in it
/// makes moot (additions and removals are kept: they make and unmake objects), as long as no
/// answer lies between the two: an answer is delivered once what came before it is on the bus.
/// Applying the rest in order ends in the same tree. Event storms (an unplug, a driver
/// reloading) are what this saves.
pub(super) fn superseded_dropped(batch: Vec<Update>) -> Vec<Update> {
    let mut later: std::collections::HashSet<Key> = std::collections::HashSet::new();
    let mut kept: Vec<Update> = Vec::with_capacity(batch.len());
    for update in batch.into_iter().rev() {
        if matches!(update, Update::Answer(_)) {
            later.clear();
        }
        let k = key(&update);
        let is_update = matches!(
            update,
            Update::Change(Change::ParentUpdated(_) | Change::DeviceUpdated(_))
        );
        if let Some(k) = k {
            if is_update && later.contains(&k) {
                continue;
            }
            later.insert(k);
        }
        kept.push(update);
    }
    kept.reverse();
    kept
}

fn type_devices(state: &Published, parent: &ParentName, type_id: &TypeId) -> Vec<OwnedObjectPath> {
    state
        .devices
        .values()
        .filter(|d| d.parent == *parent && d.type_id.as_ref() == Some(type_id))
        .map(|d| names::device_path(&d.uuid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpud_model::{BackendKind, MdevType};

    fn parent(name: &str, free: u32) -> Parent {
        Parent {
            name: ParentName::new(name).unwrap(),
            sysfs_path: format!("/sys/devices/{name}").into(),
            backend: BackendKind::Mdev,
            pci: None,
            driver: None,
            numa_node: None,
            iommu_group: None,
            physfn: None,
            virtfns: Vec::new(),
            types: vec![MdevType {
                id: TypeId::new("mtty-1".to_owned()).unwrap(),
                parent: ParentName::new(name).unwrap(),
                name: None,
                description: None,
                device_api: "vfio-pci".into(),
                available_instances: free,
            }],
        }
    }

    fn updated(name: &str, free: u32) -> Update {
        Update::Change(Change::ParentUpdated(parent(name, free)))
    }

    fn shown(batch: &[Update]) -> Vec<String> {
        batch
            .iter()
            .map(|u| match u {
                Update::Change(Change::ParentUpdated(p)) => {
                    format!("{}={}", p.name, p.types[0].available_instances)
                }
                Update::Change(c) => format!("{c:?}"),
                Update::Answer(_) => "answer".into(),
            })
            .collect()
    }

    #[test]
    fn later_updates_of_the_same_parent_supersede_earlier_ones() {
        let batch = vec![updated("mtty", 3), updated("mdpy", 1), updated("mtty", 2)];
        assert_eq!(shown(&superseded_dropped(batch)), ["mdpy=1", "mtty=2"]);
    }

    #[test]
    fn an_answer_keeps_the_state_before_it() {
        let answer = Update::Answer(Box::new(|| {}));
        let batch = vec![updated("mtty", 3), answer, updated("mtty", 2)];
        assert_eq!(
            shown(&superseded_dropped(batch)),
            ["mtty=3", "answer", "mtty=2"]
        );
    }

    #[test]
    fn additions_and_removals_are_kept() {
        let batch = vec![
            Update::Change(Change::ParentAdded(parent("mtty", 3))),
            updated("mtty", 2),
            Update::Change(Change::ParentRemoved(ParentName::new("mtty").unwrap())),
        ];
        assert_eq!(superseded_dropped(batch).len(), 2);
    }
}
