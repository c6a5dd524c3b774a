//! Device profiles for the simulator: what one kind of GPU (or sample driver) looks like.
//! Built-in profiles are TOML files under src/sim/profiles/, the same format users write for
//! custom hosts (`--profile-file`), so the format is documented by working examples.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The guest PCI function of a profile is the VMM's description type.
pub use vgpud_model::guest::{GuestBar, GuestPci};

/// A host description: the `[[device]]` tables of a profile file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    #[serde(default)]
    pub device: Vec<DeviceTemplate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A PCI function under /sys/devices/pciDDDD:BB/.
    Pci,
    /// A virtual device under /sys/devices/virtual/<class>/<class> (the mdev samples).
    Virtual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ParentModel {
    /// mdev types on this device itself.
    #[default]
    Mdev,
    /// mdev types on each SR-IOV virtual function (NVIDIA Ampere, vGPU <= 16).
    MdevVfs,
    /// NVIDIA's vendor sysfs on each VF (vGPU 17+, no mdev).
    NvidiaVendor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VendorListFormat {
    /// `1147  : NVIDIA L40S-1Q` under an `ID    : vGPU Name` header.
    #[default]
    IdName,
    /// `NVIDIA L40S-1Q  1147`, printed by some driver branches.
    NameId,
}

/// One kind of device, instantiated `count` times.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTemplate {
    /// Name used with `--profile NAME[:COUNT]`.
    pub profile: String,
    pub kind: DeviceKind,
    #[serde(default = "one")]
    pub count: u32,
    /// Virtual devices: the class directory (and device name).
    #[serde(default)]
    pub class: Option<String>,
    /// PCI devices: a fixed address (only with count = 1); otherwise one is allocated.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub vendor: u16,
    #[serde(default)]
    pub device: u16,
    #[serde(default)]
    pub class_code: u32,
    #[serde(default)]
    pub subsystem_vendor: u16,
    #[serde(default)]
    pub subsystem_device: u16,
    /// Driver bound to the PCI function(s).
    #[serde(default)]
    pub driver: Option<String>,
    /// The vendor's mdev driver, which binds each mdev.
    #[serde(default)]
    pub mdev_driver: Option<String>,
    #[serde(default)]
    pub model: ParentModel,
    #[serde(default)]
    pub vfs: u32,
    /// PCI devices: a PCI Express function (4096-byte config space with extended capabilities)
    /// rather than conventional PCI (256 bytes).
    #[serde(default = "yes")]
    pub pcie: bool,
    #[serde(default)]
    pub vf_device: Option<u16>,
    /// NUMA node; absent = spread PCI devices over nodes 0 and 1, virtual ones have none (-1).
    #[serde(default)]
    pub numa_node: Option<i32>,
    #[serde(default)]
    pub vendor_format: VendorListFormat,
    /// Writable vendor attributes of every mdev (`nvidia/vgpu_params`), set after create.
    #[serde(default)]
    pub device_attributes: Vec<String>,
    /// Read-only vendor files of every mdev (`vendor/sample_mdev_dev`), `{uuid}` replaced.
    #[serde(default)]
    pub device_files: BTreeMap<String, String>,
    pub pool: PoolSpec,
    #[serde(default)]
    pub types: Vec<TypeSpec>,
    pub guest: GuestPci,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// The capacity shared by all types of a device (and all VFs of a physical GPU).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub capacity: u64,
    /// What the vendor driver's probe returns when the pool is used up.
    pub exhausted_errno: String,
    /// NVIDIA before Ampere: one type per physical GPU at a time.
    #[serde(default)]
    pub one_type: bool,
    /// The mdev core's per-parent instance counter (6.1+), answered with EUSERS.
    #[serde(default)]
    pub per_parent_limit: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeSpec {
    /// Directory name under mdev_supported_types (for nvidia-vendor: the numeric id).
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "vfio_pci")]
    pub device_api: String,
    /// Units of the pool one instance takes.
    pub cost: u64,
}

fn vfio_pci() -> String {
    "vfio-pci".to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile {0:?}; built-in profiles are {list}", list = BUILTIN_NAMES.join(", "))]
    Unknown(String),
    #[error("profile count in {0:?} must be a number from 1 to 4096")]
    BadCount(String),
    #[error("cannot read profile file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("profile file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("profile {profile}: {message}")]
    Invalid { profile: String, message: String },
}

