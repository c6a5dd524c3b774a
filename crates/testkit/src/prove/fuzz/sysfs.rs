//! sysfs: the model's validators and NVIDIA's type lists on generated text, and both backends
//! over a generated sysfs tree with hostile names, attribute text and links. Whatever they
//! accept is a safe path component, and reading never changes a file, inside the tree or out.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;

use super::mutate::{mutate, Rng};
use super::{path_safe, Case};
use vgpud_api::names::{escape_path_element, parent_path, type_path, unescape_path_element};
use vgpud_daemon::backend::nvidia::parse_vgpu_types;
use vgpud_daemon::backend::sysfs::SysfsRoot;
use vgpud_daemon::backend::Host;
use vgpud_model::{is_pci_address, MdevUuid, ParentName, PciAddress, TypeId};

const NAMES: &[&str] = &[
    "0000:3b:00.0",
    "0000:c1:00.4",
    "10000:00:02.0",
    "mtty",
    "nvidia-231",
    "i915-GVTg_V5_4",
    "vfio_ap-passthrough",
    "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
    "83B8F4F2-509F-382F-3C1E-E6BFE0FA1001\n",
];

const TYPE_LISTS: &[&str] = &[
    "ID    : vGPU Name\n1414 : NVIDIA H200X-1-18C\n1415 : NVIDIA H200X-2-35C\n",
    "NVIDIA L40S-1Q  1147\nNVIDIA L40S-2Q  1148\n",
    "vGPU Name ID\nNVIDIA L40S-48Q 1160\n\n",
];

const TOKENS: &[&str] = &[
    ":",
    " : ",
    "  ",
    "\n",
    "ID",
    "Name",
    "0",
    "4294967296",
    "-1",
];

pub fn run_text(case: &mut Case) -> Result<(), String> {
    if case.rng().one_in(3) {
        let mut text = case.rng().pick(TYPE_LISTS).as_bytes().to_vec();
        mutate(case.rng(), &mut text, TOKENS);
        let text = String::from_utf8_lossy(&text).into_owned();
        case.show(&text);
        return check_type_list(&text);
    }
    let mut name = case.rng().pick(NAMES).as_bytes().to_vec();
    mutate(case.rng(), &mut name, NAMES);
    let name = String::from_utf8_lossy(&name).into_owned();
    case.show(&name);
    check_name(&name)
}

/// What the model accepts of `text` is a safe path component and prints back as read.
fn check_name(text: &str) -> Result<(), String> {
    if let Ok(p) = ParentName::new(text) {
        path_safe("parent name", p.as_str())?;
        object_path_round_trips(p.as_str())?;
        if parent_path(&p).as_str() == "/" {
            return Err(format!("parent {text:?} has no D-Bus object path"));
        }
    }
    if let Ok(t) = TypeId::new(text) {
        path_safe("type id", t.as_str())?;
        object_path_round_trips(t.as_str())?;
        let parent = ParentName::new("mtty").map_err(|e| e.to_string())?;
        if type_path(&parent, &t).as_str() == "/" {
            return Err(format!("type {text:?} has no D-Bus object path"));
        }
    }
    let _ = unescape_path_element(text);
    if let Ok(u) = MdevUuid::parse(text) {
        let shown = u.to_string();
        path_safe("UUID", &shown)?;
        if !shown.eq_ignore_ascii_case(text.strip_suffix('\n').unwrap_or(text)) {
            return Err(format!("UUID {text:?} prints as {shown}"));
        }
        if MdevUuid::parse(&shown).ok() != Some(u) {
            return Err(format!("UUID {shown} does not parse back"));
        }
    }
    match PciAddress::parse(text) {
        Ok(a) => {
            if a.to_string() != text {
                return Err(format!("PCI address {text:?} prints as {a}"));
            }
            path_safe("PCI address", ParentName::from(a).as_str())?;
            if !is_pci_address(text) {
                return Err(format!("{text:?} parses but is_pci_address says no"));
            }
        }
        Err(_) if is_pci_address(text) => {
            return Err(format!(
                "{text:?} does not parse but is_pci_address says yes"
            ))
        }
        Err(_) => {}
    }
    Ok(())
}

