//! `vgpuctl libvirt-hook` as libvirt runs it (arguments, the domain XML on stdin) against the
//! real daemon on a simulated host, with the example domains in libvirt/examples/.

#[path = "common/daemon.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{run_child, with_timeout, Daemon, Ran, VGPUCTL};

const LIMIT: Duration = Duration::from_secs(120);
const NO_BUS: &str = "unix:path=/nonexistent/vgpud-hook-test-bus";

fn example(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("libvirt/examples")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `program args` with `stdin` fed to it, killing it after 60 s.
fn run(program: &Path, args: &[&str], stdin: Vec<u8>) -> Ran {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_child(
        cmd,
        stdin,
        Duration::from_secs(60),
        &format!("the hook {args:?}"),
    )
}

/// The hook on `address`, keeping its records in `state`.
/// The hook's `DOMAIN prepare begin -` with the domain XML on stdin, as libvirt runs it.
fn prepare(address: &str, state: &Path, domain: &str, xml: Vec<u8>) -> Ran {
    hook(address, state, &[domain, "prepare", "begin", "-"], xml)
}

/// The hook's `DOMAIN release end -`.
fn release(address: &str, state: &Path, domain: &str, xml: Vec<u8>) -> Ran {
    hook(address, state, &[domain, "release", "end", "-"], xml)
}

fn hook(address: &str, state: &Path, args: &[&str], xml: Vec<u8>) -> Ran {
    let state = state.to_str().expect("utf-8 path");
    let mut all = vec![
        "libvirt-hook",
        "--address",
        address,
        "--state-dir",
        state,
        "--",
    ];
    all.extend_from_slice(args);
    run(Path::new(VGPUCTL), &all, xml)
}

fn uuid(n: u32) -> String {
    format!("c0ffee00-0000-4000-8000-{n:012}")
}

fn state_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn record(dir: &Path, domain: &str) -> serde_json::Value {
    let text = std::fs::read(dir.join(format!("{domain}.json"))).expect("the hook's record");
    serde_json::from_slice(&text).expect("the record is JSON")
}

// --- prepare and release ---------------------------------------------------------------------

#[test]
fn prepare_creates_both_vgpus_and_release_removes_them() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4:2"]);
        let state = tempfile::tempdir().expect("temp dir");
        let xml = example("two-vgpus.xml");
        let r = prepare(&d.address, state.path(), "win11-cad", xml.clone());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(d.mdev_devices(), vec![uuid(1), uuid(2)]);
        let type_of = |u: &str| {
            std::fs::read_link(d.sys(&format!("bus/mdev/devices/{u}/mdev_type")))
                .expect("mdev_type link")
        };
        assert!(type_of(&uuid(1)).ends_with("nvidia-231"));
        let parent = std::fs::canonicalize(d.sys(&format!("bus/mdev/devices/{}", uuid(1))))
            .expect("device path");
        assert!(
            parent.to_string_lossy().contains("0000:20:00.0"),
            "{parent:?}"
        );
        let rec = record(state.path(), "win11-cad");
        assert_eq!(rec["created"], serde_json::json!([uuid(1), uuid(2)]));

        // libvirt's other calls in a start and stop change nothing.
        for (op, sub) in [("start", "begin"), ("started", "begin"), ("stopped", "end")] {
            let r = hook(
                &d.address,
                state.path(),
                &["win11-cad", op, sub, "-"],
                xml.clone(),
            );
            assert_eq!(r.code, 0, "{op} {sub}: {}", r.stderr);
        }
        assert_eq!(d.mdev_devices().len(), 2);

        let r = release(&d.address, state.path(), "win11-cad", xml);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(d.mdev_devices().is_empty());
        assert!(
            state_files(state.path()).is_empty(),
            "the record goes with the devices"
        );
    });
}

