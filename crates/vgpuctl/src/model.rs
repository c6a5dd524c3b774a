//! What vgpuctl shows: parents, types and devices as plain values built from D-Bus property
//! maps (one GetManagedObjects answer). These structs serialize to the documented JSON schema
//! (reference.txt), so renaming a field is a breaking change.

use std::collections::HashMap;

use serde::Serialize;
use zbus::zvariant::{OwnedValue, Value};

use vgpud_api::names::{unescape_path_element, DEVICE_IFACE, PARENT_IFACE, ROOT_PATH, TYPE_IFACE};

pub type PropMap = HashMap<String, OwnedValue>;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ParentInfo {
    pub name: String,
    pub path: String,
    pub sysfs_path: String,
    pub vendor_id: u16,
    pub device_id: u16,
    pub driver: String,
    pub backend: String,
    pub numa_node: Option<i32>,
    pub iommu_group: Option<i32>,
    pub physical_function: Option<String>,
    pub types: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TypeInfo {
    pub parent: String,
    pub id: String,
    pub name: Option<String>,
    pub description: String,
    pub device_api: String,
    pub available_instances: u32,
    pub devices: Vec<String>,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceInfo {
    pub uuid: String,
    pub parent: Option<String>,
    pub type_id: String,
    pub active: bool,
    pub persistent: bool,
    pub autostart: bool,
    pub in_use: bool,
    pub owner: Option<i64>,
    pub origin: Option<String>,
    pub sysfs_path: Option<String>,
    pub iommu_group: Option<i32>,
    pub path: String,
}

/// Everything vgpud publishes, sorted: parents by name, types by parent and id, devices by
/// parent and UUID.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub parents: Vec<ParentInfo>,
    pub types: Vec<TypeInfo>,
    pub devices: Vec<DeviceInfo>,
}

/// Typed reads of a property map; a missing or mistyped property reads as empty, so a newer
/// daemon with changed properties still lists.
struct Props<'a>(Option<&'a PropMap>);

