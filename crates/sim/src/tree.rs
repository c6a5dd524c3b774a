//! Renders the simulated kernel as a sysfs tree: every path is resolved from the current state
//! on each call, so directory listings, attribute contents and relative symlinks are always
//! what the kernel would show at that moment.

use super::kernel::{Device, Kernel, Parent, Role};
use super::profile::VendorListFormat;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir(Vec<String>),
    /// `content` is None for write-only attributes (`create`, `remove`).
    File {
        mode: u16,
        content: Option<String>,
        target: Option<WriteTarget>,
    },
    Link(String),
    /// A read-only binary attribute whose size is its length (`config`).
    Blob(Vec<u8>),
}

/// What a write to a file means to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteTarget {
    Create { parent: String, type_id: String },
    Remove { uuid: String },
    Attribute { uuid: String, name: String },
    CurrentVgpu { vf: String },
    DriverBind { driver: String },
    DriverUnbind { driver: String },
    UEvent { devpath: String, subsystem: String },
}

fn ro(content: String) -> Node {
    Node::File {
        mode: 0o444,
        content: Some(content),
        target: None,
    }
}

fn wo(target: WriteTarget) -> Node {
    Node::File {
        mode: 0o200,
        content: None,
        target: Some(target),
    }
}

fn rw(content: String, target: WriteTarget) -> Node {
    Node::File {
        mode: 0o644,
        content: Some(content),
        target: Some(target),
    }
}

fn dir<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Node {
    let mut v: Vec<String> = items.into_iter().map(Into::into).collect();
    v.sort();
    v.dedup();
    Node::Dir(v)
}

/// `../` steps from directory `from` to `to` (both root-relative).
pub fn relative(from_dir: &str, to: &str) -> String {
    let f: Vec<&str> = from_dir.split('/').filter(|s| !s.is_empty()).collect();
    let t: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; f.len() - common];
    parts.extend(&t[common..]);
    parts.join("/")
}

fn link(from_dir: &str, to: &str) -> Node {
    Node::Link(relative(from_dir, to))
}

pub fn resolve(k: &Kernel, path: &str) -> Option<Node> {
    let comps: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match comps.as_slice() {
        [] => Some(dir(["bus", "class", "devices", "kernel"])),
        ["class"] => Some(dir(["mdev_bus"])),
        ["class", "mdev_bus"] => Some(dir(registered(k).map(|p| p.name.as_str()))),
        ["class", "mdev_bus", name] => {
            let p = registered(k).find(|p| p.name == *name)?;
            Some(link("class/mdev_bus", &p.devpath))
        }
        ["bus"] => Some(dir(["mdev", "pci"])),
        ["bus", "mdev"] => Some(dir(["devices", "drivers"])),
        ["bus", "mdev", "devices"] => Some(dir(k.devices.keys().map(String::as_str))),
        ["bus", "mdev", "devices", uuid] => {
            let d = k.devices.get(*uuid)?;
            Some(link("bus/mdev/devices", &device_dir(k, d)?))
        }
        ["bus", "mdev", "drivers"] => Some(dir(mdev_drivers(k))),
        ["bus", "mdev", "drivers", drv] => {
            mdev_drivers(k).into_iter().find(|d| d == drv)?;
            Some(dir(devices_bound_to(k, drv).map(|d| d.uuid.as_str())))
        }
        ["bus", "mdev", "drivers", drv, uuid] => {
            let d = devices_bound_to(k, drv).find(|d| d.uuid == *uuid)?;
            Some(link(&format!("bus/mdev/drivers/{drv}"), &device_dir(k, d)?))
        }
        ["bus", "pci"] => Some(dir(["devices", "drivers"])),
        ["bus", "pci", "devices"] => Some(dir(pci(k).map(|p| p.name.as_str()))),
        ["bus", "pci", "devices", name] => {
            let p = pci(k).find(|p| p.name == *name)?;
            Some(link("bus/pci/devices", &p.devpath))
        }
        ["bus", "pci", "drivers"] => Some(dir(pci_drivers(k))),
        ["bus", "pci", "drivers", drv] => {
            pci_drivers(k).into_iter().find(|d| d == drv)?;
            let bound = pci(k)
                .filter(|p| p.driver.as_deref() == Some(drv))
                .map(|p| p.name.clone());
            Some(dir(bound.chain(["bind".to_owned(), "unbind".to_owned()])))
        }
        ["bus", "pci", "drivers", drv, "bind"] => Some(wo(WriteTarget::DriverBind {
            driver: (*drv).to_owned(),
        })),
        ["bus", "pci", "drivers", drv, "unbind"] => Some(wo(WriteTarget::DriverUnbind {
            driver: (*drv).to_owned(),
        })),
        ["bus", "pci", "drivers", drv, name] => {
            let p = pci(k).find(|p| p.name == *name && p.driver.as_deref() == Some(drv))?;
            Some(link(&format!("bus/pci/drivers/{drv}"), &p.devpath))
        }
        ["kernel"] => Some(dir(["iommu_groups"])),
        ["kernel", "iommu_groups"] => Some(dir(groups(k).into_iter().map(|(g, _)| g.to_string()))),
        ["kernel", "iommu_groups", g] => {
            groups(k).into_iter().find(|(n, _)| n.to_string() == *g)?;
            Some(dir(["devices", "reserved_regions", "type"]))
        }
        ["kernel", "iommu_groups", g, "type"] => {
            groups(k).into_iter().find(|(n, _)| n.to_string() == *g)?;
            Some(ro("DMA\n".into()))
        }
        ["kernel", "iommu_groups", g, "reserved_regions"] => {
            groups(k).into_iter().find(|(n, _)| n.to_string() == *g)?;
            Some(ro(String::new()))
        }
        ["kernel", "iommu_groups", g, "devices"] => {
            let (_, member) = groups(k).into_iter().find(|(n, _)| n.to_string() == *g)?;
            Some(dir([member.rsplit('/').next().unwrap_or("").to_owned()]))
        }
        ["kernel", "iommu_groups", g, "devices", name] => {
            let (_, member) = groups(k).into_iter().find(|(n, _)| n.to_string() == *g)?;
            (member.rsplit('/').next() == Some(*name)).then_some(())?;
            Some(link(&format!("kernel/iommu_groups/{g}/devices"), &member))
        }
        ["devices", ..] => resolve_devices(k, &comps),
        _ => None,
    }
}