pub const BUILTIN_NAMES: &[&str] = &[
    "mtty",
    "mdpy",
    "mbochs",
    "i915-gvtg",
    "nvidia-t4",
    "nvidia-a100",
    "nvidia-l40s",
];

fn builtin_text(name: &str) -> Option<&'static str> {
    Some(match name {
        "mtty" => include_str!("profiles/mtty.toml"),
        "mdpy" => include_str!("profiles/mdpy.toml"),
        "mbochs" => include_str!("profiles/mbochs.toml"),
        "i915-gvtg" => include_str!("profiles/i915-gvtg.toml"),
        "nvidia-t4" => include_str!("profiles/nvidia-t4.toml"),
        "nvidia-a100" => include_str!("profiles/nvidia-a100.toml"),
        "nvidia-l40s" => include_str!("profiles/nvidia-l40s.toml"),
        _ => return None,
    })
}

/// Parses `NAME[:COUNT]` into the templates it stands for.
pub fn builtin(spec: &str) -> Result<Vec<DeviceTemplate>, ProfileError> {
    let (name, count) = match spec.split_once(':') {
        Some((n, c)) => {
            let count: u32 = c
                .parse()
                .map_err(|_| ProfileError::BadCount(spec.to_owned()))?;
            if !(1..=4096).contains(&count) {
                return Err(ProfileError::BadCount(spec.to_owned()));
            }
            (n, count)
        }
        None => (spec, 1),
    };
    let text = builtin_text(name).ok_or_else(|| ProfileError::Unknown(name.to_owned()))?;
    let mut templates = parse(text, &format!("<built-in {name}>"))?;
    for t in &mut templates {
        t.count = count;
    }
    validate_all(&templates)?;
    Ok(templates)
}

pub fn load_file(path: &Path) -> Result<Vec<DeviceTemplate>, ProfileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: shown.clone(),
        source,
    })?;
    let templates = parse(&text, &shown)?;
    validate_all(&templates)?;
    Ok(templates)
}

pub fn parse(text: &str, shown: &str) -> Result<Vec<DeviceTemplate>, ProfileError> {
    let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Parse {
        path: shown.to_owned(),
        message: e.to_string(),
    })?;
    Ok(file.device)
}

fn validate_all(templates: &[DeviceTemplate]) -> Result<(), ProfileError> {
    templates.iter().try_for_each(validate)
}

/// Checks what serde cannot: names that become path elements, errno names, counts.
pub fn validate(t: &DeviceTemplate) -> Result<(), ProfileError> {
    let bad = |message: String| ProfileError::Invalid {
        profile: t.profile.clone(),
        message,
    };
    if !is_safe_name(&t.profile) {
        return Err(bad(
            "the profile name must be a plain file-name-like word".into()
        ));
    }
    if crate::errno::from_name(&t.pool.exhausted_errno).is_none() {
        return Err(bad(format!("unknown errno {:?}", t.pool.exhausted_errno)));
    }
    if t.count == 0 || t.count > 4096 {
        return Err(bad("count must be from 1 to 4096".into()));
    }
    if t.types.is_empty() {
        return Err(bad("a device needs at least one type".into()));
    }
    for ty in &t.types {
        if !is_safe_name(&ty.id) {
            return Err(bad(format!(
                "type id {:?} is not a valid directory name",
                ty.id
            )));
        }
        if ty.cost == 0 {
            return Err(bad(format!("type {} has cost 0", ty.id)));
        }
        if t.model == ParentModel::NvidiaVendor && ty.id.parse::<u32>().map_or(true, |n| n == 0) {
            return Err(bad(format!(
                "nvidia-vendor type ids are non-zero numbers, not {:?}",
                ty.id
            )));
        }
    }
    match t.kind {
        DeviceKind::Virtual => {
            let class = t.class.as_deref().unwrap_or("");
            if !is_safe_name(class) {
                return Err(bad("a virtual device needs a `class` name".into()));
            }
            if t.count != 1 {
                return Err(bad(format!(
                    "{} is a virtual sample device and exists once per host",
                    t.profile
                )));
            }
            if t.model != ParentModel::Mdev || t.vfs != 0 {
                return Err(bad("a virtual device has no VFs".into()));
            }
        }
        DeviceKind::Pci => {
            if t.address.is_some() && t.count != 1 {
                return Err(bad("a fixed `address` needs count = 1".into()));
            }
            if let Some(a) = &t.address {
                if parse_pci_address(a).is_none() {
                    return Err(bad(format!("{a:?} is not a PCI address dddd:bb:dd.f")));
                }
            }
            if t.model != ParentModel::Mdev && t.vfs == 0 {
                return Err(bad("this model needs `vfs` > 0".into()));
            }
            if t.vfs > 248 {
                return Err(bad("at most 248 VFs".into()));
            }
        }
    }
    if t.model != ParentModel::NvidiaVendor
        && t.mdev_driver.as_deref().is_none_or(|d| !is_safe_name(d))
    {
        return Err(bad("an mdev parent needs an `mdev_driver` name".into()));
    }
    for a in t.device_attributes.iter().chain(t.device_files.keys()) {
        let parts: Vec<&str> = a.split('/').collect();
        if parts.len() > 2 || !parts.iter().all(|s| is_safe_name(s)) {
            return Err(bad(format!(
                "device attribute {a:?} is not NAME or DIR/NAME"
            )));
        }
        if [
            "remove",
            "mdev_type",
            "iommu_group",
            "driver",
            "subsystem",
            "uevent",
        ]
        .contains(&parts[0])
        {
            return Err(bad(format!("device attribute {a:?} shadows a kernel file")));
        }
    }
    if let Some(d) = &t.driver {
        if !is_safe_name(d) {
            return Err(bad(format!("driver {d:?} is not a valid name")));
        }
    }
    Ok(())
}

pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// (domain, bus, device, function) of `dddd:bb:dd.f`.
pub fn parse_pci_address(s: &str) -> Option<(u16, u8, u8, u8)> {
    let (domain, rest) = s.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    if domain.len() != 4 || bus.len() != 2 || dev.len() != 2 || func.len() != 1 {
        return None;
    }
    let d = u16::from_str_radix(domain, 16).ok()?;
    let b = u8::from_str_radix(bus, 16).ok()?;
    let dv = u8::from_str_radix(dev, 16).ok()?;
    let f = u8::from_str_radix(func, 16).ok()?;
    (dv < 32 && f < 8).then_some((d, b, dv, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses_and_validates() {
        for name in BUILTIN_NAMES {
            let t = builtin(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].profile, *name);
        }
    }

    #[test]
    fn t4_offers_the_grid_types() {
        let t = &builtin("nvidia-t4:3").unwrap()[0];
        assert_eq!(t.count, 3);
        let names: Vec<_> = t.types.iter().filter_map(|ty| ty.name.as_deref()).collect();
        for want in [
            "GRID T4-1Q",
            "GRID T4-2Q",
            "GRID T4-16Q",
            "GRID T4-1B",
            "GRID T4-2B",
            "GRID T4-1A",
        ] {
            assert!(names.contains(&want), "{want} missing");
        }
        assert_eq!(t.guest.vendor, 0x10de);
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(matches!(builtin("nope"), Err(ProfileError::Unknown(_))));
        assert!(matches!(
            builtin("nvidia-t4:0"),
            Err(ProfileError::BadCount(_))
        ));
        assert!(matches!(
            builtin("nvidia-t4:x"),
            Err(ProfileError::BadCount(_))
        ));
        assert!(matches!(
            builtin("mtty:2"),
            Err(ProfileError::Invalid { .. })
        ));
    }

    #[test]
    fn rejects_path_tricks_in_custom_files() {
        let text = include_str!("profiles/mtty.toml").replace("id = \"mtty-1\"", "id = \"../x\"");
        let t = parse(&text, "t").unwrap();
        assert!(matches!(validate(&t[0]), Err(ProfileError::Invalid { .. })));
    }

    #[test]
    fn rejects_unknown_keys_and_errnos() {
        let text = include_str!("profiles/mtty.toml")
            .replace("kind = \"virtual\"", "kind = \"virtual\"\ncolour = 1");
        assert!(matches!(parse(&text, "t"), Err(ProfileError::Parse { .. })));
        let text = include_str!("profiles/mtty.toml").replace("ENOSPC", "ENOPE");
        let t = parse(&text, "t").unwrap();
        assert!(validate(&t[0]).is_err());
    }

    #[test]
    fn parses_pci_addresses() {
        assert_eq!(parse_pci_address("0000:3b:00.4"), Some((0, 0x3b, 0, 4)));
        assert_eq!(parse_pci_address("0000:3b:00.8"), None);
        assert_eq!(parse_pci_address("0000:3b:0.1"), None);
        assert_eq!(parse_pci_address("../../etc"), None);
    }
}
