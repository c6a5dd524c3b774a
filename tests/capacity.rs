//! Manager.GetCapacity and `vgpuctl capacity`: per type, what the caller could create now, and
//! a property test that it agrees with what CreateDevice then does, step after random step.

#[path = "common/daemon.rs"]
mod common;

use std::collections::HashMap;

use common::{as_user, json_of, ok_stdout, Daemon, VGPUCTL};
use vgpud_api::proxies::{DeviceProxy, ManagerProxy};
use vgpud_testkit::prove::Rng;
use zbus::zvariant::Value;

const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

fn vgpuctl_json(d: &Daemon, as_uid: Option<u32>, args: &[&str]) -> serde_json::Value {
    let Some(uid) = as_uid else {
        return d.vgpuctl_json(args);
    };
    let out = as_user(uid, VGPUCTL)
        .arg(format!("--address={}", d.address))
        .arg("--json")
        .args(args)
        .output()
        .expect("vgpuctl runs");
    json_of(&ok_stdout(&format!("vgpuctl {args:?}"), out))
}

fn total(caps: &serde_json::Value, type_name: &str) -> u64 {
    caps["capacity"]
        .as_array()
        .expect("capacity")
        .iter()
        .find(|c| c["type"] == type_name)
        .map_or(0, |c| c["total"].as_u64().expect("total"))
}

#[test]
fn vgpuctl_capacity_counts_every_free_instance_for_root() {
    let d = Daemon::start(&["nvidia-t4:2", "mtty"]);
    let caps = vgpuctl_json(&d, None, &["capacity"]);
    assert_eq!(total(&caps, "GRID T4-2Q"), 16, "{caps}");
    assert_eq!(total(&caps, "Single port serial"), 24);
    let t4 = caps["capacity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "GRID T4-2Q")
        .unwrap();
    assert_eq!(t4["parents"].as_array().unwrap().len(), 2);
    // NVIDIA's one-type rule: a 2Q on one T4 leaves 4Q only on the other.
    let made = vgpuctl_json(
        &d,
        None,
        &["create", "GRID T4-2Q", "--parent", "0000:20:00.0"],
    );
    assert!(made["uuid"].is_string(), "{made}");
    let caps = vgpuctl_json(&d, None, &["capacity", "--type", "GRID T4-4Q"]);
    assert_eq!(total(&caps, "GRID T4-4Q"), 4, "{caps}");
    let filtered = vgpuctl_json(&d, None, &["capacity", "--parent", "mtty"]);
    assert_eq!(
        filtered["capacity"].as_array().unwrap().len(),
        2,
        "{filtered}"
    );
    d.stop();
}

#[test]
fn a_users_capacity_is_what_its_policy_leaves() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policy.d")).unwrap();
    std::fs::write(
        dir.path().join("policy.d/10-serial.toml"),
        "[[allow]]\nname = \"serial\"\ngroups = [\"daemon\"]\ntypes = [\"mtty-1\"]\nmax_per_user = 2\n",
    )
    .unwrap();
    let config = dir.path().to_string_lossy().into_owned();
    let d = Daemon::start_with(&["mtty"], &["--config-dir", &config]);
    let caps = vgpuctl_json(&d, Some(1), &["capacity"]);
    assert_eq!(caps["capacity"].as_array().unwrap().len(), 1, "{caps}");
    assert_eq!(total(&caps, "Single port serial"), 2);
    let out = as_user(1, VGPUCTL)
        .arg(format!("--address={}", d.address))
        .args(["create", "mtty-1"])
        .output()
        .unwrap();
    ok_stdout("vgpuctl create mtty-1", out);
    assert_eq!(
        total(
            &vgpuctl_json(&d, Some(1), &["capacity"]),
            "Single port serial"
        ),
        1
    );
    // uid 2 has no rule: nothing; root is not limited by uid 1's rule.
    assert!(vgpuctl_json(&d, Some(2), &["capacity"])["capacity"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        total(&vgpuctl_json(&d, None, &["capacity"]), "Single port serial"),
        23
    );
    d.stop();
}

/// Property: before every step, the capacity of the chosen type is > 0 exactly when the
/// create that follows succeeds; removes are mixed in so capacity comes back.
#[tokio::test(flavor = "multi_thread")]
async fn capacity_agrees_with_create_step_after_step() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4:2", "mtty", "mdpy"]);
        let conn = d.conn().await;
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let names = [
            "GRID T4-2Q",
            "GRID T4-4Q",
            "GRID T4-8Q",
            "Single port serial",
            "Dual port serial",
            "mdpy-vga",
        ];
        let seed = vgpud_testkit::prove::clock_seed();
        let mut rng = Rng::new(seed);
        let mut live = Vec::new();
        for step in 0..60 {
            if !live.is_empty() && rng.chance(4) {
                let i = rng.below(live.len());
                let path: zbus::zvariant::OwnedObjectPath = live.swap_remove(i);
                let dev = DeviceProxy::builder(&conn)
                    .path(path)
                    .unwrap()
                    .build()
                    .await
                    .unwrap();
                dev.remove(HashMap::new()).await.unwrap();
                continue;
            }
            let name = *rng.pick(&names);
            let filter = HashMap::from([("type", Value::from(name))]);
            let caps = manager.get_capacity(filter).await.unwrap();
            let cap: u32 = caps.iter().filter(|c| c.0 == name).map(|c| c.1).sum();
            let created = manager.create_device(name, HashMap::new()).await;
            assert_eq!(
                cap > 0,
                created.is_ok(),
                "seed {seed} step {step}: capacity of {name} was {cap} but create said {created:?}"
            );
            if let Ok(path) = created {
                live.push(path);
            } else {
                let e = created.unwrap_err().to_string();
                assert!(e.contains("NoCapacity"), "seed {seed} step {step}: {e}");
            }
        }
        d.stop();
    })
    .await
    .unwrap();
}
