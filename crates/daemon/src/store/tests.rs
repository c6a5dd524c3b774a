//! Store behaviour on a real directory tree, one case per test, each with its own tree.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;
use vgpud_model::error::ErrorClass;

const U1: &str = "0b2d8a04-6c5c-4f5e-9b1a-3d2f1e0c9a77";
const U2: &str = "5c1b7f3e-2a9d-4c8e-b6f0-1d3e5a7c9b2f";

struct Fixture {
    _tmp: tempfile::TempDir,
    defs: PathBuf,
    state: PathBuf,
    store: Store,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let defs = tmp.path().join("mdevctl.d");
    let state = tmp.path().join("state");
    let store = Store::open(&defs, &state).unwrap();
    Fixture {
        _tmp: tmp,
        defs,
        state,
        store,
    }
}

fn def(parent: &str, uuid: &str) -> Definition {
    Definition {
        parent: ParentName::new(parent).unwrap(),
        uuid: MdevUuid::parse(uuid).unwrap(),
        mdev_type: TypeId::new("nvidia-231").unwrap(),
        start: Start::Manual,
        attrs: vec![("assign_adapter".into(), "5".into())],
    }
}

fn meta() -> Meta {
    Meta {
        owner_uid: Some(1000),
        origin: "dbus::1.7".into(),
        created: 1_700_000_000,
    }
}

fn uuid(s: &str) -> MdevUuid {
    MdevUuid::parse(s).unwrap()
}

fn parent(s: &str) -> ParentName {
    ParentName::new(s).unwrap()
}

/// Writes a file by hand, as an administrator or another tool would.
fn put(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

const GOOD: &str = r#"{"mdev_type":"nvidia-231","start":"auto","attrs":[]}"#;

/// A malformed file next to a good one: the good one is listed, the bad one is reported,
/// skipped and left on disk.
fn assert_skipped(rel: &str, text: &str) {
    let f = fixture();
    put(&f.defs.join("0000:3b:00.0").join(U2), GOOD);
    let bad = f.defs.join(rel);
    put(&bad, text);
    let listed = f.store.list().unwrap();
    assert_eq!(listed.len(), 1, "{rel}: {listed:?}");
    assert_eq!(listed[0].0.uuid, uuid(U2));
    let problems = f.store.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    // The problem names the file, or the directory that holds it.
    assert!(bad.starts_with(&problems[0].path), "{problems:?}");
    assert_eq!(fs::read_to_string(&bad).unwrap(), text);
}

#[test]
fn store_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Store>();
}

#[test]
fn open_creates_both_dirs_with_their_modes() {
    let f = fixture();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&f.defs), 0o755);
    assert_eq!(mode(&f.state), 0o700);
    assert_eq!(mode(&f.state.join("definitions")), 0o700);
}

