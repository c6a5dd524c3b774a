//! mdevctl definitions: the JSON parser with its round trip, and the store over a definitions
//! tree full of hostile names, links, FIFOs and contents. What the store accepts must write back
//! to the same definition, and nothing it does may touch a file outside its two directories.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use super::mutate::{huge_repeat, mutate, mutated_example, Rng};
use super::{path_safe, Case};
use vgpud_daemon::store::{parse_mdevctl_json, to_mdevctl_json, Definition, Meta, Start, Store};
use vgpud_model::{MdevUuid, ParentName, TypeId};

const EXAMPLES: &[&str] = &[
    "{\n  \"mdev_type\": \"vfio_ap-passthrough\",\n  \"start\": \"manual\",\n  \"attrs\": []\n}",
    "{\n  \"mdev_type\": \"vfio_ap-passthrough\",\n  \"start\": \"auto\",\n  \"attrs\": [\n    {\n      \"assign_adapter\": \"5\"\n    },\n    {\n      \"x\": \"a\\\"b\\\\é\"\n    }\n  ]\n}",
    r#"{"mdev_type":"nvidia-231","start":"auto","attrs":[{"assign_adapter":"5"},{"assign_domain":"0x47"}]}"#,
    r#"{"mdev_type":"t","start":"manual","attrs":null}"#,
    r#"{"mdev_type":"t","start":"auto","attrs":[],"comment":"x"}"#,
];

const TOKENS: &[&str] = &[
    "\"mdev_type\": ",
    "\"start\": \"auto\"",
    "\"attrs\": [",
    "{\"a\": \"b\"}",
    "\"../../remove\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\/\"",
    "null",
    "1e999",
    "-0",
    "[",
    "{",
    ",",
];

const UUID: &str = "0b2d8a04-6c5c-4f5e-9b1a-3d2f1e0c9a77";

pub fn run_json(case: &mut Case) -> Result<(), String> {
    if case.rng().one_in(3) {
        let def = definition(case.rng());
        let json = to_mdevctl_json(&def);
        case.show(&json);
        return round_trip(&def);
    }
    let bytes = json(case.rng());
    case.show(&bytes);
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(());
    };
    let Ok((mdev_type, start, attrs)) = parse_mdevctl_json(text) else {
        return Ok(());
    };
    path_safe("type id", mdev_type.as_str())?;
    for (name, _) in &attrs {
        // A device file or one in a subdirectory of it (nvidia/vgpu_params): each part plain.
        let parts: Vec<&str> = name.split('/').collect();
        if parts.len() > 2 {
            return Err(format!(
                "accepted attribute name {name:?} with more than one '/'"
            ));
        }
        for part in parts {
            path_safe("attribute name part", part)?;
        }
    }
    let def = Definition {
        parent: ParentName::new("matrix").map_err(|e| e.to_string())?,
        uuid: MdevUuid::parse(UUID).map_err(|e| e.to_string())?,
        mdev_type,
        start,
        attrs,
    };
    round_trip(&def)?;
    let written = to_mdevctl_json(&def);
    let (t, s, a) = parse_mdevctl_json(&written).map_err(|e| e.to_string())?;
    let again = Definition {
        mdev_type: t,
        start: s,
        attrs: a,
        ..def.clone()
    };
    if to_mdevctl_json(&again) != written {
        return Err("writing a definition read back from its own JSON changes the JSON".into());
    }
    Ok(())
}

/// A written definition reads back as the same definition.
fn round_trip(def: &Definition) -> Result<(), String> {
    let json = to_mdevctl_json(def);
    match parse_mdevctl_json(&json) {
        Ok((t, s, a)) if (&t, s, &a) == (&def.mdev_type, def.start, &def.attrs) => Ok(()),
        Ok(other) => Err(format!(
            "the definition {def:?} reads back from its JSON as {other:?}"
        )),
        Err(e) => Err(format!("the JSON of {def:?} does not read back: {e}")),
    }
}

fn json(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => {
            let depth = 1 + rng.below(100_000);
            let open = *rng.pick(&["[", "{\"a\":", "{\"mdev_type\":"]);
            open.repeat(depth).into_bytes()
        }
        1 => {
            let mut bytes = to_mdevctl_json(&definition(rng)).into_bytes();
            mutate(rng, &mut bytes, TOKENS);
            bytes
        }
        _ => {
            let mut bytes = mutated_example(rng, EXAMPLES, TOKENS);
            if rng.one_in(32) {
                huge_repeat(rng, &mut bytes);
            }
            bytes
        }
    }
}

