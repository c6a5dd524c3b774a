//! Reading a libvirt domain XML: the UUIDs of its mdev hostdevs and vgpud's metadata saying
//! which type (and parent) to create for each. Errors name the line of the offending element.

use std::collections::HashMap;

use roxmltree::{Document, Node, ParsingOptions};

use vgpud_model::MdevUuid;

/// The namespace of vgpud's element in a domain's `<metadata>`.
pub const METADATA_NS: &str = "https://vgpud.org/xmlns/libvirt/1";

/// How to create a device the domain uses, from `<vgpud:device uuid type parent/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// A type id or name, as Manager.CreateDevice takes it.
    pub type_spec: String,
    pub parent: Option<String>,
}

/// What the hook needs from a domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Domain {
    /// The domain's name (`<name>`), if given.
    pub name: Option<String>,
    /// UUIDs of `<hostdev mode='subsystem' type='mdev'>`, in document order, each once.
    pub mdevs: Vec<MdevUuid>,
    /// vgpud metadata by UUID.
    pub specs: HashMap<MdevUuid, DeviceSpec>,
}

fn line_of(doc: &Document, node: Node) -> u32 {
    doc.text_pos_at(node.range().start).row
}

fn children<'a, 'i>(node: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(move |c| {
        c.is_element() && c.tag_name().name() == name && c.tag_name().namespace().is_none()
    })
}

/// Deepest element nesting accepted. The XML parser recurses once per level, so a deeper
/// document would overflow the stack and abort the hook; libxml2, and so libvirt, refuses more
/// than 256 levels by default, so no domain libvirt passes is refused.
const MAX_DEPTH: usize = 256;

