//! The files shipped in policies/: the default and every example must pass `check_files`, the
//! examples must do what their comments say, and the polkit actions XML must be well-formed
//! and declare exactly the actions vgpud asks about.

use std::path::{Path, PathBuf};

use super::fixtures::*;
use super::*;

fn shipped(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../policies")
        .join(rel)
}

fn check(rel: &str) -> Policy {
    match check_files(&[shipped(rel)]) {
        Ok(p) => p,
        Err(d) => panic!(
            "{rel}: {}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

const EXAMPLES: [&str; 4] = [
    "examples/ensure.toml",
    "examples/lab.toml",
    "examples/numa.toml",
    "examples/reservations.toml",
];

#[test]
fn default_file_is_the_built_in_default() {
    let p = check("default.toml");
    assert_eq!(p.placement(), Policy::default().placement());
    assert!(p.rule_names().is_empty());
}

#[test]
fn every_example_checks() {
    for rel in EXAMPLES {
        check(rel);
    }
}

#[test]
fn examples_installed_together_still_check() {
    let mut paths = vec![shipped("default.toml")];
    paths.extend(EXAMPLES.iter().map(|rel| shipped(rel)));
    let p = check_files(&paths).unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(p.placement().strategy, Strategy::NumaLocal);
}

#[test]
fn lab_example_limits_students_to_four_q_devices() {
    let p = check("examples/lab.toml");
    let hosts = [t4("0000:3b:00.0", 16)];
    let have: Vec<Owned> = (0..4)
        .map(|_| owned("0000:3b:00.0", "nvidia-231", Some(&alice())))
        .collect();
    assert!(p
        .plan_create(&alice(), "GRID T4-2Q", None, None, &hosts, &have[..3])
        .is_ok());
    let d = p
        .plan_create(&alice(), "GRID T4-2Q", None, None, &hosts, &have)
        .unwrap_err();
    assert_eq!(
        (d.kind, d.rule.as_str()),
        (DenialKind::PolicyDenied, "lab-t4-q")
    );
    let d = p
        .plan_create(&alice(), "GRID T4-1B", None, None, &hosts, &[])
        .unwrap_err();
    assert_eq!(d.rule, "default");
    let staff = user(1100, "sam", &["lab-admins", "lab"]);
    let r = p
        .plan_create(&staff, "GRID T4-1B", None, None, &hosts, &have)
        .unwrap();
    assert_eq!(r.candidates[0].rule, "lab-admins-t4");
}

#[test]
fn reservations_example_hides_four_instances_from_others() {
    let p = check("examples/reservations.toml");
    let u = user(1200, "una", &["vgpu-users"]);
    let hosts = [t4("0000:20:00.0", 6)];
    let r = p
        .plan_create(&u, "GRID T4-2Q", None, None, &hosts, &[])
        .unwrap();
    assert_eq!(r.candidates[0].free, 2);
    let monitor = user(1300, "monitor", &["ops"]);
    let r = p
        .plan_create(&monitor, "GRID T4-2Q", None, None, &hosts, &[])
        .unwrap();
    assert_eq!(r.candidates[0].free, 6);
}

#[test]
fn ensure_example_asks_for_two_q2_per_t4_and_four_on_3b() {
    let p = check("examples/ensure.toml");
    let steps = p.ensure_plan(&[t4("0000:3b:00.0", 16), t4("0000:5e:00.0", 16)], &[]);
    let wanted: Vec<(&str, &str, u32)> = steps
        .iter()
        .filter_map(|s| match &s.action {
            EnsureAction::Create { count, .. } => {
                Some((s.rule.as_str(), s.parent.as_str(), *count))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        wanted,
        [
            ("four-on-3b", "0000:3b:00.0", 4),
            ("two-q2-per-t4", "0000:5e:00.0", 2)
        ]
    );
}

#[test]
fn numa_example_prefers_the_requested_node() {
    let p = check("examples/numa.toml");
    let hpc = user(1400, "hal", &["hpc"]);
    let hosts = [a100("0000:17:00.0", 0, 7), a100("0000:ca:00.0", 1, 3)];
    let r = p
        .plan_create(&hpc, "GRID A100-4C", None, Some(1), &hosts, &[])
        .unwrap();
    assert_eq!(r.candidates[0].parent.as_str(), "0000:ca:00.0");
}

// --- polkit actions --------------------------------------------------------------------------

#[test]
fn polkit_actions_xml_is_well_formed() {
    let text = std::fs::read_to_string(shipped("org.vgpud.policy")).expect("read the actions file");
    let root = xml::parse(&text).unwrap_or_else(|e| panic!("org.vgpud.policy: {e}"));
    assert_eq!(root.name, "policyconfig");
}

#[test]
fn polkit_actions_xml_declares_every_action_with_its_defaults() {
    let text = std::fs::read_to_string(shipped("org.vgpud.policy")).expect("read the actions file");
    let root = xml::parse(&text).expect("well-formed");
    let actions: Vec<&xml::Element> = root
        .children
        .iter()
        .filter(|e| e.name == "action")
        .collect();
    let ids: Vec<&str> = actions.iter().filter_map(|a| a.attr("id")).collect();
    let expected: Vec<&str> = Action::ALL.iter().map(|a| a.polkit_id()).collect();
    assert_eq!(ids, expected);
    for a in actions {
        // Device actions are gated by the TOML policy (root only by default), so polkit says
        // yes; definitions and the policy itself change the host for everyone.
        let want = match a.attr("id") {
            Some("org.vgpud.reload-policy") => "auth_admin",
            Some("org.vgpud.manage-definitions") => "auth_admin_keep",
            _ => "yes",
        };
        assert!(a.child("description").is_some() && a.child("message").is_some());
        let defaults = a.child("defaults").expect("defaults");
        for key in ["allow_any", "allow_inactive", "allow_active"] {
            let value = defaults.child(key).map(|e| e.text.trim());
            assert_eq!(value, Some(want), "{:?} {key}", a.attr("id"));
        }
    }
}

#[test]
fn the_xml_checker_refuses_broken_documents() {
    for bad in [
        "<a><b></a></b>",
        "<a>",
        "<a></a><b></b>",
        "<a x=\"1\" x=\"2\"/>",
        "<a x=1/>",
        "<a>&nbsp;</a>",
        "<a><!-- a -- b --></a>",
        "text<a/>",
        "<a>1 < 2</a>",
        "",
    ] {
        assert!(xml::parse(bad).is_err(), "accepted {bad:?}");
    }
    assert!(
        xml::parse("<?xml version=\"1.0\"?><!DOCTYPE a><a k='v'>x &amp; y &#38;<b/></a>\n").is_ok()
    );
}

/// Just enough XML to check the actions file is well-formed (polkitd refuses files that are
/// not) and to read its elements: no DTD validation, no namespaces.
mod xml {
    #[derive(Debug, Default)]
    pub struct Element {
        pub name: String,
        pub attrs: Vec<(String, String)>,
        pub children: Vec<Element>,
        pub text: String,
    }

    impl Element {
        pub fn attr(&self, key: &str) -> Option<&str> {
            self.attrs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }

        pub fn child(&self, name: &str) -> Option<&Element> {
            self.children.iter().find(|c| c.name == name)
        }
    }

    pub fn parse(text: &str) -> Result<Element, String> {
        let mut rest = text;
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("<!--") {
                let end = after.find("-->").ok_or("unterminated comment")?;
                if after[..end].contains("--") {
                    return Err("'--' inside a comment".into());
                }
                rest = &after[end + 3..];
            } else if let Some(after) = rest.strip_prefix("<?") {
                rest = &after[after.find("?>").ok_or("unterminated <?")? + 2..];
            } else if let Some(after) = rest.strip_prefix("<!DOCTYPE") {
                if !stack.is_empty() || root.is_some() {
                    return Err("DOCTYPE after the root element".into());
                }
                rest = &after[after.find('>').ok_or("unterminated DOCTYPE")? + 1..];
            } else if let Some(after) = rest.strip_prefix("</") {
                let end = after.find('>').ok_or("unterminated end tag")?;
                let name = after[..end].trim_end();
                let open = stack
                    .pop()
                    .ok_or(format!("</{name}> without a start tag"))?;
                if open.name != name {
                    return Err(format!("</{name}> closes <{}>", open.name));
                }
                rest = &after[end + 1..];
                close(open, &mut stack, &mut root)?;
            } else if let Some(after) = rest.strip_prefix('<') {
                let end = after.find('>').ok_or("unterminated start tag")?;
                let (tag, empty) = match after[..end].strip_suffix('/') {
                    Some(t) => (t, true),
                    None => (&after[..end], false),
                };
                let element = start_tag(tag)?;
                if stack.is_empty() && root.is_some() {
                    return Err("more than one root element".into());
                }
                rest = &after[end + 1..];
                if empty {
                    close(element, &mut stack, &mut root)?;
                } else {
                    stack.push(element);
                }
            } else {
                let end = rest.find('<').unwrap_or(rest.len());
                let chunk = unescape(&rest[..end])?;
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&chunk),
                    None if chunk.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
                rest = &rest[end..];
            }
        }
        if let Some(open) = stack.last() {
            return Err(format!("<{}> is never closed", open.name));
        }
        root.ok_or_else(|| "no root element".into())
    }

    fn close(e: Element, stack: &mut [Element], root: &mut Option<Element>) -> Result<(), String> {
        match stack.last_mut() {
            Some(parent) => parent.children.push(e),
            None if root.is_some() => return Err("more than one root element".into()),
            None => *root = Some(e),
        }
        Ok(())
    }

    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_alphanumeric() || "_:.-".contains(c))
    }

    fn start_tag(tag: &str) -> Result<Element, String> {
        let tag = tag.trim_end();
        let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
        let mut e = Element {
            name: tag[..name_end].to_owned(),
            ..Element::default()
        };
        if !is_name(&e.name) {
            return Err(format!("bad element name {:?}", e.name));
        }
        let mut rest = tag[name_end..].trim_start();
        while !rest.is_empty() {
            let eq = rest
                .find('=')
                .ok_or(format!("attribute without a value in <{}>", e.name))?;
            let key = rest[..eq].trim();
            let value = rest[eq + 1..].trim_start();
            let quote = value
                .chars()
                .next()
                .filter(|q| *q == '"' || *q == '\'')
                .ok_or(format!("unquoted attribute {key}"))?;
            let close = value[1..]
                .find(quote)
                .ok_or(format!("unterminated attribute {key}"))?;
            let raw = &value[1..1 + close];
            if !is_name(key) || raw.contains('<') {
                return Err(format!("bad attribute {key:?}"));
            }
            if e.attr(key).is_some() {
                return Err(format!("duplicate attribute {key}"));
            }
            e.attrs.push((key.to_owned(), unescape(raw)?));
            rest = value[close + 2..].trim_start();
        }
        Ok(e)
    }

    fn unescape(s: &str) -> Result<String, String> {
        if s.contains("]]>") {
            return Err("']]>' in text".into());
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(amp) = rest.find('&') {
            out.push_str(&rest[..amp]);
            let end = rest[amp..].find(';').ok_or("'&' without ';'")? + amp;
            let entity = &rest[amp + 1..end];
            let c = match entity {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                _ => entity
                    .strip_prefix("#x")
                    .map(|h| u32::from_str_radix(h, 16))
                    .or_else(|| entity.strip_prefix('#').map(str::parse))
                    .and_then(Result::ok)
                    .and_then(char::from_u32)
                    .ok_or(format!("unknown entity &{entity};"))?,
            };
            out.push(c);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}