/// A definition from generated text; names that the model refuses fall back to fixed ones.
fn definition(rng: &mut Rng) -> Definition {
    let type_text = rng.word("nvidia-231_mtty.é", 24);
    let mdev_type = TypeId::new(type_text).unwrap_or_else(|_| fixed_type());
    let attrs = (0..rng.size(6))
        .filter_map(|_| {
            let name = rng.word("assign_adapter", 16);
            let value = rng.word("0x47\"\\\n\u{0}é", 24);
            vgpud_model::validate_name("attribute name", &name)
                .ok()
                .map(|()| (name, value))
        })
        .collect();
    Definition {
        parent: ParentName::new(rng.word("matrix:0.", 12)).unwrap_or_else(|_| fixed_parent()),
        uuid: MdevUuid::from_uuid(uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64())),
        mdev_type,
        start: if rng.one_in(2) {
            Start::Auto
        } else {
            Start::Manual
        },
        attrs,
    }
}

fn fixed_type() -> TypeId {
    TypeId::new("mtty-1").expect("a valid type id")
}

fn fixed_parent() -> ParentName {
    ParentName::new("mtty").expect("a valid parent name")
}

/// A directory tree's state: each path with its kind, mode and content (or link target).
type Snapshot = BTreeMap<PathBuf, String>;

pub(super) fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let what = if meta.file_type().is_symlink() {
            format!("link {:?}", fs::read_link(&path).ok())
        } else if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
            format!("dir {:o}", meta.mode())
        } else if meta.is_file() {
            let bytes = fs::read(&path).unwrap_or_default();
            format!("file {:o} {:x}", meta.mode(), fnv(&bytes))
        } else {
            format!("other {:o}", meta.mode())
        };
        out.insert(path, what);
    }
    out
}

/// The first path that differs between two snapshots, with what it was and became.
pub(super) fn first_change(before: &Snapshot, after: &Snapshot) -> Option<String> {
    let paths = before.keys().chain(after.keys());
    paths.into_iter().find_map(|path| {
        let (was, now) = (before.get(path), after.get(path));
        (was != now).then(|| format!("{} ({was:?} became {now:?})", path.display()))
    })
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Names a definitions tree holds: valid parents and UUIDs, and hostile ones.
fn entry_name(rng: &mut Rng, valid: &[&str]) -> Vec<u8> {
    let mut name = rng.pick(valid).as_bytes().to_vec();
    match rng.below(6) {
        0 => {
            let token = rng.hostile();
            let at = rng.below(name.len() + 1);
            name.splice(at..at, token);
        }
        1 => name = name.to_ascii_uppercase(),
        2 => name.insert(0, b'.'),
        3 => name.extend_from_slice(b".tmp-1-2"),
        _ => {}
    }
    name.retain(|b| *b != b'/' && *b != 0);
    name.truncate(255);
    if name.is_empty() || name == b"." || name == b".." {
        name = b"x".to_vec();
    }
    name
}

fn file_contents(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => vec![b' '; (1 << 20) + 1],
        1 => b"\xff\xfe{}".to_vec(),
        2..=4 => json(rng),
        _ => to_mdevctl_json(&definition(rng)).into_bytes(),
    }
}

/// Lays out a hostile definitions tree under `defs`, with links into `outside`.
fn hostile_tree(rng: &mut Rng, defs: &Path, state: &Path, outside: &Path) -> Vec<String> {
    let mut made = Vec::new();
    let parents = ["mtty", "0000:3b:00.0", "matrix"];
    let uuids = [UUID, "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"];
    for _ in 0..1 + rng.size(5) {
        let parent = entry_name(rng, &parents);
        let dir = defs.join(std::ffi::OsStr::from_bytes(&parent));
        made.push(super::escape(&parent));
        if rng.one_in(6) {
            let _ = symlink(outside, &dir);
            continue;
        }
        if fs::create_dir_all(&dir).is_err() {
            continue;
        }
        for _ in 0..rng.size(5) {
            let name = entry_name(rng, &uuids);
            let path = dir.join(std::ffi::OsStr::from_bytes(&name));
            made.push(format!(
                "{}/{}",
                super::escape(&parent),
                super::escape(&name)
            ));
            // Writing to a FIFO made by an earlier draw would wait for a reader forever.
            if fs::symlink_metadata(&path).is_ok() {
                continue;
            }
            let _ = match rng.below(10) {
                0 => symlink(outside.join("secret"), &path),
                1 => nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU)
                    .map_err(std::io::Error::from),
                2 => fs::create_dir(&path),
                _ => fs::write(&path, file_contents(rng)),
            };
        }
        if rng.one_in(3) {
            let meta_dir = state
                .join("definitions")
                .join(std::ffi::OsStr::from_bytes(&parent));
            if rng.one_in(4) {
                let _ = fs::create_dir_all(state.join("definitions"));
                let _ = symlink(outside, &meta_dir);
                made.push(format!(
                    "state/definitions/{} -> outside",
                    super::escape(&parent)
                ));
            }
            if fs::create_dir_all(&meta_dir).is_ok() {
                let name = format!("{}.json", rng.pick(&uuids));
                let path = meta_dir.join(name);
                if fs::symlink_metadata(&path).is_ok() {
                    continue;
                }
                let _ = match rng.below(4) {
                    0 => symlink(outside.join("secret"), &path),
                    1 => nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU)
                        .map_err(std::io::Error::from),
                    _ => fs::write(&path, file_contents(rng)),
                };
            }
        }
    }
    made
}

