//! Newtypes and plain values of the domain: parents, types, devices.
//! Everything that comes from outside (sysfs, D-Bus, files, flags) is validated here, once;
//! code holding a `ParentName`, `TypeId` or `MdevUuid` may use it in a path without checks.
//!
//! This crate is the vocabulary every other one shares (the daemon, its clients, the simulator
//! and the VMM): it depends on no other part of vgpud.

pub mod error;
pub mod guest;
pub mod uevent;

pub use error::{Error, ErrorClass, Result};

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest piece of outside text quoted back in an error message.
const QUOTE_MAX: usize = 64;

/// `text` cut to at most `QUOTE_MAX` characters, so a hostile input cannot flood a message.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// MdevUuid

/// The UUID of a mediated device, in the only form the kernel prints and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MdevUuid(uuid::Uuid);

impl MdevUuid {
    /// Parses the kernel form: 36 characters, hyphens at 8, 13, 18 and 23, hex digits of either
    /// case elsewhere; one trailing newline is allowed (as read from sysfs or written by `echo`).
    pub fn parse(text: &str) -> Result<Self> {
        let s = text.strip_suffix('\n').unwrap_or(text);
        let well_formed = s.len() == 36
            && s.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if !well_formed {
            return Err(Error::InvalidUuid(quote(text)));
        }
        uuid::Uuid::parse_str(s)
            .map(MdevUuid)
            .map_err(|_| Error::InvalidUuid(quote(text)))
    }

    /// A fresh random (version 4) UUID.
    pub fn new_v4() -> Self {
        MdevUuid(uuid::Uuid::new_v4())
    }

    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        MdevUuid(uuid)
    }

    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }

    /// The UUID with '-' replaced by '_', usable as a D-Bus object path element.
    pub fn path_element(&self) -> String {
        self.to_string().replace('-', "_")
    }
}

impl fmt::Display for MdevUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // uuid's Display is lowercase and hyphenated: the kernel's form.
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for MdevUuid {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        MdevUuid::parse(s)
    }
}

impl TryFrom<String> for MdevUuid {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        MdevUuid::parse(&s)
    }
}

impl From<MdevUuid> for String {
    fn from(u: MdevUuid) -> String {
        u.to_string()
    }
}

impl Serialize for MdevUuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MdevUuid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MdevUuid::parse(&s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// ParentName, TypeId

/// Checks a name that becomes one path component under sysfs (or a definitions directory).
pub fn validate_name(what: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value.len() > 255 {
        Some("it is longer than 255 bytes")
    } else if value == "." || value == ".." {
        Some("it is a relative path element")
    } else if value.contains('/') {
        Some("it contains '/'")
    } else if value.contains('\0') {
        Some("it contains a NUL byte")
    } else if value.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if value.chars().any(char::is_whitespace) {
        Some("it contains whitespace")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidName {
            what,
            value: quote(value),
            reason,
        }),
    }
}

/// Defines a validated name newtype: one path component, serialized as a plain string.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as this kind of name.
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                validate_name($what, &value)?;
                Ok($name(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                $name::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
    };
}

name_type!(
    /// The name of a parent device as sysfs lists it ("0000:3b:00.0", "mtty").
    ParentName,
    "parent name"
);

name_type!(
    /// The id of an mdev type ("nvidia-231", "mtty-2"); for the NVIDIA vendor-sysfs model,
    /// "nvidia-<numeric id>".
    TypeId,
    "type id"
);

