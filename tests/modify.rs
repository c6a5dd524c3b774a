//! `vgpuctl modify` (Device.Modify): a T4 vGPU's nvidia/vgpu_params changed on the live
//! device, in its definition, or both; a driver that refuses leaves the old value.

#[path = "common/daemon.rs"]
mod common;

use common::Daemon;

const T4: &str = "0000:20:00.0";
const U: &str = "c0ffee00-0000-4000-8000-0000000000f1";
const PARAMS: &str = "nvidia/vgpu_params";

fn params(d: &Daemon) -> String {
    std::fs::read_to_string(d.sys("bus/mdev/devices").join(U).join(PARAMS))
        .unwrap()
        .trim()
        .to_owned()
}

fn start() -> (Daemon, tempfile::TempDir) {
    let defs = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(
        &["nvidia-t4"],
        &["--definitions-dir", defs.path().to_str().unwrap()],
    );
    d.vgpuctl_ok(&[
        "create",
        "GRID T4-2Q",
        "--parent",
        T4,
        "--uuid",
        U,
        "--define",
    ]);
    (d, defs)
}

fn definition(defs: &tempfile::TempDir) -> serde_json::Value {
    let text = std::fs::read_to_string(defs.path().join(T4).join(U)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_live_change_reaches_the_driver_and_a_defined_one_the_definition() {
    let (d, defs) = start();
    d.vgpuctl_ok(&[
        "modify",
        U,
        "--attr",
        "nvidia/vgpu_params=frame_rate_limiter=0",
        "--live",
    ]);
    assert_eq!(params(&d), "frame_rate_limiter=0");
    assert_eq!(
        definition(&defs)["attrs"],
        serde_json::json!([]),
        "--live leaves the definition"
    );
    d.vgpuctl_ok(&[
        "modify",
        U,
        "--attr",
        "nvidia/vgpu_params=frame_rate_limiter=1",
        "--defined",
    ]);
    assert_eq!(
        params(&d),
        "frame_rate_limiter=0",
        "--defined leaves the live device"
    );
    assert_eq!(
        definition(&defs)["attrs"],
        serde_json::json!([{ "nvidia/vgpu_params": "frame_rate_limiter=1" }])
    );
    d.stop();
}

#[test]
fn a_refused_live_change_keeps_the_old_value() {
    let (d, _defs) = start();
    d.vgpuctl_ok(&[
        "modify",
        U,
        "--attr",
        "nvidia/vgpu_params=frame_rate_limiter=0",
        "--live",
    ]);
    d.ctl_ok(&[
        "inject",
        &format!("*{U}/{PARAMS}"),
        "--errno",
        "EBUSY",
        "--count",
        "1",
    ]);
    let out = d.vgpuctl(&[
        "modify",
        U,
        "--attr",
        "nvidia/vgpu_params=frame_rate_limiter=1",
        "--live",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(PARAMS),
        "{out:?}"
    );
    assert_eq!(params(&d), "frame_rate_limiter=0");
    d.stop();
}

#[test]
fn a_change_must_say_where() {
    let (d, _defs) = start();
    let out = d.vgpuctl(&["modify", U, "--attr", "nvidia/vgpu_params=x"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = d.vgpuctl(&["modify", U, "--attr", "remove=1", "--live"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(d.sys("bus/mdev/devices").join(U).exists());
    d.stop();
}
