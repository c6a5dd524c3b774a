//! The kernel interfaces that hold vGPUs, behind one `Backend` trait: the generic mdev ABI and
//! NVIDIA's vendor sysfs (no mdev). Both present the same Parent / MdevType / Device model;
//! `Host` owns both over one sysfs root and dispatches to the one owning a parent or device.
//!
//! Every call reads sysfs afresh and is synchronous. Writes may block for as long as the kernel
//! does (removing a device a VM holds open blocks until the VM lets go), so callers on an event
//! loop must run them on a blocking thread with a time bound.

pub mod mdev;
pub mod nvidia;
pub mod sysfs;

#[cfg(test)]
pub(crate) mod fixture;

use crate::backend::sysfs::{EntryName, SysPath, SysfsRoot};
use vgpud_model::error::{Error, Result};
use vgpud_model::{
    BackendKind, Device, MdevType, MdevUuid, Parent, ParentName, PciIdentity, TypeId,
};

pub use mdev::MdevBackend;
pub use nvidia::{vf_device_uuid, NvidiaBackend};

/// One kernel interface for creating and removing vGPUs.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// Whether `parent` exists and is managed through this backend.
    fn owns_parent(&self, parent: &ParentName) -> Result<bool>;
    /// All parents with their types, read afresh.
    fn parents(&self) -> Result<Vec<Parent>>;
    fn parent(&self, name: &ParentName) -> Result<Option<Parent>>;
    /// The types of `parent` with `available_instances` read afresh.
    fn types(&self, parent: &ParentName) -> Result<Vec<MdevType>>;
    /// `known` with only what a create or remove can change read afresh (the
    /// `available_instances` of its types); a full re-read when that is not enough (a type
    /// went away). `None` when the parent is gone.
    fn refresh_availability(&self, known: &Parent) -> Result<Option<Parent>> {
        self.parent(&known.name)
    }
    fn devices(&self) -> Result<Vec<Device>>;
    fn device(&self, uuid: &MdevUuid) -> Result<Option<Device>>;
    /// Creates a device and returns it as read back (its `type_id` may still be `None`).
    fn create(&self, parent: &ParentName, type_id: &TypeId, uuid: &MdevUuid) -> Result<Device>;
    /// Removes a device; blocks while a VM holds it.
    fn remove(&self, uuid: &MdevUuid) -> Result<()>;
}

/// How many threads read parents at start-up: reads of sysfs wait on the kernel (or on a FUSE
/// server), so a few more than the cores hide that wait.
const READERS: usize = 8;

/// `read` of every item, in order, by up to [`READERS`] threads taking items in turn.
pub(crate) fn read_in_parallel<T: Sync, R: Send>(
    items: &[T],
    read: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = READERS.min(items.len() / 8).max(1);
    if threads == 1 {
        return items.iter().map(read).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = Vec::with_capacity(items.len());
    slots.resize_with(items.len(), || None);
    let done = std::sync::Mutex::new(slots);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = read(item);
                done.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    done.into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.expect("every item was read"))
        .collect()
}

/// Both backends over one sysfs root.
#[derive(Debug, Clone)]
pub struct Host {
    root: SysfsRoot,
    mdev: MdevBackend,
    nvidia: NvidiaBackend,
}

impl Host {
    pub fn new(root: SysfsRoot) -> Self {
        Host {
            mdev: MdevBackend::new(root.clone()),
            nvidia: NvidiaBackend::new(root.clone()),
            root,
        }
    }

    pub fn root(&self) -> &SysfsRoot {
        &self.root
    }

    pub fn mdev(&self) -> &MdevBackend {
        &self.mdev
    }

    pub fn nvidia(&self) -> &NvidiaBackend {
        &self.nvidia
    }

    /// The backend managing `parent`, if it exists. mdev wins if both claim it.
    pub fn backend_of(&self, parent: &ParentName) -> Result<Option<&dyn Backend>> {
        if self.mdev.owns_parent(parent)? {
            Ok(Some(&self.mdev))
        } else if self.nvidia.owns_parent(parent)? {
            Ok(Some(&self.nvidia))
        } else {
            Ok(None)
        }
    }

    fn owner(&self, parent: &ParentName) -> Result<&dyn Backend> {
        self.backend_of(parent)?
            .ok_or_else(|| Error::UnknownParent(parent.to_string()))
    }

