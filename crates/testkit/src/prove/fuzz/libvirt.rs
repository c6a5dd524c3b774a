//! libvirt domain XML as the hook reads it on stdin: mutated shipped examples, generated
//! domains with hostile UUIDs and metadata, huge and deeply nested documents. The parser must
//! refuse with a sentence or return UUIDs that are valid and really in the document.

use super::mutate::{huge_repeat, mutate, mutated_example, spliced_examples, Rng};
use super::{path_safe, Case};
use vgpuctl::hook::domain::{self, METADATA_NS};
use vgpuctl::hook::state;

const EXAMPLES: &[&str] = &[
    include_str!("../../../../../libvirt/examples/defined-and-new.xml"),
    include_str!("../../../../../libvirt/examples/impossible.xml"),
    include_str!("../../../../../libvirt/examples/malformed.xml"),
    include_str!("../../../../../libvirt/examples/no-mdev.xml"),
    include_str!("../../../../../libvirt/examples/no-metadata.xml"),
    include_str!("../../../../../libvirt/examples/s390-ccw-ap.xml"),
    include_str!("../../../../../libvirt/examples/three-full-gpus.xml"),
    include_str!("../../../../../libvirt/examples/two-vgpus.xml"),
];

const TOKENS: &[&str] = &[
    "<hostdev mode='subsystem' type='mdev'>",
    "</hostdev>",
    "<source><address uuid='c0ffee00-0000-4000-8000-000000000001'/></source>",
    "<devices>",
    "</devices>",
    "<metadata>",
    "<vgpud:device uuid='c0ffee00-0000-4000-8000-000000000003' type='t'/>",
    "xmlns:vgpud='https://vgpud.org/xmlns/libvirt/1'",
    "<!DOCTYPE domain [<!ENTITY a 'aaaa'>]>",
    "&a;",
    "&#0;",
    "&#x110000;",
    "<![CDATA[",
    "]]>",
    "<?xml version='1.0'?>",
    "<!--",
    "-->",
    "'",
    "\"",
];

const UUIDS: &[&str] = &[
    "c0ffee00-0000-4000-8000-000000000001",
    "C0FFEE00-0000-4000-8000-00000000000A",
    "c0ffee00-0000-4000-8000-000000000001\n",
    "c0ffee00000040008000000000000001",
    "{c0ffee00-0000-4000-8000-000000000001}",
    "urn:uuid:c0ffee00-0000-4000-8000-000000000001",
    "c0ffee00-0000-4000-8000-00000000000g",
    "../../../../etc/passwd",
    "",
];

pub fn run_one(case: &mut Case) -> Result<(), String> {
    if case.rng().one_in(4) {
        let rng = case.rng();
        let alphabet = "win-11_ .жé/%~";
        let name = rng.word(alphabet, 300);
        let mut other = name.clone().into_bytes();
        mutate(rng, &mut other, &["%", "~", "."]);
        let other = String::from_utf8_lossy(&other).into_owned();
        case.show_part("domain", &name);
        case.show_part("other", &other);
        return check_state_name(&name, &other);
    }
    let bytes = xml(case.rng());
    case.show(&bytes);
    // The hook refuses non-UTF-8 stdin before parsing.
    match std::str::from_utf8(&bytes) {
        Ok(text) => check(text),
        Err(_) => Ok(()),
    }
}

/// The hook keeps a record per domain in a file named after it: one safe path component of at
/// most 255 bytes, different for different names.
fn check_state_name(name: &str, other: &str) -> Result<(), String> {
    let file = state::file_name(name);
    path_safe("state file name", &file)?;
    if name != other && file == state::file_name(other) {
        return Err(format!(
            "domains {name:?} and {other:?} share the state file {file}"
        ));
    }
    Ok(())
}

/// A refusal is a sentence; every UUID returned is in the document, and listed once.
fn check(text: &str) -> Result<(), String> {
    let parsed = match domain::parse(text) {
        Ok(parsed) => parsed,
        Err(message) if message.is_empty() => return Err("an empty error".into()),
        Err(_) => return Ok(()),
    };
    let lowercase = text.to_ascii_lowercase();
    for (i, uuid) in parsed.mdevs.iter().enumerate() {
        let shown = uuid.to_string();
        if !lowercase.contains(&shown) {
            return Err(format!("UUID {shown} is not in the document"));
        }
        if parsed.mdevs[..i].contains(uuid) {
            return Err(format!("UUID {shown} is listed twice"));
        }
    }
    for uuid in parsed.specs.keys() {
        if !lowercase.contains(&uuid.to_string()) {
            return Err(format!("metadata UUID {uuid} is not in the document"));
        }
    }
    for spec in parsed.specs.values() {
        if spec.type_spec.trim().is_empty() {
            return Err(format!("an empty type in {spec:?}"));
        }
    }
    Ok(())
}

