//! Turning D-Bus arguments into requests: option dictionaries are checked strictly (an unknown
//! key or a wrong type is InvalidArgument, never ignored) and the caller is identified from the
//! message header.

use std::collections::HashMap;
use std::time::Duration;

use zbus::zvariant::{OwnedValue, Value};

use super::error::VgpudError;
use crate::manager::{CreateRequest, DefineRequest, RemoveRequest};
use vgpud_model::error::Error;
use vgpud_model::{MdevUuid, ParentName};

pub type Options = HashMap<String, OwnedValue>;

pub fn bad(msg: String) -> VgpudError {
    Error::InvalidArgument(msg).into()
}

/// Refuses option keys a method does not know, so a typo never silently changes nothing.
pub fn check_keys(options: &Options, known: &[&str]) -> Result<(), VgpudError> {
    for k in options.keys() {
        if !known.contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown option {k:?}; this method takes {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn opt_str(options: &Options, key: &str) -> Result<Option<String>, VgpudError> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => match &**v {
            Value::Str(s) => Ok(Some(s.to_string())),
            other => Err(bad(format!(
                "option {key:?} must be a string (s), not {}",
                other.value_signature()
            ))),
        },
    }
}

fn opt_bool(options: &Options, key: &str) -> Result<Option<bool>, VgpudError> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => match &**v {
            Value::Bool(b) => Ok(Some(*b)),
            other => Err(bad(format!(
                "option {key:?} must be a boolean (b), not {}",
                other.value_signature()
            ))),
        },
    }
}

fn opt_u64(options: &Options, key: &str) -> Result<Option<u64>, VgpudError> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => match &**v {
            Value::U32(n) => Ok(Some(u64::from(*n))),
            Value::U64(n) => Ok(Some(*n)),
            Value::I32(n) if *n >= 0 => Ok(Some(*n as u64)),
            Value::I64(n) if *n >= 0 => Ok(Some(*n as u64)),
            other => Err(bad(format!(
                "option {key:?} must be a non-negative integer, not {}",
                other.value_signature()
            ))),
        },
    }
}

/// `attrs` as `a(ss)` (ordered, as mdevctl writes them) or `a{ss}`.
fn opt_attrs(options: &Options) -> Result<Vec<(String, String)>, VgpudError> {
    let Some(v) = options.get("attrs") else {
        return Ok(Vec::new());
    };
    if let Ok(list) =
        <Vec<(String, String)>>::try_from(v.try_clone().map_err(|e| bad(e.to_string()))?)
    {
        return Ok(list);
    }
    if let Ok(map) =
        <HashMap<String, String>>::try_from(v.try_clone().map_err(|e| bad(e.to_string()))?)
    {
        let mut list: Vec<(String, String)> = map.into_iter().collect();
        list.sort();
        return Ok(list);
    }
    Err(bad(format!(
        "option \"attrs\" must be a(ss) or a{{ss}}, not {}",
        v.value_signature()
    )))
}

const MAX_ATTRS: usize = 64;
const MAX_ATTR_VALUE: usize = 4096;

fn opt_i32(options: &Options, key: &str) -> Result<Option<i32>, VgpudError> {
    match opt_u64(options, key)? {
        None => Ok(None),
        Some(n) => i32::try_from(n)
            .map(Some)
            .map_err(|_| bad(format!("option {key:?} is out of range"))),
    }
}

fn check_attrs(attrs: &[(String, String)]) -> Result<(), VgpudError> {
    if attrs.len() > MAX_ATTRS
        || attrs.iter().any(|(k, v)| {
            k.is_empty() || k.len() > 255 || k.contains('\0') || v.len() > MAX_ATTR_VALUE
        })
    {
        return Err(bad(format!("attrs: at most {MAX_ATTRS} pairs, names of 1..255 bytes, values up to {MAX_ATTR_VALUE} bytes")));
    }
    Ok(())
}

fn check_type_spec(type_spec: &str) -> Result<(), VgpudError> {
    if type_spec.is_empty() || type_spec.len() > 255 || type_spec.contains('\0') {
        return Err(bad(
            "the type must be a type id or name of 1 to 255 characters".into(),
        ));
    }
    Ok(())
}