    /// Parents of both backends, mdev first.
    pub fn parents(&self) -> Result<Vec<Parent>> {
        let mut all = self.mdev.parents()?;
        for p in self.nvidia.parents()? {
            if !all.iter().any(|q| q.name == p.name) {
                all.push(p);
            }
        }
        Ok(all)
    }

    pub fn parent(&self, name: &ParentName) -> Result<Option<Parent>> {
        match self.backend_of(name)? {
            Some(b) => b.parent(name),
            None => Ok(None),
        }
    }

    pub fn types(&self, parent: &ParentName) -> Result<Vec<MdevType>> {
        self.owner(parent)?.types(parent)
    }

    /// See [`Backend::refresh_availability`]; asks the backend `known` came from.
    pub fn refresh_availability(&self, known: &Parent) -> Result<Option<Parent>> {
        match known.backend {
            BackendKind::Mdev => self.mdev.refresh_availability(known),
            BackendKind::NvidiaVendor => self.nvidia.refresh_availability(known),
        }
    }

    pub fn devices(&self) -> Result<Vec<Device>> {
        let mut all = self.mdev.devices()?;
        all.extend(self.nvidia.devices()?);
        Ok(all)
    }

    pub fn device(&self, uuid: &MdevUuid) -> Result<Option<Device>> {
        match self.mdev.device(uuid)? {
            Some(d) => Ok(Some(d)),
            None => self.nvidia.device(uuid),
        }
    }

    /// The device as [`Host::device`] reads it, where it was last seen (`on`: its parent and
    /// backend) known: an mdev is read where mdevs are, an NVIDIA vGPU from its VF. That spares
    /// the walk of every PCI device that the NVIDIA model needs for a UUID it does not know,
    /// which each read of a removed mdev would otherwise pay.
    pub fn device_on(
        &self,
        uuid: &MdevUuid,
        on: Option<(&ParentName, BackendKind)>,
    ) -> Result<Option<Device>> {
        match on {
            Some((_, BackendKind::Mdev)) => self.mdev.device(uuid),
            Some((vf, BackendKind::NvidiaVendor)) => {
                Ok(self.nvidia.vf_device(vf)?.filter(|d| d.uuid == *uuid))
            }
            None => self.device(uuid),
        }
    }

    /// Creates on the backend owning `parent`. Blocking; see the module documentation.
    pub fn create(&self, parent: &ParentName, type_id: &TypeId, uuid: &MdevUuid) -> Result<Device> {
        self.owner(parent)?.create(parent, type_id, uuid)
    }

    /// Writes a vendor attribute of an mdev (`nvidia/vgpu_params`, vfio-ap's `assign_adapter`),
    /// as mdevctl's `attrs` do after create. `name` is NAME or DIR/NAME; kernel files such as
    /// `remove` are refused so an attribute can never act as another operation.
    /// The current value of a device's vendor attribute (`nvidia/vgpu_params`), for rollback.
    pub fn device_attr(&self, uuid: &MdevUuid, name: &str) -> Result<String> {
        let path = self.device_attr_path(uuid, name)?;
        self.root.read_attr(&path)?.ok_or_else(|| {
            Error::InvalidArgument(format!("device {uuid} has no attribute {name:?}"))
        })
    }

    fn device_attr_path(&self, uuid: &MdevUuid, name: &str) -> Result<SysPath> {
        let parts: Vec<&str> = name.split('/').collect();
        const KERNEL_FILES: &[&str] = &[
            "remove",
            "uevent",
            "driver",
            "subsystem",
            "mdev_type",
            "iommu_group",
            "power",
        ];
        if parts.len() > 2 || KERNEL_FILES.contains(&parts[0]) {
            return Err(Error::InvalidArgument(format!(
                "{name:?} is not a device attribute vgpud may write"
            )));
        }
        let mut path = self.root.at("bus/mdev/devices").join(*uuid);
        for part in parts {
            path = path.join(EntryName::new(part)?);
        }
        Ok(path)
    }

    pub fn set_device_attr(&self, uuid: &MdevUuid, name: &str, value: &str) -> Result<()> {
        let path = self.device_attr_path(uuid, name)?;
        self.root
            .write_attr(&path, value.as_bytes())
            .map_err(|e| match e.open_errno() {
                Some(libc::ENOENT) => {
                    Error::InvalidArgument(format!("device {uuid} has no attribute {name:?}"))
                }
                _ => e.into_error(path.as_path()),
            })
    }