#[test]
fn a_defined_device_is_started_not_created_and_stopped_at_release() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4:2"]);
        let state = tempfile::tempdir().expect("temp dir");
        d.vgpuctl_ok(&[
            "define",
            "nvidia-231",
            "--parent",
            "0000:21:00.0",
            "--uuid",
            &uuid(11),
        ]);
        assert!(d.mdev_devices().is_empty());
        let xml = example("defined-and-new.xml");
        let r = prepare(&d.address, state.path(), "render-node-1", xml.clone());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(d.mdev_devices(), vec![uuid(11), uuid(12)]);
        let rec = record(state.path(), "render-node-1");
        assert_eq!(rec["created"], serde_json::json!([uuid(12)]));
        assert_eq!(rec["started"], serde_json::json!([uuid(11)]));

        let r = release(&d.address, state.path(), "render-node-1", xml);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            d.mdev_devices().is_empty(),
            "the started definition is stopped and the created device removed"
        );
        let defined = d.vgpuctl_ok(&["--json", "list", "--defined"]);
        assert!(
            defined.contains(&uuid(11)),
            "the definition stays: {defined}"
        );
        assert!(
            state_files(state.path()).is_empty(),
            "nothing left to undo, so no record"
        );
    });
}

#[test]
fn a_definition_already_running_before_prepare_keeps_running_after_release() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4:2"]);
        let state = tempfile::tempdir().expect("temp dir");
        d.vgpuctl_ok(&[
            "define",
            "nvidia-231",
            "--parent",
            "0000:21:00.0",
            "--uuid",
            &uuid(11),
        ]);
        d.vgpuctl_ok(&["start", &uuid(11)]);
        let xml = example("defined-and-new.xml");
        let r = prepare(&d.address, state.path(), "render-node-1", xml.clone());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            record(state.path(), "render-node-1")["started"],
            serde_json::json!([])
        );
        let r = release(&d.address, state.path(), "render-node-1", xml);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            d.mdev_devices(),
            vec![uuid(11)],
            "the hook stops only what it started"
        );
    });
}

#[test]
fn a_device_made_persistent_meanwhile_survives_release() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4:2"]);
        let state = tempfile::tempdir().expect("temp dir");
        let xml = example("two-vgpus.xml");
        let r = prepare(&d.address, state.path(), "win11-cad", xml.clone());
        assert_eq!(r.code, 0, "{}", r.stderr);
        d.vgpuctl_ok(&["define", &uuid(2)]);
        let r = release(&d.address, state.path(), "win11-cad", xml);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(d.mdev_devices(), vec![uuid(2)]);
    });
}

#[test]
fn vfio_ccw_and_vfio_ap_devices_are_handled_like_vfio_pci() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let state = tempfile::tempdir().expect("temp dir");
        let xml = example("s390-ccw-ap.xml");
        let r = prepare(&d.address, state.path(), "zguest", xml.clone());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(d.mdev_devices(), vec![uuid(21), uuid(22)]);
        let r = release(&d.address, state.path(), "zguest", xml);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(d.mdev_devices().is_empty());
    });
}

#[test]
fn an_active_device_is_used_as_it_is_and_not_removed() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4"]);
        let state = tempfile::tempdir().expect("temp dir");
        d.vgpuctl_ok(&["create", "nvidia-231", "--uuid", &uuid(31)]);
        let xml = example("no-metadata.xml");
        let r = prepare(&d.address, state.path(), "legacy", xml.clone());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(state_files(state.path()).is_empty(), "nothing was created");
        let r = release(&d.address, state.path(), "legacy", xml);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(d.mdev_devices(), vec![uuid(31)]);
    });
}

// --- failures are all or nothing ---------------------------------------------------------------

#[test]
fn an_unknown_type_aborts_the_start_and_leaves_nothing() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4:2"]);
        let state = tempfile::tempdir().expect("temp dir");
        let r = prepare(
            &d.address,
            state.path(),
            "impossible",
            example("impossible.xml"),
        );
        assert_eq!(r.code, 4, "{}", r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "vgpuctl: domain impossible: cannot provide vGPU {}: no parent offers a type with id or name \"GRID Z99-1Q\" (org.vgpud1.Error.NotFound)",
                uuid(42)
            )),
            "{}",
            r.stderr
        );
        assert!(
            d.mdev_devices().is_empty(),
            "the first vGPU was removed again"
        );
        assert!(state_files(state.path()).is_empty());
    });
}