impl From<PciAddress> for ParentName {
    fn from(addr: PciAddress) -> Self {
        // The display form is digits, ':' and '.', always a valid name.
        ParentName(addr.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// PciAddress

/// A PCI address "dddd:bb:dd.f" as the kernel prints it (lowercase hex; domains wider than
/// four digits, as behind Intel VMD, are accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

/// Whether `s` is a PCI address in the kernel's form.
pub fn is_pci_address(s: &str) -> bool {
    PciAddress::parse(s).is_ok()
}

impl PciAddress {
    /// Parses the kernel's form only; uppercase hex is refused so that a parsed address
    /// always displays back to the same sysfs name.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::InvalidName {
            what: "PCI address",
            value: quote(s),
            reason: "expected dddd:bb:dd.f in lowercase hex",
        };
        let hex = |part: &str, min: usize, max: usize| -> Option<u32> {
            let ok = (min..=max).contains(&part.len())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if ok {
                u32::from_str_radix(part, 16).ok()
            } else {
                None
            }
        };
        let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (device, function) = rest.split_once('.').ok_or_else(bad)?;
        let domain = hex(domain, 4, 8).ok_or_else(bad)?;
        let bus = hex(bus, 2, 2).ok_or_else(bad)?;
        let device = hex(device, 2, 2).filter(|d| *d <= 0x1f).ok_or_else(bad)?;
        let function = hex(function, 1, 1).filter(|f| *f <= 7).ok_or_else(bad)?;
        // Only the canonical width round-trips: "00000:..." would not match the sysfs name.
        let addr = PciAddress {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        };
        if addr.to_string() != s {
            return Err(bad());
        }
        Ok(addr)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        PciAddress::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Plain values

/// Which kernel interface a parent or device is managed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum BackendKind {
    /// The generic mdev ABI (`mdev_supported_types/<type>/create`).
    #[serde(rename = "mdev")]
    Mdev,
    /// NVIDIA's vendor sysfs on SR-IOV VFs (`nvidia/current_vgpu_type`), no mdev.
    #[serde(rename = "nvidia-vendor-sysfs")]
    NvidiaVendor,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Mdev => "mdev",
            BackendKind::NvidiaVendor => "nvidia-vendor-sysfs",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The PCI identity of a parent (absent for virtual parents such as mtty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciIdentity {
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub subsystem_vendor: Option<u16>,
    pub subsystem_device: Option<u16>,
}

/// A device that can hold mediated devices / vGPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parent {
    pub name: ParentName,
    /// Canonical, absolute and inside the sysfs root.
    pub sysfs_path: PathBuf,
    pub backend: BackendKind,
    pub pci: Option<PciIdentity>,
    pub driver: Option<String>,
    /// `None` when the kernel has no NUMA node for it (it prints -1).
    pub numa_node: Option<i32>,
    pub iommu_group: Option<u32>,
    /// For an SR-IOV virtual function: its physical function.
    pub physfn: Option<ParentName>,
    /// For an SR-IOV physical function: its virtual functions in index order.
    pub virtfns: Vec<ParentName>,
    pub types: Vec<MdevType>,
}

/// A kind of device a parent can create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MdevType {
    pub id: TypeId,
    /// Human name ("GRID T4-2Q"); optional in the ABI.
    pub name: Option<String>,
    pub description: Option<String>,
    pub device_api: String,
    /// Advisory: the kernel may still refuse a create (shared capacity).
    pub available_instances: u32,
    pub parent: ParentName,
}

impl Parent {
    /// The physical GPU this parent belongs to: its PF for an SR-IOV VF, else itself. What runs
    /// one vGPU type at a time is the physical GPU (every VF of an L40S in time-sliced mode).
    pub fn physical_gpu(&self) -> &ParentName {
        self.physfn.as_ref().unwrap_or(&self.name)
    }
}

impl MdevType {
    /// Whether `id_or_name` is exactly this type's id or exactly its name.
    pub fn matches(&self, id_or_name: &str) -> bool {
        self.id.as_str() == id_or_name || self.name.as_deref() == Some(id_or_name)
    }
}

/// A mediated device or vGPU that exists now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub uuid: MdevUuid,
    pub parent: ParentName,
    /// `None` while the kernel has not yet made the `mdev_type` link (it comes after bind).
    pub type_id: Option<TypeId>,
    pub iommu_group: Option<u32>,
    pub driver: Option<String>,
    pub active: bool,
    pub sysfs_path: PathBuf,
    pub backend: BackendKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "0b2d8a04-6c5c-4f5e-9b1a-3d2f1e0c9a77";

    fn invalid_name_reason(r: Result<ParentName>) -> &'static str {
        match r {
            Err(Error::InvalidName { reason, .. }) => reason,
            other => panic!("expected InvalidName, got {other:?}"),
        }
    }

