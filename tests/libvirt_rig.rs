//! The libvirt tier's fixture cleans up after a failing test: when a test panics, its rig's
//! namespace goes, and with it libvirtd, vgpud, the bus, the simulator and every mount.

#[path = "common/libvirt.rs"]
mod libvirt;

use std::path::Path;

use libvirt::Rig;

/// Processes whose mount namespace is `ns` (a `mnt:[N]` link text).
fn processes_in(ns: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read_link(e.path().join("ns/mnt")).is_ok_and(|l| l.to_string_lossy() == ns)
        })
        .map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        })
        .collect()
}

#[test]
fn a_panicking_test_leaves_no_daemon_and_no_mount() {
    let rig = Rig::start(&["nvidia-t4"]);
    let ns = rig.mount_namespace();
    let scratch = rig.scratch().to_path_buf();
    let running = processes_in(&ns);
    for daemon in ["libvirtd", "vgpud --sysfs", "vgpud-sim", "dbus-daemon"] {
        assert!(
            running.iter().any(|c| c.contains(daemon)),
            "{daemon} runs in the rig: {running:?}"
        );
    }
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _rig = rig;
        panic!("a test fails while its rig runs");
    }));
    assert!(failed.is_err());
    assert_eq!(processes_in(&ns), Vec::<String>::new(), "left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&scratch.display().to_string()), "{mounts}");
    assert!(
        !Path::new(&scratch).exists(),
        "the scratch dir is removed too"
    );
}
