//! Reading policy files from disk and merging them: the only I/O in the policy module.
//! Files merge in order: rules are appended (allow rules keep their order, which decides),
//! a later `[placement]` setting replaces an earlier one, and rule names must be unique.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::parse::{parse_file, Diagnostic, PolicyFile};
use super::rules::{Origin, Strategy};
use super::Policy;

/// Merges parsed files in the order given into one policy.
pub fn merge(files: Vec<PolicyFile>) -> Result<Policy, Vec<Diagnostic>> {
    let mut policy = Policy::default();
    let mut diagnostics = Vec::new();
    let mut names: HashMap<String, Origin> = HashMap::new();
    let mut numa_strict_origin: Option<Origin> = None;
    for file in files {
        for (name, origin) in file.rule_names() {
            match names.get(name) {
                Some(first) => diagnostics.push(at(
                    origin,
                    format!("rule name {name:?} is already used at {first}"),
                )),
                None => {
                    names.insert(name.to_owned(), origin.clone());
                }
            }
        }
        if let Some((strategy, _)) = file.strategy {
            policy.placement.strategy = strategy;
        }
        if let Some((strict, origin)) = file.numa_strict {
            policy.placement.numa_strict = strict;
            numa_strict_origin = strict.then_some(origin);
        }
        policy.allow.extend(file.allow);
        policy.reserve.extend(file.reserve);
        policy.ensure.extend(file.ensure);
        policy.scheduler.extend(file.scheduler);
        policy.sources.push(file.path);
    }
    if let Some(origin) = numa_strict_origin {
        if policy.placement.strategy != Strategy::NumaLocal {
            diagnostics.push(at(
                &origin,
                format!(
                    "numa_strict applies only to strategy = \"numa-local\" (the merged strategy is {:?})",
                    policy.placement.strategy.as_str()
                ),
            ));
        }
    }
    if diagnostics.is_empty() {
        Ok(policy)
    } else {
        Err(diagnostics)
    }
}

/// Loads `policy_d` (<config-dir>/policy.d): its `*.toml` files in byte order of their names,
/// merged. Hidden files are skipped. A missing directory gives the built-in default; so does
/// one without policy files. Any problem in any file fails the whole load, so the caller can
/// keep its last good policy.
pub fn load_dir(policy_d: &Path) -> Result<Policy, Vec<Diagnostic>> {
    let entries = match std::fs::read_dir(policy_d) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Policy::default()),
        Err(e) => {
            return Err(vec![whole_file(
                policy_d,
                format!("cannot read the directory: {e}"),
            )])
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                return Err(vec![whole_file(
                    policy_d,
                    format!("cannot read the directory: {e}"),
                )])
            }
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        paths.push(entry.path());
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    check_files(&paths)
}

/// Parses and merges `paths` in the order given, reporting the problems of every file; this is
/// `vgpud check-policy FILE...`.
pub fn check_files(paths: &[PathBuf]) -> Result<Policy, Vec<Diagnostic>> {
    let mut files = Vec::new();
    let mut diagnostics = Vec::new();
    for path in paths {
        let parsed = match std::fs::read(path) {
            Err(e) => Err(vec![whole_file(path, format!("cannot read the file: {e}"))]),
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => parse_file(path, &text),
                Err(e) => {
                    let (line, column) = super::parse::line_column(
                        &String::from_utf8_lossy(e.as_bytes()),
                        e.utf8_error().valid_up_to(),
                    );
                    Err(vec![Diagnostic {
                        file: path.clone(),
                        line,
                        column,
                        message: "the file is not valid UTF-8".into(),
                    }])
                }
            },
        };
        match parsed {
            Ok(file) => files.push(file),
            Err(mut d) => diagnostics.append(&mut d),
        }
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    merge(files)
}

fn at(origin: &Origin, message: String) -> Diagnostic {
    Diagnostic {
        file: origin.file.clone(),
        line: origin.line,
        column: origin.column,
        message,
    }
}

