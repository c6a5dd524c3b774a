//! NVIDIA's vendor-sysfs model (KERNEL-ABI.md §2, model 3: Ada/Hopper, vGPU 17+, no mdev):
//! each SR-IOV VF with `nvidia/creatable_vgpu_types` is a parent holding at most one vGPU, made
//! by writing a type id to `nvidia/current_vgpu_type` and deleted by writing "0".
//!
//! Such a vGPU has no UUID in the kernel; vgpud names it by its VF with `vf_device_uuid`.

use std::path::Path;

use crate::backend::sysfs::{SysPath, SysfsRoot, WriteError};
use crate::backend::{read_parent_base, Backend};
use vgpud_model::error::{Error, Result};
use vgpud_model::{BackendKind, Device, MdevType, MdevUuid, Parent, ParentName, TypeId};

/// Namespace of the version 5 UUIDs naming vendor-sysfs vGPUs by their VF's PCI address.
/// Fixed forever: changing it renames every such device and breaks stored definitions.
pub const VF_UUID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0xa576305b_1784_4206_8121_d464797ef2a5);

/// The UUID vgpud gives the vGPU on `vf` (version 5 of the VF's address in `VF_UUID_NAMESPACE`).
pub fn vf_device_uuid(vf: &ParentName) -> MdevUuid {
    MdevUuid::from_uuid(uuid::Uuid::new_v5(
        &VF_UUID_NAMESPACE,
        vf.as_str().as_bytes(),
    ))
}

/// The type id vgpud uses for NVIDIA's numeric vGPU type `id`.
fn type_id_for(id: u32) -> Result<TypeId> {
    TypeId::new(format!("nvidia-{id}"))
}

/// NVIDIA's numeric id from a type id "nvidia-<n>" (n > 0).
fn numeric_type(type_id: &TypeId) -> Option<u32> {
    let digits = type_id.as_str().strip_prefix("nvidia-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n != 0)
}

/// One line of `creatable_vgpu_types` / `supported_vgpu_types`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgpuTypeEntry {
    pub id: u32,
    pub name: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Blank,
    Header,
    Type(VgpuTypeEntry),
    Malformed,
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses "1414 : NVIDIA H200X-1-18C" and "NVIDIA L40S-1Q  1147"; a header such as
/// "ID    : vGPU Name" is recognized by having no numeric field.
fn parse_line(line: &str) -> Line {
    let t = line.trim();
    if t.is_empty() {
        return Line::Blank;
    }
    let entry = |id: &str, name: &str| -> Option<Line> {
        let id: u32 = all_digits(id).then(|| id.parse().ok()).flatten()?;
        let name = name.trim();
        (id != 0 && !name.is_empty()).then(|| {
            Line::Type(VgpuTypeEntry {
                id,
                name: name.to_owned(),
            })
        })
    };
    if let Some((left, right)) = t.split_once(':') {
        if let Some(line) = entry(left.trim(), right) {
            return line;
        }
    }
    if let Some((left, right)) = t.rsplit_once(char::is_whitespace) {
        if let Some(line) = entry(right, left) {
            return line;
        }
    }
    let mut fields = t
        .split(|c: char| c == ':' || c.is_whitespace())
        .filter(|f| !f.is_empty());
    let numeric_field = fields.clone().any(all_digits);
    let header_word =
        fields.any(|f| f.eq_ignore_ascii_case("id") || f.eq_ignore_ascii_case("name"));
    if !numeric_field && header_word {
        Line::Header
    } else {
        Line::Malformed
    }
}

/// The entries of a type list read from `source`; malformed lines are skipped with a warning,
/// and a repeated id keeps its first name.
pub fn parse_vgpu_types(text: &str, source: &Path) -> Vec<VgpuTypeEntry> {
    let mut entries: Vec<VgpuTypeEntry> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        match parse_line(line) {
            Line::Blank | Line::Header => {}
            Line::Type(e) => {
                if !entries.iter().any(|known| known.id == e.id) {
                    entries.push(e);
                }
            }
            Line::Malformed => tracing::warn!(
                file = %source.display(),
                line = number + 1,
                text = %line.chars().take(80).collect::<String>(),
                "skipping a malformed vGPU type line"
            ),
        }
    }
    entries
}

/// What a VF's vendor files say, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VfState {
    creatable: Vec<VgpuTypeEntry>,
    /// `None` when the driver has no `supported_vgpu_types` (not every branch has it).
    supported: Option<Vec<VgpuTypeEntry>>,
    /// 0 = no vGPU.
    current: u32,
}

