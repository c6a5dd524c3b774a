//! The D-Bus objects: thin adapters that turn calls into manager commands and hold the
//! values their properties show. No decision is made here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{interface, Connection};

use super::error::VgpudError;
use super::names;
use super::publisher::Publisher;
use crate::error::Error;
use crate::manager::{Caller, CreateRequest, DeviceView, ManagerHandle, RemoveRequest};
use crate::model::{MdevType, MdevUuid, Parent, ParentName};

/// What every object needs to act.
pub struct Ctx {
    pub manager: ManagerHandle,
    pub publisher: Publisher,
}

type Options = HashMap<String, OwnedValue>;

fn bad(msg: String) -> VgpudError {
    Error::InvalidArgument(msg).into()
}

/// Refuses option keys a method does not know, so a typo never silently changes nothing.
fn check_keys(options: &Options, known: &[&str]) -> Result<(), VgpudError> {
    for k in options.keys() {
        if !known.contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown option {k:?}; this method takes {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn opt_str(options: &Options, key: &str) -> Result<Option<String>, VgpudError> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => match &**v {
            Value::Str(s) => Ok(Some(s.to_string())),
            other => Err(bad(format!(
                "option {key:?} must be a string (s), not {}",
                other.value_signature()
            ))),
        },
    }
}

fn opt_bool(options: &Options, key: &str) -> Result<Option<bool>, VgpudError> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => match &**v {
            Value::Bool(b) => Ok(Some(*b)),
            other => Err(bad(format!(
                "option {key:?} must be a boolean (b), not {}",
                other.value_signature()
            ))),
        },
    }
}

fn opt_u64(options: &Options, key: &str) -> Result<Option<u64>, VgpudError> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => match &**v {
            Value::U32(n) => Ok(Some(u64::from(*n))),
            Value::U64(n) => Ok(Some(*n)),
            Value::I32(n) if *n >= 0 => Ok(Some(*n as u64)),
            Value::I64(n) if *n >= 0 => Ok(Some(*n as u64)),
            other => Err(bad(format!(
                "option {key:?} must be a non-negative integer, not {}",
                other.value_signature()
            ))),
        },
    }
}

/// `attrs` as `a(ss)` (ordered, as mdevctl writes them) or `a{ss}`.
fn opt_attrs(options: &Options) -> Result<Vec<(String, String)>, VgpudError> {
    let Some(v) = options.get("attrs") else {
        return Ok(Vec::new());
    };
    if let Ok(list) =
        <Vec<(String, String)>>::try_from(v.try_clone().map_err(|e| bad(e.to_string()))?)
    {
        return Ok(list);
    }
    if let Ok(map) =
        <HashMap<String, String>>::try_from(v.try_clone().map_err(|e| bad(e.to_string()))?)
    {
        let mut list: Vec<(String, String)> = map.into_iter().collect();
        list.sort();
        return Ok(list);
    }
    Err(bad(format!(
        "option \"attrs\" must be a(ss) or a{{ss}}, not {}",
        v.value_signature()
    )))
}

const MAX_ATTRS: usize = 64;
const MAX_ATTR_VALUE: usize = 4096;

fn create_request(
    type_spec: String,
    options: &Options,
    parent: Option<ParentName>,
) -> Result<CreateRequest, VgpudError> {
    let keys: &[&str] = if parent.is_some() {
        &["uuid", "attrs"]
    } else {
        &["parent", "uuid", "attrs"]
    };
    check_keys(options, keys)?;
    if type_spec.is_empty() || type_spec.len() > 255 || type_spec.contains('\0') {
        return Err(bad(
            "the type must be a type id or name of 1 to 255 characters".into(),
        ));
    }
    let parent = match parent {
        Some(p) => Some(p),
        None => opt_str(options, "parent")?
            .map(ParentName::new)
            .transpose()?,
    };
    let uuid = opt_str(options, "uuid")?
        .map(|u| MdevUuid::parse(&u))
        .transpose()?;
    let attrs = opt_attrs(options)?;
    if attrs.len() > MAX_ATTRS
        || attrs
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 255 || v.len() > MAX_ATTR_VALUE)
    {
        return Err(bad(format!("attrs: at most {MAX_ATTRS} pairs, names of 1..255 bytes, values up to {MAX_ATTR_VALUE} bytes")));
    }
    Ok(CreateRequest {
        type_spec,
        parent,
        uuid,
        attrs,
    })
}

/// Who sent this message: its unique name and, from the bus, its uid.
async fn caller(hdr: &Header<'_>, conn: &Connection) -> Caller {
    let bus_name = hdr.sender().map(|s| s.to_string());
    let mut uid = None;
    if let Some(sender) = hdr.sender() {
        if let Ok(proxy) = zbus::fdo::DBusProxy::new(conn).await {
            uid = proxy
                .get_connection_unix_user(sender.clone().into())
                .await
                .ok();
        }
    }
    Caller { bus_name, uid }
}