fn whole_file(path: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: path.to_owned(),
        line: 0,
        column: 0,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Strategy;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write policy file");
        p
    }

    const LAB: &str = "[[allow]]\nname = \"lab\"\ngroups = [\"lab\"]\n";

    #[test]
    fn missing_dir_is_the_default_policy() {
        let d = dir();
        let p = load_dir(&d.path().join("policy.d")).unwrap();
        assert_eq!(p, Policy::default());
        assert!(p.sources().is_empty());
    }

    #[test]
    fn empty_dir_is_the_default_policy() {
        let d = dir();
        assert_eq!(load_dir(d.path()).unwrap(), Policy::default());
    }

    #[test]
    fn files_merge_in_name_order() {
        let d = dir();
        write(
            d.path(),
            "20-b.toml",
            "[[allow]]\nname = \"b\"\nusers = [\"bob\"]\n",
        );
        write(
            d.path(),
            "10-a.toml",
            "[[allow]]\nname = \"a\"\nusers = [\"alice\"]\n",
        );
        write(
            d.path(),
            "30-c.toml",
            "[[allow]]\nname = \"c\"\nusers = [\"carol\"]\n",
        );
        let p = load_dir(d.path()).unwrap();
        assert_eq!(p.rule_names(), ["a", "b", "c"]);
        let names: Vec<_> = p.sources().iter().filter_map(|s| s.file_name()).collect();
        assert_eq!(names, ["10-a.toml", "20-b.toml", "30-c.toml"]);
    }

    #[test]
    fn later_placement_overrides_earlier() {
        let d = dir();
        write(d.path(), "10.toml", "[placement]\nstrategy = \"pack\"\n");
        write(
            d.path(),
            "20.toml",
            "[placement]\nstrategy = \"numa-local\"\n",
        );
        assert_eq!(
            load_dir(d.path()).unwrap().placement().strategy,
            Strategy::NumaLocal
        );
    }

    #[test]
    fn file_without_placement_keeps_the_earlier_one() {
        let d = dir();
        write(d.path(), "10.toml", "[placement]\nstrategy = \"pack\"\n");
        write(d.path(), "20.toml", LAB);
        assert_eq!(
            load_dir(d.path()).unwrap().placement().strategy,
            Strategy::Pack
        );
    }

    #[test]
    fn non_toml_and_hidden_files_are_ignored() {
        let d = dir();
        write(d.path(), "10.toml", LAB);
        write(d.path(), "README", "not toml at all [");
        write(d.path(), "10.toml~", "not toml at all [");
        write(d.path(), ".20.toml", "not toml at all [");
        assert_eq!(load_dir(d.path()).unwrap().rule_names(), ["lab"]);
    }

    #[test]
    fn duplicate_name_across_files_points_at_the_second() {
        let d = dir();
        let first = write(d.path(), "10.toml", LAB);
        let second = write(d.path(), "20.toml", &format!("# again\n{LAB}"));
        let errs = load_dir(d.path()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(
            (errs[0].file.clone(), errs[0].line, errs[0].column),
            (second, 3, 8)
        );
        assert!(errs[0]
            .message
            .contains(&format!("{}:2:8", first.display())));
    }

    #[test]
    fn one_bad_file_fails_the_whole_load() {
        let d = dir();
        write(d.path(), "10.toml", LAB);
        let bad = write(d.path(), "20.toml", "[placement]\nstrategy = \"random\"\n");
        let errs = load_dir(d.path()).unwrap_err();
        assert_eq!(
            errs[0].to_string().split(": ").next(),
            Some(format!("{}:2:12", bad.display()).as_str())
        );
    }

    #[test]
    fn check_files_reports_every_file() {
        let d = dir();
        let a = write(d.path(), "a.toml", "bogus = 1\n");
        let b = write(d.path(), "b.toml", "[placement]\nstrategy = 3\n");
        let errs = check_files(&[a.clone(), b.clone()]).unwrap_err();
        let files: Vec<_> = errs.iter().map(|e| e.file.clone()).collect();
        assert_eq!(files, [a, b]);
    }

    #[test]
    fn unreadable_file_is_a_whole_file_diagnostic() {
        let d = dir();
        let missing = d.path().join("nope.toml");
        let errs = check_files(std::slice::from_ref(&missing)).unwrap_err();
        assert_eq!(errs[0].line, 0);
        assert!(errs[0]
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display())));
    }

    #[test]
    fn invalid_utf8_is_reported_with_its_position() {
        let d = dir();
        let p = d.path().join("x.toml");
        std::fs::write(&p, b"# ok\n# b\xffd\n").unwrap();
        let errs = check_files(&[p]).unwrap_err();
        assert_eq!((errs[0].line, errs[0].column), (2, 4));
    }

    #[test]
    fn numa_strict_with_a_later_other_strategy_is_an_error() {
        let d = dir();
        write(
            d.path(),
            "10.toml",
            "[placement]\nstrategy = \"numa-local\"\nnuma_strict = true\n",
        );
        write(d.path(), "20.toml", "[placement]\nstrategy = \"pack\"\n");
        let errs = load_dir(d.path()).unwrap_err();
        assert_eq!((errs[0].line, errs[0].column), (3, 15));
        assert!(errs[0].message.contains("merged strategy is \"pack\""));
    }
}