#[test]
fn no_capacity_aborts_the_start_and_leaves_nothing() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4:2"]);
        let state = tempfile::tempdir().expect("temp dir");
        let r = prepare(
            &d.address,
            state.path(),
            "greedy",
            example("three-full-gpus.xml"),
        );
        assert_eq!(r.code, 6, "{}", r.stderr);
        assert!(
            r.stderr.contains(&uuid(53)) && r.stderr.contains("NoCapacity"),
            "{}",
            r.stderr
        );
        assert!(
            d.mdev_devices().is_empty(),
            "both vGPUs that fitted were removed again"
        );
        assert!(state_files(state.path()).is_empty());
    });
}

#[test]
fn a_started_definition_is_stopped_again_when_the_start_fails() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4"]);
        let state = tempfile::tempdir().expect("temp dir");
        d.vgpuctl_ok(&[
            "define",
            "nvidia-231",
            "--parent",
            "0000:20:00.0",
            "--uuid",
            &uuid(11),
        ]);
        // The second device asks for a type the T4 cannot run beside nvidia-231.
        let xml = String::from_utf8(example("defined-and-new.xml"))
            .expect("utf-8")
            .replace("GRID T4-2Q", "GRID T4-16Q");
        let r = prepare(&d.address, state.path(), "render-node-1", xml.into_bytes());
        assert_ne!(r.code, 0, "{}", r.stderr);
        assert!(
            d.mdev_devices().is_empty(),
            "the definition was stopped again"
        );
        let defined = d.vgpuctl_ok(&["--json", "list", "--defined"]);
        assert!(
            defined.contains(&uuid(11)),
            "the definition itself stays: {defined}"
        );
        assert!(state_files(state.path()).is_empty());
    });
}

#[test]
fn a_new_device_without_metadata_is_a_clear_error() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4"]);
        let state = tempfile::tempdir().expect("temp dir");
        let r = prepare(
            &d.address,
            state.path(),
            "legacy",
            example("no-metadata.xml"),
        );
        assert_eq!(r.code, 4, "{}", r.stderr);
        assert!(
            r.stderr
                .contains("<vgpud:device uuid=\"c0ffee00-0000-4000-8000-000000000031\""),
            "{}",
            r.stderr
        );
    });
}

#[test]
fn prepare_without_vgpud_says_so_and_exits_10() {
    with_timeout(LIMIT, || {
        let state = tempfile::tempdir().expect("temp dir");
        let r = prepare(NO_BUS, state.path(), "win11-cad", example("two-vgpus.xml"));
        r.assert_failed(10, "vgpud is not running on the bus at");
    });
}

#[test]
fn prepare_without_vgpud_on_the_system_bus_names_the_system_bus() {
    with_timeout(LIMIT, || {
        let state = tempfile::tempdir().expect("temp dir");
        let dir = state.path().to_str().expect("utf-8 path").to_owned();
        let mut child = Command::new(VGPUCTL)
            .args([
                "libvirt-hook",
                "--state-dir",
                &dir,
                "vm",
                "prepare",
                "begin",
                "-",
            ])
            .env("DBUS_SYSTEM_BUS_ADDRESS", NO_BUS)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&example("two-vgpus.xml"))
            .expect("writes the XML");
        let out = child.wait_with_output().expect("ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(10), "{stderr}");
        assert!(
            stderr.contains("vgpud is not running on the system bus"),
            "{stderr}"
        );
    });
}

// --- what needs no bus -------------------------------------------------------------------------

#[test]
fn other_operations_exit_0_without_a_bus() {
    with_timeout(LIMIT, || {
        let state = tempfile::tempdir().expect("temp dir");
        for (op, sub) in [
            ("start", "begin"),
            ("started", "begin"),
            ("stopped", "end"),
            ("prepare", "end"),
            ("release", "begin"),
            ("migrate", "begin"),
            ("restore", "begin"),
            ("reconnect", "begin"),
            ("attach", "begin"),
        ] {
            let r = hook(
                NO_BUS,
                state.path(),
                &["win11-cad", op, sub, "-"],
                example("two-vgpus.xml"),
            );
            assert_eq!(r.code, 0, "{op} {sub}: {}", r.stderr);
            assert!(r.stderr.is_empty(), "{op} {sub}: {}", r.stderr);
        }
    });
}