#[test]
fn define_writes_mdevctl_file_and_meta_beside_it() {
    let f = fixture();
    let d = def("0000:3b:00.0", U1);
    f.store.define(&d, &meta()).unwrap();
    let file = f.defs.join("0000:3b:00.0").join(U1);
    assert_eq!(fs::read_to_string(&file).unwrap(), to_mdevctl_json(&d));
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let meta_file = f
        .state
        .join("definitions/0000:3b:00.0")
        .join(format!("{U1}.json"));
    assert_eq!(
        fs::metadata(&meta_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(f.store.list().unwrap(), vec![(d, Some(meta()))]);
    assert!(f.store.problems().is_empty());
}

#[test]
fn define_twice_is_already_exists_and_keeps_the_first() {
    let f = fixture();
    let first = def("p", U1);
    f.store.define(&first, &meta()).unwrap();
    let second = Definition {
        start: Start::Auto,
        ..first.clone()
    };
    let err = f.store.define(&second, &meta()).unwrap_err();
    assert_eq!(err.class(), ErrorClass::AlreadyExists);
    assert_eq!(f.store.get(&first.uuid).unwrap(), vec![first]);
}

#[test]
fn define_under_a_hidden_parent_is_refused() {
    // Found by fuzzing: the scan skips hidden directories, so the definition was written and
    // then never listed, found or undefined.
    let f = fixture();
    let err = f.store.define(&def(".mtty", U1), &meta()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(!f.defs.join(".mtty").exists());
}

#[test]
fn definitions_written_by_others_have_no_meta() {
    let f = fixture();
    put(&f.defs.join("mtty").join(U1), GOOD);
    let listed = f.store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.start, Start::Auto);
    assert_eq!(listed[0].1, None);
}

#[test]
fn same_uuid_under_two_parents_is_two_definitions() {
    let f = fixture();
    f.store.define(&def("a", U1), &meta()).unwrap();
    f.store.define(&def("b", U1), &meta()).unwrap();
    let got = f.store.get(&uuid(U1)).unwrap();
    assert_eq!(got, vec![def("a", U1), def("b", U1)]);
}

#[test]
fn undefine_without_parent_is_ambiguous_when_defined_twice() {
    let f = fixture();
    f.store.define(&def("a", U1), &meta()).unwrap();
    f.store.define(&def("b", U1), &meta()).unwrap();
    let err = f.store.undefine(None, &uuid(U1)).unwrap_err();
    assert_eq!(err.class(), ErrorClass::InvalidArgument);
    assert!(err.to_string().contains("a, b"), "{err}");
    assert_eq!(f.store.get(&uuid(U1)).unwrap().len(), 2);
}

#[test]
fn undefine_with_parent_removes_that_one_and_its_meta() {
    let f = fixture();
    f.store.define(&def("a", U1), &meta()).unwrap();
    f.store.define(&def("b", U1), &meta()).unwrap();
    let removed = f.store.undefine(Some(&parent("a")), &uuid(U1)).unwrap();
    assert_eq!(removed, vec![def("a", U1)]);
    assert_eq!(f.store.get(&uuid(U1)).unwrap(), vec![def("b", U1)]);
    assert!(!f
        .state
        .join("definitions/a")
        .join(format!("{U1}.json"))
        .exists());
}

#[test]
fn undefine_of_the_only_definition_needs_no_parent() {
    let f = fixture();
    f.store.define(&def("a", U1), &meta()).unwrap();
    assert_eq!(f.store.undefine(None, &uuid(U1)).unwrap().len(), 1);
    assert!(f.store.list().unwrap().is_empty());
}

#[test]
fn undefine_unknown_is_not_found() {
    let f = fixture();
    f.store.define(&def("a", U1), &meta()).unwrap();
    let err = f.store.undefine(None, &uuid(U2)).unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    let err = f.store.undefine(Some(&parent("b")), &uuid(U1)).unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
}

#[test]
fn update_switches_autostart_and_keeps_meta() {
    let f = fixture();
    let d = def("a", U1);
    f.store.define(&d, &meta()).unwrap();
    let auto = Definition {
        start: Start::Auto,
        ..d
    };
    f.store.update(&auto).unwrap();
    assert_eq!(f.store.list().unwrap(), vec![(auto, Some(meta()))]);
}

#[test]
fn update_of_unknown_is_not_found_and_creates_nothing() {
    let f = fixture();
    let err = f.store.update(&def("a", U1)).unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    assert!(!f.defs.join("a").exists());
}

#[test]
fn for_parent_lists_only_that_parent() {
    let f = fixture();
    f.store.define(&def("a", U1), &meta()).unwrap();
    f.store.define(&def("b", U2), &meta()).unwrap();
    assert_eq!(
        f.store.for_parent(&parent("b")).unwrap(),
        vec![def("b", U2)]
    );
    assert!(f.store.for_parent(&parent("c")).unwrap().is_empty());
}

#[test]
fn malformed_json_is_skipped_and_kept() {
    assert_skipped(&format!("p/{U1}"), r#"{"mdev_type":"nvidia-231","sta"#);
}

#[test]
fn empty_file_is_skipped_and_kept() {
    assert_skipped(&format!("p/{U1}"), "");
}

#[test]
fn missing_mdev_type_is_skipped_and_kept() {
    assert_skipped(&format!("p/{U1}"), r#"{"start":"auto","attrs":[]}"#);
}

#[test]
fn bad_start_is_skipped_and_kept() {
    assert_skipped(
        &format!("p/{U1}"),
        r#"{"mdev_type":"t","start":"yes","attrs":[]}"#,
    );
}

#[test]
fn bad_attrs_are_skipped_and_kept() {
    assert_skipped(
        &format!("p/{U1}"),
        r#"{"mdev_type":"t","start":"auto","attrs":[{"a":"1","b":"2"}]}"#,
    );
}

#[test]
fn non_uuid_file_name_is_skipped_and_kept() {
    assert_skipped("p/not-a-uuid", GOOD);
}

#[test]
fn uppercase_uuid_file_name_is_skipped_and_kept() {
    assert_skipped(&format!("p/{}", U1.to_uppercase()), GOOD);
}

#[test]
fn invalid_parent_dir_name_is_skipped_and_kept() {
    assert_skipped(&format!("bad parent/{U1}"), GOOD);
}

#[test]
fn dotfiles_and_subdirs_are_silently_ignored() {
    let f = fixture();
    put(&f.defs.join("p").join(format!(".{U1}.swp")), "junk");
    fs::create_dir_all(f.defs.join("scripts.d/callouts")).unwrap();
    fs::create_dir_all(f.defs.join("scripts.d/notifiers")).unwrap();
    put(&f.defs.join("README"), "not a parent");
    put(&f.defs.join(".hidden").join(U1), "junk");
    assert!(f.store.list().unwrap().is_empty());
    assert!(f.store.problems().is_empty(), "{:?}", f.store.problems());
}

#[test]
fn unknown_keys_are_read_without_a_problem() {
    let f = fixture();
    put(
        &f.defs.join("p").join(U1),
        r#"{"mdev_type":"t","start":"auto","attrs":[],"comment":"x"}"#,
    );
    assert_eq!(f.store.list().unwrap().len(), 1);
    assert!(f.store.problems().is_empty());
}

#[test]
fn problems_clear_when_the_file_is_fixed() {
    let f = fixture();
    let path = f.defs.join("p").join(U1);
    put(&path, "{");
    f.store.list().unwrap();
    assert_eq!(f.store.problems().len(), 1);
    put(&path, GOOD);
    assert_eq!(f.store.list().unwrap().len(), 1);
    assert!(f.store.problems().is_empty());
}

#[test]
fn malformed_meta_is_a_problem_but_the_definition_is_listed() {
    let f = fixture();
    f.store.define(&def("p", U1), &meta()).unwrap();
    let meta_file = f.state.join("definitions/p").join(format!("{U1}.json"));
    fs::write(&meta_file, "{").unwrap();
    assert_eq!(f.store.list().unwrap(), vec![(def("p", U1), None)]);
    assert_eq!(f.store.problems()[0].path, meta_file);
}

#[test]
fn symlinked_definition_file_is_not_followed() {
    let f = fixture();
    let outside = f.state.join("elsewhere");
    put(&outside, GOOD);
    fs::create_dir_all(f.defs.join("p")).unwrap();
    std::os::unix::fs::symlink(&outside, f.defs.join("p").join(U1)).unwrap();
    assert!(f.store.list().unwrap().is_empty());
    assert_eq!(f.store.problems().len(), 1);
}

#[test]
fn symlinked_parent_dir_is_neither_read_nor_written() {
    let f = fixture();
    let outside = f.state.join("outside");
    put(&outside.join(U2), GOOD);
    std::os::unix::fs::symlink(&outside, f.defs.join("p")).unwrap();
    assert!(f.store.list().unwrap().is_empty());
    assert_eq!(f.store.problems().len(), 1);
    assert!(f.store.define(&def("p", U1), &meta()).is_err());
    assert!(!outside.join(U1).exists());
    assert_eq!(
        f.store
            .undefine(Some(&parent("p")), &uuid(U2))
            .unwrap_err()
            .class(),
        ErrorClass::NotFound
    );
    assert!(outside.join(U2).exists());
}

#[test]
fn attribute_names_with_paths_are_refused() {
    let f = fixture();
    let mut d = def("p", U1);
    d.attrs = vec![("../../remove".into(), "1".into())];
    assert_eq!(
        f.store.define(&d, &meta()).unwrap_err().class(),
        ErrorClass::InvalidArgument
    );
    assert!(!f.defs.join("p").exists());
}

#[test]
fn open_removes_crash_leftovers_and_keeps_everything_else() {
    let f = fixture();
    f.store.define(&def("p", U1), &meta()).unwrap();
    let leftovers = [
        f.defs.join("p").join(format!(".{U2}.tmp-99-0")),
        f.state
            .join("definitions/p")
            .join(format!(".{U2}.json.tmp-99-1")),
    ];
    let kept = [
        f.defs.join("p").join(".notes.tmp-1-1"),
        f.defs.join("p").join(format!(".{U2}.swp")),
        f.state.join("definitions/p/unrelated"),
    ];
    for path in leftovers.iter().chain(&kept) {
        put(path, "partial");
    }
    let store = Store::open(&f.defs, &f.state).unwrap();
    for path in &leftovers {
        assert!(!path.exists(), "{} left", path.display());
    }
    for path in &kept {
        assert!(path.exists(), "{} removed", path.display());
    }
    assert_eq!(store.list().unwrap(), vec![(def("p", U1), Some(meta()))]);
}

#[test]
fn open_removes_meta_whose_definition_is_gone() {
    let f = fixture();
    f.store.define(&def("p", U1), &meta()).unwrap();
    f.store.define(&def("p", U2), &meta()).unwrap();
    // mdevctl undefine (or a crash between the two unlinks) leaves the metadata behind.
    fs::remove_file(f.defs.join("p").join(U1)).unwrap();
    Store::open(&f.defs, &f.state).unwrap();
    assert!(!f
        .state
        .join("definitions/p")
        .join(format!("{U1}.json"))
        .exists());
    assert!(f
        .state
        .join("definitions/p")
        .join(format!("{U2}.json"))
        .exists());
}

/// A store whose writes fail at `step` in directories under `dir_suffix`.
fn faulty(f: &Fixture, dir_in: PathBuf, step: Step) -> Store {
    let hook = move |dir: &Path, s: Step| {
        if dir.starts_with(&dir_in) && s == step {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            Ok(())
        }
    };
    Store::open_with_hook(&f.defs, &f.state, Box::new(hook)).unwrap()
}

#[test]
fn failed_update_leaves_the_old_definition() {
    let f = fixture();
    f.store.define(&def("p", U1), &meta()).unwrap();
    let store = faulty(&f, f.defs.clone(), Step::Synced);
    let auto = Definition {
        start: Start::Auto,
        ..def("p", U1)
    };
    assert!(store.update(&auto).is_err());
    assert_eq!(f.store.get(&uuid(U1)).unwrap(), vec![def("p", U1)]);
    let names: Vec<_> = fs::read_dir(f.defs.join("p")).unwrap().collect();
    assert_eq!(names.len(), 1, "a temporary file was left");
}

#[test]
fn failed_define_leaves_nothing() {
    let f = fixture();
    let store = faulty(&f, f.defs.clone(), Step::Written);
    assert!(store.define(&def("p", U1), &meta()).is_err());
    assert!(f.store.list().unwrap().is_empty());
    assert_eq!(fs::read_dir(f.defs.join("p")).unwrap().count(), 0);
}

#[test]
fn failed_meta_write_rolls_the_definition_back() {
    let f = fixture();
    let store = faulty(&f, f.state.clone(), Step::Synced);
    assert!(store.define(&def("p", U1), &meta()).is_err());
    assert!(f.store.list().unwrap().is_empty());
    assert!(!f.defs.join("p").join(U1).exists());
}

#[test]
fn undefine_never_removes_through_a_linked_metadata_dir() {
    // Found while fuzzing the store: a symbolic link at <state>/definitions/<parent> made
    // undefine delete <link target>/<uuid>.json, outside the state directory.
    let f = fixture();
    let outside = f._tmp.path().join("outside");
    put(&outside.join(format!("{U1}.json")), "not ours");
    std::os::unix::fs::symlink(&outside, f.state.join("definitions").join("mtty")).unwrap();
    put(&f.defs.join("mtty").join(U1), GOOD);
    f.store.undefine(Some(&parent("mtty")), &uuid(U1)).unwrap();
    assert!(!f.defs.join("mtty").join(U1).exists());
    assert_eq!(
        fs::read_to_string(outside.join(format!("{U1}.json"))).unwrap(),
        "not ours"
    );
}
