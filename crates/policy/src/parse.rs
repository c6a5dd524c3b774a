//! Reading one policy file: TOML into raw, spanned values, then checks that turn them into
//! rules. Every problem becomes a `Diagnostic` at the file, line and column where it was written;
//! all semantic problems of a file are reported together, not only the first.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::glob::Glob;
use super::rules::{
    AllowRule, EnsureRule, Origin, ParentMatch, ReserveRule, SchedulerPolicy, SchedulerRule,
    Strategy, TypeMatch, UserRef, Who,
};

/// One problem in a policy file. `line` and `column` count from 1; 0 means the problem is with
/// the file as a whole (it cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for Diagnostic {}

/// One parsed and checked policy file, ready to be merged with others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    pub(crate) path: PathBuf,
    pub(crate) strategy: Option<(Strategy, Origin)>,
    pub(crate) numa_strict: Option<(bool, Origin)>,
    pub(crate) allow: Vec<AllowRule>,
    pub(crate) reserve: Vec<ReserveRule>,
    pub(crate) ensure: Vec<EnsureRule>,
    pub(crate) scheduler: Vec<SchedulerRule>,
}

impl PolicyFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every rule name in the file with where it was written, in file order.
    pub(crate) fn rule_names(&self) -> impl Iterator<Item = (&str, &Origin)> {
        let allow = self.allow.iter().map(|r| (r.name.as_str(), &r.origin));
        let reserve = self.reserve.iter().map(|r| (r.name.as_str(), &r.origin));
        let ensure = self.ensure.iter().map(|r| (r.name.as_str(), &r.origin));
        let scheduler = self.scheduler.iter().map(|r| (r.name.as_str(), &r.origin));
        allow.chain(reserve).chain(ensure).chain(scheduler)
    }
}

/// Names the decision code uses for itself in denials and grants; a rule may not take one.
pub(crate) const RESERVED_NAMES: [&str; 4] = ["default", "root", "owner", "polkit"];

const NAME_MAX: usize = 64;