/// A name escaped into an object path element is made of [A-Za-z0-9_] and escapes back.
fn object_path_round_trips(name: &str) -> Result<(), String> {
    let element = escape_path_element(name);
    if !element
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("{name:?} escapes to {element:?}"));
    }
    if unescape_path_element(&element).as_deref() != Some(name) {
        return Err(format!(
            "{name:?} escapes to {element:?}, which does not escape back"
        ));
    }
    Ok(())
}

fn check_type_list(text: &str) -> Result<(), String> {
    let entries = parse_vgpu_types(text, Path::new("creatable_vgpu_types"));
    for (i, e) in entries.iter().enumerate() {
        if e.id == 0 || e.name.is_empty() || e.name.trim() != e.name || e.name.contains('\n') {
            return Err(format!("a malformed entry was accepted: {e:?}"));
        }
        if entries[..i].iter().any(|known| known.id == e.id) {
            return Err(format!("id {} is listed twice", e.id));
        }
        let id = TypeId::new(format!("nvidia-{}", e.id)).map_err(|e| e.to_string())?;
        path_safe("type id", id.as_str())?;
    }
    Ok(())
}

// ---- a generated sysfs tree ------------------------------------------------------------------

/// Draws for one tree: how often a value is hostile rather than plausible (one in `spite`),
/// so that some trees are mostly readable and the backends get past their first check.
struct Draw<'r> {
    rng: &'r mut Rng,
    spite: usize,
}

impl Draw<'_> {
    fn hostile(&mut self) -> bool {
        self.rng.one_in(self.spite)
    }
}

/// Attribute text: a plausible value, or hostile text, or no file at all.
fn attr_text(d: &mut Draw, plausible: &[&str]) -> Option<Vec<u8>> {
    if !d.hostile() {
        return Some(d.rng.pick(plausible).as_bytes().to_vec());
    }
    let rng = &mut *d.rng;
    match rng.below(5) {
        0 => None,
        1 => Some(rng.hostile()),
        2 => Some(vec![b'7'; 64 * 1024 + rng.below(2)]),
        3 => Some(rng.edgy_i64().to_string().into_bytes()),
        _ => {
            let mut text = rng.pick(plausible).as_bytes().to_vec();
            mutate(rng, &mut text, TOKENS);
            // Just past the 64 KiB a read accepts is enough; megabytes only slow the run.
            text.truncate(64 * 1024 + 16);
            Some(text)
        }
    }
}

fn write(dir: &Path, name: &str, text: Option<Vec<u8>>) {
    if let Some(text) = text {
        if fs::create_dir_all(dir).is_ok() {
            let _ = fs::write(dir.join(name), text);
        }
    }
}

/// A name for a directory entry: plausible or hostile, but one the file system can hold.
fn entry(d: &mut Draw, plausible: &[&str]) -> Vec<u8> {
    let hostile = d.hostile();
    let rng = &mut *d.rng;
    let mut name = rng.pick(plausible).as_bytes().to_vec();
    if hostile {
        let token = rng.hostile();
        let at = rng.below(name.len() + 1);
        name.splice(at..at, token);
    }
    if hostile && rng.one_in(8) {
        name = name.repeat(1 + rng.below(40));
    }
    name.retain(|b| *b != b'/' && *b != 0);
    name.truncate(255);
    if name.is_empty() || name == b"." || name == b".." {
        name = b"x".to_vec();
    }
    name
}

/// A link target: where the kernel would point, or somewhere it must not lead.
fn link_target(d: &mut Draw, proper: &str) -> String {
    if !d.hostile() {
        return proper.to_owned();
    }
    match d.rng.below(4) {
        0 => "../../../../../../outside".to_owned(),
        1 => "/etc".to_owned(),
        2 => "nowhere".to_owned(),
        _ => format!("{proper}/../../../../../../../outside"),
    }
}