impl VfState {
    fn name_of(&self, id: u32) -> Option<&str> {
        self.supported
            .iter()
            .flatten()
            .chain(&self.creatable)
            .find(|e| e.id == id)
            .map(|e| e.name.as_str())
    }

    fn is_known(&self, id: u32) -> bool {
        self.name_of(id).is_some() || self.current == id
    }

    /// The VF's types: every supported one (or every creatable one when the driver lists no
    /// supported types), plus any creatable and the current one missing from that list.
    /// A type is available only while the VF is empty and the driver lists it as creatable.
    fn types(&self, vf: &ParentName) -> Result<Vec<MdevType>> {
        let mut listed: Vec<(u32, Option<&str>)> = Vec::new();
        let base = self.supported.as_ref().unwrap_or(&self.creatable);
        for e in base.iter().chain(&self.creatable) {
            if !listed.iter().any(|(id, _)| *id == e.id) {
                listed.push((e.id, Some(&e.name)));
            }
        }
        if self.current != 0 && !listed.iter().any(|(id, _)| *id == self.current) {
            listed.push((self.current, None));
        }
        listed
            .into_iter()
            .map(|(id, name)| {
                let creatable = self.creatable.iter().any(|e| e.id == id);
                Ok(MdevType {
                    id: type_id_for(id)?,
                    name: name.map(str::to_owned),
                    description: None,
                    device_api: "vfio-pci".to_owned(),
                    available_instances: u32::from(creatable && self.current == 0),
                    parent: vf.clone(),
                })
            })
            .collect()
    }
}

/// VFs driven through NVIDIA's vendor sysfs.
#[derive(Debug, Clone)]
pub struct NvidiaBackend {
    root: SysfsRoot,
}

impl NvidiaBackend {
    pub fn new(root: SysfsRoot) -> Self {
        NvidiaBackend { root }
    }

    fn vf_dir(&self, vf: &ParentName) -> SysPath {
        self.root.at("bus/pci/devices").join(vf.clone())
    }

    fn current_path(&self, vf: &ParentName) -> SysPath {
        self.vf_dir(vf).join("nvidia/current_vgpu_type")
    }

    /// The VF's vendor files, or `None` if it has none (not this model, or gone).
    fn read_state(&self, vf: &ParentName) -> Result<Option<VfState>> {
        let dir = self.vf_dir(vf).join("nvidia");
        let creatable_path = dir.join("creatable_vgpu_types");
        let Some(creatable) = self.root.read_attr(&creatable_path)? else {
            return Ok(None);
        };
        let supported_path = dir.join("supported_vgpu_types");
        let supported = self.root.read_attr(&supported_path)?;
        let current_path = dir.join("current_vgpu_type");
        let current = match self.root.read_u32(&current_path)? {
            Some(c) => c,
            None if self.root.exists(&dir)? => {
                return Err(Error::bad_attribute(current_path.as_path(), "missing"))
            }
            None => return Ok(None),
        };
        Ok(Some(VfState {
            creatable: parse_vgpu_types(&creatable, creatable_path.as_path()),
            supported: supported.map(|s| parse_vgpu_types(&s, supported_path.as_path())),
            current,
        }))
    }

    /// Every PCI device that has the vendor files; unreadable entries are skipped with a warning.
    fn vendor_vfs(&self) -> Result<Vec<ParentName>> {
        let mut vfs = Vec::new();
        for entry in self.root.list_dir(&self.root.at("bus/pci/devices"))? {
            let vf = match ParentName::new(entry) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a bus/pci/devices entry");
                    continue;
                }
            };
            match self.owns_parent(&vf) {
                Ok(true) => vfs.push(vf),
                Ok(false) => {}
                Err(e) => tracing::warn!(vf = %vf, error = %e, "skipping an unreadable PCI device"),
            }
        }
        Ok(vfs)
    }

    /// The vGPU held by `vf`, if any.
    pub(super) fn vf_device(&self, vf: &ParentName) -> Result<Option<Device>> {
        let Some(state) = self.read_state(vf)? else {
            return Ok(None);
        };
        if state.current == 0 {
            return Ok(None);
        }
        let Some(base) =
            read_parent_base(&self.root, vf, &self.vf_dir(vf), BackendKind::NvidiaVendor)?
        else {
            return Ok(None);
        };
        Ok(Some(Device {
            uuid: vf_device_uuid(vf),
            parent: vf.clone(),
            type_id: Some(type_id_for(state.current)?),
            iommu_group: base.iommu_group,
            driver: base.driver,
            active: true,
            sysfs_path: base.sysfs_path,
            backend: BackendKind::NvidiaVendor,
        }))
    }

    /// The VF whose vGPU is named `uuid`.
    /// The UUID is derived from the VF's name, so only the one entry whose name matches is
    /// checked for the vendor files (not every PCI device of the host).
    fn vf_of(&self, uuid: &MdevUuid) -> Result<Option<ParentName>> {
        for entry in self.root.list_dir(&self.root.at("bus/pci/devices"))? {
            let Ok(vf) = ParentName::new(entry) else {
                continue;
            };
            if vf_device_uuid(&vf) == *uuid {
                return Ok(self.owns_parent(&vf)?.then_some(vf));
            }
        }
        Ok(None)
    }
}

