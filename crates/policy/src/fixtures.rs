//! Test fixtures for policies: parents modelled on real GPUs, subjects, devices, and a policy
//! from TOML text. Each test builds its own.

use std::path::Path;

use crate::{merge, parse_file, Owned, Policy, Subject};
use vgpud_model::{BackendKind, MdevType, MdevUuid, Parent, ParentName, PciIdentity, TypeId};

pub fn pn(s: &str) -> ParentName {
    ParentName::new(s).unwrap()
}

pub fn tid(s: &str) -> TypeId {
    TypeId::new(s).unwrap()
}

/// A policy from one file's text; panics with the diagnostics if it is invalid.
pub fn policy(text: &str) -> Policy {
    let path = Path::new("test.toml");
    match parse_file(path, text).and_then(|f| merge(vec![f])) {
        Ok(p) => p,
        Err(d) => panic!("policy does not parse: {d:?}"),
    }
}

/// A parent of the mdev backend with these PCI ids, driver and types (id, name, free).
pub fn parent(
    name: &str,
    pci: Option<(u16, u16)>,
    driver: Option<&str>,
    types: &[(&str, &str, u32)],
) -> Parent {
    let pn = pn(name);
    Parent {
        name: pn.clone(),
        sysfs_path: format!("/sys/bus/pci/devices/{name}").into(),
        backend: BackendKind::Mdev,
        pci: pci.map(|(vendor, device)| PciIdentity {
            vendor,
            device,
            class: 0x030200,
            subsystem_vendor: None,
            subsystem_device: None,
        }),
        driver: driver.map(str::to_owned),
        numa_node: None,
        iommu_group: None,
        physfn: None,
        virtfns: vec![],
        types: types
            .iter()
            .map(|(id, type_name, available)| MdevType {
                id: tid(id),
                name: Some((*type_name).to_owned()),
                description: None,
                device_api: "vfio-pci".into(),
                available_instances: *available,
                parent: pn.clone(),
            })
            .collect(),
    }
}

/// An NVIDIA T4 (10de:1eb8) with `free` instances of GRID T4-2Q (nvidia-231).
pub fn t4(name: &str, free: u32) -> Parent {
    parent(
        name,
        Some((0x10de, 0x1eb8)),
        Some("nvidia"),
        &[
            ("nvidia-222", "GRID T4-1B", free * 2),
            ("nvidia-231", "GRID T4-2Q", free),
            ("nvidia-232", "GRID T4-4Q", free / 2),
        ],
    )
}

/// An NVIDIA A100 (10de:20f1) on NUMA `node` with `free` instances of GRID A100-4C.
pub fn a100(name: &str, node: i32, free: u32) -> Parent {
    let mut p = parent(
        name,
        Some((0x10de, 0x20f1)),
        Some("nvidia"),
        &[("nvidia-471", "GRID A100-4C", free)],
    );
    p.numa_node = Some(node);
    p
}

/// The mtty sample driver's virtual parent (no PCI identity).
pub fn mtty(name: &str, free: u32) -> Parent {
    parent(
        name,
        None,
        Some("mtty"),
        &[("mtty-1", "Single port serial", free)],
    )
}

pub fn root() -> Subject {
    Subject {
        uid: 0,
        user: Some("root".into()),
        groups: vec!["root".into()],
    }
}

pub fn user(uid: u32, name: &str, groups: &[&str]) -> Subject {
    Subject {
        uid,
        user: Some(name.into()),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

pub fn alice() -> Subject {
    user(1001, "alice", &["alice", "lab"])
}

pub fn bob() -> Subject {
    user(1002, "bob", &["bob", "lab"])
}

pub fn mallory() -> Subject {
    user(1666, "mallory", &["mallory"])
}

/// A device on `parent` of `type_id` owned by `owner` (recording its groups).
pub fn owned(parent: &str, type_id: &str, owner: Option<&Subject>) -> Owned {
    Owned {
        uuid: MdevUuid::new_v4(),
        parent: pn(parent),
        type_id: Some(tid(type_id)),
        owner_uid: owner.map(|s| s.uid),
        owner_groups: owner.map(|s| s.groups.clone()).unwrap_or_default(),
    }
}