fn registered(k: &Kernel) -> impl Iterator<Item = &Parent> {
    k.parents.values().filter(|p| p.registered())
}

fn pci(k: &Kernel) -> impl Iterator<Item = &Parent> {
    k.parents.values().filter(|p| p.pci.is_some())
}

fn mdev_drivers(k: &Kernel) -> Vec<String> {
    let mut v: Vec<String> = registered(k).map(|p| p.mdev_driver().to_owned()).collect();
    v.sort();
    v.dedup();
    v
}

fn pci_drivers(k: &Kernel) -> Vec<String> {
    let mut v: Vec<String> = pci(k).filter_map(|p| p.default_driver.clone()).collect();
    v.sort();
    v.dedup();
    v
}

fn devices_bound_to<'a>(k: &'a Kernel, drv: &'a str) -> impl Iterator<Item = &'a Device> {
    k.devices.values().filter(move |d| {
        !d.removing
            && k.parents
                .get(&d.parent)
                .is_some_and(|p| p.mdev_driver() == drv)
    })
}

pub fn device_dir(k: &Kernel, d: &Device) -> Option<String> {
    Some(format!("{}/{}", k.parents.get(&d.parent)?.devpath, d.uuid))
}

/// Every IOMMU group with its one member's canonical directory.
fn groups(k: &Kernel) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = k
        .parents
        .values()
        .filter_map(|p| Some((p.iommu_group?, p.devpath.clone())))
        .chain(
            k.devices
                .values()
                .filter_map(|d| Some((d.iommu_group, device_dir(k, d)?))),
        )
        .collect();
    v.sort();
    v
}

fn resolve_devices(k: &Kernel, comps: &[&str]) -> Option<Node> {
    let joined = comps.join("/");
    if let Some(children) = k.containers.get(&joined) {
        return Some(dir(children.iter().map(String::as_str)));
    }
    // The parent whose canonical directory is a prefix of the path.
    for split in (2..=comps.len()).rev() {
        let prefix = comps[..split].join("/");
        let name = comps[split - 1];
        if let Some(p) = k.parents.get(name).filter(|p| p.devpath == prefix) {
            return resolve_in_parent(k, p, &comps[split..]);
        }
    }
    None
}

fn hex(v: u32, width: usize) -> String {
    format!("0x{v:0width$x}\n")
}

