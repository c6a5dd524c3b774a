//! The D-Bus objects: thin adapters that turn calls into manager commands and hold the
//! values their properties show. No decision is made here.

use std::sync::{Arc, Mutex, MutexGuard};

use zbus::interface;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedObjectPath;

use super::args::{
    capacity_filter, create_request, define_request, device_of_path, launch_options,
    reshape_options, Options,
};
use super::bouncer::Bouncer;
use super::error::VgpudError;
use super::names;
use crate::manager::{Caller, CreateRequest, ManagerHandle};
use vgpud_model::error::Error;
use vgpud_model::{MdevType, MdevUuid, Parent};

const MANAGER: &str = "org.vgpud1.Manager";
const MDEV_TYPE: &str = "org.vgpud1.MdevType";

/// What every object needs to act.
pub struct Ctx {
    pub manager: ManagerHandle,
    pub bouncer: Arc<Bouncer>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Runs one method's work and counts it in the metrics by method and result.
pub async fn timed<T>(
    ctx: &Ctx,
    method: &'static str,
    work: impl std::future::Future<Output = Result<T, VgpudError>>,
) -> Result<T, VgpudError> {
    let started = std::time::Instant::now();
    let result = work.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.class_name(),
    };
    ctx.metrics.observe(method, outcome, started.elapsed());
    result
}

/// A create `interface.method` was admitted for; a persistent one needs its second action too.
async fn create(
    ctx: &Ctx,
    caller: Caller,
    req: CreateRequest,
    (interface, method): (&str, &str),
) -> Result<OwnedObjectPath, VgpudError> {
    if req.persistent || req.autostart {
        ctx.bouncer.admit_more(&caller, interface, method).await?;
    }
    // Answered once the device and the new counts are on the bus.
    let view = ctx.manager.create(caller, req).await?;
    Ok(names::device_path(&view.uuid))
}

pub struct ManagerObj {
    pub ctx: Arc<Ctx>,
    pub problems: Mutex<Vec<String>>,
}