fn xml(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 | 1 => mutated_example(rng, EXAMPLES, TOKENS),
        2 => spliced_examples(rng, EXAMPLES),
        3 => deep(rng).into_bytes(),
        _ => {
            let mut bytes = generated(rng).into_bytes();
            if rng.one_in(16) {
                huge_repeat(rng, &mut bytes);
            }
            bytes
        }
    }
}

/// A domain with several mdev hostdevs and vgpud metadata, with hostile values.
fn generated(rng: &mut Rng) -> String {
    let mut hostdevs = String::new();
    let mut metadata = String::new();
    for _ in 0..rng.size(6) {
        let uuid = attribute(rng, UUIDS);
        let mode = *rng.pick(&["subsystem", "subsystem", "capabilities"]);
        let kind = *rng.pick(&["mdev", "mdev", "pci"]);
        hostdevs.push_str(&format!(
            "<hostdev mode='{mode}' type='{kind}' model='vfio-pci'><source><address uuid='{uuid}'/></source></hostdev>\n"
        ));
        if rng.one_in(2) {
            let uuid = attribute(rng, UUIDS);
            let ty = attribute(rng, &["GRID T4-2Q", "nvidia-231", " ", "", "../x"]);
            let parent = attribute(rng, &["0000:20:00.0", "../..", "", "mtty"]);
            let prefix = *rng.pick(&["v", "vgpud", "x"]);
            metadata.push_str(&format!(
                "<{prefix}:device uuid='{uuid}' type='{ty}' parent='{parent}'/>"
            ));
        }
    }
    let ns = if rng.one_in(8) {
        "https://vgpud.org/xmlns/libvirt/2"
    } else {
        METADATA_NS
    };
    let root = *rng.pick(&["domain", "domain", "domain", "network", "x:domain"]);
    format!(
        "<{root} type='kvm' xmlns:x='urn:x'><name>{}</name><metadata>\
         <v:devices xmlns:v='{ns}' xmlns:vgpud='{ns}'>{metadata}</v:devices></metadata>\
         <devices>{hostdevs}</devices></{root}>",
        escape_text(rng.word("vm-1", 20).as_str())
    )
}

/// An attribute value from `values`, sometimes with a hostile token, escaped for XML.
fn attribute(rng: &mut Rng, values: &[&str]) -> String {
    let mut value = (*rng.pick(values)).to_owned();
    if rng.one_in(6) {
        let at = rng.below(value.len() + 1);
        if value.is_char_boundary(at) {
            value.insert_str(at, rng.hostile_str());
        }
    }
    escape_text(&value)
}

/// XML-escapes `text`; a NUL (not allowed in XML at all) becomes a character reference, which
/// the parser must refuse.
fn escape_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
        .replace('\0', "&#0;")
}

/// Elements nested thousands deep, around or inside the hostdevs.
fn deep(rng: &mut Rng) -> String {
    let depth = 1 + rng.below(50_000);
    let tag = *rng.pick(&["devices", "hostdev", "x", "metadata"]);
    let inner = "<hostdev mode='subsystem' type='mdev'><source><address uuid='c0ffee00-0000-4000-8000-000000000001'/></source></hostdev>";
    format!(
        "<domain><devices>{}{inner}{}</devices></domain>",
        format!("<{tag}>").repeat(depth),
        format!("</{tag}>").repeat(depth)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_passes_the_checks() {
        for text in EXAMPLES {
            check(text).expect("an example is consistent");
        }
        assert_eq!(domain::parse(EXAMPLES[7]).expect("parses").mdevs.len(), 2);
    }

    #[test]
    fn escape_text_keeps_attributes_well_formed() {
        let xml = format!("<domain name='{}'/>", escape_text("a'b\"c<&"));
        assert!(domain::parse(&xml).is_ok(), "{xml}");
    }
}