/// Whether any element of `xml` is nested more than `limit` deep. Exact for well-formed XML:
/// comments, CDATA sections, processing instructions, declarations and quoted attribute values
/// are skipped; anything else malformed is left to the parser to refuse.
fn nests_deeper_than(xml: &str, limit: usize) -> bool {
    let bytes = xml.as_bytes();
    let find = |from: usize, what: &[u8]| {
        bytes[from.min(bytes.len())..]
            .windows(what.len())
            .position(|w| w == what)
            .map_or(bytes.len(), |i| from + i + what.len())
    };
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(open) = bytes[i..].iter().position(|b| *b == b'<') {
        let at = i + open;
        let rest = &bytes[at..];
        i = if rest.starts_with(b"<!--") {
            find(at + 4, b"-->")
        } else if rest.starts_with(b"<![CDATA[") {
            find(at + 9, b"]]>")
        } else if rest.starts_with(b"<?") {
            find(at + 2, b"?>")
        } else if rest.starts_with(b"<!") {
            find(at + 2, b">")
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            find(at + 2, b">")
        } else {
            // A start tag: find its end outside quoted attribute values.
            let mut quote = None;
            let mut end = bytes.len();
            for (j, b) in rest.iter().enumerate().skip(1) {
                match (quote, *b) {
                    (Some(q), b) if b == q => quote = None,
                    (Some(_), _) => {}
                    (None, b'"' | b'\'') => quote = Some(*b),
                    (None, b'>') => {
                        end = at + j + 1;
                        break;
                    }
                    (None, _) => {}
                }
            }
            if bytes[..end].last() == Some(&b'>') && bytes[..end - 1].last() != Some(&b'/') {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            end
        };
        if i >= bytes.len() {
            break;
        }
    }
    false
}

/// Parses the domain XML; any problem is a sentence with the line it is on.
pub fn parse(xml: &str) -> Result<Domain, String> {
    if nests_deeper_than(xml, MAX_DEPTH) {
        return Err(format!(
            "the domain XML nests elements more than {MAX_DEPTH} deep"
        ));
    }
    let options = ParsingOptions {
        allow_dtd: false,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(xml, options)
        .map_err(|e| format!("the domain XML is not well-formed: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" || root.tag_name().namespace().is_some() {
        return Err(format!(
            "the XML's root element is <{}>, not <domain>",
            root.tag_name().name()
        ));
    }
    let mut domain = Domain {
        name: children(root, "name")
            .next()
            .and_then(|n| n.text())
            .map(|t| t.trim().to_owned()),
        ..Domain::default()
    };
    for devices in children(root, "devices") {
        for hostdev in children(devices, "hostdev") {
            if hostdev.attribute("mode") != Some("subsystem")
                || hostdev.attribute("type") != Some("mdev")
            {
                continue;
            }
            let line = line_of(&doc, hostdev);
            let uuid = children(hostdev, "source")
                .flat_map(|s| children(s, "address"))
                .find_map(|a| a.attribute("uuid"))
                .ok_or_else(|| {
                    format!("line {line}: an mdev <hostdev> has no <source><address uuid='...'/>")
                })?;
            let uuid = MdevUuid::parse(uuid).map_err(|e| format!("line {line}: {e}"))?;
            if !domain.mdevs.contains(&uuid) {
                domain.mdevs.push(uuid);
            }
        }
    }
    for metadata in children(root, "metadata") {
        let ours = metadata.children().filter(|c| {
            c.is_element()
                && c.tag_name().namespace() == Some(METADATA_NS)
                && c.tag_name().name() == "devices"
        });
        for list in ours {
            for device in list.children().filter(|c| c.is_element()) {
                if device.tag_name().namespace() != Some(METADATA_NS)
                    || device.tag_name().name() != "device"
                {
                    continue;
                }
                let (uuid, spec) = metadata_device(&doc, device)?;
                let line = line_of(&doc, device);
                if domain.specs.insert(uuid, spec).is_some() {
                    return Err(format!(
                        "line {line}: vgpud metadata names device {uuid} twice"
                    ));
                }
            }
        }
    }
    Ok(domain)
}

fn metadata_device(doc: &Document, device: Node) -> Result<(MdevUuid, DeviceSpec), String> {
    let line = line_of(doc, device);
    let attr = |name: &str| {
        device
            .attribute(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let uuid = attr("uuid")
        .ok_or_else(|| format!("line {line}: <vgpud:device> needs a uuid attribute"))?;
    let uuid = MdevUuid::parse(uuid).map_err(|e| format!("line {line}: {e}"))?;
    let type_spec = attr("type").ok_or_else(|| {
        format!("line {line}: <vgpud:device uuid=\"{uuid}\"> needs a type attribute (a type id or name)")
    })?;
    Ok((
        uuid,
        DeviceSpec {
            type_spec: type_spec.to_owned(),
            parent: attr("parent").map(str::to_owned),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "4b20d080-1b54-4048-85b3-a6a62d165c01";
    const U2: &str = "4b20d080-1b54-4048-85b3-a6a62d165c02";

    fn hostdev(uuid: &str, model: &str) -> String {
        format!(
            "<hostdev mode='subsystem' type='mdev' model='{model}' display='off'>\
             <source><address uuid='{uuid}'/></source></hostdev>"
        )
    }

    fn uuid(s: &str) -> MdevUuid {
        MdevUuid::parse(s).unwrap()
    }

    #[test]
    fn finds_mdev_hostdevs_of_every_model_once() {
        let xml = format!(
            "<domain type='kvm'><name>vm</name><devices>{}{}{}\
             <hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' slot='0' function='0'/></source></hostdev>\
             </devices></domain>",
            hostdev(U1, "vfio-pci"),
            hostdev(U2, "vfio-ccw"),
            hostdev(U1, "vfio-ap"),
        );
        let d = parse(&xml).unwrap();
        assert_eq!(d.name.as_deref(), Some("vm"));
        assert_eq!(d.mdevs, vec![uuid(U1), uuid(U2)]);
        assert!(d.specs.is_empty());
    }

    #[test]
    fn reads_metadata_by_namespace_not_prefix() {
        let xml = format!(
            "<domain><metadata><x:devices xmlns:x='{METADATA_NS}'>\
             <x:device uuid='{U1}' type='GRID T4-2Q' parent='0000:20:00.0'/>\
             <x:device uuid='{U2}' type='mtty-1'/></x:devices>\
             <other:devices xmlns:other='https://example.org/'><other:device uuid='x'/></other:devices>\
             </metadata><devices>{}</devices></domain>",
            hostdev(U1, "vfio-pci")
        );
        let d = parse(&xml).unwrap();
        assert_eq!(
            d.specs[&uuid(U1)],
            DeviceSpec {
                type_spec: "GRID T4-2Q".into(),
                parent: Some("0000:20:00.0".into())
            }
        );
        assert_eq!(d.specs[&uuid(U2)].parent, None);
    }

    #[test]
    fn no_mdev_is_an_empty_list() {
        let d = parse("<domain><devices><disk type='file'/></devices></domain>").unwrap();
        assert!(d.mdevs.is_empty());
    }

    #[test]
    fn malformed_xml_is_an_error() {
        let e = parse("<domain><devices></domain>").unwrap_err();
        assert!(e.contains("not well-formed"), "{e}");
        assert!(parse("").is_err());
        assert!(parse("<network/>").unwrap_err().contains("<network>"));
    }

    #[test]
    fn bad_uuids_name_their_line() {
        let xml = format!(
            "<domain>\n<devices>\n{}</devices></domain>",
            hostdev("nope", "vfio-pci")
        );
        let e = parse(&xml).unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        let xml = "<domain><devices><hostdev mode='subsystem' type='mdev'/></devices></domain>";
        assert!(parse(xml).unwrap_err().contains("no <source>"));
    }

    #[test]
    fn metadata_needs_uuid_and_type_once() {
        let wrap = |inner: &str| {
            format!("<domain><metadata><v:devices xmlns:v='{METADATA_NS}'>{inner}</v:devices></metadata></domain>")
        };
        assert!(parse(&wrap(&format!("<v:device uuid='{U1}'/>")))
            .unwrap_err()
            .contains("needs a type"));
        assert!(parse(&wrap("<v:device type='t'/>"))
            .unwrap_err()
            .contains("needs a uuid"));
        let twice = format!("<v:device uuid='{U1}' type='a'/><v:device uuid='{U1}' type='b'/>");
        assert!(parse(&wrap(&twice)).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_doctype_is_refused() {
        let xml = "<!DOCTYPE domain [<!ENTITY a 'aaaa'>]><domain>&a;</domain>";
        assert!(parse(xml).is_err());
    }

    fn nested(depth: usize, attributes: &str) -> String {
        format!(
            "<domain>{}{}</domain>",
            format!("<x{attributes}>").repeat(depth - 1),
            "</x>".repeat(depth - 1)
        )
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // Found by the fuzzer: roxmltree recurses per level and 1,000 levels aborted the hook.
        for depth in [MAX_DEPTH + 1, 1_000, 100_000] {
            let e = parse(&nested(depth, "")).unwrap_err();
            assert!(e.contains("more than 256 deep"), "{e}");
        }
    }

    #[test]
    fn nesting_up_to_the_limit_parses() {
        assert!(parse(&nested(MAX_DEPTH, "")).is_ok());
        assert!(parse(&nested(MAX_DEPTH, " a='/>' b=\"->\"")).is_ok());
    }

    #[test]
    fn depth_ignores_comments_cdata_and_empty_elements() {
        let noise = "<!-- <a><a><a> --><![CDATA[<a><a>]]><?pi <a> ?><e/><e a='>'/>";
        let xml = format!("<a>{}</a>", noise.repeat(300));
        assert!(!nests_deeper_than(&xml, 2));
        assert!(nests_deeper_than("<a><b><c>", 2));
        assert!(!nests_deeper_than("<a></a><b></b><c></c>", 1));
    }
}