/// Lays out parents (generic mdev and NVIDIA vendor VFs), types and devices under `sys`, with
/// links as the kernel makes them (relative), each value hostile once in a while.
fn tree(rng: &mut Rng, sys: &Path) -> Vec<String> {
    let spite = *rng.pick(&[1000, 30, 8, 2]);
    let mut made = vec![format!("one in {spite} hostile:")];
    let d = &mut Draw { rng, spite };
    for dir in [
        "class/mdev_bus",
        "bus/mdev/devices",
        "bus/pci/devices",
        "kernel/iommu_groups/7",
    ] {
        let _ = fs::create_dir_all(sys.join(dir));
    }
    for _ in 0..1 + d.rng.size(3) {
        let name = entry(d, &["0000:3b:00.0", "mtty", "0000:c1:00.4"]);
        let name_text = String::from_utf8_lossy(&name).into_owned();
        made.push(super::escape(&name));
        let dev = sys
            .join("devices/pci0000:3a")
            .join(OsStr::from_bytes(&name));
        let _ = fs::create_dir_all(&dev);
        write(&dev, "vendor", attr_text(d, &["0x10de\n", "10de"]));
        write(&dev, "device", attr_text(d, &["0x1eb8\n"]));
        write(&dev, "class", attr_text(d, &["0x030200\n"]));
        write(&dev, "numa_node", attr_text(d, &["-1\n", "1\n"]));
        link(
            d,
            &dev.join("iommu_group"),
            "../../../kernel/iommu_groups/7",
        );
        link(d, &dev.join("driver"), "../../../bus/pci/drivers/nvidia");
        if d.rng.one_in(3) {
            link(d, &dev.join("virtfn0"), "../0000:3b:00.0");
        }
        let in_devices = format!("devices/pci0000:3a/{name_text}");
        link(
            d,
            &sys.join("class/mdev_bus").join(OsStr::from_bytes(&name)),
            &format!("../../{in_devices}"),
        );
        if d.rng.one_in(2) {
            let pci = sys.join("bus/pci/devices").join(OsStr::from_bytes(&name));
            link(d, &pci, &format!("../../../{in_devices}"));
            let vendor = dev.join("nvidia");
            write(&vendor, "creatable_vgpu_types", attr_text(d, TYPE_LISTS));
            write(&vendor, "supported_vgpu_types", attr_text(d, TYPE_LISTS));
            write(
                &vendor,
                "current_vgpu_type",
                attr_text(d, &["0\n", "1147\n"]),
            );
        }
        for _ in 0..d.rng.size(4) {
            let id = entry(d, &["nvidia-231", "mtty-1", "i915-GVTg_V5_4"]);
            made.push(format!("type {}", super::escape(&id)));
            let t = dev
                .join("mdev_supported_types")
                .join(OsStr::from_bytes(&id));
            let _ = fs::create_dir_all(&t);
            write(&t, "available_instances", attr_text(d, &["8\n", "0\n"]));
            write(&t, "device_api", attr_text(d, &["vfio-pci\n", "vfio-ccw"]));
            write(&t, "name", attr_text(d, &["GRID T4-2Q\n"]));
            write(
                &t,
                "description",
                attr_text(d, &["num_heads=4, framebuffer=2048M\n"]),
            );
            writable(d, &t.join("create"));
        }
        for _ in 0..d.rng.size(3) {
            let uuid = entry(d, &["83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", U2]);
            made.push(format!("device {}", super::escape(&uuid)));
            let device = dev.join(OsStr::from_bytes(&uuid));
            let _ = fs::create_dir_all(&device);
            let ty = String::from_utf8_lossy(&entry(d, &["nvidia-231", "mtty-1"])).into_owned();
            link(
                d,
                &device.join("mdev_type"),
                &format!("../mdev_supported_types/{ty}"),
            );
            link(
                d,
                &device.join("iommu_group"),
                "../../../../kernel/iommu_groups/7",
            );
            writable(d, &device.join("remove"));
            writable(d, &device.join("vgpu_params"));
            let uuid_text = String::from_utf8_lossy(&uuid);
            link(
                d,
                &sys.join("bus/mdev/devices").join(OsStr::from_bytes(&uuid)),
                &format!("../../../{in_devices}/{uuid_text}"),
            );
        }
    }
    made
}

const U2: &str = "0b2d8a04-6c5c-4f5e-9b1a-3d2f1e0c9a77";

/// A file the backends write (`create`, `remove`, an attribute): empty, or a link out of the
/// root that a write must refuse to follow.
fn writable(d: &mut Draw, at: &Path) {
    if !d.hostile() {
        let _ = fs::write(at, "");
    } else if d.rng.one_in(2) {
        let depth = at.components().count();
        let _ = symlink(format!("{}outside/vendor", "../".repeat(depth)), at);
    } else {
        let _ = symlink("/dev/null", at);
    }
}

fn link(d: &mut Draw, at: &Path, proper: &str) {
    let _ = symlink(link_target(d, proper), at);
}