/// CreateDevice / MdevType.Create options: parent (s), uuid (s), attrs (a(ss)), numa_node (i),
/// persistent (b), autostart (b). `parent` is fixed for MdevType.Create.
pub fn create_request(
    type_spec: String,
    options: &Options,
    parent: Option<ParentName>,
) -> Result<CreateRequest, VgpudError> {
    let fixed = parent.is_some();
    let keys: &[&str] = if fixed {
        &["uuid", "attrs", "persistent", "autostart"]
    } else {
        &[
            "parent",
            "uuid",
            "attrs",
            "numa_node",
            "persistent",
            "autostart",
        ]
    };
    check_keys(options, keys)?;
    check_type_spec(&type_spec)?;
    let parent = match parent {
        Some(p) => Some(p),
        None => opt_str(options, "parent")?
            .map(ParentName::new)
            .transpose()?,
    };
    let attrs = opt_attrs(options)?;
    check_attrs(&attrs)?;
    let autostart = opt_bool(options, "autostart")?.unwrap_or(false);
    Ok(CreateRequest {
        type_spec,
        parent,
        uuid: opt_str(options, "uuid")?
            .map(|u| MdevUuid::parse(&u))
            .transpose()?,
        attrs,
        numa_node: if fixed {
            None
        } else {
            opt_i32(options, "numa_node")?
        },
        persistent: opt_bool(options, "persistent")?.unwrap_or(false) || autostart,
        autostart,
    })
}

/// Device.Modify: the attributes (validated as for a create) and options live (b), defined (b).
pub fn modify_request(
    attrs: Vec<(String, String)>,
    options: &Options,
) -> Result<crate::manager::ModifyRequest, VgpudError> {
    check_keys(options, &["live", "defined"])?;
    check_attrs(&attrs)?;
    Ok(crate::manager::ModifyRequest {
        attrs,
        live: opt_bool(options, "live")?.unwrap_or(false),
        defined: opt_bool(options, "defined")?.unwrap_or(false),
    })
}

/// Reshape options: count (u, 1..=64, default 1), drain (b, default false).
pub fn reshape_options(options: &Options) -> Result<(u32, bool), VgpudError> {
    check_keys(options, &["count", "drain"])?;
    let count = opt_u64(options, "count")?.unwrap_or(1);
    if !(1..=64).contains(&count) {
        return Err(bad(format!("count must be 1 to 64, not {count}")));
    }
    Ok((count as u32, opt_bool(options, "drain")?.unwrap_or(false)))
}

/// GetCapacity filter: type (s, an id or name), parent (s), numa_node (i).
pub fn capacity_filter(options: &Options) -> Result<vgpud_policy::CapacityFilter, VgpudError> {
    check_keys(options, &["type", "parent", "numa_node"])?;
    let type_spec = opt_str(options, "type")?;
    if let Some(t) = &type_spec {
        check_type_spec(t)?;
    }
    Ok(vgpud_policy::CapacityFilter {
        type_spec,
        parent: opt_str(options, "parent")?
            .map(ParentName::new)
            .transpose()?,
        numa_node: opt_i32(options, "numa_node")?,
    })
}

/// DefineDevice options: parent (s, required), uuid (s), attrs (a(ss)), autostart (b).
pub fn define_request(type_spec: String, options: &Options) -> Result<DefineRequest, VgpudError> {
    check_keys(options, &["parent", "uuid", "attrs", "autostart"])?;
    check_type_spec(&type_spec)?;
    let parent = opt_str(options, "parent")?
        .ok_or_else(|| bad("DefineDevice needs the option \"parent\"".into()))?;
    let attrs = opt_attrs(options)?;
    check_attrs(&attrs)?;
    Ok(DefineRequest {
        type_spec,
        parent: ParentName::new(parent)?,
        uuid: opt_str(options, "uuid")?
            .map(|u| MdevUuid::parse(&u))
            .transpose()?,
        attrs,
        autostart: opt_bool(options, "autostart")?.unwrap_or(false),
    })
}

/// Device.Remove options: force (b), timeout_ms (t, at most one hour).
pub fn remove_request(options: &Options) -> Result<RemoveRequest, VgpudError> {
    check_keys(options, &["force", "timeout_ms"])?;
    let req = RemoveRequest {
        force: opt_bool(options, "force")?.unwrap_or(false),
        timeout: opt_u64(options, "timeout_ms")?.map(Duration::from_millis),
    };
    if req.timeout.is_some_and(|t| t > Duration::from_secs(3600)) {
        return Err(bad("timeout_ms may be at most one hour".into()));
    }
    Ok(req)
}

