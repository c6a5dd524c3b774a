//! The library against the simulator: on every built-in profile, `backend::Host` lists the same
//! parents, types and devices as a plain walk of the mounted tree shows; and create/remove
//! through `Host` fail with the typed errors the kernel's errno stand for.

#[path = "common/sim.rs"]
mod sim_fixture;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sim_fixture::*;
use vgpud_daemon::backend::sysfs::SysfsRoot;
use vgpud_daemon::backend::{vf_device_uuid, Host};
use vgpud_model::Error;
use vgpud_model::{MdevUuid, ParentName, TypeId};
use vgpud_sim::control::Request;

const GPU0: &str = "0000:20:00.0";
const GPU1: &str = "0000:21:00.0";

// ---- what a plain walk of the tree shows ----------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TypeView {
    id: String,
    name: Option<String>,
    description: Option<String>,
    device_api: String,
    available: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PciView {
    vendor: u16,
    device: u16,
    class: u32,
    subsystem_vendor: Option<u16>,
    subsystem_device: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ParentView {
    name: String,
    backend: String,
    sysfs_path: PathBuf,
    pci: Option<PciView>,
    driver: Option<String>,
    numa_node: Option<i32>,
    iommu_group: Option<u32>,
    physfn: Option<String>,
    virtfns: Vec<String>,
    types: Vec<TypeView>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct DeviceView {
    uuid: String,
    parent: String,
    type_id: Option<String>,
    iommu_group: Option<u32>,
    driver: Option<String>,
    sysfs_path: PathBuf,
    backend: String,
}

/// An attribute without its trailing newlines, if it exists.
fn attr(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim_end_matches('\n').to_owned())
}

fn hex(path: &Path) -> Option<u32> {
    let text = attr(path)?;
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// The last component of a link's target.
fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

fn walk_parent_base(name: &str, dir: &Path, backend: &str) -> ParentView {
    let sysfs_path = std::fs::canonicalize(dir).unwrap();
    let pci = match (
        hex(&sysfs_path.join("vendor")),
        hex(&sysfs_path.join("device")),
        hex(&sysfs_path.join("class")),
    ) {
        (Some(vendor), Some(device), Some(class)) => Some(PciView {
            vendor: vendor as u16,
            device: device as u16,
            class,
            subsystem_vendor: hex(&sysfs_path.join("subsystem_vendor")).map(|x| x as u16),
            subsystem_device: hex(&sysfs_path.join("subsystem_device")).map(|x| x as u16),
        }),
        _ => None,
    };
    let mut virtfns: Vec<(u32, String)> = names(&sysfs_path)
        .into_iter()
        .filter_map(|n| {
            let i = n.strip_prefix("virtfn")?.parse().ok()?;
            Some((i, link_name(&sysfs_path.join(&n))?))
        })
        .collect();
    virtfns.sort();
    ParentView {
        name: name.to_owned(),
        backend: backend.to_owned(),
        pci,
        driver: link_name(&sysfs_path.join("driver")),
        numa_node: attr(&sysfs_path.join("numa_node"))
            .and_then(|s| s.trim().parse().ok())
            .filter(|n: &i32| *n >= 0),
        iommu_group: link_name(&sysfs_path.join("iommu_group")).and_then(|g| g.parse().ok()),
        physfn: link_name(&sysfs_path.join("physfn")),
        virtfns: virtfns.into_iter().map(|(_, n)| n).collect(),
        types: Vec::new(),
        sysfs_path,
    }
}

/// `ID : name` lines of an NVIDIA type list (the header has no numeric id).
fn vendor_list(path: &Path) -> Vec<(u32, String)> {
    attr(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (id, name) = l.split_once(':')?;
            Some((id.trim().parse().ok()?, name.trim().to_owned()))
        })
        .collect()
}

fn walk_parents(root: &Path) -> Vec<ParentView> {
    let mut out = Vec::new();
    let bus = root.join("class/mdev_bus");
    for name in names(&bus) {
        let mut p = walk_parent_base(&name, &bus.join(&name), "mdev");
        let types = p.sysfs_path.join("mdev_supported_types");
        for id in names(&types) {
            let t = types.join(&id);
            p.types.push(TypeView {
                name: attr(&t.join("name")),
                description: attr(&t.join("description")),
                device_api: attr(&t.join("device_api")).unwrap(),
                available: attr(&t.join("available_instances"))
                    .unwrap()
                    .parse()
                    .unwrap(),
                id,
            });
        }
        out.push(p);
    }
    let pci = root.join("bus/pci/devices");
    for name in names(&pci) {
        let vendor = pci.join(&name).join("nvidia");
        if !vendor.join("creatable_vgpu_types").exists() {
            continue;
        }
        let mut p = walk_parent_base(&name, &pci.join(&name), "nvidia-vendor-sysfs");
        let creatable = vendor_list(&vendor.join("creatable_vgpu_types"));
        let current: u32 = attr(&vendor.join("current_vgpu_type"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        for (id, type_name) in vendor_list(&vendor.join("supported_vgpu_types")) {
            p.types.push(TypeView {
                id: format!("nvidia-{id}"),
                name: Some(type_name),
                description: None,
                device_api: "vfio-pci".into(),
                available: u32::from(current == 0 && creatable.iter().any(|(c, _)| *c == id)),
            });
        }
        out.push(p);
    }
    for p in &mut out {
        p.types.sort();
    }
    out.sort();
    out
}

fn walk_devices(root: &Path, parents: &[ParentView]) -> Vec<DeviceView> {
    let mut out = Vec::new();
    let bus = root.join("bus/mdev/devices");
    for uuid in names(&bus) {
        let link = bus.join(&uuid);
        let sysfs_path = std::fs::canonicalize(&link).unwrap();
        out.push(DeviceView {
            parent: sysfs_path
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap(),
            type_id: link_name(&link.join("mdev_type")),
            iommu_group: link_name(&link.join("iommu_group")).and_then(|g| g.parse().ok()),
            driver: link_name(&link.join("driver")),
            sysfs_path,
            backend: "mdev".into(),
            uuid,
        });
    }
    for p in parents {
        if p.backend != "nvidia-vendor-sysfs" {
            continue;
        }
        let current = attr(&p.sysfs_path.join("nvidia/current_vgpu_type")).unwrap();
        if current.trim() == "0" {
            continue;
        }
        // The kernel has no UUID for such a vGPU; the library's naming rule is the only one.
        let uuid = vf_device_uuid(&ParentName::new(p.name.clone()).unwrap()).to_string();
        out.push(DeviceView {
            uuid,
            parent: p.name.clone(),
            type_id: Some(format!("nvidia-{}", current.trim())),
            iommu_group: p.iommu_group,
            driver: p.driver.clone(),
            sysfs_path: p.sysfs_path.clone(),
            backend: "nvidia-vendor-sysfs".into(),
        });
    }
    out.sort();
    out
}

// ---- what the library says ------------------------------------------------------------------------

fn host(sim: &Sim) -> Host {
    Host::new(SysfsRoot::new(sim.root()).expect("sysfs root"))
}

fn type_view(t: &vgpud_model::MdevType) -> TypeView {
    TypeView {
        id: t.id.to_string(),
        name: t.name.clone(),
        description: t.description.clone(),
        device_api: t.device_api.clone(),
        available: t.available_instances,
    }
}

fn host_parents(host: &Host) -> Vec<ParentView> {
    let mut out: Vec<ParentView> = host
        .parents()
        .expect("parents")
        .into_iter()
        .map(|p| {
            let mut types: Vec<TypeView> = p.types.iter().map(type_view).collect();
            types.sort();
            ParentView {
                name: p.name.to_string(),
                backend: p.backend.to_string(),
                sysfs_path: p.sysfs_path.clone(),
                pci: p.pci.as_ref().map(|i| PciView {
                    vendor: i.vendor,
                    device: i.device,
                    class: i.class,
                    subsystem_vendor: i.subsystem_vendor,
                    subsystem_device: i.subsystem_device,
                }),
                driver: p.driver.clone(),
                numa_node: p.numa_node,
                iommu_group: p.iommu_group,
                physfn: p.physfn.as_ref().map(|n| n.to_string()),
                virtfns: p.virtfns.iter().map(|n| n.to_string()).collect(),
                types,
            }
        })
        .collect();
    out.sort();
    out
}

fn host_devices(host: &Host) -> Vec<DeviceView> {
    let mut out: Vec<DeviceView> = host
        .devices()
        .expect("devices")
        .into_iter()
        .map(|d| DeviceView {
            uuid: d.uuid.to_string(),
            parent: d.parent.to_string(),
            type_id: d.type_id.as_ref().map(|t| t.to_string()),
            iommu_group: d.iommu_group,
            driver: d.driver.clone(),
            sysfs_path: d.sysfs_path.clone(),
            backend: d.backend.to_string(),
        })
        .collect();
    out.sort();
    out
}

/// The library and the walk agree on every parent, type and device; the single-item reads
/// agree with the lists (checked on a sample: each read costs FUSE round trips).
fn assert_host_matches_walk(sim: &Sim) {
    let host = host(sim);
    let walked = walk_parents(sim.root());
    assert!(!walked.is_empty(), "the profile shows no parent");
    let listed = host_parents(&host);
    for (h, w) in listed.iter().zip(&walked) {
        assert_eq!(h, w, "parent {}", w.name);
    }
    assert_eq!(
        listed.iter().map(|p| &p.name).collect::<Vec<_>>(),
        walked.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    let devices = walk_devices(sim.root(), &walked);
    assert_eq!(host_devices(&host), devices);
    let mut sample: Vec<&str> = devices.iter().map(|d| d.parent.as_str()).collect();
    sample.push(&walked[0].name);
    sample.sort();
    sample.dedup();
    for p in walked.iter().filter(|p| sample.contains(&p.name.as_str())) {
        let name = ParentName::new(p.name.clone()).unwrap();
        let mut types: Vec<TypeView> = host.types(&name).unwrap().iter().map(type_view).collect();
        types.sort();
        assert_eq!(types, p.types, "types of {}", p.name);
        assert!(host.parent(&name).unwrap().is_some(), "parent({})", p.name);
    }
    for d in &devices {
        let uuid = MdevUuid::parse(&d.uuid).unwrap();
        let one = host.device(&uuid).unwrap().expect("device()");
        assert_eq!(one.parent.to_string(), d.parent);
    }
}

fn vendor_vf(sim: &Sim, index: usize) -> String {
    walk_parents(sim.root())
        .into_iter()
        .filter(|p| p.backend == "nvidia-vendor-sysfs")
        .nth(index)
        .expect("a vendor VF")
        .name
}

fn a100_vf(sim: &Sim, index: usize) -> String {
    sim.parents()[index].clone()
}

// ---- the library sees what the shell sees, on every profile ----------------------------------------

#[test]
fn host_matches_the_tree_on_mtty() {
    let sim = Sim::start(&["mtty"]);
    sim.created("mtty", "mtty-1");
    sim.created("mtty", "mtty-2");
    assert_host_matches_walk(&sim);
}

#[test]
fn host_matches_the_tree_on_mdpy() {
    let sim = Sim::start(&["mdpy"]);
    sim.created("mdpy", "mdpy-vga");
    sim.created("mdpy", "mdpy-hd");
    assert_host_matches_walk(&sim);
}

#[test]
fn host_matches_the_tree_on_mbochs() {
    let sim = Sim::start(&["mbochs"]);
    sim.created("mbochs", "mbochs-small");
    sim.created("mbochs", "mbochs-large");
    assert_host_matches_walk(&sim);
}

#[test]
fn host_matches_the_tree_on_i915_gvtg() {
    let sim = Sim::start(&["i915-gvtg"]);
    sim.created("0000:00:02.0", "i915-GVTg_V5_4");
    sim.created("0000:00:02.0", "i915-GVTg_V5_8");
    assert_host_matches_walk(&sim);
}

#[test]
fn host_matches_the_tree_on_two_t4s() {
    let sim = Sim::start(&["nvidia-t4:2"]);
    sim.created(GPU0, "nvidia-231");
    sim.created(GPU0, "nvidia-231");
    sim.created(GPU1, "nvidia-234");
    assert_host_matches_walk(&sim);
}

#[test]
fn host_matches_the_tree_on_an_a100() {
    let sim = Sim::start(&["nvidia-a100"]);
    sim.created(&a100_vf(&sim, 0), "nvidia-473");
    sim.created(&a100_vf(&sim, 5), "nvidia-473");
    assert_host_matches_walk(&sim);
}

#[test]
fn host_matches_the_tree_on_an_l40s() {
    let sim = Sim::start(&["nvidia-l40s"]);
    for i in [0, 3] {
        let vf = vendor_vf(&sim, i);
        write_attr(
            &sim.path(&format!("bus/pci/devices/{vf}/nvidia/current_vgpu_type")),
            b"1147",
        )
        .unwrap();
    }
    assert_host_matches_walk(&sim);
}

#[test]
fn host_matches_the_tree_on_a_host_with_both_backends() {
    // The L40S profile with 2 VFs instead of 32 keeps the walk short.
    let dir = tempfile::tempdir().unwrap();
    let small_l40s = dir.path().join("small-l40s.toml");
    let text = include_str!("../crates/sim/src/profiles/nvidia-l40s.toml")
        .replace("profile = \"nvidia-l40s\"", "profile = \"small-l40s\"")
        .replace("vfs = 32", "vfs = 2");
    std::fs::write(&small_l40s, text).unwrap();
    let sim = Sim::start_with(&["mtty", "nvidia-t4"], &[small_l40s]);
    sim.created("mtty", "mtty-2");
    sim.created(GPU0, "nvidia-222");
    let vf = vendor_vf(&sim, 1);
    write_attr(
        &sim.path(&format!("bus/pci/devices/{vf}/nvidia/current_vgpu_type")),
        b"1156",
    )
    .unwrap();
    assert_host_matches_walk(&sim);
    let backends: Vec<String> = host_parents(&host(&sim))
        .into_iter()
        .map(|p| p.backend)
        .collect();
    assert!(backends.contains(&"mdev".to_owned()), "{backends:?}");
    assert!(
        backends.contains(&"nvidia-vendor-sysfs".to_owned()),
        "{backends:?}"
    );
}

#[test]
fn host_matches_the_tree_after_an_unbind() {
    let sim = Sim::start(&["nvidia-t4:2"]);
    sim.created(GPU0, "nvidia-231");
    sim.ctl(Request::Unbind {
        parent: GPU0.into(),
    });
    assert_host_matches_walk(&sim);
    assert_eq!(host(&sim).parents().unwrap().len(), 1);
}

// ---- create and remove through Host: typed errors ----------------------------------------------------

fn parent(s: &str) -> ParentName {
    ParentName::new(s).unwrap()
}

fn type_id(s: &str) -> TypeId {
    TypeId::new(s).unwrap()
}

#[test]
fn host_create_returns_the_device_as_read_back() {
    let sim = Sim::start(&["mtty"]);
    let uuid = MdevUuid::new_v4();
    let d = host(&sim)
        .create(&parent("mtty"), &type_id("mtty-2"), &uuid)
        .unwrap();
    assert_eq!(d.uuid, uuid);
    assert_eq!(d.type_id, Some(type_id("mtty-2")));
    assert_eq!(d.driver.as_deref(), Some("mtty"));
    assert!(d.iommu_group.is_some());
    assert_eq!(sim.devices(), [uuid.to_string()]);
    assert_eq!(sim.available("mtty", "mtty-1"), 22);
}

#[test]
fn host_remove_removes_the_device() {
    let sim = Sim::start(&["mtty"]);
    let uuid = sim.created("mtty", "mtty-1");
    host(&sim).remove(&MdevUuid::parse(&uuid).unwrap()).unwrap();
    assert!(sim.devices().is_empty());
}

#[test]
fn host_create_on_a_full_mtty_is_no_capacity_enospc() {
    let sim = Sim::start(&["mtty"]);
    for _ in 0..12 {
        sim.created("mtty", "mtty-2");
    }
    let err = host(&sim)
        .create(&parent("mtty"), &type_id("mtty-1"), &MdevUuid::new_v4())
        .unwrap_err();
    assert!(
        matches!(err, Error::NoCapacity { errno, .. } if errno == libc::ENOSPC),
        "{err:?}"
    );
}

#[test]
fn host_create_on_a_full_mdpy_is_no_capacity_eusers() {
    let sim = Sim::start(&["mdpy"]);
    for _ in 0..4 {
        sim.created("mdpy", "mdpy-vga");
    }
    let err = host(&sim)
        .create(&parent("mdpy"), &type_id("mdpy-vga"), &MdevUuid::new_v4())
        .unwrap_err();
    assert!(
        matches!(err, Error::NoCapacity { errno, .. } if errno == libc::EUSERS),
        "{err:?}"
    );
}

#[test]
fn host_create_of_a_second_type_on_a_t4_is_no_capacity_einval() {
    let sim = Sim::start(&["nvidia-t4"]);
    sim.created(GPU0, "nvidia-231");
    let err = host(&sim)
        .create(&parent(GPU0), &type_id("nvidia-230"), &MdevUuid::new_v4())
        .unwrap_err();
    assert!(
        matches!(err, Error::NoCapacity { errno, .. } if errno == libc::EINVAL),
        "{err:?}"
    );
}

#[test]
fn host_create_on_a_taken_a100_vf_is_no_capacity_eusers() {
    let sim = Sim::start(&["nvidia-a100"]);
    let vf = a100_vf(&sim, 0);
    sim.created(&vf, "nvidia-472");
    let err = host(&sim)
        .create(&parent(&vf), &type_id("nvidia-472"), &MdevUuid::new_v4())
        .unwrap_err();
    assert!(
        matches!(err, Error::NoCapacity { errno, .. } if errno == libc::EUSERS),
        "{err:?}"
    );
}

#[test]
fn host_create_of_a_duplicate_on_another_parent_is_already_exists() {
    let sim = Sim::start(&["nvidia-t4:2"]);
    let uuid = sim.created(GPU0, "nvidia-231");
    let err = host(&sim)
        .create(
            &parent(GPU1),
            &type_id("nvidia-231"),
            &MdevUuid::parse(&uuid).unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists(ref u) if *u == uuid),
        "{err:?}"
    );
}

#[test]
fn host_create_of_an_unknown_type_is_unknown_type() {
    let sim = Sim::start(&["mtty"]);
    let err = host(&sim)
        .create(&parent("mtty"), &type_id("mtty-3"), &MdevUuid::new_v4())
        .unwrap_err();
    assert!(matches!(err, Error::UnknownType { .. }), "{err:?}");
}

#[test]
fn host_create_on_an_unknown_parent_is_unknown_parent() {
    let sim = Sim::start(&["mtty"]);
    let err = host(&sim)
        .create(
            &parent("0000:99:00.0"),
            &type_id("mtty-1"),
            &MdevUuid::new_v4(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::UnknownParent(_)), "{err:?}");
}

#[test]
fn host_create_on_an_unbound_parent_is_unknown_parent() {
    let sim = Sim::start(&["nvidia-t4"]);
    sim.ctl(Request::Unbind {
        parent: GPU0.into(),
    });
    let err = host(&sim)
        .create(&parent(GPU0), &type_id("nvidia-231"), &MdevUuid::new_v4())
        .unwrap_err();
    assert!(matches!(err, Error::UnknownParent(_)), "{err:?}");
}

#[test]
fn host_create_refused_with_enodev_is_parent_going_away() {
    let sim = Sim::start(&["mtty"]);
    sim.inject_errno(MTTY_1_CREATE, "ENODEV");
    let err = host(&sim)
        .create(&parent("mtty"), &type_id("mtty-1"), &MdevUuid::new_v4())
        .unwrap_err();
    assert!(matches!(err, Error::ParentGoingAway(_)), "{err:?}");
}

#[test]
fn host_create_refused_with_eagain_is_a_deferred_probe() {
    let sim = Sim::start(&["mtty"]);
    sim.inject_errno(MTTY_1_CREATE, "EAGAIN");
    let err = host(&sim)
        .create(&parent("mtty"), &type_id("mtty-1"), &MdevUuid::new_v4())
        .unwrap_err();
    assert!(
        matches!(err, Error::DriverRefused { errno, hint: Some(_) } if errno == libc::EAGAIN),
        "{err:?}"
    );
}

#[test]
fn host_create_refused_with_eio_is_driver_refused() {
    let sim = Sim::start(&["mtty"]);
    sim.inject_errno(MTTY_1_CREATE, "EIO");
    let err = host(&sim)
        .create(&parent("mtty"), &type_id("mtty-1"), &MdevUuid::new_v4())
        .unwrap_err();
    assert!(
        matches!(err, Error::DriverRefused { errno, .. } if errno == libc::EIO),
        "{err:?}"
    );
}

#[test]
fn host_remove_of_an_unknown_device_is_unknown_device() {
    let sim = Sim::start(&["mtty", "nvidia-l40s"]);
    let err = host(&sim).remove(&MdevUuid::new_v4()).unwrap_err();
    assert!(matches!(err, Error::UnknownDevice(_)), "{err:?}");
}

#[test]
fn host_remove_of_a_held_device_blocks_until_release() {
    let sim = Sim::start(&["nvidia-t4"]);
    let uuid = sim.created(GPU0, "nvidia-231");
    sim.hold(&uuid);
    let h = host(&sim);
    let target = MdevUuid::parse(&uuid).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.remove(&target).map_err(|e| format!("{e:?}")));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "remove did not block"
    );
    sim.release(&uuid);
    let r = rx.recv_timeout(HANG_GUARD).expect("remove never finished");
    assert_eq!(r, Ok(()));
    assert!(sim.devices().is_empty());
}

// ---- the vendor-sysfs model through Host -----------------------------------------------------------

#[test]
fn host_creates_and_removes_a_vendor_vgpu() {
    let sim = Sim::start(&["nvidia-l40s"]);
    let vf = parent(&vendor_vf(&sim, 0));
    let h = host(&sim);
    let uuid = vf_device_uuid(&vf);
    let d = h.create(&vf, &type_id("nvidia-1147"), &uuid).unwrap();
    assert_eq!(d.uuid, uuid);
    assert_eq!(d.type_id, Some(type_id("nvidia-1147")));
    let current = sim.path(&format!("bus/pci/devices/{vf}/nvidia/current_vgpu_type"));
    assert_eq!(read(&current), "1147\n");
    h.remove(&uuid).unwrap();
    assert_eq!(read(&current), "0\n");
}

#[test]
fn host_create_of_a_type_no_longer_creatable_is_no_capacity() {
    let sim = Sim::start(&["nvidia-l40s"]);
    let h = host(&sim);
    let first = parent(&vendor_vf(&sim, 0));
    h.create(&first, &type_id("nvidia-1147"), &vf_device_uuid(&first))
        .unwrap();
    let second = parent(&vendor_vf(&sim, 1));
    let err = h
        .create(&second, &type_id("nvidia-1148"), &vf_device_uuid(&second))
        .unwrap_err();
    assert!(
        matches!(err, Error::NoCapacity { errno, .. } if errno == libc::EINVAL),
        "{err:?}"
    );
}

#[test]
fn host_create_on_a_vf_that_holds_a_vgpu_is_already_exists() {
    let sim = Sim::start(&["nvidia-l40s"]);
    let h = host(&sim);
    let vf = parent(&vendor_vf(&sim, 0));
    h.create(&vf, &type_id("nvidia-1147"), &vf_device_uuid(&vf))
        .unwrap();
    let err = h
        .create(&vf, &type_id("nvidia-1147"), &vf_device_uuid(&vf))
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
}

#[test]
fn host_create_of_an_unsupported_vendor_type_is_unknown_type() {
    let sim = Sim::start(&["nvidia-l40s"]);
    let vf = parent(&vendor_vf(&sim, 0));
    let err = host(&sim)
        .create(&vf, &type_id("nvidia-4242"), &vf_device_uuid(&vf))
        .unwrap_err();
    assert!(matches!(err, Error::UnknownType { .. }), "{err:?}");
}

#[test]
fn host_remove_of_a_held_vendor_vgpu_is_busy() {
    let sim = Sim::start(&["nvidia-l40s"]);
    let h = host(&sim);
    let vf = parent(&vendor_vf(&sim, 0));
    let uuid = vf_device_uuid(&vf);
    h.create(&vf, &type_id("nvidia-1147"), &uuid).unwrap();
    sim.hold(vf.as_str());
    let err = h.remove(&uuid).unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err:?}");
    sim.release(vf.as_str());
    h.remove(&uuid).unwrap();
}