fn resolve_in_parent(k: &Kernel, p: &Parent, rest: &[&str]) -> Option<Node> {
    let here = p.devpath.as_str();
    let pci = p.pci.as_ref();
    let vendor_files = p.role == Role::VendorVf && p.driver.is_some();
    match rest {
        [] => {
            let mut items: Vec<String> = vec!["uevent".into(), "subsystem".into(), "power".into()];
            if let Some(pci) = pci {
                items.extend(
                    [
                        "vendor",
                        "device",
                        "class",
                        "subsystem_vendor",
                        "subsystem_device",
                        "numa_node",
                        "iommu_group",
                        "config",
                        "resource",
                        "irq",
                    ]
                    .map(String::from),
                );
                if pci.physfn.is_some() {
                    items.push("physfn".into());
                } else if !pci.virtfns.is_empty() {
                    items.extend(["sriov_numvfs".into(), "sriov_totalvfs".into()]);
                    items.extend((0..pci.virtfns.len()).map(|i| format!("virtfn{i}")));
                }
                if p.driver.is_some() {
                    items.push("driver".into());
                }
            }
            if p.registered() {
                items.push("mdev_supported_types".into());
            }
            if vendor_files {
                items.push("nvidia".into());
            }
            items.extend(
                k.devices
                    .values()
                    .filter(|d| d.parent == p.name)
                    .map(|d| d.uuid.clone()),
            );
            Some(dir(items))
        }
        ["power"] => Some(power_dir()),
        ["power", file] => power_file(file),
        ["uevent"] => {
            let mut s = String::new();
            // A sample driver's parent is a class device with no driver of its own.
            if let (Some(d), Some(_)) = (&p.driver, pci) {
                s.push_str(&format!("DRIVER={d}\n"));
            }
            if let Some(pci) = pci {
                s.push_str(&format!(
                    "PCI_CLASS={:X}\nPCI_ID={:04X}:{:04X}\nPCI_SUBSYS_ID={:04X}:{:04X}\nPCI_SLOT_NAME={}\n",
                    pci.class, pci.vendor, pci.device, pci.subsystem_vendor, pci.subsystem_device, p.name
                ));
            }
            Some(rw(
                s,
                WriteTarget::UEvent {
                    devpath: p.devpath.clone(),
                    subsystem: p.subsystem.clone(),
                },
            ))
        }
        ["subsystem"] => Some(link(
            here,
            &if pci.is_some() {
                "bus/pci".to_owned()
            } else {
                format!("class/{}", p.subsystem)
            },
        )),
        ["vendor"] => Some(ro(hex(u32::from(pci?.vendor), 4))),
        ["device"] => Some(ro(hex(u32::from(pci?.device), 4))),
        ["class"] => Some(ro(hex(pci?.class, 6))),
        ["subsystem_vendor"] => Some(ro(hex(u32::from(pci?.subsystem_vendor), 4))),
        ["subsystem_device"] => Some(ro(hex(u32::from(pci?.subsystem_device), 4))),
        ["numa_node"] => pci.map(|_| ro(format!("{}\n", p.numa_node))),
        ["config"] => {
            let pf = pci?.physfn.as_ref().and_then(|n| k.parents.get(n));
            Some(Node::Blob(super::pci_config::config(pf, p, pci?)))
        }
        ["resource"] => {
            let pf = pci?.physfn.as_ref().and_then(|n| k.parents.get(n));
            Some(ro(super::pci_config::resource(pf, p)))
        }
        // A VF has no INTx; a PF's line is the one in its config space.
        ["irq"] => Some(ro(format!(
            "{}\n",
            if pci?.physfn.is_some() { 0 } else { 11 }
        ))),
        ["iommu_group"] => Some(link(
            here,
            &format!("kernel/iommu_groups/{}", p.iommu_group?),
        )),
        ["driver"] => {
            pci?;
            Some(link(
                here,
                &format!("bus/pci/drivers/{}", p.driver.as_ref()?),
            ))
        }
        ["physfn"] => {
            let pf = k.parents.get(pci?.physfn.as_ref()?)?;
            Some(link(here, &pf.devpath))
        }
        ["sriov_totalvfs"] if pci.is_some_and(|x| !x.virtfns.is_empty()) => {
            Some(ro(format!("{}\n", pci?.virtfns.len())))
        }
        ["sriov_numvfs"] if pci.is_some_and(|x| !x.virtfns.is_empty()) => {
            Some(ro(format!("{}\n", pci?.virtfns.len())))
        }
        [vf] if vf.starts_with("virtfn") => {
            let i: usize = vf["virtfn".len()..].parse().ok()?;
            let vf = k.parents.get(pci?.virtfns.get(i)?)?;
            Some(link(here, &vf.devpath))
        }
        ["nvidia"] if vendor_files => Some(dir([
            "creatable_vgpu_types",
            "current_vgpu_type",
            "supported_vgpu_types",
        ])),
        ["nvidia", "creatable_vgpu_types"] if vendor_files => Some(ro(vendor_list(
            p,
            k.creatable(p)
                .into_iter()
                .map(|t| (t.id.as_str(), t.name.as_deref())),
        ))),
        ["nvidia", "supported_vgpu_types"] if vendor_files => Some(ro(vendor_list(
            p,
            p.types().iter().map(|t| (t.id.as_str(), t.name.as_deref())),
        ))),
        ["nvidia", "current_vgpu_type"] if vendor_files => Some(rw(
            format!("{}\n", p.current_vgpu),
            WriteTarget::CurrentVgpu { vf: p.name.clone() },
        )),
        ["mdev_supported_types"] if p.registered() => {
            Some(dir(p.types().iter().map(|t| t.id.as_str())))
        }
        ["mdev_supported_types", t, more @ ..] if p.registered() => {
            let ty = p.types().iter().find(|x| x.id == *t)?;
            match more {
                [] => {
                    let mut items = vec!["available_instances", "create", "device_api", "devices"];
                    if ty.name.is_some() {
                        items.push("name");
                    }
                    if ty.description.is_some() {
                        items.push("description");
                    }
                    Some(dir(items))
                }
                ["available_instances"] => Some(ro(format!("{}\n", k.available(p, ty)))),
                ["device_api"] => Some(ro(format!("{}\n", ty.device_api))),
                ["name"] => Some(ro(format!("{}\n", ty.name.as_ref()?))),
                ["description"] => Some(ro(format!("{}\n", ty.description.as_ref()?))),
                ["create"] => Some(wo(WriteTarget::Create {
                    parent: p.name.clone(),
                    type_id: ty.id.clone(),
                })),
                ["devices"] => Some(dir(typed_devices(k, p, &ty.id).map(|d| d.uuid.as_str()))),
                ["devices", uuid] => {
                    typed_devices(k, p, &ty.id).find(|d| d.uuid == *uuid)?;
                    Some(link(
                        &format!("{here}/mdev_supported_types/{t}/devices"),
                        &format!("{here}/{uuid}"),
                    ))
                }
                _ => None,
            }
        }
        [uuid, more @ ..] => {
            let d = k.devices.get(*uuid).filter(|d| d.parent == p.name)?;
            resolve_in_device(p, d, more)
        }
    }
}

