//! The generic mdev backend (KERNEL-ABI.md §1): parents under class/mdev_bus, types under
//! `mdev_supported_types`, devices under bus/mdev/devices; create by writing a UUID to a type's
//! `create`, remove by writing "1" to a device's `remove`, with the kernel's errno mapped.

use std::path::Path;

use crate::backend::sysfs::{SysPath, SysfsRoot, WriteError};
use crate::backend::{group_number, read_parent_base, Backend};
use vgpud_model::error::{Error, Result};
use vgpud_model::{BackendKind, Device, MdevType, MdevUuid, Parent, ParentName, TypeId};

/// Parents and devices of the kernel's mdev core.
#[derive(Debug, Clone)]
pub struct MdevBackend {
    root: SysfsRoot,
}

impl MdevBackend {
    pub fn new(root: SysfsRoot) -> Self {
        MdevBackend { root }
    }

    fn parent_dir(&self, parent: &ParentName) -> SysPath {
        self.root.at("class/mdev_bus").join(parent.clone())
    }

    fn type_dir(&self, parent: &ParentName, type_id: &TypeId) -> SysPath {
        self.parent_dir(parent)
            .join("mdev_supported_types")
            .join(type_id.clone())
    }

    fn device_link(&self, uuid: &MdevUuid) -> SysPath {
        self.root.at("bus/mdev/devices").join(*uuid)
    }

    /// One type of `parent`, or `None` if its directory went away while being read.
    fn read_type(&self, parent: &ParentName, type_id: &TypeId) -> Result<Option<MdevType>> {
        let dir = self.type_dir(parent, type_id);
        let available_path = dir.join("available_instances");
        let Some(available_instances) = self.root.read_u32(&available_path)? else {
            return self.missing_mandatory(&dir, &available_path);
        };
        let api_path = dir.join("device_api");
        let Some(device_api) = self.root.read_attr(&api_path)? else {
            return self.missing_mandatory(&dir, &api_path);
        };
        Ok(Some(MdevType {
            id: type_id.clone(),
            name: self.root.read_attr(&dir.join("name"))?,
            description: self.root.read_attr(&dir.join("description"))?,
            device_api,
            available_instances,
            parent: parent.clone(),
        }))
    }

    /// A mandatory attribute is missing: fine if the whole type vanished, an error otherwise.
    fn missing_mandatory(&self, dir: &SysPath, attr: &SysPath) -> Result<Option<MdevType>> {
        if self.root.exists(dir)? {
            Err(Error::bad_attribute(attr.as_path(), "missing"))
        } else {
            Ok(None)
        }
    }

    /// The mdev_bus name of the parent whose canonical directory is `dir`.
    fn parent_name_of_dir(&self, dir: &Path) -> Result<Option<ParentName>> {
        let Some(base) = dir.file_name().and_then(|n| n.to_str()) else {
            return Ok(None);
        };
        let name = ParentName::new(base)?;
        // The mdev_bus entry carries the device's own name; confirm, then fall back to a scan.
        if self.root.resolve(&self.parent_dir(&name))?.as_deref() == Some(dir) {
            return Ok(Some(name));
        }
        for entry in self.root.list_dir(&self.root.at("class/mdev_bus"))? {
            let Ok(candidate) = ParentName::new(entry) else {
                continue;
            };
            // An unreadable entry is some other parent's problem, reported by `parents()`.
            if let Ok(Some(real)) = self.root.resolve(&self.parent_dir(&candidate)) {
                if real == dir {
                    return Ok(Some(candidate));
                }
            }
        }
        // Not registered (any more): the directory's own name is the best answer.
        Ok(Some(name))
    }