async fn create(
    ctx: &Ctx,
    caller: Caller,
    req: CreateRequest,
) -> Result<OwnedObjectPath, VgpudError> {
    let view = ctx.manager.create(caller, req).await?;
    // The reply names an object and implies new counts: publish them before replying.
    ctx.manager.published().await?;
    ctx.publisher.device_changed(&view).await;
    Ok(names::device_path(&view.device.uuid))
}

pub struct ManagerObj {
    pub ctx: Arc<Ctx>,
}

#[interface(name = "org.vgpud1.Manager")]
impl ManagerObj {
    /// Creates a device of a type given by id or name; options: parent (s), uuid (s), attrs (a(ss)).
    async fn create_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        type_spec: String,
        options: Options,
    ) -> Result<OwnedObjectPath, VgpudError> {
        let req = create_request(type_spec, &options, None)?;
        create(&self.ctx, caller(&hdr, conn).await, req).await
    }

    /// The object path of the device with this UUID.
    async fn get_device(&self, uuid: String) -> Result<OwnedObjectPath, VgpudError> {
        let uuid = MdevUuid::parse(&uuid)?;
        match self.ctx.manager.device(uuid).await? {
            Some(view) => {
                self.ctx.publisher.device_changed(&view).await;
                Ok(names::device_path(&uuid))
            }
            None => Err(Error::UnknownDevice(uuid.to_string()).into()),
        }
    }

    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }
}

/// Property values live behind a plain mutex, never behind zbus's interface lock: a method
/// call holds that lock for its whole duration (a create can take seconds), and the publisher
/// must still be able to update and signal the object meanwhile.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
        #[zbus(connection)] conn: &Connection,
        options: Options,
    ) -> Result<OwnedObjectPath, VgpudError> {
        let (id, parent) = {
            let d = locked(&self.data);
            (d.ty.id.to_string(), d.ty.parent.clone())
        };
        let req = create_request(id, &options, Some(parent))?;
        create(&self.ctx, caller(&hdr, conn).await, req).await
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

pub struct DeviceObj {
    pub view: Mutex<DeviceView>,
    pub ctx: Arc<Ctx>,
}

#[interface(name = "org.vgpud1.Device")]
impl DeviceObj {
    /// Removes the device; options: force (b) waits for a holder instead of answering Busy,
    /// timeout_ms (t) bounds that wait.
    async fn remove(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        options: Options,
    ) -> Result<(), VgpudError> {
        check_keys(&options, &["force", "timeout_ms"])?;
        let req = RemoveRequest {
            force: opt_bool(&options, "force")?.unwrap_or(false),
            timeout: opt_u64(&options, "timeout_ms")?.map(Duration::from_millis),
        };
        if req.timeout.is_some_and(|t| t > Duration::from_secs(3600)) {
            return Err(bad("timeout_ms may be at most one hour".into()));
        }
        let uuid = locked(&self.view).device.uuid;
        self.ctx
            .manager
            .remove(caller(&hdr, conn).await, uuid, req)
            .await?;
        self.ctx.manager.published().await?;
        Ok(())
    }

    #[zbus(property)]
    fn uuid(&self) -> String {
        locked(&self.view).device.uuid.to_string()
    }
    #[zbus(property)]
    fn parent(&self) -> OwnedObjectPath {
        names::parent_path(&locked(&self.view).device.parent)
    }
    /// The type object, or "/" while the kernel has not linked the type yet.
    #[zbus(property, name = "Type")]
    fn type_path(&self) -> OwnedObjectPath {
        let v = locked(&self.view);
        match &v.device.type_id {
            Some(t) => names::type_path(&v.device.parent, t),
            None => names::no_object(),
        }
    }
    #[zbus(property)]
    fn type_id(&self) -> String {
        locked(&self.view)
            .device
            .type_id
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default()
    }
    #[zbus(property)]
    fn active(&self) -> bool {
        locked(&self.view).device.active
    }
    /// A process (a VM) holds the device's VFIO group open.
    #[zbus(property)]
    fn in_use(&self) -> bool {
        locked(&self.view).in_use
    }
    #[zbus(property)]
    fn sysfs_path(&self) -> String {
        locked(&self.view).device.sysfs_path.display().to_string()
    }
    /// -1 when the device has no IOMMU group.
    #[zbus(property)]
    fn iommu_group(&self) -> i32 {
        locked(&self.view)
            .device
            .iommu_group
            .map_or(-1, |g| g as i32)
    }
}

impl DeviceObj {
    pub async fn update(&self, new: DeviceView, emitter: &SignalEmitter<'_>) -> zbus::Result<()> {
        let old = std::mem::replace(&mut *locked(&self.view), new.clone());
        let (o, n) = (&old.device, &new.device);
        if o.type_id != n.type_id {
            self.type_changed(emitter).await?;
            self.type_id_changed(emitter).await?;
        }
        if o.active != n.active {
            self.active_changed(emitter).await?;
        }
        if old.in_use != new.in_use {
            self.in_use_changed(emitter).await?;
        }
        if o.sysfs_path != n.sysfs_path {
            self.sysfs_path_changed(emitter).await?;
        }
        if o.iommu_group != n.iommu_group {
            self.iommu_group_changed(emitter).await?;
        }
        Ok(())
    }
}