#[interface(name = "org.vgpud1.Manager")]
impl ManagerObj {
    /// Creates a device of a type given by id or name; options: parent (s), uuid (s),
    /// attrs (a(ss)), numa_node (i), persistent (b), autostart (b).
    async fn create_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        type_spec: String,
        options: Options,
    ) -> Result<OwnedObjectPath, VgpudError> {
        timed(&self.ctx, "CreateDevice", async {
            let req = create_request(type_spec, &options, None)?;
            let who = self
                .ctx
                .bouncer
                .admit(&hdr, MANAGER, "CreateDevice")
                .await?;
            create(&self.ctx, who, req, (MANAGER, "CreateDevice")).await
        })
        .await
    }

    /// Stores a persistent definition without creating the device; options: parent (s,
    /// required), uuid (s), attrs (a(ss)), autostart (b).
    async fn define_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        type_spec: String,
        options: Options,
    ) -> Result<OwnedObjectPath, VgpudError> {
        timed(&self.ctx, "DefineDevice", async {
            let req = define_request(type_spec, &options)?;
            let who = self
                .ctx
                .bouncer
                .admit(&hdr, MANAGER, "DefineDevice")
                .await?;
            let view = self.ctx.manager.define(who, req).await?;
            Ok(names::device_path(&view.uuid))
        })
        .await
    }

    /// Starts a guest (a `vgpud-vmm` process) with these devices; options: payload (s, a built-in:
    /// pci-probe (default), hello, loop, halt), payload_file (h, a raw image), kernel (h),
    /// initrd (h), cmdline (s), memory_mib (u), vcpus (u). Files are descriptors the caller
    /// opened; paths are refused. Returns the Guest.
    async fn launch_guest(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        devices: Vec<OwnedObjectPath>,
        options: Options,
    ) -> Result<OwnedObjectPath, VgpudError> {
        let opts = launch_options(&options)?;
        let uuids = devices
            .iter()
            .map(|p| device_of_path(p.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        let who = self.ctx.bouncer.admit(&hdr, MANAGER, "LaunchGuest").await?;
        let view = self.ctx.manager.launch_guest(who, uuids, opts).await?;
        Ok(names::guest_path(view.id))
    }

    /// Per type name, how many more devices the caller could create now, honouring shared
    /// pools, one-type GPUs, reservations and the caller's own policy limits; filter: type (s,
    /// an id or name), parent (s), numa_node (i). Each entry: (type name, total, [(parent,
    /// type id, NUMA node or -1, free there)]). Computed from vgpud's model: no sysfs read.
    #[allow(clippy::type_complexity)]
    async fn get_capacity(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        filter: Options,
    ) -> Result<Vec<(String, u32, Vec<(String, String, i32, u32)>)>, VgpudError> {
        timed(&self.ctx, "GetCapacity", async {
            let filter = capacity_filter(&filter)?;
            let who = self.ctx.bouncer.admit(&hdr, MANAGER, "GetCapacity").await?;
            let caps = self.ctx.manager.capacity(who, filter).await?;
            Ok(caps
                .into_iter()
                .map(|c| {
                    let parents = c
                        .parents
                        .into_iter()
                        .map(|p| {
                            (
                                p.parent.to_string(),
                                p.type_id.to_string(),
                                p.numa_node.unwrap_or(-1),
                                p.free,
                            )
                        })
                        .collect();
                    (c.type_name, c.total, parents)
                })
                .collect())
        })
        .await
    }

    /// What the ensure rules would do on this host now, without doing it: (rule, parent,
    /// action "create" | "no-type" | "no-room", type, count, devices in the way (for no-room:
    /// live devices of other types holding the parent's capacity)).
    #[allow(clippy::type_complexity)]
    async fn plan(
        &self,
    ) -> Result<Vec<(String, String, String, String, u32, Vec<String>)>, VgpudError> {
        timed(&self.ctx, "Plan", async {
            let steps = self.ctx.manager.plan().await?;
            Ok(steps
                .into_iter()
                .map(|s| {
                    (
                        s.rule,
                        s.parent.to_string(),
                        s.action.to_owned(),
                        s.type_spec,
                        s.count,
                        s.in_the_way.iter().map(|u| u.to_string()).collect(),
                    )
                })
                .collect())
        })
        .await
    }

    /// Makes `parent` serve `type_spec`: devices of other types on it are in the way (a GPU
    /// that runs one type at a time, a shared pool): without drain (b) the call answers Busy
    /// naming them; with drain they are removed first (Busy if a guest uses one). Then count
    /// (u, default 1) devices of the type are created there. Returns them.
    async fn reshape(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        parent: String,
        type_spec: String,
        options: Options,
    ) -> Result<Vec<OwnedObjectPath>, VgpudError> {
        timed(&self.ctx, "Reshape", async {
            let (count, drain) = reshape_options(&options)?;
            let parent = vgpud_model::ParentName::new(parent)?;
            let who = self.ctx.bouncer.admit(&hdr, MANAGER, "Reshape").await?;
            let snap = self.ctx.manager.snapshot().await?;
            let p = snap
                .parents
                .iter()
                .find(|p| p.name == parent)
                .ok_or_else(|| Error::UnknownParent(parent.to_string()))?;
            let ty = p
                .types
                .iter()
                .find(|t| t.matches(&type_spec))
                .ok_or_else(|| Error::UnknownType {
                    parent: parent.to_string(),
                    type_id: type_spec.clone(),
                })?;
            let same_gpu: Vec<_> = snap
                .parents
                .iter()
                .filter(|q| q.physical_gpu() == p.physical_gpu())
                .map(|q| q.name.clone())
                .collect();
            let in_the_way: Vec<_> = snap
                .devices
                .iter()
                .filter(|d| {
                    d.live.is_some()
                        && same_gpu.contains(&d.parent)
                        && d.type_id.as_ref() != Some(&ty.id)
                })
                .collect();
            if !in_the_way.is_empty() {
                let named: Vec<String> = in_the_way
                    .iter()
                    .map(|d| {
                        let t = d
                            .type_id
                            .as_ref()
                            .map(|t| t.to_string())
                            .unwrap_or_default();
                        let used = if d.in_use { ", in use by a guest" } else { "" };
                        format!("{} ({t}{used})", d.uuid)
                    })
                    .collect();
                if !drain || in_the_way.iter().any(|d| d.in_use) {
                    return Err(Error::Busy(format!(
                        "the GPU of parent {parent} must be drained to serve {}: {} in the way{}",
                        ty.id,
                        named.join(", "),
                        if drain {
                            "; stop its guests first"
                        } else {
                            "; reshape with drain to remove them"
                        }
                    ))
                    .into());
                }
                self.ctx
                    .bouncer
                    .admit_more(&who, MANAGER, "Reshape")
                    .await?;
                for d in &in_the_way {
                    self.ctx
                        .manager
                        .remove(
                            who.clone(),
                            d.uuid,
                            crate::manager::RemoveRequest::default(),
                        )
                        .await?;
                }
            }
            let mut made = Vec::new();
            for _ in 0..count {
                let req = CreateRequest {
                    type_spec: ty.id.to_string(),
                    parent: Some(parent.clone()),
                    ..CreateRequest::default()
                };
                made.push(create(&self.ctx, who.clone(), req, (MANAGER, "Reshape")).await?);
            }
            Ok(made)
        })
        .await
    }

    /// The object path of the device with this UUID.
    async fn get_device(&self, uuid: String) -> Result<OwnedObjectPath, VgpudError> {
        let uuid = MdevUuid::parse(&uuid)?;
        match self.ctx.manager.device(uuid).await? {
            Some(view) => Ok(names::device_path(&view.uuid)),
            None => Err(Error::UnknownDevice(uuid.to_string()).into()),
        }
    }

    /// Re-reads the policy files (keeping the last good policy if they are invalid) and the
    /// definitions; returns a summary of the policy in force.
    async fn reload_policy(&self, #[zbus(header)] hdr: Header<'_>) -> Result<String, VgpudError> {
        timed(&self.ctx, "ReloadPolicy", async {
            let who = self
                .ctx
                .bouncer
                .admit(&hdr, MANAGER, "ReloadPolicy")
                .await?;
            Ok(self.ctx.manager.reload(who).await?)
        })
        .await
    }

    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// What the daemon cannot make true: unmet ensure rules and the like.
    #[zbus(property)]
    fn problems(&self) -> Vec<String> {
        locked(&self.problems).clone()
    }
}

impl ManagerObj {
    pub async fn set_problems(
        &self,
        problems: Vec<String>,
        emitter: &SignalEmitter<'_>,
    ) -> zbus::Result<()> {
        let changed = {
            let mut p = locked(&self.problems);
            let changed = *p != problems;
            *p = problems;
            changed
        };
        if changed {
            self.problems_changed(emitter).await?;
        }
        Ok(())
    }
}

/// Property values live behind a plain mutex, never behind zbus's interface lock: a method
/// call holds that lock for its whole duration (a create can take seconds), and the publisher
/// must still be able to update and signal the object meanwhile.
pub(super) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct ParentObj {
    pub parent: Mutex<Parent>,
}

#[interface(name = "org.vgpud1.Parent")]
impl ParentObj {
    #[zbus(property)]
    fn name(&self) -> String {
        locked(&self.parent).name.to_string()
    }
    #[zbus(property)]
    fn sysfs_path(&self) -> String {
        locked(&self.parent).sysfs_path.display().to_string()
    }
    /// PCI vendor id, 0 for a parent without one (a virtual sample device).
    #[zbus(property)]
    fn vendor_id(&self) -> u16 {
        locked(&self.parent).pci.as_ref().map_or(0, |p| p.vendor)
    }
    #[zbus(property)]
    fn device_id(&self) -> u16 {
        locked(&self.parent).pci.as_ref().map_or(0, |p| p.device)
    }
    #[zbus(property)]
    fn driver(&self) -> String {
        locked(&self.parent).driver.clone().unwrap_or_default()
    }
    /// -1 when the kernel reports no NUMA node.
    #[zbus(property)]
    fn numa_node(&self) -> i32 {
        locked(&self.parent).numa_node.unwrap_or(-1)
    }
    /// -1 when the parent has no IOMMU group.
    #[zbus(property)]
    fn iommu_group(&self) -> i32 {
        locked(&self.parent).iommu_group.map_or(-1, |g| g as i32)
    }
    /// "mdev" or "nvidia-vendor-sysfs".
    #[zbus(property)]
    fn backend(&self) -> String {
        locked(&self.parent).backend.as_str().to_owned()
    }
    /// The SR-IOV physical function of a VF parent ("" otherwise).
    #[zbus(property)]
    fn physical_function(&self) -> String {
        locked(&self.parent)
            .physfn
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default()
    }
    #[zbus(property)]
    fn types(&self) -> Vec<OwnedObjectPath> {
        let p = locked(&self.parent);
        p.types
            .iter()
            .map(|t| names::type_path(&p.name, &t.id))
            .collect()
    }
}

impl ParentObj {
    pub async fn update(&self, new: Parent, emitter: &SignalEmitter<'_>) -> zbus::Result<()> {
        let old = std::mem::replace(&mut *locked(&self.parent), new.clone());
        let p = &new;
        if old.sysfs_path != p.sysfs_path {
            self.sysfs_path_changed(emitter).await?;
        }
        if old.pci != p.pci {
            self.vendor_id_changed(emitter).await?;
            self.device_id_changed(emitter).await?;
        }
        if old.driver != p.driver {
            self.driver_changed(emitter).await?;
        }
        if old.numa_node != p.numa_node {
            self.numa_node_changed(emitter).await?;
        }
        if old.iommu_group != p.iommu_group {
            self.iommu_group_changed(emitter).await?;
        }
        if old.physfn != p.physfn {
            self.physical_function_changed(emitter).await?;
        }
        let ids = |x: &Parent| x.types.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        if ids(&old) != ids(p) {
            self.types_changed(emitter).await?;
        }
        Ok(())
    }
}

pub struct TypeData {
    pub ty: MdevType,
    pub devices: Vec<OwnedObjectPath>,
}

pub struct TypeObj {
    pub data: Mutex<TypeData>,
    pub ctx: Arc<Ctx>,
}

#[interface(name = "org.vgpud1.MdevType")]
impl TypeObj {
    /// Creates a device of this type on this parent; options: uuid (s), attrs (a(ss)).
    async fn create(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        options: Options,
    ) -> Result<OwnedObjectPath, VgpudError> {
        let (id, parent) = {
            let d = locked(&self.data);
            (d.ty.id.to_string(), d.ty.parent.clone())
        };
        timed(&self.ctx, "MdevType.Create", async {
            let req = create_request(id, &options, Some(parent))?;
            let who = self.ctx.bouncer.admit(&hdr, MDEV_TYPE, "Create").await?;
            create(&self.ctx, who, req, (MDEV_TYPE, "Create")).await
        })
        .await
    }

    #[zbus(property)]
    fn id(&self) -> String {
        locked(&self.data).ty.id.to_string()
    }
    /// "" when the driver gives the type no name.
    #[zbus(property)]
    fn name(&self) -> String {
        locked(&self.data).ty.name.clone().unwrap_or_default()
    }
    #[zbus(property)]
    fn description(&self) -> String {
        locked(&self.data)
            .ty
            .description
            .clone()
            .unwrap_or_default()
    }
    #[zbus(property)]
    fn device_api(&self) -> String {
        locked(&self.data).ty.device_api.clone()
    }
    /// Advisory, re-read after every add or remove on the parent.
    #[zbus(property)]
    fn available_instances(&self) -> u32 {
        locked(&self.data).ty.available_instances
    }
    #[zbus(property)]
    fn parent(&self) -> OwnedObjectPath {
        names::parent_path(&locked(&self.data).ty.parent)
    }
    #[zbus(property)]
    fn devices(&self) -> Vec<OwnedObjectPath> {
        locked(&self.data).devices.clone()
    }
}

impl TypeObj {
    pub async fn update(&self, new: MdevType, emitter: &SignalEmitter<'_>) -> zbus::Result<()> {
        let old = std::mem::replace(&mut locked(&self.data).ty, new.clone());
        if old.name != new.name {
            self.name_changed(emitter).await?;
        }
        if old.description != new.description {
            self.description_changed(emitter).await?;
        }
        if old.device_api != new.device_api {
            self.device_api_changed(emitter).await?;
        }
        if old.available_instances != new.available_instances {
            self.available_instances_changed(emitter).await?;
        }
        Ok(())
    }

    pub async fn set_devices(
        &self,
        devices: Vec<OwnedObjectPath>,
        emitter: &SignalEmitter<'_>,
    ) -> zbus::Result<()> {
        let changed = {
            let mut d = locked(&self.data);
            let changed = d.devices != devices;
            d.devices = devices;
            changed
        };
        if changed {
            self.devices_changed(emitter).await?;
        }
        Ok(())
    }
}