    fn read_device(&self, uuid: &MdevUuid) -> Result<Option<Device>> {
        let link = self.device_link(uuid);
        let Some(sysfs_path) = self.root.resolve(&link)? else {
            return Ok(None);
        };
        let parent_dir = sysfs_path.parent().unwrap_or(&sysfs_path);
        let Some(parent) = self.parent_name_of_dir(parent_dir)? else {
            return Err(Error::bad_attribute(
                link.as_path(),
                "device has no parent directory",
            ));
        };
        // The three links from the device's own directory, opened once (no walk through the
        // bus/mdev/devices link per read).
        let dir = self.root.resolved(&sysfs_path).unwrap_or(link);
        let Some(names) = self
            .root
            .link_names(&dir, &["mdev_type", "iommu_group", "driver"])?
        else {
            return Ok(None);
        };
        let [type_name, group_name, driver]: [Option<String>; 3] = names
            .try_into()
            .map_err(|_| Error::bad_attribute(dir.as_path(), "links read back short"))?;
        let type_id = match type_name {
            None => None,
            Some(t) => Some(TypeId::new(t).map_err(|e| {
                Error::bad_attribute(dir.join("mdev_type").as_path(), e.to_string())
            })?),
        };
        Ok(Some(Device {
            uuid: *uuid,
            parent,
            type_id,
            iommu_group: group_number(&dir.join("iommu_group"), group_name)?,
            driver,
            active: true,
            sysfs_path,
            backend: BackendKind::Mdev,
        }))
    }
}

impl Backend for MdevBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Mdev
    }

    fn owns_parent(&self, parent: &ParentName) -> Result<bool> {
        self.root.exists(&self.parent_dir(parent))
    }

    /// A parent that cannot be read is skipped with a warning, so one broken driver does not
    /// hide every other GPU; `parent()` reports its error.
    fn parents(&self) -> Result<Vec<Parent>> {
        let mut names = Vec::new();
        for entry in self.root.list_dir(&self.root.at("class/mdev_bus"))? {
            match ParentName::new(entry) {
                Ok(n) => names.push(n),
                Err(e) => tracing::warn!(error = %e, "skipping an mdev_bus entry"),
            }
        }
        let read = super::read_in_parallel(&names, |name| self.parent(name));
        let mut parents = Vec::new();
        for (name, result) in names.iter().zip(read) {
            match result {
                Ok(Some(p)) => parents.push(p),
                Ok(None) => {} // unregistered while we listed
                Err(e) => {
                    tracing::warn!(parent = %name, error = %e, "skipping an unreadable parent")
                }
            }
        }
        Ok(parents)
    }

    fn parent(&self, name: &ParentName) -> Result<Option<Parent>> {
        let dir = self.parent_dir(name);
        let Some(mut parent) = read_parent_base(&self.root, name, &dir, BackendKind::Mdev)? else {
            return Ok(None);
        };
        parent.types = self.types(name)?;
        Ok(Some(parent))
    }

    fn refresh_availability(&self, known: &Parent) -> Result<Option<Parent>> {
        let mut fresh = known.clone();
        // From the parent's own directory, as resolved when it was read: no walk through the
        // class/mdev_bus link (a readlink per read on a FUSE tree).
        let types = match self.root.resolved(&known.sysfs_path) {
            Some(dir) => dir.join("mdev_supported_types"),
            None => self.parent_dir(&known.name).join("mdev_supported_types"),
        };
        for t in &mut fresh.types {
            let path = types.join(t.id.clone()).join("available_instances");
            match self.root.read_u32(&path) {
                Ok(Some(n)) => t.available_instances = n,
                // The type (or the whole parent) went away: read everything that is left.
                Ok(None) | Err(_) => return self.parent(&known.name),
            }
        }
        Ok(Some(fresh))
    }

    fn types(&self, parent: &ParentName) -> Result<Vec<MdevType>> {
        if !self.owns_parent(parent)? {
            return Err(Error::UnknownParent(parent.to_string()));
        }
        let dir = self.parent_dir(parent).join("mdev_supported_types");
        let mut types = Vec::new();
        for entry in self.root.list_dir(&dir)? {
            let id = match TypeId::new(entry) {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(parent = %parent, error = %e, "skipping a type entry");
                    continue;
                }
            };
            types.extend(self.read_type(parent, &id)?);
        }
        Ok(types)
    }

    /// A device that cannot be read is skipped with a warning; `device()` reports its error.
    fn devices(&self) -> Result<Vec<Device>> {
        let mut devices = Vec::new();
        for entry in self.root.list_dir(&self.root.at("bus/mdev/devices"))? {
            let uuid = match MdevUuid::parse(&entry) {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a bus/mdev/devices entry");
                    continue;
                }
            };
            match self.read_device(&uuid) {
                Ok(Some(d)) => devices.push(d),
                Ok(None) => {} // removed while we listed
                Err(e) => {
                    tracing::warn!(device = %uuid, error = %e, "skipping an unreadable device")
                }
            }
        }
        Ok(devices)
    }

    fn device(&self, uuid: &MdevUuid) -> Result<Option<Device>> {
        self.read_device(uuid)
    }

    fn create(&self, parent: &ParentName, type_id: &TypeId, uuid: &MdevUuid) -> Result<Device> {
        let create = self.type_dir(parent, type_id).join("create");
        let line = format!("{uuid}\n");
        if let Err(err) = self.root.write_attr(&create, line.as_bytes()) {
            let parent_exists = || self.owns_parent(parent);
            return Err(map_create_error(
                err,
                create.as_path(),
                parent,
                type_id,
                uuid,
                parent_exists,
            ));
        }
        self.read_device(uuid)?.ok_or_else(|| {
            Error::Failed(format!(
                "the kernel accepted device {uuid} but it is not in bus/mdev/devices"
            ))
        })
    }

    fn remove(&self, uuid: &MdevUuid) -> Result<()> {
        let remove = self.device_link(uuid).join("remove");
        match self.root.write_attr(&remove, b"1") {
            Ok(()) => Ok(()),
            Err(err) => map_remove_error(err, remove.as_path(), uuid),
        }
    }
}

