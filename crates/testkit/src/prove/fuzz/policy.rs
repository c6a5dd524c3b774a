//! Policy files: mutated shipped policies and generated TOML with hostile values go through the
//! parser and the merge. A refusal must point at a real line and column of the text; an accepted
//! policy must then decide and plan on a small host without panicking, naming only its own
//! rules and the host's own parents and types.

use std::path::Path;

use super::mutate::{mutate, mutated_example, spliced_examples, Rng};
use super::Case;
use vgpud_model::{MdevUuid, Parent};
use vgpud_policy::fixtures;
use vgpud_policy::{
    check_files, merge, parse_file, Action, Decision, Diagnostic, EnsureCount, Glob, Owned, Policy,
    Subject,
};

const EXAMPLES: &[&str] = &[
    include_str!("../../../../../policies/default.toml"),
    include_str!("../../../../../policies/examples/ensure.toml"),
    include_str!("../../../../../policies/examples/lab.toml"),
    include_str!("../../../../../policies/examples/numa.toml"),
    include_str!("../../../../../policies/examples/reservations.toml"),
];

/// Words of the format, inserted by mutations.
const TOKENS: &[&str] = &[
    "[[allow]]\n",
    "[[reserve]]\n",
    "[[ensure]]\n",
    "[placement]\n",
    "name = \"r\"\n",
    "users = [\"*\"]\n",
    "groups = [\"lab\"]\n",
    "types = [\"GRID T4-*Q\"]\n",
    "parents = { vendor = 0x10de }\n",
    "max_per_user = ",
    "max_per_group = ",
    "instances = ",
    "count = ",
    "type = ",
    "strategy = \"numa-local\"\n",
    "numa_strict = true\n",
    "\"\"\"",
    "'''",
    "= [",
    "{ a = 1 }",
    "[a.b.c]\n",
    "\n",
    "#",
];

const FILE: &str = "fuzz.toml";

pub fn run_one(case: &mut Case) -> Result<(), String> {
    if case.rng().one_in(4) {
        return check_glob(case);
    }
    let bytes = policy_bytes(case.rng());
    case.show(&bytes);
    if case.rng().one_in(32) {
        return through_files(&bytes);
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(());
    };
    let path = Path::new(FILE);
    let file = match parse_file(path, text) {
        Ok(file) => file,
        Err(diagnostics) => return check_diagnostics(text, &diagnostics),
    };
    match merge(vec![file]) {
        Ok(policy) => exercise(case.rng(), &policy),
        Err(diagnostics) => check_diagnostics(text, &diagnostics),
    }
}

/// The same input through `check_files`, which reads the file and checks its encoding.
fn through_files(bytes: &[u8]) -> Result<(), String> {
    let dir = super::scratch_dir()?;
    let path = dir.path().join(FILE);
    std::fs::write(&path, bytes).map_err(|e| format!("cannot write the policy: {e}"))?;
    let text = String::from_utf8_lossy(bytes);
    match check_files(std::slice::from_ref(&path)) {
        Ok(_) => Ok(()),
        Err(diagnostics) => {
            if diagnostics.iter().any(|d| d.file != path) {
                return Err("a diagnostic names another file".into());
            }
            check_diagnostics(&text, &diagnostics)
        }
    }
}

fn policy_bytes(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 | 1 => mutated_example(rng, EXAMPLES, TOKENS),
        2 => {
            let mut bytes = spliced_examples(rng, EXAMPLES);
            if rng.one_in(2) {
                mutate(rng, &mut bytes, TOKENS);
            }
            bytes
        }
        _ => generated(rng).into_bytes(),
    }
}

