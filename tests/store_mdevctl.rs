//! Interoperability with the real mdevctl, both ways: what vgpud's store defines, mdevctl
//! lists; what mdevctl defines, the store reads. mdevctl must be installed (CI installs
//! Debian's mdevctl 1.2.0); without it these tests fail rather than pass unchecked.
//!
//! Pointing mdevctl at a temporary tree: mdevctl 1.2.0 hard-codes `/etc/mdevctl.d` (newer
//! releases read the root from `MDEVCTL_ENV_ROOT`, which 1.2.0's binary does not contain). So
//! each mdevctl run gets a private mount namespace in which the test's definitions dir is
//! bind-mounted over /etc/mdevctl.d; `MDEVCTL_ENV_ROOT` is set as well for newer releases.
//! `define` with `--parent`, `--type` (or `--jsonfile`) and `--uuid` does not look at sysfs.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use vgpud_daemon::store::{to_mdevctl_json, Definition, Meta, Start, Store};
use vgpud_model::{MdevUuid, ParentName, TypeId};

const U1: &str = "0b2d8a04-6c5c-4f5e-9b1a-3d2f1e0c9a77";
const U2: &str = "5c1b7f3e-2a9d-4c8e-b6f0-1d3e5a7c9b2f";
const P1: &str = "0000:3b:00.0";
const P2: &str = "matrix";
const MDEVCTL_DIR: &str = "/etc/mdevctl.d";

/// A private root for one test: `<root>/etc/mdevctl.d` laid out as the package lays it out.
struct Root {
    tmp: tempfile::TempDir,
    defs: PathBuf,
    state: PathBuf,
}

fn root() -> Root {
    let tmp = tempfile::tempdir().expect("temp dir");
    let defs = tmp.path().join("etc/mdevctl.d");
    // mdevctl's self-check wants these, and the store must ignore them.
    for sub in ["scripts.d/callouts", "scripts.d/notifiers"] {
        fs::create_dir_all(defs.join(sub)).expect("create scripts.d");
    }
    let state = tmp.path().join("state");
    Root { tmp, defs, state }
}

fn find_mdevctl() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("mdevctl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "mdevctl is not installed: install it (`apt-get install -y mdevctl`; CI installs \
                 Debian's mdevctl 1.2.0) - these tests check vgpud's definitions against it"
            )
        })
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("a path without NUL")
}