/// The meaning of a failed write of `uuid` to `<parent>/mdev_supported_types/<type>/create`.
/// `parent_exists` is asked only when the open said ENOENT.
pub(crate) fn map_create_error(
    err: WriteError,
    path: &Path,
    parent: &ParentName,
    type_id: &TypeId,
    uuid: &MdevUuid,
    parent_exists: impl FnOnce() -> Result<bool>,
) -> Error {
    if err.open_errno() == Some(libc::ENOENT) {
        return match parent_exists() {
            Ok(true) => Error::UnknownType {
                parent: parent.to_string(),
                type_id: type_id.to_string(),
            },
            Ok(false) => Error::UnknownParent(parent.to_string()),
            Err(e) => e,
        };
    }
    let Some(errno) = err.write_errno() else {
        return err.into_error(path);
    };
    let no_capacity = || Error::NoCapacity {
        parent: parent.to_string(),
        type_id: type_id.to_string(),
        errno,
    };
    match errno {
        // Our UUID is always well formed, so EINVAL is the driver's refusal (NVIDIA: full).
        libc::EINVAL | libc::EUSERS | libc::ENOSPC | libc::ENOMEM => no_capacity(),
        libc::EEXIST => Error::AlreadyExists(uuid.to_string()),
        libc::ENODEV => Error::ParentGoingAway(parent.to_string()),
        libc::EAGAIN | vgpud_model::error::EPROBE_DEFER => Error::DriverRefused {
            errno,
            hint: Some("probe deferred; try again"),
        },
        _ => Error::DriverRefused { errno, hint: None },
    }
}