pub fn run_tree(case: &mut Case) -> Result<(), String> {
    let tmp = super::scratch_dir()?;
    let sys = tmp.path().join("sys");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).map_err(|e| e.to_string())?;
    fs::write(outside.join("vendor"), "0x10de\n").map_err(|e| e.to_string())?;
    let made = tree(case.rng(), &sys);
    case.show_part("tree", made.join(" "));
    let before = super::store::snapshot(tmp.path());
    let root = SysfsRoot::new(&sys).map_err(|e| e.to_string())?;
    let host = Host::new(root.clone());
    check_host(&host, &root)?;
    if let Some(changed) = super::store::first_change(&before, &super::store::snapshot(tmp.path()))
    {
        return Err(format!("reading sysfs changed {changed}"));
    }
    let outside_before = super::store::snapshot(&outside);
    let name = attribute_name(case.rng());
    case.show_part("attribute", &name);
    write_through(case.rng(), &host, &name);
    let outside_after = super::store::snapshot(&outside);
    if let Some(changed) = super::store::first_change(&outside_before, &outside_after) {
        return Err(format!("a write under the sysfs root changed {changed}"));
    }
    Ok(())
}

/// An attribute name as a definition could carry it: plausible, a kernel file, or a path trick.
fn attribute_name(rng: &mut Rng) -> String {
    let mut name = (*rng.pick(&[
        "vgpu_params",
        "remove",
        "mdev_type/create",
        "iommu_group/x",
        "../remove",
        "./vgpu_params",
        "x/../../remove",
        "vendor/assign_adapter",
        "/etc/passwd",
        "",
    ]))
    .to_owned();
    if rng.one_in(4) {
        let at = rng.below(name.len() + 1);
        name.insert_str(at, rng.hostile_str());
    }
    name
}

/// Creates on every listed type, writes `attribute` of every listed device, removes some.
fn write_through(rng: &mut Rng, host: &Host, attribute: &str) {
    if let Ok(parents) = host.parents() {
        for p in &parents {
            for t in &p.types {
                let uuid = MdevUuid::from_uuid(uuid::Uuid::from_u64_pair(rng.next_u64(), 1));
                let _ = host.create(&p.name, &t.id, &uuid);
            }
        }
    }
    if let Ok(devices) = host.devices() {
        for d in &devices {
            let _ = host.set_device_attr(&d.uuid, attribute, "1");
            if rng.one_in(2) {
                let _ = host.remove(&d.uuid);
            }
        }
    }
}

/// Everything the backends read is named safely and lies inside the root.
fn check_host(host: &Host, root: &SysfsRoot) -> Result<(), String> {
    let inside = |what: &str, path: &Path| {
        if path.starts_with(root.canonical()) {
            Ok(())
        } else {
            Err(format!("{what} at {} is outside the root", path.display()))
        }
    };
    if let Ok(parents) = host.parents() {
        for p in &parents {
            path_safe("parent", p.name.as_str())?;
            inside("parent", &p.sysfs_path)?;
            for vf in p.virtfns.iter().chain(&p.physfn) {
                path_safe("virtual function", vf.as_str())?;
            }
            for t in &p.types {
                path_safe("type id", t.id.as_str())?;
            }
            let _ = host.types(&p.name);
        }
    }
    if let Ok(devices) = host.devices() {
        for d in &devices {
            path_safe("device parent", d.parent.as_str())?;
            if let Some(t) = &d.type_id {
                path_safe("device type", t.as_str())?;
            }
            inside("device", &d.sysfs_path)?;
            let _ = host.device(&d.uuid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plausible_name_passes_the_checks() {
        for name in NAMES {
            check_name(name).expect("consistent");
        }
        for list in TYPE_LISTS {
            check_type_list(list).expect("consistent");
        }
    }

    #[test]
    fn a_tree_of_plausible_values_lists_a_parent() {
        // Seeds vary the tree; some seed among the first hundred gives a readable parent.
        let found = (0..100).any(|seed| {
            let tmp = tempfile::tempdir().unwrap();
            let sys = tmp.path().join("sys");
            tree(&mut Rng::new(seed), &sys);
            let host = Host::new(SysfsRoot::new(&sys).unwrap());
            host.parents().is_ok_and(|p| !p.is_empty())
        });
        assert!(found, "the generator never makes a readable parent");
    }
}