/// Runs mdevctl with `root` as its definitions dir; panics with its output if it fails.
fn mdevctl(root: &Root, args: &[&str]) -> String {
    let mut cmd = Command::new(find_mdevctl());
    cmd.args(args)
        .env("MDEVCTL_ENV_ROOT", root.tmp.path())
        .env("MDEVCTL_LOG", "warn");
    if Path::new(MDEVCTL_DIR).is_dir() {
        let source = c_path(&root.defs);
        let target = c_path(Path::new(MDEVCTL_DIR));
        let slash = c_path(Path::new("/"));
        // SAFETY: the closure runs in the forked child before exec and only makes raw system
        // calls (unshare, mount) on C strings built before the fork: no allocation, no locks.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Keep the bind mount below from propagating back to the host's namespace.
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                let none = std::ptr::null();
                if libc::mount(none, slash.as_ptr(), none, flags, none.cast()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    none,
                    libc::MS_BIND,
                    none.cast(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run mdevctl with a private {MDEVCTL_DIR}: {e}. mdevctl 1.2.0 has no root \
             override, so the test bind-mounts its temp dir in a private mount namespace, which \
             needs CAP_SYS_ADMIN (run the tests as root, as CI does)"
        )
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mdevctl {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn def(parent: &str, uuid: &str, start: Start, attrs: &[(&str, &str)]) -> Definition {
    Definition {
        parent: ParentName::new(parent).unwrap(),
        uuid: MdevUuid::parse(uuid).unwrap(),
        mdev_type: TypeId::new("nvidia-231").unwrap(),
        start,
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn meta() -> Meta {
    Meta::now(Some(0), "dbus::1.1")
}

fn open(root: &Root) -> Store {
    Store::open(&root.defs, &root.state).expect("open the store")
}

/// `mdevctl list --defined --dumpjson` as (parent, uuid) -> the definition's JSON.
fn mdevctl_defined(root: &Root) -> BTreeMap<(String, String), Value> {
    let text = mdevctl(root, &["list", "--defined", "--dumpjson"]);
    let value: Value = serde_json::from_str(&text).expect("mdevctl prints JSON");
    let mut defined = BTreeMap::new();
    for parents in value.as_array().expect("a list of parent maps") {
        for (parent, devices) in parents.as_object().expect("a parent map") {
            for device in devices.as_array().expect("a list of devices") {
                for (uuid, body) in device.as_object().expect("a device map") {
                    defined.insert((parent.clone(), uuid.clone()), body.clone());
                }
            }
        }
    }
    defined
}

fn key(parent: &str, uuid: &str) -> (String, String) {
    (parent.to_string(), uuid.to_string())
}

#[test]
fn definitions_vgpud_writes_are_listed_by_mdevctl() {
    let root = root();
    let store = open(&root);
    let attrs = [("assign_adapter", "5"), ("assign_domain", "0x47")];
    store
        .define(&def(P1, U1, Start::Auto, &attrs), &meta())
        .unwrap();
    store
        .define(&def(P2, U1, Start::Manual, &[]), &meta())
        .unwrap();
    store
        .define(&def(P1, U2, Start::Manual, &[]), &meta())
        .unwrap();
    let expected = BTreeMap::from([
        (
            key(P1, U1),
            json!({"mdev_type": "nvidia-231", "start": "auto",
                   "attrs": [{"assign_adapter": "5"}, {"assign_domain": "0x47"}]}),
        ),
        (
            key(P1, U2),
            json!({"mdev_type": "nvidia-231", "start": "manual", "attrs": []}),
        ),
        (
            key(P2, U1),
            json!({"mdev_type": "nvidia-231", "start": "manual", "attrs": []}),
        ),
    ]);
    assert_eq!(mdevctl_defined(&root), expected);
}

#[test]
fn definitions_mdevctl_writes_are_read_by_the_store() {
    let root = root();
    mdevctl(
        &root,
        &[
            "define",
            "--parent",
            P1,
            "--type",
            "nvidia-231",
            "--uuid",
            U1,
            "--auto",
        ],
    );
    let jsonfile = root.tmp.path().join("def.json");
    fs::write(
        &jsonfile,
        r#"{"mdev_type":"nvidia-231","start":"manual","attrs":[{"assign_adapter":"5"}]}"#,
    )
    .unwrap();
    let jsonfile = jsonfile.to_str().unwrap();
    mdevctl(
        &root,
        &[
            "define",
            "--parent",
            P2,
            "--uuid",
            U2,
            "--jsonfile",
            jsonfile,
        ],
    );
    mdevctl(
        &root,
        &[
            "modify",
            "--uuid",
            U2,
            "--addattr",
            "assign_domain",
            "--value",
            "0x47",
        ],
    );
    let store = open(&root);
    let listed = store.list().unwrap();
    assert!(store.problems().is_empty(), "{:?}", store.problems());
    let attrs = [("assign_adapter", "5"), ("assign_domain", "0x47")];
    assert_eq!(
        listed,
        vec![
            (def(P1, U1, Start::Auto, &[]), None),
            (def(P2, U2, Start::Manual, &attrs), None),
        ]
    );
}

#[test]
fn files_vgpud_writes_are_byte_identical_to_mdevctl_files() {
    let root = root();
    let attrs = [("assign_adapter", "5"), ("x", "a\"b\\é")];
    let theirs = def(P1, U1, Start::Auto, &attrs);
    let jsonfile = root.tmp.path().join("def.json");
    fs::write(&jsonfile, to_mdevctl_json(&theirs)).unwrap();
    mdevctl(
        &root,
        &[
            "define",
            "--parent",
            P1,
            "--uuid",
            U1,
            "--jsonfile",
            jsonfile.to_str().unwrap(),
        ],
    );
    open(&root)
        .define(&def(P2, U1, Start::Auto, &attrs), &meta())
        .unwrap();
    let mdevctl_bytes = fs::read(root.defs.join(P1).join(U1)).unwrap();
    let vgpud_bytes = fs::read(root.defs.join(P2).join(U1)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&vgpud_bytes),
        String::from_utf8_lossy(&mdevctl_bytes)
    );
}

#[test]
fn manual_definition_matches_mdevctl_byte_for_byte() {
    let root = root();
    mdevctl(
        &root,
        &[
            "define",
            "--parent",
            P1,
            "--type",
            "nvidia-231",
            "--uuid",
            U1,
        ],
    );
    let mdevctl_text = fs::read_to_string(root.defs.join(P1).join(U1)).unwrap();
    assert_eq!(
        to_mdevctl_json(&def(P1, U1, Start::Manual, &[])),
        mdevctl_text
    );
}

#[test]
fn mdevctl_undefine_removes_a_vgpud_definition() {
    let root = root();
    open(&root)
        .define(&def(P1, U1, Start::Manual, &[]), &meta())
        .unwrap();
    mdevctl(&root, &["undefine", "--uuid", U1, "--parent", P1]);
    let store = open(&root);
    assert!(store.list().unwrap().is_empty());
    // Reopening cleared the metadata mdevctl cannot know about.
    let meta_file = root
        .state
        .join("definitions")
        .join(P1)
        .join(format!("{U1}.json"));
    assert!(!meta_file.exists());
}

#[test]
fn store_undefine_removes_an_mdevctl_definition() {
    let root = root();
    mdevctl(
        &root,
        &[
            "define",
            "--parent",
            P1,
            "--type",
            "nvidia-231",
            "--uuid",
            U1,
        ],
    );
    let removed = open(&root)
        .undefine(None, &MdevUuid::parse(U1).unwrap())
        .unwrap();
    assert_eq!(removed, vec![def(P1, U1, Start::Manual, &[])]);
    assert!(mdevctl_defined(&root).is_empty());
}

#[test]
fn autostart_set_by_vgpud_is_seen_by_mdevctl() {
    let root = root();
    let store = open(&root);
    store
        .define(&def(P1, U1, Start::Manual, &[]), &meta())
        .unwrap();
    store.update(&def(P1, U1, Start::Auto, &[])).unwrap();
    assert_eq!(mdevctl_defined(&root)[&key(P1, U1)]["start"], "auto");
}

#[test]
fn autostart_set_by_mdevctl_is_seen_by_vgpud() {
    let root = root();
    let store = open(&root);
    store
        .define(&def(P1, U1, Start::Manual, &[]), &meta())
        .unwrap();
    mdevctl(&root, &["modify", "--uuid", U1, "--auto"]);
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.start, Start::Auto);
    assert!(
        listed[0].1.is_some(),
        "vgpud's metadata survives mdevctl's rewrite"
    );
}

#[test]
fn mdevctl_does_not_see_into_the_real_etc() {
    // Guards the namespace trick itself: a definition made here must not reach the host.
    let root = root();
    mdevctl(
        &root,
        &[
            "define",
            "--parent",
            "vgpud-test-parent",
            "--type",
            "t",
            "--uuid",
            U2,
        ],
    );
    assert!(root.defs.join("vgpud-test-parent").join(U2).is_file());
    assert!(!Path::new(MDEVCTL_DIR).join("vgpud-test-parent").exists());
}