impl Backend for NvidiaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::NvidiaVendor
    }

    fn owns_parent(&self, parent: &ParentName) -> Result<bool> {
        self.root
            .exists(&self.vf_dir(parent).join("nvidia/creatable_vgpu_types"))
    }

    fn parents(&self) -> Result<Vec<Parent>> {
        let vfs = self.vendor_vfs()?;
        let read = super::read_in_parallel(&vfs, |vf| self.parent(vf));
        let mut parents = Vec::new();
        for (vf, result) in vfs.iter().zip(read) {
            match result {
                Ok(Some(p)) => parents.push(p),
                Ok(None) => {}
                Err(e) => tracing::warn!(parent = %vf, error = %e, "skipping an unreadable VF"),
            }
        }
        Ok(parents)
    }

    fn parent(&self, name: &ParentName) -> Result<Option<Parent>> {
        let Some(state) = self.read_state(name)? else {
            return Ok(None);
        };
        let dir = self.vf_dir(name);
        let Some(mut parent) = read_parent_base(&self.root, name, &dir, BackendKind::NvidiaVendor)?
        else {
            return Ok(None);
        };
        parent.types = state.types(name)?;
        Ok(Some(parent))
    }

    fn types(&self, parent: &ParentName) -> Result<Vec<MdevType>> {
        match self.read_state(parent)? {
            Some(state) => state.types(parent),
            None => Err(Error::UnknownParent(parent.to_string())),
        }
    }

    fn devices(&self) -> Result<Vec<Device>> {
        let mut devices = Vec::new();
        for vf in self.vendor_vfs()? {
            match self.vf_device(&vf) {
                Ok(Some(d)) => devices.push(d),
                Ok(None) => {}
                Err(e) => tracing::warn!(parent = %vf, error = %e, "skipping an unreadable VF"),
            }
        }
        Ok(devices)
    }

    fn device(&self, uuid: &MdevUuid) -> Result<Option<Device>> {
        match self.vf_of(uuid)? {
            Some(vf) => self.vf_device(&vf),
            None => Ok(None),
        }
    }

    fn create(&self, parent: &ParentName, type_id: &TypeId, uuid: &MdevUuid) -> Result<Device> {
        let Some(state) = self.read_state(parent)? else {
            return Err(Error::UnknownParent(parent.to_string()));
        };
        let unknown_type = || Error::UnknownType {
            parent: parent.to_string(),
            type_id: type_id.to_string(),
        };
        let id = numeric_type(type_id).ok_or_else(unknown_type)?;
        let expected = vf_device_uuid(parent);
        if *uuid != expected {
            return Err(Error::Unsupported(format!(
                "vGPUs in the NVIDIA vendor-sysfs model are named by their VF; \
                 use UUID {expected} for {parent}, or none"
            )));
        }
        if state.current != 0 {
            return Err(Error::AlreadyExists(expected.to_string()));
        }
        // Without a supported list an unlisted type may just be full: let the driver say.
        if state.supported.is_some() && !state.is_known(id) {
            return Err(unknown_type());
        }
        let path = self.current_path(parent);
        if let Err(err) = self.root.write_attr(&path, id.to_string().as_bytes()) {
            return Err(map_create_error(err, path.as_path(), parent, type_id));
        }
        self.vf_device(parent)?.ok_or_else(|| {
            Error::Failed(format!(
                "the driver accepted type {type_id} on {parent} but reports no vGPU there"
            ))
        })
    }

    fn remove(&self, uuid: &MdevUuid) -> Result<()> {
        let Some(vf) = self.vf_of(uuid)? else {
            return Err(Error::UnknownDevice(uuid.to_string()));
        };
        if self.read_state(&vf)?.map(|s| s.current).unwrap_or(0) == 0 {
            return Err(Error::UnknownDevice(uuid.to_string()));
        }
        let path = self.current_path(&vf);
        match self.root.write_attr(&path, b"0") {
            Ok(()) => Ok(()),
            Err(err) => map_remove_error(err, path.as_path(), uuid, &vf),
        }
    }
}