type Names = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    placement: Option<RawPlacement>,
    #[serde(default)]
    allow: Vec<RawAllow>,
    #[serde(default)]
    reserve: Vec<RawReserve>,
    #[serde(default)]
    ensure: Vec<RawEnsure>,
    #[serde(default)]
    scheduler: Vec<RawScheduler>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    name: Spanned<String>,
    parents: Option<RawParents>,
    policy: Spanned<String>,
    time_slice_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    strategy: Option<Spanned<String>>,
    numa_strict: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    name: Spanned<String>,
    users: Option<Names>,
    groups: Option<Names>,
    types: Option<Names>,
    parents: Option<RawParents>,
    max_per_user: Option<Spanned<i64>>,
    max_per_group: Option<Spanned<i64>>,
    max_per_parent: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReserve {
    name: Spanned<String>,
    users: Option<Names>,
    groups: Option<Names>,
    parents: Option<RawParents>,
    instances: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnsure {
    name: Spanned<String>,
    parents: Option<RawParents>,
    #[serde(rename = "type")]
    type_spec: Spanned<String>,
    count: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParents {
    vendor: Option<Spanned<RawId>>,
    device: Option<Spanned<RawId>>,
    driver: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
}

/// A PCI id as written: "0x10de", "10de", or a TOML integer such as 0x10de.
enum RawId {
    Text(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a PCI id such as \"0x10de\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawId, E> {
                Ok(RawId::Text(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawId, E> {
                Ok(RawId::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawId, E> {
                Ok(RawId::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Parses and checks one policy file. `path` is only used in diagnostics and origins.
pub fn parse_file(path: &Path, text: &str) -> Result<PolicyFile, Vec<Diagnostic>> {
    let mut check = Checker {
        path,
        text,
        diagnostics: Vec::new(),
    };
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let mut message = plain_serde_message(e.message());
            if message.is_empty() {
                // The TOML parser gives no words for some errors (a control character in a
                // comment): say what is at the position instead of printing nothing.
                message = unexpected_at(text, span.start);
            }
            check.error(span, cut(&message, MESSAGE_MAX));
            return Err(check.diagnostics);
        }
    };
    let file = check.file(raw);
    if check.diagnostics.is_empty() {
        Ok(file)
    } else {
        check.diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(check.diagnostics)
    }
}

/// Line and column (both from 1, the column in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn origin(&self, span: Range<usize>) -> Origin {
        let (line, column) = line_column(self.text, span.start);
        Origin {
            file: self.path.to_owned(),
            line,
            column,
        }
    }

    fn error(&mut self, span: Range<usize>, message: String) {
        let o = self.origin(span);
        self.diagnostics.push(Diagnostic {
            file: o.file,
            line: o.line,
            column: o.column,
            message,
        });
    }

    fn file(&mut self, raw: RawFile) -> PolicyFile {
        let (mut strategy, mut numa_strict) = (None, None);
        if let Some(p) = raw.placement {
            if let Some(s) = p.strategy {
                match Strategy::parse(s.get_ref()) {
                    Some(st) => strategy = Some((st, self.origin(s.span()))),
                    None => self.error(
                        s.span(),
                        format!(
                            "unknown placement strategy {}; expected one of {}",
                            quoted(s.get_ref()),
                            quoted_list(&Strategy::NAMES)
                        ),
                    ),
                }
            }
            if let Some(n) = p.numa_strict {
                if *n.get_ref()
                    && strategy
                        .as_ref()
                        .is_some_and(|(s, _)| *s != Strategy::NumaLocal)
                {
                    self.error(
                        n.span(),
                        "numa_strict applies only to strategy = \"numa-local\"".into(),
                    );
                }
                numa_strict = Some((*n.get_ref(), self.origin(n.span())));
            }
        }
        let mut names: HashMap<String, Origin> = HashMap::new();
        let allow = raw
            .allow
            .into_iter()
            .filter_map(|r| self.allow(r, &mut names))
            .collect();
        let reserve = raw
            .reserve
            .into_iter()
            .filter_map(|r| self.reserve(r, &mut names))
            .collect();
        let ensure = raw
            .ensure
            .into_iter()
            .filter_map(|r| self.ensure(r, &mut names))
            .collect();
        let scheduler = raw
            .scheduler
            .into_iter()
            .filter_map(|r| self.scheduler(r, &mut names))
            .collect();
        PolicyFile {
            path: self.path.to_owned(),
            strategy,
            numa_strict,
            allow,
            reserve,
            ensure,
            scheduler,
        }
    }

    /// Checks a rule's name and that no earlier rule of this file uses it.
    fn name(
        &mut self,
        name: &Spanned<String>,
        seen: &mut HashMap<String, Origin>,
    ) -> Option<(String, Origin)> {
        let n = name.get_ref();
        let problem = if n.is_empty() {
            Some("a rule name must not be empty".to_owned())
        } else if n.chars().count() > NAME_MAX {
            Some(format!("rule name is longer than {NAME_MAX} characters"))
        } else if !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            Some(format!(
                "rule name {n:?} may hold only letters, digits, '-', '_' and '.'"
            ))
        } else if RESERVED_NAMES.contains(&n.as_str()) {
            Some(format!(
                "rule name {n:?} is reserved (vgpud reports {} itself)",
                quoted_list(&RESERVED_NAMES)
            ))
        } else {
            seen.get(n)
                .map(|first| format!("rule name {n:?} is already used at {first}"))
        };
        if let Some(p) = problem {
            self.error(name.span(), p);
            return None;
        }
        let origin = self.origin(name.span());
        seen.insert(n.clone(), origin.clone());
        Some((n.clone(), origin))
    }

    fn allow(&mut self, r: RawAllow, seen: &mut HashMap<String, Origin>) -> Option<AllowRule> {
        let before = self.diagnostics.len();
        let name = self.name(&r.name, seen);
        let who = self.who(&r.name, r.users, r.groups);
        let types = self.types(r.types);
        let parents = self.parents(r.parents);
        let max_per_user = r
            .max_per_user
            .and_then(|v| self.count("max_per_user", &v, 0));
        let max_per_parent = r
            .max_per_parent
            .and_then(|v| self.count("max_per_parent", &v, 0));
        let max_per_group = r.max_per_group.and_then(|v| {
            if who.groups.is_empty() {
                self.error(
                    v.span(),
                    "max_per_group needs groups in the same rule (it limits each of them)".into(),
                );
                return None;
            }
            self.count("max_per_group", &v, 0)
        });
        let (name, origin) = name?;
        (self.diagnostics.len() == before).then_some(AllowRule {
            name,
            origin,
            who,
            types,
            parents,
            max_per_user,
            max_per_group,
            max_per_parent,
        })
    }

    fn reserve(
        &mut self,
        r: RawReserve,
        seen: &mut HashMap<String, Origin>,
    ) -> Option<ReserveRule> {
        let before = self.diagnostics.len();
        let name = self.name(&r.name, seen);
        let who = self.who(&r.name, r.users, r.groups);
        let parents = self.parents(r.parents);
        let instances = self.count("instances", &r.instances, 1);
        let (name, origin) = name?;
        (self.diagnostics.len() == before).then_some(ReserveRule {
            name,
            origin,
            who,
            parents,
            instances: instances?,
        })
    }

    fn ensure(&mut self, r: RawEnsure, seen: &mut HashMap<String, Origin>) -> Option<EnsureRule> {
        let before = self.diagnostics.len();
        let name = self.name(&r.name, seen);
        let parents = self.parents(r.parents);
        let count = self.count("count", &r.count, 1);
        let t = r.type_spec.get_ref();
        if t.is_empty() || t.chars().any(char::is_control) {
            self.error(
                r.type_spec.span(),
                "type must be a type id or name (not empty, no control characters)".into(),
            );
        } else if t.contains(['*', '?', '[']) {
            self.error(
                r.type_spec.span(),
                format!(
                    "type {} looks like a glob; ensure needs an exact type id or name",
                    quoted(t)
                ),
            );
        }
        let (name, origin) = name?;
        (self.diagnostics.len() == before).then_some(EnsureRule {
            name,
            origin,
            parents,
            type_spec: t.clone(),
            count: count?,
        })
    }

    fn scheduler(
        &mut self,
        r: RawScheduler,
        seen: &mut HashMap<String, Origin>,
    ) -> Option<SchedulerRule> {
        let before = self.diagnostics.len();
        let name = self.name(&r.name, seen);
        let parents = self.parents(r.parents);
        let policy = SchedulerPolicy::parse(r.policy.get_ref());
        if policy.is_none() {
            self.error(
                r.policy.span(),
                format!(
                    "unknown scheduler policy {}: expected \"best-effort\", \"equal-share\" or \"fixed-share\"",
                    quoted(r.policy.get_ref())
                ),
            );
        }
        let mut time_slice_ms = None;
        if let Some(ms) = &r.time_slice_ms {
            match u8::try_from(*ms.get_ref()) {
                Ok(v) if (1..=30).contains(&v) => time_slice_ms = Some(v),
                _ => self.error(
                    ms.span(),
                    format!("time_slice_ms must be 1 to 30, not {}", ms.get_ref()),
                ),
            }
            if policy == Some(SchedulerPolicy::BestEffort) {
                self.error(
                    ms.span(),
                    "time_slice_ms applies to equal-share and fixed-share only".into(),
                );
            }
        }
        let (name, origin) = name?;
        (self.diagnostics.len() == before).then_some(SchedulerRule {
            name,
            origin,
            parents,
            policy: policy?,
            time_slice_ms,
        })
    }

    /// Users and groups; a rule must name at least one of either.
    fn who(&mut self, name: &Spanned<String>, users: Option<Names>, groups: Option<Names>) -> Who {
        let mut who = Who::default();
        for u in users.iter().flat_map(|l| l.get_ref()) {
            let s = u.get_ref();
            if s == "*" {
                who.users.push(UserRef::Anyone);
            } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                match s.parse::<u32>() {
                    Ok(uid) => who.users.push(UserRef::Uid(uid)),
                    Err(_) => self.error(u.span(), format!("uid {} is out of range", clipped(s))),
                }
            } else if let Some(p) = account_name_problem(s) {
                self.error(u.span(), format!("bad user {}: {p}", quoted(s)));
            } else {
                who.users.push(UserRef::Name(s.clone()));
            }
        }
        for g in groups.iter().flat_map(|l| l.get_ref()) {
            let s = g.get_ref();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                self.error(
                    g.span(),
                    format!(
                        "groups are matched by name, not by gid: write the name of group {}",
                        clipped(s)
                    ),
                );
            } else if let Some(p) = account_name_problem(s) {
                self.error(g.span(), format!("bad group {}: {p}", quoted(s)));
            } else {
                who.groups.push(s.clone());
            }
        }
        let listed = |l: &Option<Names>| l.as_ref().is_some_and(|l| !l.get_ref().is_empty());
        if !listed(&users) && !listed(&groups) {
            self.error(
                name.span(),
                format!(
                    "rule {} names no users or groups; write users = [\"*\"] to mean everyone",
                    quoted(name.get_ref())
                ),
            );
        }
        who
    }

    fn types(&mut self, types: Option<Names>) -> TypeMatch {
        let Some(list) = types else {
            return TypeMatch(None);
        };
        if list.get_ref().is_empty() {
            self.error(
                list.span(),
                "an empty types list matches no type; leave types out to mean every type".into(),
            );
        }
        let globs = list
            .get_ref()
            .iter()
            .filter_map(|t| self.glob("type pattern", t))
            .collect();
        TypeMatch(Some(globs))
    }

    fn parents(&mut self, parents: Option<RawParents>) -> ParentMatch {
        let Some(p) = parents else {
            return ParentMatch::default();
        };
        ParentMatch {
            vendor: p.vendor.and_then(|v| self.pci_id("vendor", &v)),
            device: p.device.and_then(|v| self.pci_id("device", &v)),
            driver: p.driver.and_then(|g| self.glob("driver pattern", &g)),
            address: p.address.and_then(|g| self.glob("address pattern", &g)),
        }
    }

    fn glob(&mut self, what: &str, pattern: &Spanned<String>) -> Option<Glob> {
        match Glob::new(pattern.get_ref()) {
            Ok(g) => Some(g),
            Err(why) => {
                self.error(
                    pattern.span(),
                    format!("bad {what} {}: {why}", quoted(pattern.get_ref())),
                );
                None
            }
        }
    }

    fn pci_id(&mut self, what: &str, id: &Spanned<RawId>) -> Option<u16> {
        let parsed = match id.get_ref() {
            RawId::Number(n) => u16::try_from(*n).ok(),
            RawId::Text(s) => {
                let digits = s
                    .strip_prefix("0x")
                    .or_else(|| s.strip_prefix("0X"))
                    .unwrap_or(s);
                let ok = (1..=4).contains(&digits.len())
                    && digits.bytes().all(|b| b.is_ascii_hexdigit());
                ok.then(|| u16::from_str_radix(digits, 16).ok()).flatten()
            }
        };
        if parsed.is_none() {
            let shown = match id.get_ref() {
                RawId::Number(n) => n.to_string(),
                RawId::Text(s) => quoted(s),
            };
            self.error(
                id.span(),
                format!("bad {what} id {shown}: expected 1 to 4 hex digits such as \"0x10de\""),
            );
        }
        parsed
    }

    /// A count that must be at least `min` and fit in 32 bits.
    fn count(&mut self, what: &str, v: &Spanned<i64>, min: i64) -> Option<u32> {
        let n = *v.get_ref();
        if n < min {
            let bound = if min == 0 {
                "0 or more".to_owned()
            } else {
                format!("at least {min}")
            };
            self.error(v.span(), format!("{what} must be {bound}, not {n}"));
            return None;
        }
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(v.span(), format!("{what} {n} is too large"));
                None
            }
        }
    }
}

/// Why `s` cannot be a user or group name, if it cannot. Permissive on purpose: directory
/// services allow '@', '\\' and '$' in names.
fn account_name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("it is empty")
    } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace or a control character")
    } else if s.contains(':') {
        Some("it contains ':'")
    } else if s.contains(['*', '?', '[']) {
        Some("users and groups are not globs; write users = [\"*\"] to mean everyone")
    } else {
        None
    }
}

/// What a file has at byte `offset` that TOML does not allow there.
fn unexpected_at(text: &str, offset: usize) -> String {
    match text.get(offset..).and_then(|rest| rest.chars().next()) {
        Some(c) if c.is_control() => format!(
            "control character U+{:04X} is not allowed here",
            u32::from(c)
        ),
        Some(c) => format!("{c:?} is not allowed here"),
        None => "the file ends too early".to_owned(),
    }
}

/// Longest piece of the file quoted back in a diagnostic, so a hostile value (a megabyte-long
/// user name, say) cannot flood the log or the terminal.
const QUOTE_MAX: usize = 64;

/// Longest TOML parser message kept; it quotes keys of any length.
const MESSAGE_MAX: usize = 256;

/// `text` cut to `max` characters, "..." marking the cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

fn clipped(text: &str) -> String {
    cut(text, QUOTE_MAX)
}

/// `text` quoted (escapes included), cut to `QUOTE_MAX` characters.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// The serde/TOML message on one line, in the words of the file format rather than Rust's.
fn plain_serde_message(message: &str) -> String {
    let one_line: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    one_line
        .join("; ")
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected a list")
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
