//! NVIDIA's vGPU scheduler as policy: `[[scheduler]]` rules become the driver's per-GPU
//! `RmPVMRL` registry key in `<modprobe-dir>/vgpud-nvidia-scheduler.conf`, keyed by each GPU's
//! physical function, and Problems says the driver must be reloaded; removing the rules removes
//! the file. Simulated hosts with T4s (mdev on the PF) and an A100 (mdev on its VFs).

#[path = "common/daemon.rs"]
mod common;

use std::process::Command;

use common::{within, Daemon};

const RULES: &str = r#"
[[scheduler]]
name = "vdi-t4"
parents = { vendor = "0x10de", device = "0x1eb8" }
policy = "equal-share"
time_slice_ms = 3

[[scheduler]]
name = "ai-a100"
parents = { vendor = "0x10de" }
policy = "fixed-share"
"#;

#[test]
fn scheduler_rules_become_the_drivers_per_gpu_registry_key() {
    let config = tempfile::tempdir().unwrap();
    let modprobe = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(config.path().join("policy.d")).unwrap();
    let rules = config.path().join("policy.d/40-scheduler.toml");
    std::fs::write(&rules, RULES).unwrap();
    let d = Daemon::start_with(
        &["nvidia-t4:2", "nvidia-a100", "mtty"],
        &[
            "--config-dir",
            config.path().to_str().unwrap(),
            "--modprobe-dir",
            modprobe.path().to_str().unwrap(),
        ],
    );
    let file = modprobe.path().join("vgpud-nvidia-scheduler.conf");
    assert!(within(10, || file.exists()), "no {}", file.display());
    let text = std::fs::read_to_string(&file).unwrap();
    let options: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("options nvidia "))
        .collect();
    assert_eq!(options.len(), 1, "{text}");
    // Equal share with a 3 ms slice is 0x00030001; fixed share with the default slice 0x11.
    assert!(
        options[0].contains("pci=0000:20:00.0;RmPVMRL=0x30001"),
        "{text}"
    );
    assert!(
        options[0].contains("pci=0000:21:00.0;RmPVMRL=0x30001"),
        "{text}"
    );
    let parents = d.vgpuctl_json(&["parents"]);
    let pf = parents["parents"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["physical_function"].as_str())
        .expect("the A100's VFs name their PF")
        .to_owned();
    assert!(
        options[0].contains(&format!("pci={pf};RmPVMRL=0x11")),
        "{text}"
    );
    assert_eq!(
        options[0].matches("pci=").count(),
        3,
        "one entry per physical GPU: {text}"
    );
    assert!(
        d.problems().contains("reload the NVIDIA driver"),
        "{}",
        d.problems()
    );

    // Without rules the file goes (best effort is the driver's default).
    std::fs::remove_file(&rules).unwrap();
    d.vgpuctl_json(&["reload"]);
    assert!(within(10, || !file.exists()), "{} stayed", file.display());
    d.stop();
}

#[test]
fn a_bad_scheduler_rule_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[scheduler]]\nname = \"x\"\npolicy = \"round-robin\"\n\n[[scheduler]]\nname = \"y\"\npolicy = \"best-effort\"\ntime_slice_ms = 3\n",
    )
    .unwrap();
    let out = Command::new(common::VGPUD)
        .args(["check-policy", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("unknown scheduler policy \"round-robin\""),
        "{text}"
    );
    assert!(
        text.contains("time_slice_ms applies to equal-share and fixed-share only"),
        "{text}"
    );
    assert!(text.contains(":3:"), "the line of the bad policy: {text}");
}