/// The meaning of a failed write of "1" to `bus/mdev/devices/<uuid>/remove`; `Ok` when the
/// device was already going away.
pub(crate) fn map_remove_error(err: WriteError, path: &Path, uuid: &MdevUuid) -> Result<()> {
    if err.open_errno() == Some(libc::ENOENT) {
        return Err(Error::UnknownDevice(uuid.to_string()));
    }
    match err.write_errno() {
        None => Err(err.into_error(path)),
        Some(libc::ENODEV) => Ok(()),
        Some(libc::EBUSY) => Err(Error::Busy(format!("device {uuid} is busy"))),
        Some(errno) => Err(Error::DriverRefused { errno, hint: None }),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::backend::fixture::*;

    fn backend(fx: &Fixture) -> MdevBackend {
        MdevBackend::new(fx.root())
    }

    fn name(s: &str) -> ParentName {
        ParentName::new(s).unwrap()
    }

    fn uuid(s: &str) -> MdevUuid {
        MdevUuid::parse(s).unwrap()
    }

    #[test]
    fn pci_parent_with_two_types() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        let p = backend(&fx).parent(&name(GPU)).unwrap().unwrap();
        assert_eq!(p.sysfs_path, fx.root().canonical().join(GPU_DEV));
        assert_eq!(p.backend, BackendKind::Mdev);
        let pci = p.pci.unwrap();
        assert_eq!(
            (pci.vendor, pci.device, pci.class),
            (0x10de, 0x1eb8, 0x030200)
        );
        assert_eq!(
            (pci.subsystem_vendor, pci.subsystem_device),
            (Some(0x10de), Some(0x12a2))
        );
        assert_eq!(p.driver.as_deref(), Some("nvidia"));
        assert_eq!(p.numa_node, Some(1));
        assert_eq!(p.iommu_group, Some(12));
        assert_eq!((p.physfn, p.virtfns), (None, vec![]));
        assert_eq!(p.types.len(), 2);
        let t = &p.types[0];
        assert_eq!(t.id.as_str(), "nvidia-231");
        assert_eq!(t.name.as_deref(), Some("GRID T4-2Q"));
        assert_eq!(
            t.description.as_deref(),
            Some("num_heads=4, frl_config=60, framebuffer=2048M")
        );
        assert_eq!(
            (t.device_api.as_str(), t.available_instances),
            ("vfio-pci", 8)
        );
        assert_eq!(t.parent, name(GPU));
    }

    #[test]
    fn type_without_name_or_description() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        let types = backend(&fx).types(&name(GPU)).unwrap();
        let t = &types[1];
        assert_eq!(t.id.as_str(), "nvidia-232");
        assert_eq!((t.name.as_deref(), t.description.as_deref()), (None, None));
        assert_eq!(t.available_instances, 4);
    }

    #[test]
    fn types_are_read_afresh() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        let b = backend(&fx);
        fx.write(
            &format!("{GPU_DEV}/mdev_supported_types/nvidia-232/available_instances"),
            "0\n",
        );
        assert_eq!(b.types(&name(GPU)).unwrap()[1].available_instances, 0);
    }

    #[test]
    fn type_missing_available_instances_is_an_error() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        fx.mkdir(&format!("{GPU_DEV}/mdev_supported_types/nvidia-233"));
        let err = backend(&fx).types(&name(GPU)).unwrap_err();
        assert!(
            err.to_string().contains("nvidia-233/available_instances"),
            "{err}"
        );
    }

    #[test]
    fn malformed_available_instances_names_the_path() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        fx.write(
            &format!("{GPU_DEV}/mdev_supported_types/nvidia-231/available_instances"),
            "eight\n",
        );
        let b = backend(&fx);
        let err = b.parent(&name(GPU)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nvidia-231/available_instances"), "{msg}");
        assert!(msg.contains("\"eight\""), "{msg}");
        // The listing skips the broken parent instead of failing.
        assert!(b.parents().unwrap().is_empty());
    }

    #[test]
    fn virtual_mtty_parent_has_no_pci_identity() {
        let fx = Fixture::new();
        fx.mtty();
        let p = backend(&fx).parent(&name("mtty")).unwrap().unwrap();
        assert_eq!(p.sysfs_path, fx.root().canonical().join(MTTY_DEV));
        assert_eq!(
            (p.pci, p.driver, p.numa_node, p.iommu_group),
            (None, None, None, None)
        );
        let ids: Vec<_> = p.types.iter().map(|t| t.id.to_string()).collect();
        assert_eq!(ids, ["mtty-1", "mtty-2"]);
    }

    #[test]
    fn numa_minus_one_is_none() {
        let fx = Fixture::new();
        fx.sriov_a100();
        let p = backend(&fx).parent(&name(VF_A100[0])).unwrap().unwrap();
        assert_eq!(p.numa_node, None);
    }

    #[test]
    fn sriov_vfs_are_parents_with_physfn() {
        let fx = Fixture::new();
        fx.sriov_a100();
        let parents = backend(&fx).parents().unwrap();
        let names: Vec<_> = parents.iter().map(|p| p.name.to_string()).collect();
        assert_eq!(names, VF_A100);
        for (vf, group) in parents.iter().zip([31, 32]) {
            assert_eq!(vf.physfn, Some(name(PF_A100)));
            assert_eq!(vf.iommu_group, Some(group));
            assert_eq!(vf.types[0].name.as_deref(), Some("GRID A100-4C"));
        }
    }

    #[test]
    fn pf_lists_its_virtfns_in_order() {
        let fx = Fixture::new();
        fx.sriov_a100();
        fx.mdev_parent(PF_A100_DEV); // make the PF readable through this backend
        let pf = backend(&fx).parent(&name(PF_A100)).unwrap().unwrap();
        assert_eq!(pf.virtfns, [name(VF_A100[0]), name(VF_A100[1])]);
        assert_eq!(pf.physfn, None);
    }

    #[test]
    fn device_with_type_link() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        fx.mdev_device(GPU_DEV, U1, Some("nvidia-231"), 100);
        let d = backend(&fx).device(&uuid(U1)).unwrap().unwrap();
        assert_eq!(d.parent, name(GPU));
        assert_eq!(d.type_id, Some(TypeId::new("nvidia-231").unwrap()));
        assert_eq!(d.iommu_group, Some(100));
        assert_eq!(d.driver.as_deref(), Some("nvidia-vgpu-vfio"));
        assert!(d.active);
        assert_eq!(d.sysfs_path, fx.root().canonical().join(GPU_DEV).join(U1));
        assert_eq!(d.backend, BackendKind::Mdev);
    }

    #[test]
    fn device_before_its_type_link() {
        let fx = Fixture::new();
        fx.mtty();
        fx.mdev_device(MTTY_DEV, U2, None, 101);
        let d = backend(&fx).device(&uuid(U2)).unwrap().unwrap();
        assert_eq!((d.parent, d.type_id, d.driver), (name("mtty"), None, None));
    }

    #[test]
    fn devices_lists_all_and_skips_bad_names() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        fx.mtty();
        fx.mdev_device(GPU_DEV, U1, Some("nvidia-231"), 100);
        fx.mdev_device(MTTY_DEV, U2, None, 101);
        fx.mkdir("bus/mdev/devices/not-a-uuid");
        let devices = backend(&fx).devices().unwrap();
        let uuids: Vec<_> = devices.iter().map(|d| d.uuid.to_string()).collect();
        assert_eq!(uuids, [U1, U2]);
    }

    #[test]
    fn unknown_device_is_none() {
        let fx = Fixture::new();
        assert_eq!(backend(&fx).device(&uuid(U1)).unwrap(), None);
    }

    #[test]
    fn parent_link_outside_root_is_refused() {
        let fx = Fixture::new();
        fx.link_to("class/mdev_bus/evil", &fx.outside());
        let err = backend(&fx).parent(&name("evil")).unwrap_err();
        assert!(matches!(err, Error::OutsideRoot(_)), "{err:?}");
    }

    #[test]
    fn attribute_link_outside_root_is_not_read() {
        let fx = Fixture::new();
        fx.mtty();
        fx.link_to(&format!("{MTTY_DEV}/vendor"), &fx.outside().join("secret"));
        fx.write(&format!("{MTTY_DEV}/device"), "0x1eb8\n");
        fx.write(&format!("{MTTY_DEV}/class"), "0x030000\n");
        let err = backend(&fx).parent(&name("mtty")).unwrap_err();
        assert!(matches!(err, Error::OutsideRoot(_)), "{err:?}");
    }

    #[test]
    fn create_writes_uuid_and_newline_once() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        // The fixture cannot react to the write: make the device the kernel would make.
        fx.mdev_device(GPU_DEV, U1, None, 100);
        let d = backend(&fx)
            .create(&name(GPU), &TypeId::new("nvidia-232").unwrap(), &uuid(U1))
            .unwrap();
        let written = fx.read(&format!("{GPU_DEV}/mdev_supported_types/nvidia-232/create"));
        assert_eq!(written, format!("{U1}\n"));
        assert_eq!((d.uuid, d.type_id), (uuid(U1), None));
    }

    #[test]
    fn create_unknown_type_and_unknown_parent() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        let b = backend(&fx);
        let err = b
            .create(&name(GPU), &TypeId::new("nvidia-999").unwrap(), &uuid(U1))
            .unwrap_err();
        assert!(matches!(err, Error::UnknownType { .. }), "{err:?}");
        let err = b
            .create(
                &name("0000:99:00.0"),
                &TypeId::new("nvidia-231").unwrap(),
                &uuid(U1),
            )
            .unwrap_err();
        assert!(matches!(err, Error::UnknownParent(_)), "{err:?}");
    }

    #[test]
    fn remove_writes_one() {
        let fx = Fixture::new();
        fx.mtty();
        fx.mdev_device(MTTY_DEV, U2, Some("mtty-2"), 101);
        backend(&fx).remove(&uuid(U2)).unwrap();
        assert_eq!(fx.read(&format!("{MTTY_DEV}/{U2}/remove")), "1");
    }

    #[test]
    fn remove_unknown_device() {
        let fx = Fixture::new();
        let err = backend(&fx).remove(&uuid(U1)).unwrap_err();
        assert!(matches!(err, Error::UnknownDevice(_)), "{err:?}");
    }

    fn create_err(err: WriteError, parent_exists: bool) -> Error {
        map_create_error(
            err,
            Path::new("/sys/x/create"),
            &name(GPU),
            &TypeId::new("nvidia-231").unwrap(),
            &uuid(U1),
            || Ok(parent_exists),
        )
    }

    fn on_write(errno: i32) -> WriteError {
        WriteError::Write(io::Error::from_raw_os_error(errno))
    }

    fn on_open(errno: i32) -> WriteError {
        WriteError::Open(io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn create_open_enoent_is_unknown_type_when_parent_exists() {
        let e = create_err(on_open(libc::ENOENT), true);
        assert!(matches!(e, Error::UnknownType { .. }), "{e:?}");
    }

    #[test]
    fn create_open_enoent_is_unknown_parent_otherwise() {
        let e = create_err(on_open(libc::ENOENT), false);
        assert!(matches!(e, Error::UnknownParent(_)), "{e:?}");
    }

    #[test]
    fn create_open_eacces_is_io() {
        let e = create_err(on_open(libc::EACCES), true);
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
    }

    #[test]
    fn create_einval_is_no_capacity() {
        let e = create_err(on_write(libc::EINVAL), true);
        assert!(
            matches!(
                e,
                Error::NoCapacity {
                    errno: libc::EINVAL,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().ends_with("(the driver said EINVAL)"), "{e}");
    }

    #[test]
    fn create_shared_pool_exhausted_is_no_capacity() {
        for errno in [libc::EUSERS, libc::ENOSPC, libc::ENOMEM] {
            let e = create_err(on_write(errno), true);
            assert!(
                matches!(e, Error::NoCapacity { errno: got, .. } if got == errno),
                "{e:?}"
            );
        }
    }

    #[test]
    fn create_eexist_is_already_exists() {
        let e = create_err(on_write(libc::EEXIST), true);
        assert!(matches!(e, Error::AlreadyExists(ref u) if u == U1), "{e:?}");
    }

    #[test]
    fn create_enodev_is_parent_going_away() {
        let e = create_err(on_write(libc::ENODEV), true);
        assert!(matches!(e, Error::ParentGoingAway(_)), "{e:?}");
    }

    #[test]
    fn create_eagain_is_refusal_with_hint() {
        let e = create_err(on_write(libc::EAGAIN), true);
        assert!(
            matches!(
                e,
                Error::DriverRefused {
                    errno: libc::EAGAIN,
                    hint: Some(_)
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn create_other_errno_is_refusal() {
        let e = create_err(on_write(libc::EIO), true);
        assert!(
            matches!(
                e,
                Error::DriverRefused {
                    errno: libc::EIO,
                    hint: None
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn create_short_write_is_failed() {
        let e = create_err(
            WriteError::Short {
                written: 3,
                expected: 37,
            },
            true,
        );
        assert!(matches!(e, Error::Failed(_)), "{e:?}");
    }

    #[test]
    fn remove_errno_mapping() {
        let p = Path::new("/sys/x/remove");
        let u = uuid(U1);
        assert!(matches!(
            map_remove_error(on_open(libc::ENOENT), p, &u),
            Err(Error::UnknownDevice(_))
        ));
        assert!(map_remove_error(on_write(libc::ENODEV), p, &u).is_ok());
        assert!(matches!(
            map_remove_error(on_write(libc::EBUSY), p, &u),
            Err(Error::Busy(_))
        ));
        assert!(matches!(
            map_remove_error(on_write(libc::EINVAL), p, &u),
            Err(Error::DriverRefused {
                errno: libc::EINVAL,
                ..
            })
        ));
    }
}