/// Runtime power management of a device the kernel does not power-manage.
const POWER_FILES: [(&str, u16, &str); 9] = [
    ("async", 0o644, "disabled"),
    ("autosuspend_delay_ms", 0o644, "0"),
    ("control", 0o644, "auto"),
    ("runtime_active_kids", 0o444, "0"),
    ("runtime_active_time", 0o444, "0"),
    ("runtime_enabled", 0o444, "disabled"),
    ("runtime_status", 0o444, "unsupported"),
    ("runtime_suspended_time", 0o444, "0"),
    ("runtime_usage", 0o444, "0"),
];

fn power_dir() -> Node {
    dir(POWER_FILES.map(|(name, _, _)| name))
}

fn power_file(name: &str) -> Option<Node> {
    let (_, mode, value) = POWER_FILES.iter().find(|(n, _, _)| *n == name)?;
    Some(Node::File {
        mode: *mode,
        content: Some(format!("{value}\n")),
        target: None,
    })
}

fn typed_devices<'a>(
    k: &'a Kernel,
    p: &'a Parent,
    type_id: &'a str,
) -> impl Iterator<Item = &'a Device> {
    k.devices
        .values()
        .filter(move |d| d.parent == p.name && d.type_id == type_id && d.linked)
}

fn vendor_list<'a>(p: &Parent, types: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> String {
    let mut s = String::new();
    if p.template.vendor_format == VendorListFormat::IdName {
        s.push_str("ID    : vGPU Name\n");
    }
    for (id, name) in types {
        let name = name.unwrap_or(id);
        match p.template.vendor_format {
            VendorListFormat::IdName => s.push_str(&format!("{id:<6}: {name}\n")),
            VendorListFormat::NameId => s.push_str(&format!("{name}  {id}\n")),
        }
    }
    s
}