pub fn autostart_option(options: &Options) -> Result<bool, VgpudError> {
    check_keys(options, &["autostart"])?;
    Ok(opt_bool(options, "autostart")?.unwrap_or(false))
}

/// Who sent this message: its unique name and, from the bus, its uid; then the user's name
/// and groups from the system's user database.
/// NSS lookups block, so this runs on a blocking thread.
pub(super) fn user_and_groups(uid: u32) -> (Option<String>, Vec<String>) {
    use nix::unistd::{getgrouplist, Group, Uid, User};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return (None, Vec::new());
    };
    let gids = std::ffi::CString::new(user.name.clone())
        .ok()
        .and_then(|name| getgrouplist(&name, user.gid).ok())
        .unwrap_or_else(|| vec![user.gid]);
    let mut groups: Vec<String> = gids
        .into_iter()
        .filter_map(|g| Group::from_gid(g).ok().flatten().map(|g| g.name))
        .collect();
    groups.sort();
    groups.dedup();
    (Some(user.name), groups)
}

/// A file option: a descriptor the caller opened (h). A path (s) is refused: vgpud would
/// open it with its own rights, not the caller's.
fn opt_file(
    options: &Options,
    key: &str,
) -> Result<Option<crate::manager::guests::CallerFile>, VgpudError> {
    use std::os::fd::AsFd;
    match options.get(key) {
        None => Ok(None),
        Some(v) => match &**v {
            Value::Fd(fd) => fd
                .as_fd()
                .try_clone_to_owned()
                .map(|fd| Some(crate::manager::guests::CallerFile::new(fd)))
                .map_err(|e| bad(format!("option {key:?}: {e}"))),
            Value::Str(_) => Err(bad(format!(
                "option {key:?} takes a file descriptor (h) opened by the caller, not a path; \
                 vgpud opens no file a caller names (vgpuctl launch --{} FILE does this)",
                key.replace('_', "-")
            ))),
            other => Err(bad(format!(
                "option {key:?} must be a file descriptor (h), not {}",
                other.value_signature()
            ))),
        },
    }
}

/// LaunchGuest's options: payload (s, a built-in), payload_file, kernel, initrd (h), cmdline
/// (s), memory_mib (u), vcpus (u).
pub fn launch_options(
    options: &Options,
) -> Result<crate::manager::guests::LaunchOptions, VgpudError> {
    check_keys(
        options,
        &[
            "payload",
            "payload_file",
            "memory_mib",
            "vcpus",
            "kernel",
            "initrd",
            "cmdline",
        ],
    )?;
    let memory_mib = opt_u64(options, "memory_mib")?
        .map(|n| u32::try_from(n).map_err(|_| bad(format!("memory_mib {n} is too large"))))
        .transpose()?;
    let vcpus = opt_u64(options, "vcpus")?
        .map(|n| u8::try_from(n).map_err(|_| bad(format!("vcpus {n} is too large"))))
        .transpose()?;
    let payload = opt_str(options, "payload")?;
    if let Some(p) = &payload {
        if !vgpud_model::guest::BUILTIN_PAYLOADS.contains(&p.as_str()) {
            return Err(bad(format!(
                "payload {p:?} is not built in ({}); pass an image as payload_file (h)",
                vgpud_model::guest::BUILTIN_PAYLOADS.join(", ")
            )));
        }
    }
    let kernel = opt_file(options, "kernel")?;
    let initrd = opt_file(options, "initrd")?;
    let payload_file = opt_file(options, "payload_file")?;
    let boots = [payload.is_some(), payload_file.is_some(), kernel.is_some()];
    if boots.iter().filter(|b| **b).count() > 1 {
        return Err(bad(
            "give one of payload, payload_file or kernel, not several".into(),
        ));
    }
    if kernel.is_none() && initrd.is_some() {
        return Err(bad("initrd needs a kernel".into()));
    }
    Ok(crate::manager::guests::LaunchOptions {
        payload,
        payload_file,
        memory_mib,
        vcpus,
        kernel,
        initrd,
        cmdline: opt_str(options, "cmdline")?,
    })
}

/// The UUID of a device object path (`/org/vgpud/devices/<uuid with _>`).
pub fn device_of_path(path: &str) -> Result<MdevUuid, VgpudError> {
    let element = path
        .strip_prefix(super::names::ROOT_PATH)
        .and_then(|p| p.strip_prefix("/devices/"))
        .ok_or_else(|| bad(format!("{path} is not a device object")))?;
    Ok(MdevUuid::parse(&element.replace('_', "-"))?)
}
