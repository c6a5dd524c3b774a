//! Definitions that others write while vgpud runs (Debian's mdevctl 1.2, an editor, a file
//! written in pieces) reach D-Bus without `vgpuctl reload`: vgpud watches the definitions
//! directory with inotify. mdevctl runs in a private mount namespace with the test's
//! definitions directory bind-mounted over /etc/mdevctl.d (1.2.0 has no root override).

#[path = "common/daemon.rs"]
mod common;

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{device_proxy, eventually, manager_proxy, Daemon};
use vgpud_api::proxies::{DeviceProxy, ManagerProxy};

const U1: &str = "6d0f3a2e-1b4c-4d5e-8f90-a1b2c3d4e5f6";
/// The issue's bound: a definition written by another tool is on D-Bus within a second.
const WITHIN: Duration = Duration::from_secs(1);

/// vgpud on a simulated mtty with its definitions in a temp tree laid out as mdevctl's.
struct Rig {
    _tmp: tempfile::TempDir,
    defs: PathBuf,
    daemon: Daemon,
}

fn rig() -> Rig {
    let tmp = tempfile::tempdir().expect("temp dir");
    let defs = tmp.path().join("etc/mdevctl.d");
    for sub in ["scripts.d/callouts", "scripts.d/notifiers"] {
        std::fs::create_dir_all(defs.join(sub)).expect("create scripts.d");
    }
    let state = tmp.path().join("state");
    let daemon = Daemon::start_with(
        &["mtty"],
        &[
            "--definitions-dir",
            defs.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    Rig {
        _tmp: tmp,
        defs,
        daemon,
    }
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("a path without NUL")
}

/// Runs Debian's mdevctl with `defs` as its /etc/mdevctl.d; panics with its output if it fails.
fn mdevctl(defs: &Path, args: &[&str]) {
    let mut cmd = Command::new("mdevctl");
    cmd.args(args).env("MDEVCTL_LOG", "warn");
    let source = c_path(defs);
    let target = c_path(Path::new("/etc/mdevctl.d"));
    let slash = c_path(Path::new("/"));
    std::fs::create_dir_all("/etc/mdevctl.d").expect("/etc/mdevctl.d exists (mdevctl's package)");
    // SAFETY: the closure runs in the forked child before exec and only makes raw system calls
    // (unshare, mount) on C strings built before the fork: no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let none = std::ptr::null();
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(none, slash.as_ptr(), none, private, none.cast()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let bind = libc::MS_BIND;
            if libc::mount(source.as_ptr(), target.as_ptr(), none, bind, none.cast()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd
        .output()
        .expect("mdevctl runs (apt-get install mdevctl; run the tests as root)");
    assert!(
        out.status.success(),
        "mdevctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls until `uuid` is a device on the bus; returns how long that took, or None after 10 s.
async fn time_until_on_bus(m: &ManagerProxy<'_>, uuid: &str, since: Instant) -> Option<Duration> {
    let deadline = since + Duration::from_secs(10);
    while Instant::now() < deadline {
        if m.get_device(uuid).await.is_ok() {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_definition_mdevctl_writes_is_on_the_bus_within_a_second() {
    let rig = rig();
    let conn = rig.daemon.conn().await;
    let m = manager_proxy(&conn).await;
    assert!(m.get_device(U1).await.is_err(), "not defined yet");
    mdevctl(
        &rig.defs,
        &[
            "define", "--parent", "mtty", "--type", "mtty-1", "--uuid", U1,
        ],
    );
    let written = Instant::now();
    let took = time_until_on_bus(&m, U1, written)
        .await
        .expect("the definition mdevctl wrote reaches D-Bus");
    println!("mdevctl define -> on D-Bus: {took:?}");
    assert!(took < WITHIN, "took {took:?}");
    let path = m.get_device(U1).await.unwrap();
    let device = DeviceProxy::builder(&conn)
        .path(path)
        .unwrap()
        .build()
        .await
        .unwrap();
    assert!(device.persistent().await.unwrap());
    assert!(!device.active().await.unwrap());
    assert_eq!(device.type_id().await.unwrap(), "mtty-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_definition_mdevctl_removes_leaves_the_bus() {
    let rig = rig();
    let conn = rig.daemon.conn().await;
    let m = manager_proxy(&conn).await;
    mdevctl(
        &rig.defs,
        &[
            "define", "--parent", "mtty", "--type", "mtty-2", "--uuid", U1,
        ],
    );
    assert!(time_until_on_bus(&m, U1, Instant::now()).await.is_some());
    mdevctl(&rig.defs, &["undefine", "--uuid", U1]);
    let gone = eventually(1, async || m.get_device(U1).await.is_err()).await;
    assert!(gone, "the undefined device is still on the bus after 1 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn autostart_switched_by_mdevctl_is_seen() {
    let rig = rig();
    let conn = rig.daemon.conn().await;
    let m = manager_proxy(&conn).await;
    mdevctl(
        &rig.defs,
        &[
            "define", "--parent", "mtty", "--type", "mtty-1", "--uuid", U1,
        ],
    );
    assert!(time_until_on_bus(&m, U1, Instant::now()).await.is_some());
    let device = device_proxy(&conn, m.get_device(U1).await.unwrap()).await;
    assert!(!device.autostart().await.unwrap());
    mdevctl(&rig.defs, &["modify", "--uuid", U1, "--auto"]);
    let auto = eventually(1, async || device.autostart().await.unwrap_or(false)).await;
    assert!(
        auto,
        "Autostart is still false 1 s after mdevctl modify --auto"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_being_written_is_read_once_complete() {
    let rig = rig();
    let conn = rig.daemon.conn().await;
    let m = manager_proxy(&conn).await;
    std::fs::create_dir_all(rig.defs.join("mtty")).unwrap();
    // Let the watch on the new parent directory be in place before the file is created.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut file = std::fs::File::create(rig.defs.join("mtty").join(U1)).unwrap();
    file.write_all(br#"{"mdev_type":"mtty-1","#).unwrap();
    file.flush().unwrap();
    // Well past the debounce: a reader that did not wait for the close would see half a file.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let problems = m.problems().await.unwrap();
    assert!(
        problems.iter().all(|p| !p.contains(U1)),
        "a file still open for writing was reported: {problems:?}"
    );
    file.write_all(br#""start":"manual","attrs":[]}"#).unwrap();
    drop(file);
    let closed = Instant::now();
    let took = time_until_on_bus(&m, U1, closed).await.expect("on the bus");
    assert!(took < WITHIN, "took {took:?}");
    assert!(m.problems().await.unwrap().iter().all(|p| !p.contains(U1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_file_is_a_problem_and_the_daemon_goes_on() {
    let rig = rig();
    let conn = rig.daemon.conn().await;
    let m = manager_proxy(&conn).await;
    std::fs::create_dir_all(rig.defs.join("mtty")).unwrap();
    std::fs::write(rig.defs.join("mtty").join(U1), "{ not json").unwrap();
    let reported = eventually(1, async || {
        let problems = m.problems().await.unwrap_or_default();
        problems.iter().any(|p| p.contains(U1))
    })
    .await;
    assert!(reported, "problems: {:?}", m.problems().await);
    // Still serving, and a valid file next to it is read.
    let u2 = "7e1f4b3f-2c5d-4e6f-9a01-b2c3d4e5f607";
    mdevctl(
        &rig.defs,
        &[
            "define", "--parent", "mtty", "--type", "mtty-1", "--uuid", u2,
        ],
    );
    assert!(time_until_on_bus(&m, u2, Instant::now()).await.is_some());
    // Fixed by an editor: the problem goes away and the device appears.
    let fixed = r#"{"mdev_type":"mtty-2","start":"manual","attrs":[]}"#;
    std::fs::write(rig.defs.join("mtty").join(U1), fixed).unwrap();
    assert!(time_until_on_bus(&m, U1, Instant::now()).await.is_some());
    let problems = m.problems().await.unwrap();
    assert!(problems.iter().all(|p| !p.contains(U1)), "{problems:?}");
}