/// A policy built rule by rule from valid and hostile values.
fn generated(rng: &mut Rng) -> String {
    let mut out = String::new();
    if rng.one_in(3) {
        let strategy = *rng.pick(&["spread", "pack", "numa-local", "random", ""]);
        out.push_str(&format!(
            "[placement]\nstrategy = {}\n",
            quoted(rng, strategy)
        ));
        if rng.one_in(2) {
            out.push_str("numa_strict = true\n");
        }
    }
    for _ in 0..rng.size(12) {
        let kind = *rng.pick(&["allow", "reserve", "ensure"]);
        out.push_str(&format!("[[{kind}]]\n"));
        let name = if rng.one_in(4) {
            rng.word("ab.-_*/é", 80)
        } else {
            format!("r{}", rng.below(6))
        };
        out.push_str(&format!("name = {}\n", quoted(rng, &name)));
        if kind != "ensure" {
            for key in ["users", "groups"] {
                if rng.one_in(2) {
                    let list = list(rng, &["*", "alice", "lab", "0", "1001", "root"]);
                    out.push_str(&format!("{key} = {list}\n"));
                }
            }
        }
        if kind == "allow" && rng.one_in(2) {
            let list = list(rng, &["GRID T4-*Q", "nvidia-231", "mtty-?", "[a-", "*"]);
            out.push_str(&format!("types = {list}\n"));
        }
        if rng.one_in(2) {
            out.push_str(&parents(rng));
        }
        let counts: &[&str] = match kind {
            "allow" => &["max_per_user", "max_per_group", "max_per_parent"],
            "reserve" => &["instances"],
            _ => &["count"],
        };
        for key in counts {
            if !rng.one_in(4) {
                out.push_str(&format!("{key} = {}\n", number(rng)));
            }
        }
        if kind == "ensure" {
            let spec = *rng.pick(&["GRID T4-2Q", "nvidia-231", "mtty-1", "mtty-*", ""]);
            out.push_str(&format!("type = {}\n", quoted(rng, spec)));
        }
    }
    if rng.one_in(16) {
        out.push_str(&deep(rng));
    }
    out
}

/// A TOML string holding `text`, sometimes with a hostile token in it; escapes keep it a string.
fn quoted(rng: &mut Rng, text: &str) -> String {
    let mut text = text.to_owned();
    if rng.one_in(5) {
        let at = rng.below(text.len() + 1);
        if text.is_char_boundary(at) {
            text.insert_str(at, rng.hostile_str());
        }
    }
    if rng.one_in(40) {
        text = text.repeat(1 + rng.below(1 << 16));
    }
    format!("{text:?}")
}

