//! The consistency checker: what vgpud publishes on D-Bus against what the sysfs tree says,
//! read independently of vgpud's own backend (plain directory walks and readlinks).
//!
//! Compared: the set of mdev parents, every type's `available_instances`, and the set of live
//! devices with their parent and type. vgpud follows the tree through uevents, so the check
//! waits for the two pictures to agree for a bounded time and reports the differences left.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use vgpud_api::names::{DEVICE_IFACE, PARENT_IFACE, TYPE_IFACE};

/// Parents with their types' availability, and live devices, as one side sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Picture {
    /// parent name -> type id -> available_instances.
    pub parents: BTreeMap<String, BTreeMap<String, u32>>,
    /// device UUID -> (parent name, type id; empty while the kernel has not linked it).
    pub devices: BTreeMap<String, (String, String)>,
}

fn last_component(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The picture of the tree under `sys` (mdev parents only: the NVIDIA vendor-sysfs model has
/// no `mdev_bus` entry and is not checked here).
pub fn sysfs_picture(sys: &Path) -> io::Result<Picture> {
    let mut pic = Picture::default();
    for entry in std::fs::read_dir(sys.join("class/mdev_bus"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let types_dir = sys
            .join("class/mdev_bus")
            .join(&name)
            .join("mdev_supported_types");
        let mut types = BTreeMap::new();
        let Ok(list) = std::fs::read_dir(&types_dir) else {
            continue; // unregistered while listed
        };
        for t in list {
            let id = t?.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(types_dir.join(&id).join("available_instances"));
            if let Ok(n) = text.map(|t| t.trim().parse::<u32>()) {
                types.insert(id, n.unwrap_or(u32::MAX));
            }
        }
        pic.parents.insert(name, types);
    }
    for entry in std::fs::read_dir(sys.join("bus/mdev/devices"))? {
        let entry = entry?;
        let uuid = entry.file_name().to_string_lossy().into_owned();
        let Ok(dir) = std::fs::canonicalize(entry.path()) else {
            continue; // removed while listed
        };
        let parent = dir.parent().map(last_component).unwrap_or_default();
        let type_id = std::fs::read_link(dir.join("mdev_type"))
            .map(|t| last_component(&t))
            .unwrap_or_default();
        pic.devices.insert(uuid, (parent, type_id));
    }
    Ok(pic)
}

type Interfaces = HashMap<String, HashMap<String, OwnedValue>>;

fn string_prop(ifaces: &Interfaces, iface: &str, prop: &str) -> Option<String> {
    let v = ifaces.get(iface)?.get(prop)?;
    String::try_from(v.try_clone().ok()?).ok()
}

fn path_prop(ifaces: &Interfaces, iface: &str, prop: &str) -> Option<String> {
    let v = ifaces.get(iface)?.get(prop)?;
    OwnedObjectPath::try_from(v.try_clone().ok()?)
        .ok()
        .map(|p| p.as_str().to_owned())
}

fn bool_prop(ifaces: &Interfaces, iface: &str, prop: &str) -> Option<bool> {
    bool::try_from(ifaces.get(iface)?.get(prop)?).ok()
}

fn u32_prop(ifaces: &Interfaces, iface: &str, prop: &str) -> Option<u32> {
    u32::try_from(ifaces.get(iface)?.get(prop)?).ok()
}

/// vgpud's whole tree, in one GetManagedObjects call.
pub async fn managed_objects(conn: &zbus::Connection) -> Result<zbus::fdo::ManagedObjects, String> {
    object_manager(conn)
        .await?
        .get_managed_objects()
        .await
        .map_err(|e| format!("GetManagedObjects: {e}"))
}

/// vgpud's ObjectManager at its root.
pub async fn object_manager(
    conn: &zbus::Connection,
) -> Result<zbus::fdo::ObjectManagerProxy<'static>, String> {
    zbus::fdo::ObjectManagerProxy::builder(conn)
        .destination(vgpud_api::names::BUS_NAME)
        .and_then(|b| b.path(vgpud_api::names::ROOT_PATH))
        .map_err(|e| e.to_string())?
        .build()
        .await
        .map_err(|e| e.to_string())
}

/// Interfaces keyed by plain strings (file descriptors are never among vgpud's properties).
fn by_name(
    ifaces: &HashMap<zbus::names::OwnedInterfaceName, HashMap<String, OwnedValue>>,
) -> Interfaces {
    ifaces
        .iter()
        .map(|(k, v)| {
            let props = v
                .iter()
                .filter_map(|(p, x)| Some((p.clone(), x.try_clone().ok()?)))
                .collect();
            (k.to_string(), props)
        })
        .collect()
}

/// The picture vgpud publishes (one GetManagedObjects call). Parents of the vendor-sysfs
/// backend are left out, as in [`sysfs_picture`].
pub async fn dbus_picture(conn: &zbus::Connection) -> Result<Picture, String> {
    let objects = managed_objects(conn).await?;
    let mut pic = Picture::default();
    let mut parent_names: HashMap<String, String> = HashMap::new();
    for (path, ifaces) in &objects {
        let ifaces = by_name(ifaces);
        if let Some(name) = string_prop(&ifaces, PARENT_IFACE, "Name") {
            if string_prop(&ifaces, PARENT_IFACE, "Backend").as_deref() == Some("mdev") {
                pic.parents.entry(name.clone()).or_default();
            }
            parent_names.insert(path.as_str().to_owned(), name);
        }
    }
    for ifaces in objects.values() {
        let ifaces = by_name(ifaces);
        if let (Some(id), Some(parent), Some(n)) = (
            string_prop(&ifaces, TYPE_IFACE, "Id"),
            path_prop(&ifaces, TYPE_IFACE, "Parent"),
            u32_prop(&ifaces, TYPE_IFACE, "AvailableInstances"),
        ) {
            if let Some(types) = parent_names
                .get(&parent)
                .and_then(|p| pic.parents.get_mut(p))
            {
                types.insert(id, n);
            }
        }
        if let (Some(uuid), Some(true)) = (
            string_prop(&ifaces, DEVICE_IFACE, "Uuid"),
            bool_prop(&ifaces, DEVICE_IFACE, "Active"),
        ) {
            let parent = path_prop(&ifaces, DEVICE_IFACE, "Parent")
                .and_then(|p| parent_names.get(&p).cloned())
                .unwrap_or_default();
            let type_id = string_prop(&ifaces, DEVICE_IFACE, "TypeId").unwrap_or_default();
            pic.devices.insert(uuid, (parent, type_id));
        }
    }
    Ok(pic)
}

/// Every published type as (parent name, type id, human name or the id when it has none).
pub async fn dbus_type_names(
    conn: &zbus::Connection,
) -> Result<Vec<(String, String, String)>, String> {
    let objects = managed_objects(conn).await?;
    let mut parent_names: HashMap<String, String> = HashMap::new();
    for (path, ifaces) in &objects {
        if let Some(name) = string_prop(&by_name(ifaces), PARENT_IFACE, "Name") {
            parent_names.insert(path.as_str().to_owned(), name);
        }
    }
    let mut out = Vec::new();
    for ifaces in objects.values() {
        let ifaces = by_name(ifaces);
        if let (Some(id), Some(parent)) = (
            string_prop(&ifaces, TYPE_IFACE, "Id"),
            path_prop(&ifaces, TYPE_IFACE, "Parent").and_then(|p| parent_names.get(&p).cloned()),
        ) {
            let name = string_prop(&ifaces, TYPE_IFACE, "Name")
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| id.clone());
            out.push((parent, id, name));
        }
    }
    out.sort();
    Ok(out)
}

/// Every difference between the tree and what is published, in words.
pub fn differences(sysfs: &Picture, dbus: &Picture) -> Vec<String> {
    let mut out = Vec::new();
    for (name, types) in &sysfs.parents {
        match dbus.parents.get(name) {
            None => out.push(format!("parent {name} is in sysfs but not on D-Bus")),
            Some(published) => {
                for (id, n) in types {
                    match published.get(id) {
                        None => out.push(format!("type {name}/{id} is in sysfs but not on D-Bus")),
                        Some(m) if m != n => out.push(format!(
                            "type {name}/{id}: available_instances {n} in sysfs, {m} on D-Bus"
                        )),
                        Some(_) => {}
                    }
                }
                for id in published.keys().filter(|id| !types.contains_key(*id)) {
                    out.push(format!("type {name}/{id} is on D-Bus but not in sysfs"));
                }
            }
        }
    }
    for name in dbus
        .parents
        .keys()
        .filter(|n| !sysfs.parents.contains_key(*n))
    {
        out.push(format!("parent {name} is on D-Bus but not in sysfs"));
    }
    for (uuid, (parent, type_id)) in &sysfs.devices {
        match dbus.devices.get(uuid) {
            None => out.push(format!("device {uuid} is in sysfs but not active on D-Bus")),
            Some(published) if published != &(parent.clone(), type_id.clone()) => {
                out.push(format!(
                    "device {uuid}: {parent}/{type_id} in sysfs, {}/{} on D-Bus",
                    published.0, published.1
                ))
            }
            Some(_) => {}
        }
    }
    for uuid in dbus
        .devices
        .keys()
        .filter(|u| !sysfs.devices.contains_key(*u))
    {
        out.push(format!("device {uuid} is active on D-Bus but not in sysfs"));
    }
    out
}

/// Waits up to `within` for the two pictures to agree; the differences left otherwise.
pub async fn settled(
    conn: &zbus::Connection,
    sys: &Path,
    within: Duration,
) -> Result<Picture, Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let seen = sysfs_picture(sys).map_err(|e| format!("reading {}: {e}", sys.display()));
        let published = dbus_picture(conn).await;
        let diff = match (&seen, &published) {
            (Ok(s), Ok(d)) => differences(s, d),
            (Err(e), _) | (_, Err(e)) => vec![e.clone()],
        };
        if diff.is_empty() {
            return Ok(seen.expect("read above"));
        }
        if Instant::now() >= deadline {
            return Err(diff);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pic(parents: &[(&str, &[(&str, u32)])], devices: &[(&str, &str, &str)]) -> Picture {
        Picture {
            parents: parents
                .iter()
                .map(|(p, ts)| {
                    (
                        p.to_string(),
                        ts.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
                    )
                })
                .collect(),
            devices: devices
                .iter()
                .map(|(u, p, t)| (u.to_string(), (p.to_string(), t.to_string())))
                .collect(),
        }
    }

    #[test]
    fn equal_pictures_have_no_differences() {
        let a = pic(&[("mtty", &[("mtty-1", 3)])], &[("u1", "mtty", "mtty-1")]);
        assert!(differences(&a, &a.clone()).is_empty());
    }

    #[test]
    fn every_kind_of_difference_is_named() {
        let sysfs = pic(
            &[("a", &[("t1", 2), ("t2", 1)]), ("b", &[])],
            &[("u1", "a", "t1"), ("u2", "a", "t1")],
        );
        let dbus = pic(
            &[("a", &[("t1", 3), ("t3", 1)]), ("c", &[])],
            &[("u1", "a", "t2"), ("u3", "a", "t1")],
        );
        let d = differences(&sysfs, &dbus).join("\n");
        for want in [
            "type a/t1: available_instances 2 in sysfs, 3 on D-Bus",
            "type a/t2 is in sysfs but not on D-Bus",
            "type a/t3 is on D-Bus but not in sysfs",
            "parent b is in sysfs but not on D-Bus",
            "parent c is on D-Bus but not in sysfs",
            "device u1: a/t1 in sysfs, a/t2 on D-Bus",
            "device u2 is in sysfs but not active on D-Bus",
            "device u3 is active on D-Bus but not in sysfs",
        ] {
            assert!(d.contains(want), "missing {want:?} in:\n{d}");
        }
    }

    #[test]
    fn sysfs_picture_reads_a_tree() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let types = sys.join("devices/virtual/mtty/mtty/mdev_supported_types/mtty-1");
        std::fs::create_dir_all(&types).unwrap();
        std::fs::write(types.join("available_instances"), "7\n").unwrap();
        std::fs::create_dir_all(sys.join("class/mdev_bus")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/virtual/mtty/mtty",
            sys.join("class/mdev_bus/mtty"),
        )
        .unwrap();
        let dev = sys.join("devices/virtual/mtty/mtty/u1");
        std::fs::create_dir_all(&dev).unwrap();
        std::os::unix::fs::symlink("../mdev_supported_types/mtty-1", dev.join("mdev_type"))
            .unwrap();
        std::fs::create_dir_all(sys.join("bus/mdev/devices")).unwrap();
        std::os::unix::fs::symlink(
            "../../../devices/virtual/mtty/mtty/u1",
            sys.join("bus/mdev/devices/u1"),
        )
        .unwrap();
        let p = sysfs_picture(sys).unwrap();
        assert_eq!(
            p,
            pic(&[("mtty", &[("mtty-1", 7)])], &[("u1", "mtty", "mtty-1")])
        );
    }
}
