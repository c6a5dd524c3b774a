//! Printing: aligned tables for people, JSON for scripts (schema in reference.txt), and D-Bus
//! values as JSON. A closed stdout (`vgpuctl list | head -1`) ends output quietly.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use zbus::zvariant::Value;

use super::error::CliError;
use super::model::{DeviceInfo, ParentInfo, TypeInfo};

/// Writes `text` and a newline to stdout; a reader that went away is not an error.
pub fn line(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::other(format!("cannot write to stdout: {e}"))),
    }
}

pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::other(format!("cannot encode JSON: {e}")))?;
    line(&text)
}

/// The JSON printed on stdout for a failed command under --json.
pub fn error_json(e: &CliError) -> Json {
    json!({"error": {
        "name": e.dbus_name,
        "message": e.message,
        "exit_code": e.class.exit_code(),
    }})
}

/// Left-aligned columns, two spaces apart, no trailing blanks.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            text.extend(std::iter::repeat_n(
                ' ',
                pad.saturating_sub(cell.chars().count()),
            ));
        }
        text.trim_end().to_owned()
    };
    let mut lines = vec![render(&mut header.iter().copied())];
    for row in rows {
        lines.push(render(&mut row.iter().map(String::as_str)));
    }
    lines.join("\n")
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

pub fn parents_table(parents: &[ParentInfo]) -> String {
    let rows: Vec<Vec<String>> = parents
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                if p.vendor_id == 0 {
                    "-".to_owned()
                } else {
                    format!("{:04x}:{:04x}", p.vendor_id, p.device_id)
                },
                or_dash(Some(&p.driver).filter(|d| !d.is_empty())),
                p.backend.clone(),
                or_dash(p.numa_node),
                or_dash(p.physical_function.as_deref()),
                p.types.len().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "PARENT", "PCI ID", "DRIVER", "BACKEND", "NUMA", "PHYSFN", "TYPES",
        ],
        &rows,
    )
}

pub fn types_table(types: &[TypeInfo]) -> String {
    let rows: Vec<Vec<String>> = types
        .iter()
        .map(|t| {
            vec![
                t.parent.clone(),
                t.id.clone(),
                or_dash(t.name.as_deref()),
                t.available_instances.to_string(),
                t.devices.len().to_string(),
                or_dash(Some(&t.device_api).filter(|a| !a.is_empty())),
            ]
        })
        .collect();
    table(
        &["PARENT", "TYPE", "NAME", "AVAILABLE", "DEVICES", "API"],
        &rows,
    )
}

/// One row per plan step: RULE, PARENT, ACTION, TYPE, COUNT, IN THE WAY.
#[allow(clippy::type_complexity)]
pub fn plan_table(steps: &[(String, String, String, String, u32, Vec<String>)]) -> String {
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|(rule, parent, action, type_spec, count, in_the_way)| {
            vec![
                rule.clone(),
                parent.clone(),
                action.clone(),
                type_spec.clone(),
                count.to_string(),
                if in_the_way.is_empty() {
                    "-".into()
                } else {
                    in_the_way.join(" ")
                },
            ]
        })
        .collect();
    table(
        &["RULE", "PARENT", "ACTION", "TYPE", "COUNT", "IN THE WAY"],
        &rows,
    )
}

/// One row per type and parent: TYPE, TOTAL (the type's host-wide figure, on its first row),
/// PARENT, TYPE ID, NUMA, FREE.
#[allow(clippy::type_complexity)]
pub fn capacity_table(caps: &[(String, u32, Vec<(String, String, i32, u32)>)]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (name, total, parents) in caps {
        for (i, (parent, type_id, numa, free)) in parents.iter().enumerate() {
            rows.push(vec![
                if i == 0 { name.clone() } else { String::new() },
                if i == 0 {
                    total.to_string()
                } else {
                    String::new()
                },
                parent.clone(),
                type_id.clone(),
                if *numa >= 0 {
                    numa.to_string()
                } else {
                    "-".into()
                },
                free.to_string(),
            ]);
        }
    }
    table(
        &["TYPE", "TOTAL", "PARENT", "TYPE ID", "NUMA", "FREE"],
        &rows,
    )
}

