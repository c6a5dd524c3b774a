//! The two file formats of the store: mdevctl's definition JSON (byte for byte what mdevctl 1.2
//! writes, read as leniently as mdevctl reads it) and vgpud's own metadata JSON.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

use vgpud_model::error::{Error, Result};
use vgpud_model::{validate_name, TypeId};

use super::{Attrs, Definition, Meta, Start};

/// What a definition file holds, plus the keys mdevctl would ignore (worth a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub mdev_type: TypeId,
    pub start: Start,
    pub attrs: Attrs,
    pub unknown_keys: Vec<String>,
}

/// The file as mdevctl's `to_json` builds it; field order is the order mdevctl prints.
#[derive(Serialize)]
struct FileOut<'a> {
    mdev_type: &'a str,
    start: &'static str,
    attrs: Vec<AttrOut<'a>>,
}

/// One attribute: an object with a single key, as mdevctl stores attributes to keep their order.
struct AttrOut<'a>(&'a str, &'a str);

impl Serialize for AttrOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.0, self.1)?;
        map.end()
    }
}

/// The definition file's text exactly as mdevctl writes it: `serde_json::to_string_pretty`
/// (two-space indentation, non-ASCII unescaped) and no trailing newline.
pub fn to_mdevctl_json(def: &Definition) -> String {
    let file = FileOut {
        mdev_type: def.mdev_type.as_str(),
        start: def.start.as_str(),
        attrs: def.attrs.iter().map(|(k, v)| AttrOut(k, v)).collect(),
    };
    // Only strings and a derived struct: serde_json cannot fail on these.
    serde_json::to_string_pretty(&file).expect("serializing strings to JSON cannot fail")
}

/// Parses a definition file. Accepts what mdevctl accepts (missing or null `attrs`, unknown
/// keys); refuses what mdevctl refuses or would crash on.
pub fn parse_mdevctl_json(text: &str) -> Result<(TypeId, Start, Attrs)> {
    let parsed = parse(text)?;
    if !parsed.unknown_keys.is_empty() {
        tracing::warn!(keys = ?parsed.unknown_keys, "definition has keys mdevctl ignores");
    }
    Ok((parsed.mdev_type, parsed.start, parsed.attrs))
}

fn bad(reason: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("malformed mdevctl definition: {reason}"))
}

pub(crate) fn parse(text: &str) -> Result<Parsed> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format_args!("not JSON ({e})")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(bad("not a JSON object"));
    };
    let mdev_type = match object.get("mdev_type") {
        Some(serde_json::Value::String(t)) => {
            TypeId::new(t.as_str()).map_err(|e| bad(format_args!("mdev_type: {e}")))?
        }
        Some(serde_json::Value::Null) | None => return Err(bad("mdev_type is missing")),
        Some(_) => return Err(bad("mdev_type is not a string")),
    };
    let start = match object.get("start") {
        Some(serde_json::Value::String(s)) => Start::parse(s)
            .ok_or_else(|| bad(format_args!("start is {s:?}, not \"auto\" or \"manual\"")))?,
        Some(serde_json::Value::Null) | None => return Err(bad("start is missing")),
        Some(_) => return Err(bad("start is not a string")),
    };
    let attrs = match object.get("attrs") {
        // mdevctl treats a missing or null list as empty.
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_attr(i, item))
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad("attrs is not an array")),
    };
    let unknown_keys = object
        .keys()
        .filter(|k| !matches!(k.as_str(), "mdev_type" | "start" | "attrs"))
        .cloned()
        .collect();
    Ok(Parsed {
        mdev_type,
        start,
        attrs,
        unknown_keys,
    })
}

fn parse_attr(index: usize, item: &serde_json::Value) -> Result<(String, String)> {
    let serde_json::Value::Object(object) = item else {
        return Err(bad(format_args!("attrs[{index}] is not an object")));
    };
    let mut entries = object.iter();
    let (Some((key, value)), None) = (entries.next(), entries.next()) else {
        return Err(bad(format_args!(
            "attrs[{index}] does not have exactly one key"
        )));
    };
    let serde_json::Value::String(value) = value else {
        return Err(bad(format_args!("attrs[{index}] value is not a string")));
    };
    check_attr_name(key).map_err(|e| bad(format_args!("attrs[{index}]: {e}")))?;
    Ok((key.clone(), value.clone()))
}