fn resolve_in_device(p: &Parent, d: &Device, rest: &[&str]) -> Option<Node> {
    let here = format!("{}/{}", p.devpath, d.uuid);
    let vfio_dev = format!("vfio{}", d.vfio_index);
    let attr_dirs: Vec<&str> = d
        .attributes
        .keys()
        .chain(p.template.device_files.keys())
        .filter_map(|a| a.split_once('/').map(|(x, _)| x))
        .collect();
    match rest {
        [] => {
            let mut items = vec![
                "driver",
                "iommu_group",
                "subsystem",
                "uevent",
                "power",
                "vfio-dev",
            ];
            if d.linked {
                items.push("mdev_type");
            }
            if !d.removing {
                items.push("remove");
            }
            items.extend(
                d.attributes
                    .keys()
                    .chain(p.template.device_files.keys())
                    .map(|a| a.split('/').next().unwrap_or(a)),
            );
            Some(dir(items))
        }
        ["power"] => Some(power_dir()),
        ["power", file] => power_file(file),
        ["vfio-dev"] => Some(dir([vfio_dev.as_str()])),
        ["vfio-dev", name] if *name == vfio_dev => {
            Some(dir(["device", "power", "subsystem", "uevent"]))
        }
        ["vfio-dev", name, "device"] if *name == vfio_dev => {
            Some(Node::Link(format!("../../../{}", d.uuid)))
        }
        ["vfio-dev", name, "subsystem"] if *name == vfio_dev => Some(link(
            &format!("{here}/vfio-dev/{vfio_dev}"),
            "class/vfio-dev",
        )),
        ["vfio-dev", name, "uevent"] if *name == vfio_dev => Some(rw(
            String::new(),
            WriteTarget::UEvent {
                devpath: format!("{here}/vfio-dev/{vfio_dev}"),
                subsystem: "vfio-dev".into(),
            },
        )),
        ["vfio-dev", name, "power"] if *name == vfio_dev => Some(power_dir()),
        ["vfio-dev", name, "power", file] if *name == vfio_dev => power_file(file),
        ["mdev_type"] if d.linked => Some(link(
            &here,
            &format!("{}/mdev_supported_types/{}", p.devpath, d.type_id),
        )),
        ["remove"] if !d.removing => Some(wo(WriteTarget::Remove {
            uuid: d.uuid.clone(),
        })),
        ["iommu_group"] => Some(link(
            &here,
            &format!("kernel/iommu_groups/{}", d.iommu_group),
        )),
        ["driver"] => Some(link(
            &here,
            &format!("bus/mdev/drivers/{}", p.mdev_driver()),
        )),
        ["subsystem"] => Some(link(&here, "bus/mdev")),
        ["uevent"] => Some(rw(
            format!("DRIVER={}\n", p.mdev_driver()),
            WriteTarget::UEvent {
                devpath: here.clone(),
                subsystem: "mdev".into(),
            },
        )),
        [sub] if attr_dirs.contains(sub) => Some(dir(d
            .attributes
            .keys()
            .chain(p.template.device_files.keys())
            .filter_map(|a| a.split_once('/').filter(|(x, _)| x == sub).map(|(_, n)| n)))),
        _ => {
            let name = rest.join("/");
            if let Some(text) = p.template.device_files.get(&name) {
                return Some(ro(format!("{}\n", text.replace("{uuid}", &d.uuid))));
            }
            let value = d.attributes.get(&name)?;
            Some(rw(
                format!("{value}\n"),
                WriteTarget::Attribute {
                    uuid: d.uuid.clone(),
                    name,
                },
            ))
        }
    }
}

/// Resolves symlinks in a root-relative path (as the VFS would), for matching injections.
pub fn canonicalize(k: &Kernel, path: &str) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                out.pop();
                continue;
            }
            _ => {}
        }
        out.push(c);
        if let Some(Node::Link(target)) = resolve(k, &out.join("/")) {
            hops += 1;
            if hops > 40 {
                return None;
            }
            out.pop();
            pending.extend(
                target
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .rev()
                    .map(String::from),
            );
        }
    }
    let joined = out.join("/");
    resolve(k, &joined).map(|_| joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links_climb_to_the_common_ancestor() {
        assert_eq!(
            relative("class/mdev_bus", "devices/virtual/mtty/mtty"),
            "../../devices/virtual/mtty/mtty"
        );
        assert_eq!(
            relative(
                "devices/pci0000:3b/0000:3b:00.0/abc",
                "devices/pci0000:3b/0000:3b:00.0/mdev_supported_types/t"
            ),
            "../mdev_supported_types/t"
        );
        assert_eq!(
            relative("bus/mdev/devices", "devices/x/y"),
            "../../../devices/x/y"
        );
    }
}