/// The owner's user name when the system knows the uid.
fn owner_name(uid: Option<i64>) -> String {
    let Some(uid) = uid else {
        return "-".to_owned();
    };
    u32::try_from(uid)
        .ok()
        .and_then(|u| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u)).ok())
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

pub fn devices_table(devices: &[DeviceInfo]) -> String {
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.uuid.clone(),
                or_dash(d.parent.as_deref()),
                d.type_id.clone(),
                yes_no(d.active),
                yes_no(d.persistent),
                yes_no(d.autostart),
                yes_no(d.in_use),
                owner_name(d.owner),
            ]
        })
        .collect();
    table(
        &[
            "UUID",
            "PARENT",
            "TYPE",
            "ACTIVE",
            "DEFINED",
            "AUTOSTART",
            "IN USE",
            "OWNER",
        ],
        &rows,
    )
}

/// One line about a device after a command: "created <uuid> (nvidia-231 on 0000:20:00.0)".
pub fn device_sentence(verb: &str, uuid: &str, device: Option<&DeviceInfo>) -> String {
    let Some(d) = device else {
        return format!("{verb} {uuid}");
    };
    let mut facts = vec![format!(
        "{} on {}",
        if d.type_id.is_empty() {
            "?"
        } else {
            &d.type_id
        },
        d.parent.as_deref().unwrap_or("?")
    )];
    facts.push(if d.active { "active" } else { "not active" }.to_owned());
    if d.persistent {
        facts.push(
            if d.autostart {
                "defined, autostart"
            } else {
                "defined"
            }
            .to_owned(),
        );
    }
    format!("{verb} {uuid} ({})", facts.join(", "))
}

/// A D-Bus value as JSON: numbers, strings, object paths as strings, arrays, dicts as objects
/// (keys as text), structures as arrays.
pub fn value_to_json(v: &Value<'_>) -> Json {
    match v {
        Value::U8(n) => json!(n),
        Value::Bool(b) => json!(b),
        Value::I16(n) => json!(n),
        Value::U16(n) => json!(n),
        Value::I32(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::Str(s) => json!(s.as_str()),
        Value::Signature(s) => json!(s.to_string()),
        Value::ObjectPath(p) => json!(p.as_str()),
        Value::Value(inner) => value_to_json(inner),
        Value::Array(a) => Json::Array(a.iter().map(value_to_json).collect()),
        Value::Dict(d) => {
            let mut map = Map::new();
            for (k, v) in d.iter() {
                let key = match value_to_json(k) {
                    Json::String(s) => s,
                    other => other.to_string(),
                };
                map.insert(key, value_to_json(v));
            }
            Json::Object(map)
        }
        Value::Structure(s) => Json::Array(s.fields().iter().map(value_to_json).collect()),
        Value::Fd(_) => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use zbus::zvariant::ObjectPath;

    #[test]
    fn tables_align_columns_without_trailing_blanks() {
        let text = table(
            &["A", "BB"],
            &[vec!["long".into(), "x".into()], vec!["s".into(), "".into()]],
        );
        assert_eq!(text, "A     BB\nlong  x\ns");
    }

    #[test]
    fn values_become_json() {
        assert_eq!(value_to_json(&Value::from(true)), json!(true));
        assert_eq!(value_to_json(&Value::from(-1i32)), json!(-1));
        let paths = Value::from(vec![ObjectPath::from_static_str_unchecked("/a")]);
        assert_eq!(value_to_json(&paths), json!(["/a"]));
        let dict = Value::from(HashMap::from([("k".to_owned(), 7u32)]));
        assert_eq!(value_to_json(&dict), json!({"k": 7}));
        let pairs = Value::from(vec![("a".to_owned(), "b".to_owned())]);
        assert_eq!(value_to_json(&pairs), json!([["a", "b"]]));
    }

    #[test]
    fn error_json_has_the_documented_fields() {
        let e = CliError::new(super::super::error::Class::NoCapacity, "full");
        let j = error_json(&e);
        assert_eq!(j["error"]["exit_code"], json!(6));
        assert_eq!(j["error"]["name"], Json::Null);
        assert_eq!(j["error"]["message"], json!("full"));
    }
}