    /// Removes from whichever backend has the device. Blocking; see the module documentation.
    pub fn remove(&self, uuid: &MdevUuid) -> Result<()> {
        match self.mdev.remove(uuid) {
            Err(Error::UnknownDevice(_)) => self.nvidia.remove(uuid),
            other => other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reads shared by both backends: what a parent device is, whatever creates its vGPUs.

/// A parent's identity and topology (no types) from its device directory `dir`, or `None` if
/// the directory is gone.
pub(crate) fn read_parent_base(
    root: &SysfsRoot,
    name: &ParentName,
    dir: &SysPath,
    backend: BackendKind,
) -> Result<Option<Parent>> {
    let Some(sysfs_path) = root.resolve(dir)? else {
        return Ok(None);
    };
    Ok(Some(Parent {
        name: name.clone(),
        sysfs_path,
        backend,
        pci: read_pci_identity(root, dir)?,
        driver: root.read_link_name(&dir.join("driver"))?,
        // The kernel prints -1 when the device has no node.
        numa_node: root.read_i32(&dir.join("numa_node"))?.filter(|n| *n >= 0),
        iommu_group: read_iommu_group(root, &dir.join("iommu_group"))?,
        physfn: read_link_parent(root, &dir.join("physfn"))?,
        virtfns: read_virtfns(root, dir)?,
        types: Vec::new(),
    }))
}

/// The PCI ids, or `None` for a device without them (a virtual parent such as mtty).
fn read_pci_identity(root: &SysfsRoot, dir: &SysPath) -> Result<Option<PciIdentity>> {
    let vendor = read_hex_u16(root, &dir.join("vendor"))?;
    let device = read_hex_u16(root, &dir.join("device"))?;
    let class = root.read_hex(&dir.join("class"))?;
    let (Some(vendor), Some(device), Some(class)) = (vendor, device, class) else {
        return Ok(None);
    };
    Ok(Some(PciIdentity {
        vendor,
        device,
        class,
        subsystem_vendor: read_hex_u16(root, &dir.join("subsystem_vendor"))?,
        subsystem_device: read_hex_u16(root, &dir.join("subsystem_device"))?,
    }))
}

fn read_hex_u16(root: &SysfsRoot, path: &SysPath) -> Result<Option<u16>> {
    match root.read_hex(path)? {
        None => Ok(None),
        Some(v) => u16::try_from(v).map(Some).map_err(|_| {
            Error::bad_attribute(path.as_path(), format!("0x{v:x} does not fit 16 bits"))
        }),
    }
}

/// The group number from an `iommu_group` link.
pub(crate) fn read_iommu_group(root: &SysfsRoot, link: &SysPath) -> Result<Option<u32>> {
    group_number(link, root.read_link_name(link)?)
}

/// The group number an `iommu_group` link at `link` names, if there is one.
pub(crate) fn group_number(link: &SysPath, name: Option<String>) -> Result<Option<u32>> {
    match name {
        None => Ok(None),
        Some(name) => name.parse().map(Some).map_err(|_| {
            Error::bad_attribute(
                link.as_path(),
                format!("link to {name:?}, not a group number"),
            )
        }),
    }
}

/// The device a link such as `physfn` or `virtfn3` points to, as a parent name.
fn read_link_parent(root: &SysfsRoot, link: &SysPath) -> Result<Option<ParentName>> {
    match root.read_link_name(link)? {
        None => Ok(None),
        Some(name) => ParentName::new(name)
            .map(Some)
            .map_err(|e| Error::bad_attribute(link.as_path(), e.to_string())),
    }
}

/// `virtfn<N>` entry names in numeric order of N.
pub(crate) fn virtfn_entries(names: &[String]) -> Vec<&str> {
    let mut found: Vec<(u32, &str)> = names
        .iter()
        .filter_map(|n| {
            let index = n.strip_prefix("virtfn")?;
            let all_digits = !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit());
            Some((index.parse().ok().filter(|_| all_digits)?, n.as_str()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, n)| n).collect()
}

fn read_virtfns(root: &SysfsRoot, dir: &SysPath) -> Result<Vec<ParentName>> {
    let names = root.list_dir(dir)?;
    let mut vfs = Vec::new();
    for entry in virtfn_entries(&names) {
        let entry = EntryName::new(entry)?;
        if let Some(vf) = read_link_parent(root, &dir.join(entry))? {
            vfs.push(vf);
        }
    }
    Ok(vfs)
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn virtfns_sort_numerically() {
        let names: Vec<String> = [
            "virtfn10", "virtfn2", "virtfnx", "virtfn", "vendor", "virtfn0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(virtfn_entries(&names), ["virtfn0", "virtfn2", "virtfn10"]);
    }

    #[test]
    fn host_merges_both_backends() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        fx.mtty();
        fx.nvidia_vendor_vf(VF_L40S, "NVIDIA L40S-1Q  1147\n", 0);
        let host = Host::new(fx.root());
        let names: Vec<String> = host
            .parents()
            .unwrap()
            .into_iter()
            .map(|p| format!("{}:{}", p.name, p.backend))
            .collect();
        assert_eq!(
            names,
            [
                format!("{GPU}:mdev"),
                "mtty:mdev".to_string(),
                format!("{VF_L40S}:nvidia-vendor-sysfs")
            ]
        );
    }

    #[test]
    fn host_dispatches_create_by_parent() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        fx.nvidia_vendor_vf(VF_L40S, "NVIDIA L40S-1Q  1147\n", 0);
        let host = Host::new(fx.root());
        let vf = ParentName::new(VF_L40S).unwrap();
        let uuid = vf_device_uuid(&vf);
        let ty = TypeId::new("nvidia-1147").unwrap();
        let d = host.create(&vf, &ty, &uuid).unwrap();
        assert_eq!(d.backend, BackendKind::NvidiaVendor);
        let written = fx.read(&format!("{VF_L40S_DEV}/nvidia/current_vgpu_type"));
        assert_eq!(written, "1147");
        // The mdev parent's create file was not touched.
        let create = fx.read(&format!("{GPU_DEV}/mdev_supported_types/nvidia-231/create"));
        assert_eq!(create, "");
    }

    #[test]
    fn host_dispatches_mdev_create_and_remove() {
        let fx = Fixture::new();
        fx.gpu_with_two_types();
        fx.nvidia_vendor_vf(VF_L40S, "NVIDIA L40S-1Q  1147\n", 0);
        fx.mdev_device(GPU_DEV, U1, None, 100);
        let host = Host::new(fx.root());
        let uuid = MdevUuid::parse(U1).unwrap();
        let ty = TypeId::new("nvidia-231").unwrap();
        let d = host
            .create(&ParentName::new(GPU).unwrap(), &ty, &uuid)
            .unwrap();
        assert_eq!(d.backend, BackendKind::Mdev);
        host.remove(&uuid).unwrap();
        assert_eq!(fx.read(&format!("{GPU_DEV}/{U1}/remove")), "1");
    }

    #[test]
    fn host_removes_a_vendor_vgpu() {
        let fx = Fixture::new();
        fx.mtty();
        fx.nvidia_vendor_vf(VF_L40S, "", 1147);
        let host = Host::new(fx.root());
        let uuid = vf_device_uuid(&ParentName::new(VF_L40S).unwrap());
        assert_eq!(host.devices().unwrap().len(), 1);
        assert!(host.device(&uuid).unwrap().is_some());
        host.remove(&uuid).unwrap();
        let now = fx.read(&format!("{VF_L40S_DEV}/nvidia/current_vgpu_type"));
        assert!(now.starts_with('0'), "{now:?}");
    }

    #[test]
    fn host_unknown_parent() {
        let fx = Fixture::new();
        let host = Host::new(fx.root());
        let err = host
            .create(
                &ParentName::new("0000:99:00.0").unwrap(),
                &TypeId::new("nvidia-1").unwrap(),
                &MdevUuid::new_v4(),
            )
            .unwrap_err();
        assert!(matches!(err, Error::UnknownParent(_)), "{err:?}");
        let err = host.types(&ParentName::new("nope").unwrap()).unwrap_err();
        assert!(matches!(err, Error::UnknownParent(_)), "{err:?}");
    }

    #[test]
    fn host_remove_unknown_device() {
        let fx = Fixture::new();
        fx.mtty();
        let host = Host::new(fx.root());
        let err = host.remove(&MdevUuid::new_v4()).unwrap_err();
        assert!(matches!(err, Error::UnknownDevice(_)), "{err:?}");
    }
}
