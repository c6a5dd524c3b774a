//! `vgpuctl plan` (Manager.Plan) shows what the ensure rules would do without doing it, naming
//! the devices in the way on a GPU that runs one type at a time; `vgpuctl reshape` (Manager.
//! Reshape) changes the type such a GPU serves, refusing while devices are in the way unless
//! told to drain them, and never draining one a guest uses.

#[path = "common/daemon.rs"]
mod common;

use common::{within, Daemon};

const T4: &str = "0000:20:00.0";

const ENSURE: &str = r#"
[[ensure]]
name = "two-q2-per-t4"
parents = { vendor = "0x10de", device = "0x1eb8" }
type = "GRID T4-2Q"
count = 2
"#;

fn start() -> (Daemon, tempfile::TempDir) {
    let config = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(config.path().join("policy.d")).unwrap();
    std::fs::write(config.path().join("policy.d/30-ensure.toml"), ENSURE).unwrap();
    let d = Daemon::start_with(
        &["nvidia-t4:2"],
        &["--config-dir", config.path().to_str().unwrap()],
    );
    (d, config)
}

/// UUIDs of the live devices on `parent` of `type_id`.
fn devices(d: &Daemon, parent: &str, type_id: &str) -> Vec<String> {
    d.vgpuctl_json(&["list"])["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["parent"] == parent && x["type_id"] == type_id && x["active"] == true)
        .map(|x| x["uuid"].as_str().unwrap().to_owned())
        .collect()
}

/// Empties the first T4 and gives it one GRID T4-4Q (nvidia-232): the rule is no longer met and
/// the 4Q holds the GPU's only type.
fn serve_4q(d: &Daemon) -> String {
    // The rule's creates at start run in the background: let them land first, or one could
    // arrive after the removals below and hold the GPU for GRID T4-2Q (seen in CI).
    assert!(
        within(20, || devices(d, T4, "nvidia-231").len() == 2),
        "the ensure rule never made its two devices"
    );
    for u in devices(d, T4, "nvidia-231") {
        d.vgpuctl_json(&["remove", &u]);
    }
    d.vgpuctl_json(&["create", "GRID T4-4Q", "--parent", T4])["uuid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_plan_is_empty_when_the_rules_are_met_and_names_what_is_in_the_way() {
    let (d, _config) = start();
    // At start the rule makes two 2Q on each T4 (in the background).
    assert!(
        within(20, || devices(&d, T4, "nvidia-231").len() == 2),
        "the ensure rule never made its two devices"
    );
    assert_eq!(devices(&d, T4, "nvidia-231").len(), 2);
    assert_eq!(d.vgpuctl_json(&["plan"])["plan"], serde_json::json!([]));
    let four = serve_4q(&d);
    let plan = d.vgpuctl_json(&["plan"]);
    let steps = plan["plan"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{plan}");
    assert_eq!(steps[0]["parent"], T4);
    assert_eq!(steps[0]["action"], "no-room");
    assert_eq!(steps[0]["type"], "nvidia-231");
    assert_eq!(steps[0]["count"], 2);
    assert_eq!(steps[0]["in_the_way"], serde_json::json!([four]));
    // The plan did nothing.
    assert_eq!(devices(&d, T4, "nvidia-232"), [four]);
    assert!(devices(&d, T4, "nvidia-231").is_empty());
    d.stop();
}

#[test]
fn reshape_refuses_while_devices_are_in_the_way_and_drains_on_request() {
    let (d, _config) = start();
    let four = serve_4q(&d);
    let out = d.vgpuctl(&["reshape", T4, "GRID T4-2Q", "--count", "2"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&four) && err.contains("drain"), "{err}");
    assert_eq!(
        devices(&d, T4, "nvidia-232"),
        std::slice::from_ref(&four),
        "the refusal changed nothing"
    );

    let done = d.vgpuctl_json(&["reshape", T4, "GRID T4-2Q", "--count", "2", "--drain"]);
    assert_eq!(done["created"].as_array().unwrap().len(), 2, "{done}");
    assert!(devices(&d, T4, "nvidia-232").is_empty());
    assert_eq!(devices(&d, T4, "nvidia-231").len(), 2);
    assert_eq!(d.vgpuctl_json(&["plan"])["plan"], serde_json::json!([]));
    d.stop();
}

#[test]
fn reshape_never_drains_a_device_a_guest_uses() {
    let (d, _config) = start();
    let four = serve_4q(&d);
    d.ctl_ok(&["hold", &four]);
    let out = d.vgpuctl(&["reshape", T4, "GRID T4-2Q", "--drain"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    // Refused up front when vgpud already saw the holder, or by the remove that finds it.
    assert!(
        err.contains(&four) && (err.contains("in use by a guest") || err.contains("held open")),
        "{err}"
    );
    assert_eq!(devices(&d, T4, "nvidia-232"), std::slice::from_ref(&four));
    d.ctl_ok(&["release", &four]);
    d.stop();
}

/// An L40S in time-sliced mode runs one type across all its VFs (NVIDIA's vendor sysfs): the
/// devices in the way are those of every VF of the GPU, not only the named one.
#[test]
fn reshaping_an_l40s_vf_drains_the_whole_gpu() {
    let d = Daemon::start(&["nvidia-l40s"]);
    let vf = |n: u8| format!("0000:20:00.{n}");
    let a = d.vgpuctl_json(&["create", "NVIDIA L40S-2Q", "--parent", &vf(4)])["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = d.vgpuctl_json(&["create", "NVIDIA L40S-2Q", "--parent", &vf(5)])["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = d.vgpuctl(&["reshape", &vf(4), "NVIDIA L40S-4Q"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&a) && err.contains(&b),
        "both VFs' devices are in the way: {err}"
    );
    let done = d.vgpuctl_json(&["reshape", &vf(4), "NVIDIA L40S-4Q", "--drain"]);
    assert_eq!(done["created"].as_array().unwrap().len(), 1, "{done}");
    let listed = d.vgpuctl_json(&["list"]);
    let types: Vec<&str> = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["active"] == true)
        .filter_map(|x| x["type_id"].as_str())
        .collect();
    assert_eq!(types, ["nvidia-1150"], "{listed}");
    d.stop();
}