fn list(rng: &mut Rng, words: &[&str]) -> String {
    let items: Vec<String> = (0..rng.size(6))
        .map(|_| {
            let w = *rng.pick(words);
            quoted(rng, w)
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn parents(rng: &mut Rng) -> String {
    let mut fields = Vec::new();
    if rng.one_in(2) {
        let v = match rng.below(3) {
            0 => "0x10de".to_owned(),
            1 => number(rng),
            _ => quoted(rng, "0x10DE"),
        };
        fields.push(format!("vendor = {v}"));
    }
    if rng.one_in(2) {
        let d = *rng.pick(&["\"0x1eb8\"", "\"1eb8\"", "\"0x\"", "\"0x12345\"", "-1"]);
        fields.push(format!("device = {d}"));
    }
    if rng.one_in(2) {
        fields.push(format!("driver = {}", quoted(rng, "nvid*")));
    }
    if rng.one_in(2) {
        fields.push(format!("address = {}", quoted(rng, "0000:3b:*")));
    }
    format!("parents = {{ {} }}\n", fields.join(", "))
}

fn number(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => "1e999".to_owned(),
        1 => "99999999999999999999999".to_owned(),
        2 => format!("\"{}\"", rng.below(10)),
        _ => rng.edgy_i64().to_string(),
    }
}

/// Deep nesting: arrays, inline tables or dotted keys thousands of levels down.
fn deep(rng: &mut Rng) -> String {
    let depth = 1 + rng.below(20_000);
    match rng.below(3) {
        0 => format!("x = {}{}\n", "[".repeat(depth), "]".repeat(depth)),
        1 => format!("x = {}1{}\n", "{ a = ".repeat(depth), " }".repeat(depth)),
        _ => format!("[{}]\n", vec!["a"; depth].join(".")),
    }
}

/// Globs (type, driver and address patterns): any pattern compiles or is refused, and matching
/// agrees with plain string operations where the pattern's meaning is plain.
fn check_glob(case: &mut Case) -> Result<(), String> {
    let rng = case.rng();
    let alphabet = "ab*?[]!^-\\é";
    let pattern = rng.word(alphabet, 12);
    let text = rng.word("abé-", 16);
    let needle = rng.word("ab*?é", 4);
    case.show_part("pattern", &pattern);
    case.show_part("text", &text);
    case.show_part("needle", &needle);
    if let Ok(g) = Glob::new(&pattern) {
        if g.as_str() != pattern {
            return Err(format!("glob {pattern:?} shows as {:?}", g.as_str()));
        }
        g.matches(&text);
        if g.is_literal() && !pattern.contains('\\') && g.matches(&text) != (text == pattern) {
            return Err("a literal glob disagrees with string equality".into());
        }
    }
    if needle.is_empty() {
        return Ok(());
    }
    let escaped: String = needle.chars().flat_map(|c| ['\\', c]).collect();
    let exact = Glob::new(&escaped).map_err(|e| format!("escaped {needle:?}: {e}"))?;
    if !exact.is_literal() || exact.matches(&text) != (text == needle) {
        return Err(format!("escaped {needle:?} does not match exactly itself"));
    }
    let inside = Glob::new(&format!("*{escaped}*")).map_err(|e| e.to_string())?;
    if inside.matches(&text) != text.contains(&needle) {
        return Err(format!("*{escaped}* disagrees with contains"));
    }
    let n = needle.chars().count();
    let any_n = Glob::new(&"?".repeat(n)).map_err(|e| e.to_string())?;
    if any_n.matches(&text) != (text.chars().count() == n) {
        return Err(format!("{n} '?' disagree with the length of the text"));
    }
    Ok(())
}

/// Longest diagnostic message accepted: a hostile value must be quoted, not copied whole.
const MESSAGE_MAX: usize = 1024;

fn check_diagnostics(text: &str, diagnostics: &[Diagnostic]) -> Result<(), String> {
    if diagnostics.is_empty() {
        return Err("a refusal without a diagnostic".into());
    }
    let lines: Vec<&str> = text.split('\n').collect();
    for d in diagnostics {
        if d.message.is_empty() {
            return Err(format!("an empty diagnostic at {}:{}", d.line, d.column));
        }
        if d.message.len() > MESSAGE_MAX {
            return Err(format!(
                "a diagnostic of {} bytes: {}...",
                d.message.len(),
                d.message.chars().take(120).collect::<String>()
            ));
        }
        if d.line == 0 && d.column == 0 {
            continue;
        }
        let Some(line) = d.line.checked_sub(1).and_then(|i| lines.get(i)) else {
            return Err(format!(
                "diagnostic line {} is outside the {} lines of the text: {}",
                d.line,
                lines.len(),
                d.message
            ));
        };
        let width = line.chars().count();
        if d.column == 0 || d.column > width + 1 {
            return Err(format!(
                "diagnostic column {} is outside line {} ({width} characters): {}",
                d.column, d.line, d.message
            ));
        }
    }
    Ok(())
}

/// Every decision an accepted policy makes on the fixture host, checked for names it may use.
fn exercise(rng: &mut Rng, policy: &Policy) -> Result<(), String> {
    let _ = policy.summary();
    let host = host();
    let rules = policy.rule_names();
    let known_rule =
        |rule: &str, builtin: &[&str]| rules.contains(&rule) || builtin.contains(&rule);
    let devices = devices(rng, &host);
    for subject in subjects() {
        for action in Action::ALL {
            let parent = rng.pick(&host);
            let ty = rng.pick(&parent.types);
            let decision = policy.decide(&subject, action, Some(parent), Some(&ty.id), None);
            let rule = match &decision {
                Decision::Allow { rule } => rule,
                Decision::Deny { rule, .. } => rule,
            };
            if !known_rule(rule, &["root", "owner", "polkit", "default"]) {
                return Err(format!("decide names an unknown rule {rule:?}"));
            }
        }
        for spec in [
            "GRID T4-2Q",
            "nvidia-231",
            "mtty-1",
            "GRID A100-4C",
            "*",
            "../x",
        ] {
            let named = rng.one_in(3).then(|| rng.pick(&host).name.clone());
            let node = rng.one_in(2).then(|| rng.below(3) as i32 - 1);
            match policy.plan_create(&subject, spec, named.as_ref(), node, &host, &devices) {
                Ok(plan) => {
                    for c in &plan.candidates {
                        let Some(parent) = host.iter().find(|p| p.name == c.parent) else {
                            return Err(format!("plan names unknown parent {}", c.parent));
                        };
                        let Some(ty) = parent.types.iter().find(|t| t.id == c.type_id) else {
                            return Err(format!(
                                "plan names type {} not on {}",
                                c.type_id, c.parent
                            ));
                        };
                        if c.free > ty.available_instances {
                            return Err(format!(
                                "plan offers {} free of {} on {}",
                                c.free, ty.id, c.parent
                            ));
                        }
                        if !known_rule(&c.rule, &["root"]) {
                            return Err(format!("plan names an unknown rule {:?}", c.rule));
                        }
                    }
                }
                Err(denial) => {
                    if !known_rule(&denial.rule, &["default", ""]) {
                        return Err(format!("denial names an unknown rule {:?}", denial.rule));
                    }
                }
            }
        }
    }
    let counts: Vec<EnsureCount> = devices
        .iter()
        .filter_map(|d| {
            Some(EnsureCount {
                parent: d.parent.clone(),
                type_id: d.type_id.clone()?,
                count: 1,
            })
        })
        .collect();
    for step in policy.ensure_plan(&host, &counts) {
        if !host.iter().any(|p| p.name == step.parent) || !rules.contains(&step.rule.as_str()) {
            return Err(format!("ensure step names unknown things: {step:?}"));
        }
    }
    Ok(())
}

fn subjects() -> Vec<Subject> {
    let user = |uid, name: &str, groups: &[&str]| Subject {
        uid,
        user: Some(name.to_owned()),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    };
    vec![
        user(0, "root", &["root"]),
        user(1001, "alice", &["alice", "lab"]),
        user(1002, "bob", &["bob", "lab-admins"]),
        Subject {
            uid: 4242,
            user: None,
            groups: vec![],
        },
    ]
}

/// A T4 and an A100 on two NUMA nodes, and the mtty sample.
fn host() -> Vec<Parent> {
    let parent = |n: &str, pci: Option<(u16, u16)>, node, types: &[(&str, &str, u32)]| Parent {
        numa_node: node,
        ..fixtures::parent(n, pci, Some("nvidia"), types)
    };
    vec![
        parent(
            "0000:3b:00.0",
            Some((0x10de, 0x1eb8)),
            Some(0),
            &[
                ("nvidia-231", "GRID T4-2Q", 8),
                ("nvidia-232", "GRID T4-4Q", 0),
            ],
        ),
        parent(
            "0000:41:00.4",
            Some((0x10de, 0x20f1)),
            Some(1),
            &[("nvidia-471", "GRID A100-4C", 1)],
        ),
        parent("mtty", None, None, &[("mtty-1", "Single port serial", 24)]),
    ]
}

/// A few devices on the host, owned by the fixture subjects or by no one.
fn devices(rng: &mut Rng, host: &[Parent]) -> Vec<Owned> {
    (0..rng.size(8))
        .map(|_| {
            let parent = rng.pick(host);
            let ty = rng.pick(&parent.types);
            let owner = *rng.pick(&[None, Some(1001), Some(1002)]);
            Owned {
                uuid: MdevUuid::from_uuid(uuid::Uuid::from_u64_pair(
                    rng.next_u64(),
                    rng.next_u64(),
                )),
                parent: parent.name.clone(),
                type_id: (!rng.one_in(5)).then(|| ty.id.clone()),
                owner_uid: owner,
                owner_groups: if owner.is_some() {
                    vec!["lab".into()]
                } else {
                    vec![]
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_policy_is_accepted_and_exercised() {
        for text in EXAMPLES {
            let file = parse_file(Path::new(FILE), text).expect("shipped policy parses");
            let policy = merge(vec![file]).expect("shipped policy merges");
            exercise(&mut Rng::new(1), &policy).expect("decisions name only known things");
        }
    }

    #[test]
    fn a_diagnostic_outside_the_text_is_reported() {
        let d = Diagnostic {
            file: FILE.into(),
            line: 3,
            column: 1,
            message: "x".into(),
        };
        assert!(check_diagnostics("a\nb", std::slice::from_ref(&d)).is_err());
        let d = Diagnostic {
            line: 2,
            column: 3,
            ..d
        };
        assert!(check_diagnostics("a\nb", std::slice::from_ref(&d)).is_err());
        let d = Diagnostic { column: 2, ..d };
        assert!(check_diagnostics("a\nb", &[d]).is_ok());
    }

    #[test]
    fn a_flooding_diagnostic_is_reported() {
        let d = Diagnostic {
            file: FILE.into(),
            line: 1,
            column: 1,
            message: "x".repeat(MESSAGE_MAX + 1),
        };
        assert!(check_diagnostics("a", &[d]).is_err());
    }
}