#[test]
fn a_domain_without_mdev_is_a_no_op() {
    with_timeout(LIMIT, || {
        let state = tempfile::tempdir().expect("temp dir");
        for (op, sub) in [("prepare", "begin"), ("release", "end")] {
            let r = hook(
                NO_BUS,
                state.path(),
                &["passthrough", op, sub, "-"],
                example("no-mdev.xml"),
            );
            assert_eq!(r.code, 0, "{op}: {}", r.stderr);
        }
        assert!(state_files(state.path()).is_empty());
    });
}

#[test]
fn malformed_xml_fails_prepare_and_is_only_noted_at_release() {
    with_timeout(LIMIT, || {
        let state = tempfile::tempdir().expect("temp dir");
        let r = prepare(NO_BUS, state.path(), "broken", example("malformed.xml"));
        assert_eq!(r.code, 3, "{}", r.stderr);
        assert!(
            r.stderr
                .contains("domain broken: the domain XML is not well-formed"),
            "{}",
            r.stderr
        );
        let r = release(NO_BUS, state.path(), "broken", example("malformed.xml"));
        r.assert_failed(0, "ignoring its XML");
        let r = prepare(
            NO_BUS,
            state.path(),
            "broken",
            b"\xff\xfe<domain/>".to_vec(),
        );
        assert_eq!(r.code, 3, "{}", r.stderr);
    });
}

/// two-vgpus.xml with about 10 MB of other tools' metadata, as a domain with a large embedded
/// configuration would carry.
fn huge_domain() -> Vec<u8> {
    let xml = String::from_utf8(example("two-vgpus.xml")).expect("utf-8");
    let mut filler = String::from("<other:blob xmlns:other='https://example.org/blob/1'>");
    let line = "<other:entry key='k' value='0123456789abcdef0123456789abcdef0123456789abcdef'/>\n";
    while filler.len() < 10 << 20 {
        filler.push_str(line);
    }
    filler.push_str("</other:blob>");
    xml.replacen("<metadata>", &format!("<metadata>{filler}"), 1)
        .into_bytes()
}

#[test]
fn a_10_mb_domain_is_handled() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4:2"]);
        let state = tempfile::tempdir().expect("temp dir");
        let xml = huge_domain();
        assert!(xml.len() > 10 << 20);
        let r = prepare(&d.address, state.path(), "win11-cad", xml.clone());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(d.mdev_devices(), vec![uuid(1), uuid(2)]);
        let r = release(&d.address, state.path(), "win11-cad", xml);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(d.mdev_devices().is_empty());
    });
}

#[test]
fn more_than_32_mib_of_xml_is_refused() {
    with_timeout(LIMIT, || {
        let state = tempfile::tempdir().expect("temp dir");
        let mut xml = b"<domain><description>".to_vec();
        xml.resize(33 << 20, b'x');
        let r = hook(NO_BUS, state.path(), &["vm", "prepare", "begin", "-"], xml);
        r.assert_failed(3, "larger than 32 MiB");
    });
}

#[test]
fn installed_in_qemu_d_vgpuctl_is_the_hook() {
    with_timeout(LIMIT, || {
        let dir = tempfile::tempdir().expect("temp dir");
        let hooks = dir.path().join("qemu.d");
        std::fs::create_dir(&hooks).expect("mkdir");
        let link = hooks.join("vgpud");
        std::os::unix::fs::symlink(VGPUCTL, &link).expect("symlink");
        // libvirt passes exactly these arguments; a domain name may start with '-'.
        let r = run(
            &link,
            &["-odd-name", "start", "begin", "-"],
            example("two-vgpus.xml"),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = run(
            &link,
            &["passthrough", "prepare", "begin", "-"],
            example("no-mdev.xml"),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    });
}