pub fn run_scan(case: &mut Case) -> Result<(), String> {
    let tmp = super::scratch_dir()?;
    let (defs, state, outside) = (
        tmp.path().join("defs"),
        tmp.path().join("state"),
        tmp.path().join("outside"),
    );
    for dir in [&defs, &state, &outside] {
        fs::create_dir(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    }
    fs::write(outside.join("secret"), "not a definition")
        .map_err(|e| format!("cannot write the secret: {e}"))?;
    fs::create_dir(outside.join(UUID)).map_err(|e| format!("cannot make a dir: {e}"))?;
    let made = hostile_tree(case.rng(), &defs, &state, &outside);
    case.show_part("tree", made.join(" "));
    let before = snapshot(&outside);
    let result = exercise_store(case.rng(), &defs, &state);
    if let Some(changed) = first_change(&before, &snapshot(&outside)) {
        return Err(format!(
            "the store changed {changed}, outside its directories"
        ));
    }
    let top: Vec<_> = fs::read_dir(tmp.path())
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if top.len() != 3 {
        return Err(format!(
            "the store made files beside its directories: {top:?}"
        ));
    }
    result
}

/// Opens the store, lists, and rewrites and removes some of what it lists.
fn exercise_store(rng: &mut Rng, defs: &Path, state: &Path) -> Result<(), String> {
    let Ok(store) = Store::open(defs, state) else {
        return Ok(());
    };
    let Ok(listed) = store.list() else {
        return Ok(());
    };
    for (def, _) in &listed {
        let file = defs.join(def.parent.as_str()).join(def.uuid.to_string());
        let real = fs::symlink_metadata(&file).is_ok_and(|m| m.is_file());
        let dir_real =
            fs::symlink_metadata(defs.join(def.parent.as_str())).is_ok_and(|m| m.is_dir());
        if !real || !dir_real {
            return Err(format!(
                "listed {} which is not a real file in a real directory",
                file.display()
            ));
        }
        path_safe("parent", def.parent.as_str())?;
        round_trip(def)?;
    }
    for (def, _) in listed {
        match rng.below(3) {
            0 => {
                let _ = store.update(&Definition {
                    start: Start::Auto,
                    ..def
                });
            }
            1 => {
                let _ = store.undefine(Some(&def.parent), &def.uuid);
            }
            _ => {
                let _ = store.get(&def.uuid);
            }
        }
    }
    let new = definition(rng);
    let _ = store.define(&new, &Meta::now(Some(1000), "fuzz"));
    if store.get(&new.uuid).is_ok_and(|found| found.is_empty()) {
        let file = defs.join(new.parent.as_str()).join(new.uuid.to_string());
        if fs::symlink_metadata(&file).is_ok_and(|m| m.is_file()) {
            return Err(format!(
                "defined {} but get does not find it",
                file.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_reads_back_the_same() {
        for text in EXAMPLES {
            let (mdev_type, start, attrs) = parse_mdevctl_json(text).expect("example parses");
            let def = Definition {
                parent: fixed_parent(),
                uuid: MdevUuid::parse(UUID).unwrap(),
                mdev_type,
                start,
                attrs,
            };
            round_trip(&def).expect("round trip");
        }
    }

    #[test]
    fn the_snapshot_sees_a_changed_file() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a"), "1").unwrap();
        let before = snapshot(tmp.path());
        fs::write(tmp.path().join("a"), "2").unwrap();
        let changed = first_change(&before, &snapshot(tmp.path())).expect("a change");
        assert!(changed.starts_with(&tmp.path().join("a").display().to_string()));
        fs::remove_file(tmp.path().join("a")).unwrap();
        let gone = first_change(&before, &snapshot(tmp.path())).expect("a removal");
        assert!(gone.ends_with("became None)"), "{gone}");
        assert_eq!(first_change(&before, &before), None);
    }
}