    #[test]
    fn uuid_kernel_form_round_trips() {
        assert_eq!(MdevUuid::parse(U).unwrap().to_string(), U);
    }

    #[test]
    fn uuid_uppercase_is_normalized() {
        let u = MdevUuid::parse(&U.to_uppercase()).unwrap();
        assert_eq!(u.to_string(), U);
    }

    #[test]
    fn uuid_one_trailing_newline_is_allowed() {
        assert_eq!(MdevUuid::parse(&format!("{U}\n")).unwrap().to_string(), U);
    }

    #[test]
    fn uuid_two_trailing_newlines_are_refused() {
        assert!(MdevUuid::parse(&format!("{U}\n\n")).is_err());
    }

    #[test]
    fn uuid_37_chars_is_refused() {
        assert!(MdevUuid::parse(&format!("{U}0")).is_err());
    }

    #[test]
    fn uuid_35_chars_is_refused() {
        assert!(MdevUuid::parse(&U[..35]).is_err());
    }

    #[test]
    fn uuid_wrong_hyphen_positions_are_refused() {
        assert!(MdevUuid::parse("0b2d8a0-46c5c-4f5e-9b1a-3d2f1e0c9a77").is_err());
    }

    #[test]
    fn uuid_simple_braced_and_urn_forms_are_refused() {
        assert!(MdevUuid::parse(&U.replace('-', "")).is_err());
        assert!(MdevUuid::parse(&format!("{{{U}}}")).is_err());
        assert!(MdevUuid::parse(&format!("urn:uuid:{U}")).is_err());
    }

    #[test]
    fn uuid_non_hex_is_refused() {
        assert!(MdevUuid::parse("0b2d8a04-6c5c-4f5e-9b1a-3d2f1e0c9a7g").is_err());
    }

    #[test]
    fn uuid_non_ascii_is_refused() {
        // 36 bytes, but one character is two bytes wide.
        assert!(MdevUuid::parse("0b2d8a04-6c5c-4f5e-9b1a-3d2f1e0c9aé").is_err());
    }

    #[test]
    fn uuid_empty_is_refused() {
        assert!(matches!(MdevUuid::parse(""), Err(Error::InvalidUuid(_))));
    }