impl Props<'_> {
    fn value(&self, key: &str) -> Option<&Value<'static>> {
        self.0.and_then(|m| m.get(key)).map(|v| &**v)
    }

    fn string(&self, key: &str) -> String {
        match self.value(key) {
            Some(Value::Str(s)) => s.to_string(),
            Some(Value::ObjectPath(p)) => p.to_string(),
            _ => String::new(),
        }
    }

    fn non_empty(&self, key: &str) -> Option<String> {
        Some(self.string(key)).filter(|s| !s.is_empty())
    }

    fn boolean(&self, key: &str) -> bool {
        matches!(self.value(key), Some(Value::Bool(true)))
    }

    fn u16(&self, key: &str) -> u16 {
        match self.value(key) {
            Some(Value::U16(n)) => *n,
            _ => 0,
        }
    }

    fn u32(&self, key: &str) -> u32 {
        match self.value(key) {
            Some(Value::U32(n)) => *n,
            _ => 0,
        }
    }

    /// An `i` property where -1 means "none".
    fn optional_i32(&self, key: &str) -> Option<i32> {
        match self.value(key) {
            Some(Value::I32(n)) if *n >= 0 => Some(*n),
            _ => None,
        }
    }

    fn optional_i64(&self, key: &str) -> Option<i64> {
        match self.value(key) {
            Some(Value::I64(n)) if *n >= 0 => Some(*n),
            _ => None,
        }
    }

    fn paths(&self, key: &str) -> Vec<String> {
        match self.value(key) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| match v {
                    Value::ObjectPath(p) => Some(p.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The parent name in a parent path (`/org/vgpud/parents/<escaped name>`); `None` for "/".
pub fn parent_name_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix(ROOT_PATH)?.strip_prefix("/parents/")?;
    let element = rest.split('/').next()?;
    unescape_path_element(element)
}

/// The type id in a type path (`.../parents/<p>/types/<escaped id>`).
pub fn type_id_of(path: &str) -> Option<String> {
    let (_, element) = path.rsplit_once("/types/")?;
    unescape_path_element(element)
}

/// The UUID in a device path (`/org/vgpud/devices/<uuid with _>`).
pub fn uuid_of(path: &str) -> Option<String> {
    let element = path.strip_prefix(ROOT_PATH)?.strip_prefix("/devices/")?;
    Some(element.replace('_', "-"))
}

impl DeviceInfo {
    pub fn from_props(path: &str, props: &PropMap) -> Self {
        let p = Props(Some(props));
        DeviceInfo {
            uuid: p
                .non_empty("Uuid")
                .or_else(|| uuid_of(path))
                .unwrap_or_default(),
            parent: parent_name_of(&p.string("Parent")),
            type_id: p.string("TypeId"),
            active: p.boolean("Active"),
            persistent: p.boolean("Persistent"),
            autostart: p.boolean("Autostart"),
            in_use: p.boolean("InUse"),
            owner: p.optional_i64("Owner"),
            origin: p.non_empty("Origin"),
            sysfs_path: p.non_empty("SysfsPath"),
            iommu_group: p.optional_i32("IommuGroup"),
            path: path.to_owned(),
        }
    }
}

impl Snapshot {
    /// Builds the tables from a GetManagedObjects answer (paths and interface names as text).
    pub fn from_objects(objects: &HashMap<String, HashMap<String, PropMap>>) -> Self {
        let mut snap = Snapshot::default();
        let mut parent_names: HashMap<&str, String> = HashMap::new();
        for (path, ifaces) in objects {
            if let Some(props) = ifaces.get(PARENT_IFACE) {
                let name = Props(Some(props))
                    .non_empty("Name")
                    .or_else(|| parent_name_of(path))
                    .unwrap_or_default();
                parent_names.insert(path.as_str(), name);
            }
        }
        let parent_of = |path: &str| -> Option<String> {
            parent_names
                .get(path)
                .cloned()
                .or_else(|| parent_name_of(path))
        };
        for (path, ifaces) in objects {
            if let Some(props) = ifaces.get(PARENT_IFACE) {
                let p = Props(Some(props));
                snap.parents.push(ParentInfo {
                    name: parent_of(path).unwrap_or_default(),
                    path: path.clone(),
                    sysfs_path: p.string("SysfsPath"),
                    vendor_id: p.u16("VendorId"),
                    device_id: p.u16("DeviceId"),
                    driver: p.string("Driver"),
                    backend: p.string("Backend"),
                    numa_node: p.optional_i32("NumaNode"),
                    iommu_group: p.optional_i32("IommuGroup"),
                    physical_function: p.non_empty("PhysicalFunction"),
                    types: p
                        .paths("Types")
                        .iter()
                        .filter_map(|t| type_id_of(t))
                        .collect(),
                });
            }
            if let Some(props) = ifaces.get(TYPE_IFACE) {
                let p = Props(Some(props));
                snap.types.push(TypeInfo {
                    parent: parent_of(&p.string("Parent"))
                        .or_else(|| parent_name_of(path))
                        .unwrap_or_default(),
                    id: p
                        .non_empty("Id")
                        .or_else(|| type_id_of(path))
                        .unwrap_or_default(),
                    name: p.non_empty("Name"),
                    description: p.string("Description"),
                    device_api: p.string("DeviceApi"),
                    available_instances: p.u32("AvailableInstances"),
                    devices: p
                        .paths("Devices")
                        .iter()
                        .filter_map(|d| uuid_of(d))
                        .collect(),
                    path: path.clone(),
                });
            }
            if let Some(props) = ifaces.get(DEVICE_IFACE) {
                let mut device = DeviceInfo::from_props(path, props);
                if let Some(name) = parent_names.get(Props(Some(props)).string("Parent").as_str()) {
                    device.parent = Some(name.clone());
                }
                snap.devices.push(device);
            }
        }
        snap.parents.sort_by(|a, b| a.name.cmp(&b.name));
        for p in &mut snap.parents {
            p.types.sort();
        }
        snap.types
            .sort_by(|a, b| (&a.parent, &a.id).cmp(&(&b.parent, &b.id)));
        for t in &mut snap.types {
            t.devices.sort();
        }
        snap.devices
            .sort_by(|a, b| (&a.parent, &a.uuid).cmp(&(&b.parent, &b.uuid)));
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::{ObjectPath, Str};

    fn owned(v: Value<'static>) -> OwnedValue {
        v.try_to_owned().unwrap()
    }

    fn props(pairs: Vec<(&str, Value<'static>)>) -> PropMap {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), owned(v)))
            .collect()
    }

    const PARENT: &str = "/org/vgpud/parents/0000_3a20_3a00_2e0";
    const TYPE: &str = "/org/vgpud/parents/0000_3a20_3a00_2e0/types/nvidia_2d231";
    const DEVICE: &str = "/org/vgpud/devices/83b8f4f2_509f_382f_3c1e_e6bfe0fa1001";

    #[test]
    fn paths_give_back_their_ids() {
        assert_eq!(parent_name_of(PARENT).as_deref(), Some("0000:20:00.0"));
        assert_eq!(parent_name_of(TYPE).as_deref(), Some("0000:20:00.0"));
        assert_eq!(parent_name_of("/"), None);
        assert_eq!(type_id_of(TYPE).as_deref(), Some("nvidia-231"));
        assert_eq!(
            uuid_of(DEVICE).as_deref(),
            Some("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001")
        );
        assert_eq!(uuid_of("/elsewhere/devices/x"), None);
    }

    #[test]
    fn snapshot_builds_typed_rows() {
        let mut objects = HashMap::new();
        objects.insert(
            PARENT.to_owned(),
            HashMap::from([(
                PARENT_IFACE.to_owned(),
                props(vec![
                    ("Name", Value::Str(Str::from_static("0000:20:00.0"))),
                    ("VendorId", Value::U16(0x10de)),
                    ("NumaNode", Value::I32(-1)),
                    ("IommuGroup", Value::I32(7)),
                    (
                        "Types",
                        Value::from(vec![ObjectPath::from_static_str_unchecked(TYPE)]),
                    ),
                ]),
            )]),
        );
        objects.insert(
            TYPE.to_owned(),
            HashMap::from([(
                TYPE_IFACE.to_owned(),
                props(vec![
                    ("Id", Value::Str(Str::from_static("nvidia-231"))),
                    ("Name", Value::Str(Str::from_static(""))),
                    ("AvailableInstances", Value::U32(7)),
                    (
                        "Parent",
                        Value::ObjectPath(ObjectPath::from_static_str_unchecked(PARENT)),
                    ),
                ]),
            )]),
        );
        objects.insert(
            DEVICE.to_owned(),
            HashMap::from([(
                DEVICE_IFACE.to_owned(),
                props(vec![
                    ("Active", Value::Bool(true)),
                    ("Owner", Value::I64(-1)),
                    ("TypeId", Value::Str(Str::from_static("nvidia-231"))),
                    (
                        "Parent",
                        Value::ObjectPath(ObjectPath::from_static_str_unchecked(PARENT)),
                    ),
                    // A property of the wrong type reads as empty instead of failing.
                    ("InUse", Value::U32(1)),
                ]),
            )]),
        );
        let snap = Snapshot::from_objects(&objects);
        assert_eq!(snap.parents.len(), 1);
        assert_eq!(snap.parents[0].numa_node, None);
        assert_eq!(snap.parents[0].iommu_group, Some(7));
        assert_eq!(snap.parents[0].types, vec!["nvidia-231".to_owned()]);
        assert_eq!(snap.types[0].parent, "0000:20:00.0");
        assert_eq!(snap.types[0].name, None);
        assert_eq!(snap.types[0].available_instances, 7);
        let d = &snap.devices[0];
        assert_eq!(d.uuid, "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001");
        assert_eq!(d.parent.as_deref(), Some("0000:20:00.0"));
        assert!(d.active && !d.in_use);
        assert_eq!(d.owner, None);
    }
}
