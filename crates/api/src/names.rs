//! Every bus name, object path and interface name vgpud uses, and the one function that turns
//! an id into an object path element. (zbus's `#[interface(name = ..)]` attributes need string
//! literals; a test checks them against these constants.)

use zbus::zvariant::OwnedObjectPath;

use vgpud_model::{MdevUuid, ParentName, TypeId};

pub const BUS_NAME: &str = "org.vgpud";
pub const ROOT_PATH: &str = "/org/vgpud";
pub const MANAGER_IFACE: &str = "org.vgpud1.Manager";
pub const PARENT_IFACE: &str = "org.vgpud1.Parent";
pub const TYPE_IFACE: &str = "org.vgpud1.MdevType";
pub const DEVICE_IFACE: &str = "org.vgpud1.Device";
pub const GUEST_IFACE: &str = "org.vgpud1.Guest";
pub const ERROR_PREFIX: &str = "org.vgpud1.Error";

/// Object path elements allow only `[A-Za-z0-9_]`: every other byte (and `_` itself) becomes
/// `_xx` in lowercase hex, so the escaping is reversible (`0000:3b:00.0` -> `0000_3a3b_3a00_2e0`).
pub fn escape_path_element(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The inverse of `escape_path_element`; `None` for text it could not have produced.
pub fn unescape_path_element(s: &str) -> Option<String> {
    if s == "_" {
        return Some(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if b[i].is_ascii_alphanumeric() {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

fn path(text: String) -> OwnedObjectPath {
    // Every element was escaped to [A-Za-z0-9_], so the path is always valid.
    OwnedObjectPath::try_from(text).unwrap_or_else(|_| {
        OwnedObjectPath::from(zbus::zvariant::ObjectPath::from_static_str_unchecked("/"))
    })
}

pub fn parent_path(parent: &ParentName) -> OwnedObjectPath {
    path(format!(
        "{ROOT_PATH}/parents/{}",
        escape_path_element(parent.as_str())
    ))
}

pub fn type_path(parent: &ParentName, type_id: &TypeId) -> OwnedObjectPath {
    path(format!(
        "{ROOT_PATH}/parents/{}/types/{}",
        escape_path_element(parent.as_str()),
        escape_path_element(type_id.as_str())
    ))
}

/// Devices use their UUID with `-` as `_`, as DESIGN.md decided (a UUID needs no other escape).
pub fn device_path(uuid: &MdevUuid) -> OwnedObjectPath {
    path(format!("{ROOT_PATH}/devices/{}", uuid.path_element()))
}

pub fn guest_path(id: u64) -> OwnedObjectPath {
    path(format!("{ROOT_PATH}/guests/{id}"))
}

/// The path that stands for "none" in an `o` property.
pub fn no_object() -> OwnedObjectPath {
    path("/".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_pci_addresses() {
        assert_eq!(escape_path_element("0000:3b:00.0"), "0000_3a3b_3a00_2e0");
        assert_eq!(escape_path_element("nvidia-231"), "nvidia_2d231");
        assert_eq!(escape_path_element("a_b"), "a_5fb");
        assert_eq!(escape_path_element(""), "_");
    }

    #[test]
    fn escaping_round_trips() {
        for s in ["0000:3b:00.0", "i915-GVTg_V5_4", "mtty", "", "ü/..\0"] {
            assert_eq!(
                unescape_path_element(&escape_path_element(s)).as_deref(),
                Some(s)
            );
        }
    }

    #[test]
    fn unescape_rejects_what_escape_never_makes() {
        assert_eq!(unescape_path_element("a_zz"), None);
        assert_eq!(unescape_path_element("a_4"), None);
        assert_eq!(unescape_path_element("a-b"), None);
    }

    #[test]
    fn paths_are_valid_object_paths() {
        let p = ParentName::new("0000:3b:00.0").unwrap();
        let t = TypeId::new("nvidia-231").unwrap();
        assert_eq!(
            type_path(&p, &t).as_str(),
            "/org/vgpud/parents/0000_3a3b_3a00_2e0/types/nvidia_2d231"
        );
        let u = MdevUuid::parse("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001").unwrap();
        assert_eq!(
            device_path(&u).as_str(),
            "/org/vgpud/devices/83b8f4f2_509f_382f_3c1e_e6bfe0fa1001"
        );
    }
}