    #[test]
    fn uuid_error_quotes_at_most_64_chars() {
        let long = "x".repeat(1000);
        match MdevUuid::parse(&long) {
            Err(Error::InvalidUuid(q)) => assert!(q.len() <= 64 + 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn uuid_path_element_has_no_hyphen() {
        let u = MdevUuid::parse(U).unwrap();
        assert_eq!(u.path_element(), U.replace('-', "_"));
    }

    #[test]
    fn uuid_new_v4_is_version_4() {
        assert_eq!(MdevUuid::new_v4().as_uuid().get_version_num(), 4);
    }

    #[test]
    fn uuid_serde_is_a_string() {
        let u = MdevUuid::parse(U).unwrap();
        assert_eq!(serde_json::to_string(&u).unwrap(), format!("\"{U}\""));
        let back: MdevUuid = serde_json::from_str(&format!("\"{U}\"")).unwrap();
        assert_eq!(back, u);
        assert!(serde_json::from_str::<MdevUuid>("\"nope\"").is_err());
    }

    #[test]
    fn name_accepts_sysfs_names() {
        for ok in ["0000:3b:00.0", "mtty", "nvidia-231", "i915-GVTg_V5_4", "a"] {
            assert_eq!(ParentName::new(ok).unwrap().as_str(), ok);
            assert_eq!(ok.parse::<TypeId>().unwrap().to_string(), ok);
        }
    }

    #[test]
    fn name_empty_is_refused() {
        assert_eq!(invalid_name_reason(ParentName::new("")), "it is empty");
    }

    #[test]
    fn name_dot_and_dotdot_are_refused() {
        assert!(ParentName::new(".").is_err());
        assert!(ParentName::new("..").is_err());
        assert!(ParentName::new("...").is_ok());
    }

    #[test]
    fn name_slash_is_refused() {
        assert_eq!(
            invalid_name_reason(ParentName::new("a/b")),
            "it contains '/'"
        );
    }

    #[test]
    fn name_nul_is_refused() {
        assert_eq!(
            invalid_name_reason(ParentName::new("a\0b")),
            "it contains a NUL byte"
        );
    }

    #[test]
    fn name_control_chars_are_refused() {
        assert!(ParentName::new("a\x1bb").is_err());
        assert!(ParentName::new("a\x7f").is_err());
    }

    #[test]
    fn name_whitespace_is_refused() {
        assert!(ParentName::new("a b").is_err());
        assert!(TypeId::new("nvidia-1\n").is_err());
        assert!(TypeId::new("a\u{a0}b").is_err());
    }

    #[test]
    fn name_255_bytes_is_accepted_256_refused() {
        assert!(ParentName::new("a".repeat(255)).is_ok());
        assert_eq!(
            invalid_name_reason(ParentName::new("a".repeat(256))),
            "it is longer than 255 bytes"
        );
    }

    #[test]
    fn name_serde_validates() {
        let t: TypeId = serde_json::from_str("\"mtty-2\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"mtty-2\"");
        assert!(serde_json::from_str::<TypeId>("\"../x\"").is_err());
    }

    #[test]
    fn name_error_says_what() {
        let e = TypeId::new("a/b").unwrap_err();
        assert_eq!(e.to_string(), "invalid type id \"a/b\": it contains '/'");
    }

    #[test]
    fn pci_address_round_trips() {
        let a = PciAddress::parse("0000:3b:00.4").unwrap();
        assert_eq!((a.domain, a.bus, a.device, a.function), (0, 0x3b, 0, 4));
        assert_eq!(a.to_string(), "0000:3b:00.4");
        assert_eq!(ParentName::from(a).as_str(), "0000:3b:00.4");
        assert!(is_pci_address("10000:e1:1f.7"));
    }

    #[test]
    fn pci_address_bad_forms_are_refused() {
        for bad in [
            "",
            "mtty",
            "0000:3B:00.0",
            "0000:3b:00",
            "000:3b:00.0",
            "00000:3b:00.0",
            "0000:3b:20.0",
            "0000:3b:00.8",
            "0000:3b:0.0",
            "0000:3b:00.0 ",
            "0000-3b-00.0",
            "+000:3b:00.0",
        ] {
            assert!(!is_pci_address(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn backend_kind_names() {
        assert_eq!(BackendKind::Mdev.as_str(), "mdev");
        assert_eq!(
            serde_json::to_string(&BackendKind::NvidiaVendor).unwrap(),
            "\"nvidia-vendor-sysfs\""
        );
    }

    #[test]
    fn type_matches_id_or_name_exactly() {
        let t = MdevType {
            id: TypeId::new("nvidia-231").unwrap(),
            name: Some("GRID T4-2Q".into()),
            description: None,
            device_api: "vfio-pci".into(),
            available_instances: 1,
            parent: ParentName::new("0000:3b:00.0").unwrap(),
        };
        assert!(t.matches("nvidia-231"));
        assert!(t.matches("GRID T4-2Q"));
        assert!(!t.matches("GRID T4-2"));
        assert!(!t.matches("grid t4-2q"));
    }
}