/// The meaning of a failed write of a type id to `current_vgpu_type`.
fn map_create_error(err: WriteError, path: &Path, vf: &ParentName, type_id: &TypeId) -> Error {
    if err.open_errno() == Some(libc::ENOENT) {
        return Error::UnknownParent(vf.to_string());
    }
    match err.write_errno() {
        None => err.into_error(path),
        // The type is not creatable on this VF now (capacity used elsewhere on the GPU).
        Some(errno @ libc::EINVAL) => Error::NoCapacity {
            parent: vf.to_string(),
            type_id: type_id.to_string(),
            errno,
        },
        Some(libc::EBUSY) => Error::Busy(format!("VF {vf} is busy")),
        Some(libc::ENODEV) => Error::ParentGoingAway(vf.to_string()),
        Some(errno) => Error::DriverRefused { errno, hint: None },
    }
}

/// The meaning of a failed write of "0" to `current_vgpu_type`; `Ok` if the VF is going away.
fn map_remove_error(err: WriteError, path: &Path, uuid: &MdevUuid, vf: &ParentName) -> Result<()> {
    if err.open_errno() == Some(libc::ENOENT) {
        return Err(Error::UnknownDevice(uuid.to_string()));
    }
    match err.write_errno() {
        None => Err(err.into_error(path)),
        Some(libc::ENODEV) => Ok(()),
        // A VM has the VF open.
        Some(libc::EBUSY) => Err(Error::Busy(format!(
            "device {uuid} on VF {vf} is busy (a VM holds the VF)"
        ))),
        Some(errno) => Err(Error::DriverRefused { errno, hint: None }),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::backend::fixture::*;

    fn backend(fx: &Fixture) -> NvidiaBackend {
        NvidiaBackend::new(fx.root())
    }

    fn vf() -> ParentName {
        ParentName::new(VF_L40S).unwrap()
    }

    fn entry(id: u32, name: &str) -> VgpuTypeEntry {
        VgpuTypeEntry {
            id,
            name: name.to_owned(),
        }
    }

    const COLON_FORMAT: &str =
        "ID    : vGPU Name\n1414 : NVIDIA H200X-1-18C\n\n1415 : NVIDIA H200X-2-35C\n";
    const SPACE_FORMAT: &str = "NVIDIA L40S-1Q  1147\nNVIDIA L40S-2Q  1148\n";

    #[test]
    fn parses_colon_format_with_header() {
        let got = parse_vgpu_types(COLON_FORMAT, Path::new("x"));
        assert_eq!(
            got,
            [
                entry(1414, "NVIDIA H200X-1-18C"),
                entry(1415, "NVIDIA H200X-2-35C")
            ]
        );
    }

    #[test]
    fn parses_name_then_id_format() {
        let got = parse_vgpu_types(SPACE_FORMAT, Path::new("x"));
        assert_eq!(
            got,
            [entry(1147, "NVIDIA L40S-1Q"), entry(1148, "NVIDIA L40S-2Q")]
        );
    }

    #[test]
    fn skips_malformed_lines_without_panicking() {
        for bad in [
            "garbage",
            "1414 :",
            ": NVIDIA X",
            "0 : NVIDIA X",
            "NVIDIA X 99999999999",
            "::",
            "1414",
        ] {
            assert_eq!(parse_line(bad), Line::Malformed, "{bad:?}");
        }
        let got = parse_vgpu_types("garbage\n1414 : NVIDIA X\n\u{0}\u{ff}\n", Path::new("x"));
        assert_eq!(got, [entry(1414, "NVIDIA X")]);
    }

    #[test]
    fn recognizes_headers() {
        assert_eq!(parse_line("ID    : vGPU Name"), Line::Header);
        assert_eq!(parse_line("vGPU Name   ID"), Line::Header);
        assert_eq!(parse_line("   "), Line::Blank);
    }

    #[test]
    fn repeated_id_keeps_first_name() {
        let got = parse_vgpu_types("1 : A\n1 : B\n", Path::new("x"));
        assert_eq!(got, [entry(1, "A")]);
    }

    #[test]
    fn type_id_round_trip() {
        assert_eq!(numeric_type(&type_id_for(1147).unwrap()), Some(1147));
        for bad in ["nvidia-0", "nvidia-", "nvidia-x1", "mtty-1", "nvidia-+1"] {
            assert_eq!(numeric_type(&TypeId::new(bad).unwrap()), None, "{bad}");
        }
    }

    #[test]
    fn vf_uuid_is_stable_and_v5() {
        let u = vf_device_uuid(&vf());
        assert_eq!(u, vf_device_uuid(&vf()));
        assert_eq!(u.as_uuid().get_version_num(), 5);
        assert_ne!(u, vf_device_uuid(&ParentName::new("0000:c1:00.5").unwrap()));
    }

    #[test]
    fn empty_vf_is_a_parent_with_available_types() {
        let fx = Fixture::new();
        fx.nvidia_vendor_vf(VF_L40S, SPACE_FORMAT, 0);
        let parents = backend(&fx).parents().unwrap();
        assert_eq!(parents.len(), 1, "the PF has no vendor files");
        let p = &parents[0];
        assert_eq!(p.name, vf());
        assert_eq!(p.backend, BackendKind::NvidiaVendor);
        assert_eq!(p.physfn, Some(ParentName::new("0000:c1:00.0").unwrap()));
        assert_eq!(p.pci.as_ref().map(|i| i.device), Some(0x26b9));
        assert_eq!(p.iommu_group, Some(41));
        assert_eq!(p.sysfs_path, fx.root().canonical().join(VF_L40S_DEV));
        let t = &p.types[0];
        assert_eq!(t.id.as_str(), "nvidia-1147");
        assert_eq!(t.name.as_deref(), Some("NVIDIA L40S-1Q"));
        assert_eq!(
            (t.device_api.as_str(), t.available_instances),
            ("vfio-pci", 1)
        );
        assert!(backend(&fx).devices().unwrap().is_empty());
    }

    #[test]
    fn busy_vf_holds_a_device() {
        let fx = Fixture::new();
        fx.nvidia_vendor_vf(VF_L40S, "", 1147);
        let b = backend(&fx);
        let devices = b.devices().unwrap();
        assert_eq!(devices.len(), 1);
        let d = &devices[0];
        assert_eq!(d.uuid, vf_device_uuid(&vf()));
        assert_eq!(d.parent, vf());
        assert_eq!(d.type_id.as_ref().map(TypeId::as_str), Some("nvidia-1147"));
        assert_eq!((d.iommu_group, d.active), (Some(41), true));
        assert_eq!(d.backend, BackendKind::NvidiaVendor);
        assert_eq!(b.device(&d.uuid).unwrap().as_ref(), Some(d));
        // The current type is listed even though nothing is creatable now.
        let types = b.types(&vf()).unwrap();
        assert_eq!(types.len(), 1);
        assert_eq!(
            (types[0].name.as_deref(), types[0].available_instances),
            (None, 0)
        );
    }

    #[test]
    fn supported_list_gives_every_type() {
        let fx = Fixture::new();
        fx.nvidia_vendor_vf(VF_L40S, "NVIDIA L40S-2Q  1148\n", 0);
        fx.write(
            &format!("{VF_L40S_DEV}/nvidia/supported_vgpu_types"),
            SPACE_FORMAT,
        );
        let types = backend(&fx).types(&vf()).unwrap();
        let got: Vec<_> = types
            .iter()
            .map(|t| (t.id.to_string(), t.available_instances))
            .collect();
        assert_eq!(got, [("nvidia-1147".into(), 0), ("nvidia-1148".into(), 1)]);
    }

    #[test]
    fn create_writes_the_numeric_id() {
        let fx = Fixture::new();
        fx.nvidia_vendor_vf(VF_L40S, COLON_FORMAT, 0);
        let uuid = vf_device_uuid(&vf());
        let d = backend(&fx)
            .create(&vf(), &TypeId::new("nvidia-1414").unwrap(), &uuid)
            .unwrap();
        // The fixture keeps the old tail ("0\n" is shorter than the id, so none is left).
        assert_eq!(
            fx.read(&format!("{VF_L40S_DEV}/nvidia/current_vgpu_type")),
            "1414"
        );
        assert_eq!(d.uuid, uuid);
    }

    #[test]
    fn create_with_another_uuid_is_unsupported() {
        let fx = Fixture::new();
        fx.nvidia_vendor_vf(VF_L40S, COLON_FORMAT, 0);
        let err = backend(&fx)
            .create(
                &vf(),
                &TypeId::new("nvidia-1414").unwrap(),
                &MdevUuid::new_v4(),
            )
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
        assert!(err.to_string().contains(&vf_device_uuid(&vf()).to_string()));
    }

    #[test]
    fn create_on_busy_vf_already_exists() {
        let fx = Fixture::new();
        fx.nvidia_vendor_vf(VF_L40S, "", 1414);
        let err = backend(&fx)
            .create(
                &vf(),
                &TypeId::new("nvidia-1414").unwrap(),
                &vf_device_uuid(&vf()),
            )
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
    }

    #[test]
    fn create_unknown_type() {
        let fx = Fixture::new();
        fx.nvidia_vendor_vf(VF_L40S, COLON_FORMAT, 0);
        fx.write(
            &format!("{VF_L40S_DEV}/nvidia/supported_vgpu_types"),
            COLON_FORMAT,
        );
        let b = backend(&fx);
        let uuid = vf_device_uuid(&vf());
        for t in ["nvidia-9999", "mtty-1"] {
            let err = b
                .create(&vf(), &TypeId::new(t).unwrap(), &uuid)
                .unwrap_err();
            assert!(matches!(err, Error::UnknownType { .. }), "{t}: {err:?}");
        }
    }

    #[test]
    fn remove_writes_zero() {
        let fx = Fixture::new();
        fx.nvidia_vendor_vf(VF_L40S, "", 1147);
        backend(&fx).remove(&vf_device_uuid(&vf())).unwrap();
        let now = fx.read(&format!("{VF_L40S_DEV}/nvidia/current_vgpu_type"));
        assert!(now.starts_with('0'), "{now:?}");
    }

    #[test]
    fn remove_of_empty_vf_is_unknown_device() {
        let fx = Fixture::new();
        fx.nvidia_vendor_vf(VF_L40S, SPACE_FORMAT, 0);
        let err = backend(&fx).remove(&vf_device_uuid(&vf())).unwrap_err();
        assert!(matches!(err, Error::UnknownDevice(_)), "{err:?}");
    }

    #[test]
    fn malformed_current_type_names_the_path() {
        let fx = Fixture::new();
        fx.nvidia_vendor_vf(VF_L40S, SPACE_FORMAT, 0);
        fx.write(&format!("{VF_L40S_DEV}/nvidia/current_vgpu_type"), "none\n");
        let err = backend(&fx).types(&vf()).unwrap_err();
        assert!(
            err.to_string().contains("nvidia/current_vgpu_type"),
            "{err}"
        );
    }

    fn on_write(errno: i32) -> WriteError {
        WriteError::Write(io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn create_errno_mapping() {
        let p = Path::new("/sys/x");
        let t = TypeId::new("nvidia-1147").unwrap();
        let m = |errno| map_create_error(on_write(errno), p, &vf(), &t);
        assert!(matches!(
            m(libc::EINVAL),
            Error::NoCapacity {
                errno: libc::EINVAL,
                ..
            }
        ));
        assert!(matches!(m(libc::EBUSY), Error::Busy(_)));
        assert!(matches!(m(libc::ENODEV), Error::ParentGoingAway(_)));
        assert!(matches!(
            m(libc::EIO),
            Error::DriverRefused {
                errno: libc::EIO,
                ..
            }
        ));
        let open = WriteError::Open(io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(
            map_create_error(open, p, &vf(), &t),
            Error::UnknownParent(_)
        ));
    }

    #[test]
    fn remove_errno_mapping() {
        let p = Path::new("/sys/x");
        let u = vf_device_uuid(&vf());
        let m = |errno| map_remove_error(on_write(errno), p, &u, &vf());
        assert!(matches!(m(libc::EBUSY), Err(Error::Busy(_))));
        assert!(m(libc::ENODEV).is_ok());
        assert!(matches!(m(libc::EPERM), Err(Error::DriverRefused { .. })));
    }
}