/// An attribute is a file of the device's directory or of one subdirectory of it
/// (`nvidia/vgpu_params`), as mdevctl writes `<device>/<name>`; each component a plain name.
pub(crate) fn check_attr_name(name: &str) -> Result<()> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 2 {
        return Err(Error::InvalidArgument(format!(
            "invalid attribute name {name:?}: at most one subdirectory (as in nvidia/vgpu_params)"
        )));
    }
    parts
        .iter()
        .try_for_each(|part| validate_name("attribute name", part))
}

/// vgpud's metadata file as stored in the state directory.
#[derive(Serialize, Deserialize)]
struct MetaFile {
    #[serde(default)]
    owner_uid: Option<u32>,
    origin: String,
    created: u64,
}

pub(crate) fn meta_to_json(meta: &Meta) -> String {
    let file = MetaFile {
        owner_uid: meta.owner_uid,
        origin: meta.origin.clone(),
        created: meta.created,
    };
    let mut text =
        serde_json::to_string_pretty(&file).expect("serializing numbers and strings cannot fail");
    text.push('\n');
    text
}

pub(crate) fn meta_from_json(text: &str) -> Result<Meta> {
    let file: MetaFile = serde_json::from_str(text)
        .map_err(|e| Error::InvalidArgument(format!("malformed vgpud metadata ({e})")))?;
    Ok(Meta {
        owner_uid: file.owner_uid,
        origin: file.origin,
        created: file.created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpud_model::{MdevUuid, ParentName};

    fn def(start: Start, attrs: &[(&str, &str)]) -> Definition {
        Definition {
            parent: ParentName::new("matrix").unwrap(),
            uuid: MdevUuid::parse("0b2d8a04-6c5c-4f5e-9b1a-3d2f1e0c9a77").unwrap(),
            mdev_type: TypeId::new("vfio_ap-passthrough").unwrap(),
            start,
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn reason(text: &str) -> String {
        match parse(text) {
            Err(Error::InvalidArgument(r)) => r,
            other => panic!("{text:?} parsed: {other:?}"),
        }
    }

    #[test]
    fn json_without_attrs_is_byte_exact() {
        // Captured from mdevctl 1.2.0 `define --parent .. --type .. --uuid ..`.
        let expected = "{\n  \"mdev_type\": \"vfio_ap-passthrough\",\n  \"start\": \"manual\",\n  \"attrs\": []\n}";
        assert_eq!(to_mdevctl_json(&def(Start::Manual, &[])), expected);
    }

    #[test]
    fn json_with_attrs_is_byte_exact() {
        // Captured from mdevctl 1.2.0 `define --jsonfile` followed by `modify --addattr`.
        let expected = concat!(
            "{\n  \"mdev_type\": \"vfio_ap-passthrough\",\n  \"start\": \"auto\",\n",
            "  \"attrs\": [\n    {\n      \"assign_adapter\": \"5\"\n    },\n",
            "    {\n      \"x\": \"a\\\"b\\\\é\"\n    }\n  ]\n}"
        );
        let d = def(Start::Auto, &[("assign_adapter", "5"), ("x", "a\"b\\é")]);
        assert_eq!(to_mdevctl_json(&d), expected);
    }

    #[test]
    fn json_round_trips_and_keeps_attr_order() {
        let d = def(Start::Auto, &[("z", "1"), ("a", "2"), ("z", "3")]);
        let (t, s, attrs) = parse_mdevctl_json(&to_mdevctl_json(&d)).unwrap();
        assert_eq!((t, s, attrs), (d.mdev_type, d.start, d.attrs));
    }

    #[test]
    fn compact_json_is_read() {
        let p = parse(r#"{"mdev_type":"nvidia-231","start":"auto","attrs":[{"assign_adapter":"5"},{"assign_domain":"0x47"}]}"#).unwrap();
        assert_eq!(p.mdev_type.as_str(), "nvidia-231");
        assert_eq!(p.start, Start::Auto);
        assert_eq!(p.attrs[1], ("assign_domain".into(), "0x47".into()));
    }

    #[test]
    fn missing_or_null_attrs_are_empty() {
        assert!(parse(r#"{"mdev_type":"t","start":"manual"}"#)
            .unwrap()
            .attrs
            .is_empty());
        let p = parse(r#"{"mdev_type":"t","start":"manual","attrs":null}"#).unwrap();
        assert!(p.attrs.is_empty());
    }

    #[test]
    fn unknown_keys_are_kept_for_a_warning() {
        let p = parse(r#"{"mdev_type":"t","start":"auto","attrs":[],"comment":"x"}"#).unwrap();
        assert_eq!(p.unknown_keys, vec!["comment".to_string()]);
    }

    #[test]
    fn missing_mdev_type_is_refused() {
        assert!(reason(r#"{"start":"auto","attrs":[]}"#).contains("mdev_type is missing"));
    }

    #[test]
    fn non_string_mdev_type_is_refused() {
        assert!(reason(r#"{"mdev_type":3,"start":"auto"}"#).contains("not a string"));
    }

    #[test]
    fn invalid_type_id_is_refused() {
        assert!(reason(r#"{"mdev_type":"../x","start":"auto"}"#).contains("mdev_type"));
    }

    #[test]
    fn missing_start_is_refused() {
        assert!(reason(r#"{"mdev_type":"t"}"#).contains("start is missing"));
    }

    #[test]
    fn unknown_start_is_refused() {
        assert!(reason(r#"{"mdev_type":"t","start":"boot"}"#).contains("\"boot\""));
    }

    #[test]
    fn attrs_not_an_array_is_refused() {
        assert!(
            reason(r#"{"mdev_type":"t","start":"auto","attrs":{"a":"b"}}"#)
                .contains("not an array")
        );
    }

    #[test]
    fn attr_with_two_keys_is_refused() {
        let text = r#"{"mdev_type":"t","start":"auto","attrs":[{"a":"1","b":"2"}]}"#;
        assert!(reason(text).contains("exactly one key"));
    }

    #[test]
    fn attr_with_no_key_is_refused() {
        let text = r#"{"mdev_type":"t","start":"auto","attrs":[{}]}"#;
        assert!(reason(text).contains("exactly one key"));
    }

    #[test]
    fn attr_with_number_value_is_refused() {
        let text = r#"{"mdev_type":"t","start":"auto","attrs":[{"a":1}]}"#;
        assert!(reason(text).contains("not a string"));
    }

    #[test]
    fn attr_that_is_a_string_is_refused() {
        let text = r#"{"mdev_type":"t","start":"auto","attrs":["a"]}"#;
        assert!(reason(text).contains("attrs[0] is not an object"));
    }

    #[test]
    fn attr_names_may_have_one_subdirectory_of_plain_names() {
        assert!(check_attr_name("nvidia/vgpu_params").is_ok());
        assert!(check_attr_name("assign_adapter").is_ok());
        for bad in ["a/b/c", "../x", "x/..", "/x", "x/", "a//b", "."] {
            assert!(check_attr_name(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn attr_name_with_path_is_refused() {
        let text = r#"{"mdev_type":"t","start":"auto","attrs":[{"../../remove":"1"}]}"#;
        assert!(reason(text).contains("attribute name"));
    }

    #[test]
    fn non_object_is_refused() {
        assert!(reason("[]").contains("not a JSON object"));
    }

    #[test]
    fn truncated_json_is_refused() {
        assert!(reason(r#"{"mdev_type":"t","sta"#).contains("not JSON"));
        assert!(reason("").contains("not JSON"));
    }

    #[test]
    fn meta_round_trips() {
        let meta = Meta {
            owner_uid: Some(1000),
            origin: "dbus::1.42".into(),
            created: 1_700_000_000,
        };
        assert_eq!(meta_from_json(&meta_to_json(&meta)).unwrap(), meta);
        let meta = Meta {
            owner_uid: None,
            ..meta
        };
        assert_eq!(meta_from_json(&meta_to_json(&meta)).unwrap(), meta);
    }

    #[test]
    fn meta_without_origin_is_refused() {
        assert!(meta_from_json(r#"{"created":1}"#).is_err());
    }
}
