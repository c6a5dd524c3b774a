//! The real `vgpud-sim` binary driven by a shell, with the commands the README shows: `ls`,
//! `cat`, `echo > create`, `readlink`, `vgpud-sim ctl`; and its life cycle: clean unmount on
//! SIGINT/SIGTERM, a stale mount cleared on the next start, custom and bad profiles.

#[path = "common/sim.rs"]
mod sim_fixture;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use nix::sys::signal::Signal;
use sim_fixture::*;
use vgpud_sim::mount::{self, MountState};

const T4: &str = "0000:20:00.0";

/// `ls`, one name per line, as a list.
fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

fn create_script(parent: &str, type_id: &str) -> String {
    format!(
        "echo $(cat /proc/sys/kernel/random/uuid) > \
         $SYS/class/mdev_bus/{parent}/mdev_supported_types/{type_id}/create"
    )
}

/// `create_script` `n` times in one shell, stopping at the first failure.
fn create_n_script(parent: &str, type_id: &str, n: u32) -> String {
    format!(
        "set -e; for i in $(seq {n}); do {}; done",
        create_script(parent, type_id)
    )
}

// ---- reading the tree ---------------------------------------------------------------------------

#[test]
fn prints_where_everything_is_before_ready() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let mounted = sim.banner_value("mounted");
    assert_eq!(mounted, sim.mountpoint.display().to_string());
    assert!(sim.banner_value("control").ends_with("sys.sim/control"));
    assert!(sim.banner_value("uevents").ends_with("sys.sim/uevents"));
    assert!(sim.banner_value("dev").ends_with("sys.sim/dev"));
    sim.stop();
}

#[test]
fn ls_lists_the_parents() {
    let sim = SimProcess::start(&["--profile", "nvidia-t4:2", "--profile", "mtty"]);
    let out = sim.bash("ls $SYS/class/mdev_bus").ok();
    assert_eq!(lines(&out), ["0000:20:00.0", "0000:21:00.0", "mtty"]);
    sim.stop();
}

#[test]
fn cat_shows_available_instances_of_every_type() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let out = sim
        .bash("cat $SYS/class/mdev_bus/mtty/mdev_supported_types/*/available_instances")
        .ok();
    assert_eq!(lines(&out), ["24", "12"]);
    let out = sim
        .bash("cat $SYS/class/mdev_bus/mtty/mdev_supported_types/mtty-2/name")
        .ok();
    assert_eq!(out, "Dual port serial\n");
    sim.stop();
}

#[test]
fn cat_of_a_t4_type_shows_name_and_description() {
    let sim = SimProcess::start(&["--profile", "nvidia-t4"]);
    let dir = format!("$SYS/class/mdev_bus/{T4}/mdev_supported_types/nvidia-231");
    let out = sim
        .bash(&format!(
            "cat {dir}/name {dir}/description {dir}/device_api"
        ))
        .ok();
    assert_eq!(
        lines(&out),
        [
            "GRID T4-2Q",
            "num_heads=4, frl_config=60, framebuffer=2048M, max_resolution=7680x4320, max_instance=8",
            "vfio-pci"
        ]
    );
    sim.stop();
}

#[test]
fn reading_create_is_permission_denied() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let err = sim
        .bash("cat $SYS/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create")
        .failed();
    assert!(err.contains("Permission denied"), "{err}");
    sim.stop();
}

#[test]
fn writing_a_file_that_is_not_there_is_permission_denied_as_in_sysfs() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let err = sim
        .bash("echo 1 > $SYS/class/mdev_bus/mtty/mdev_supported_types/mtty-1/nothing")
        .failed();
    assert!(err.contains("Permission denied"), "{err}");
    let err = sim.bash("mkdir $SYS/class/foo").failed();
    assert!(err.contains("Operation not permitted"), "{err}");
    sim.stop();
}

// ---- creating devices ------------------------------------------------------------------------------

#[test]
fn echo_uuid_into_create_makes_a_device() {
    let sim = SimProcess::start(&["--profile", "nvidia-t4"]);
    sim.bash(&create_script(T4, "nvidia-231")).ok();
    let out = sim.bash("ls $SYS/bus/mdev/devices").ok();
    let devices = lines(&out);
    assert_eq!(devices.len(), 1, "{out}");
    let uuid = devices[0];
    assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{uuid}");
    let out = sim
        .bash(&format!(
            "cat $SYS/class/mdev_bus/{T4}/mdev_supported_types/nvidia-231/available_instances; \
             ls $SYS/class/mdev_bus/{T4}/mdev_supported_types/nvidia-231/devices"
        ))
        .ok();
    assert_eq!(lines(&out), ["7", uuid]);
    sim.stop();
}

#[test]
fn readlink_gives_the_kernels_relative_links() {
    let sim = SimProcess::start(&["--profile", "nvidia-t4"]);
    sim.bash(&create_script(T4, "nvidia-231")).ok();
    let uuid = sim.bash("ls $SYS/bus/mdev/devices").ok().trim().to_owned();
    let out = sim
        .bash(&format!(
            "cd $SYS/bus/mdev/devices && readlink {uuid} {uuid}/mdev_type {uuid}/iommu_group \
             {uuid}/driver $SYS/class/mdev_bus/{T4}"
        ))
        .ok();
    let got = lines(&out);
    assert_eq!(got[0], format!("../../../devices/pci0000:20/{T4}/{uuid}"));
    assert_eq!(got[1], "../mdev_supported_types/nvidia-231");
    let group = got[2]
        .strip_prefix("../../../../kernel/iommu_groups/")
        .unwrap_or_else(|| panic!("iommu_group -> {}", got[2]));
    assert!(group.parse::<u32>().is_ok(), "{group}");
    assert_eq!(got[3], "../../../../bus/mdev/drivers/nvidia-vgpu-vfio");
    assert_eq!(got[4], format!("../../devices/pci0000:20/{T4}"));
    // The group exists and names the device as its member.
    let out = sim
        .bash(&format!("ls $SYS/kernel/iommu_groups/{group}/devices"))
        .ok();
    assert_eq!(out.trim(), uuid);
    sim.stop();
}

#[test]
fn readlink_f_resolves_inside_the_mount() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    sim.bash(&create_script("mtty", "mtty-2")).ok();
    let out = sim
        .bash("readlink -f $SYS/bus/mdev/devices/*/mdev_type")
        .ok();
    assert_eq!(
        out.trim(),
        format!(
            "{}/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2",
            sim.mountpoint.display()
        )
    );
    sim.stop();
}

#[test]
fn a_bad_uuid_is_invalid_argument() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let err = sim
        .bash("echo not-a-uuid > $SYS/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create")
        .failed();
    assert!(err.contains("Invalid argument"), "{err}");
    assert_eq!(sim.bash("ls $SYS/bus/mdev/devices").ok(), "");
    sim.stop();
}

#[test]
fn a_duplicate_uuid_is_file_exists() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let err = sim
        .bash(
            "U=$(cat /proc/sys/kernel/random/uuid); \
             echo $U > $SYS/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create; \
             echo $U > $SYS/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create",
        )
        .failed();
    assert!(err.contains("File exists"), "{err}");
    sim.stop();
}

/// Fills `type_id` with `n` devices, then checks the next create fails with `message`.
fn exhausts_with(profile: &str, parent: &str, type_id: &str, n: u32, message: &str) {
    let sim = SimProcess::start(&["--profile", profile]);
    sim.bash(&create_n_script(parent, type_id, n)).ok();
    let err = sim.bash(&create_script(parent, type_id)).failed();
    assert!(err.contains(message), "{profile}: {err}");
    let out = sim.bash("ls $SYS/bus/mdev/devices | wc -l").ok();
    assert_eq!(out.trim(), n.to_string());
    sim.stop();
}

#[test]
fn a_full_mtty_says_no_space_left_on_device() {
    exhausts_with("mtty", "mtty", "mtty-2", 12, "No space left on device");
}

#[test]
fn a_full_mdpy_says_too_many_users() {
    exhausts_with("mdpy", "mdpy", "mdpy-hd", 4, "Too many users");
}

#[test]
fn a_full_mbochs_says_no_space_left_on_device() {
    exhausts_with(
        "mbochs",
        "mbochs",
        "mbochs-large",
        4,
        "No space left on device",
    );
}

#[test]
fn a_full_t4_says_invalid_argument() {
    exhausts_with("nvidia-t4", T4, "nvidia-231", 8, "Invalid argument");
}

#[test]
fn a_taken_a100_vf_says_too_many_users() {
    exhausts_with(
        "nvidia-a100",
        "0000:20:00.4",
        "nvidia-472",
        1,
        "Too many users",
    );
}

#[test]
fn echo_1_into_remove_removes_the_device() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    sim.bash(&create_script("mtty", "mtty-1")).ok();
    sim.bash("echo 1 > $SYS/bus/mdev/devices/*/remove").ok();
    assert_eq!(sim.bash("ls $SYS/bus/mdev/devices").ok(), "");
    sim.stop();
}

// ---- vgpud-sim ctl ---------------------------------------------------------------------------------

#[test]
fn ctl_unplug_and_plug_change_what_ls_shows() {
    let sim = SimProcess::start(&["--profile", "nvidia-t4:2", "--profile", "mtty"]);
    sim.ctl(&["unplug", T4]).ok();
    let out = sim.bash("ls $SYS/class/mdev_bus $SYS/bus/pci/devices").ok();
    assert!(!out.contains(T4), "{out}");
    assert!(out.contains("0000:21:00.0"), "{out}");
    sim.ctl(&["plug", "--parent", T4]).ok();
    let out = sim.bash("ls $SYS/class/mdev_bus").ok();
    assert_eq!(lines(&out), [T4, "0000:21:00.0", "mtty"]);
    sim.ctl(&["plug", "nvidia-t4"]).ok();
    let out = sim.bash("ls $SYS/class/mdev_bus").ok();
    assert_eq!(lines(&out), [T4, "0000:21:00.0", "0000:22:00.0", "mtty"]);
    sim.stop();
}

#[test]
fn ctl_unplug_takes_the_devices_with_the_parent() {
    let sim = SimProcess::start(&["--profile", "nvidia-t4"]);
    sim.bash(&create_script(T4, "nvidia-231")).ok();
    sim.ctl(&["unplug", T4]).ok();
    assert_eq!(
        sim.bash("ls $SYS/bus/mdev/devices; ls $SYS/class/mdev_bus")
            .ok(),
        ""
    );
    sim.stop();
}

#[test]
fn ctl_status_prints_json() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    sim.bash(&create_script("mtty", "mtty-1")).ok();
    let out = sim.ctl(&["status"]).ok();
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(status["parents"][0]["name"], "mtty");
    assert_eq!(status["devices"][0]["type"], "mtty-1");
    sim.stop();
}

#[test]
fn ctl_of_an_unknown_parent_fails_with_a_message() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let err = sim.ctl(&["unplug", "0000:99:00.0"]).failed();
    assert!(err.contains("0000:99:00.0"), "{err}");
    sim.stop();
}

#[test]
fn ctl_monitor_prints_uevents() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let mut monitor = Command::new(sim_binary())
        .args(["ctl"])
        .arg(&sim.mountpoint)
        .arg("monitor")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn monitor");
    let stdout = monitor.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The monitor may subscribe after our first create; create until it reports one.
    let mut got = Vec::new();
    for _ in 0..50 {
        sim.bash(&create_script("mtty", "mtty-1")).ok();
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            got.push(line);
            got.push(rx.recv_timeout(HANG_GUARD).expect("a second line"));
            got.push(rx.recv_timeout(HANG_GUARD).expect("a third line"));
            break;
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert_eq!(got.len(), 3, "the monitor printed nothing");
    assert!(
        got[0].contains(" add /devices/virtual/mtty/mtty/"),
        "{}",
        got[0]
    );
    assert!(
        got[1].contains(" add ") && got[1].contains("/vfio-dev/vfio"),
        "{}",
        got[1]
    );
    assert!(
        got[2].contains(" bind ") && got[2].ends_with("DRIVER=mtty"),
        "{}",
        got[2]
    );
    sim.stop();
}

// ---- life cycle -------------------------------------------------------------------------------------

#[test]
fn sigterm_unmounts_cleanly() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let control = sim.banner_value("control");
    sim.stop();
    assert!(
        !std::path::Path::new(&control).exists(),
        "socket left behind"
    );
}

#[test]
fn sigint_unmounts_cleanly() {
    let mut sim = SimProcess::start(&["--profile", "mtty"]);
    let status = sim.signal_and_wait(Signal::SIGINT);
    assert!(status.success(), "exit {status}: {}", sim.stderr());
    assert!(!is_mounted(&sim.mountpoint));
}

#[test]
fn sigterm_while_a_remove_is_blocked_still_unmounts() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    sim.bash(&create_script("mtty", "mtty-1")).ok();
    let uuid = sim.bash("ls $SYS/bus/mdev/devices").ok().trim().to_owned();
    sim.ctl(&["hold", &uuid]).ok();
    let blocked = PendingWrite::spawn(
        sim.mountpoint
            .join(format!("bus/mdev/devices/{uuid}/remove")),
        b"1".to_vec(),
    );
    assert!(blocked.still_pending_after(std::time::Duration::from_millis(200)));
    sim.stop();
    // The blocked writer is let go (whatever it is told) rather than left hanging.
    let _ = blocked.wait();
}

#[test]
fn sigterm_with_a_directory_open_in_the_mount_still_unmounts() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    // What a shell whose cwd is in the mount does to a plain umount: EBUSY.
    let open_dir = std::fs::File::open(sim.mountpoint.join("class/mdev_bus")).unwrap();
    sim.stop();
    drop(open_dir);
}

#[test]
fn a_stale_mount_is_cleared_by_the_next_start() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let (dir, mountpoint) = sim.crash();
    assert_eq!(mount::state(&mountpoint).unwrap(), MountState::Stale);
    let next = SimProcess::start_at(dir, mountpoint, &["--profile", "nvidia-t4"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        next.stderr().contains("cleared a stale simulator mount"),
        "{}",
        next.stderr()
    );
    assert_eq!(next.bash("ls $SYS/class/mdev_bus").ok().trim(), T4);
    next.stop();
}

#[test]
fn a_live_mount_is_refused() {
    let sim = SimProcess::start(&["--profile", "mtty"]);
    let mut cmd = Command::new(sim_binary());
    cmd.arg(&sim.mountpoint).args(["--profile", "mdpy"]);
    let out = run_bounded(cmd);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already a live"), "{err}");
    assert_eq!(sim.bash("ls $SYS/class/mdev_bus").ok().trim(), "mtty");
    sim.stop();
}

// ---- profiles ------------------------------------------------------------------------------------

const CUSTOM: &str = r#"
[[device]]
profile = "acme-gpu"
kind = "pci"
address = "0000:65:00.0"
vendor = 0x1234
device = 0x5678
class_code = 0x030000
driver = "acme"
mdev_driver = "acme-mdev"

[device.pool]
capacity = 3
exhausted_errno = "EBUSY"

[[device.types]]
id = "acme-small"
name = "Acme Small"
cost = 1

[device.guest]
vendor = 0x1234
device = 0x5679
class_code = 0x030000
"#;

#[test]
fn a_custom_profile_file_works() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.toml");
    std::fs::write(&file, CUSTOM).unwrap();
    let sim = SimProcess::start(&["--profile-file", file.to_str().unwrap()]);
    assert_eq!(sim.bash("ls $SYS/class/mdev_bus").ok(), "0000:65:00.0\n");
    let types = "$SYS/class/mdev_bus/0000:65:00.0/mdev_supported_types";
    let out = sim
        .bash(&format!(
            "cat {types}/acme-small/name {types}/acme-small/available_instances \
             $SYS/bus/pci/devices/0000:65:00.0/vendor"
        ))
        .ok();
    assert_eq!(lines(&out), ["Acme Small", "3", "0x1234"]);
    sim.bash(&create_n_script("0000:65:00.0", "acme-small", 3))
        .ok();
    let err = sim
        .bash(&create_script("0000:65:00.0", "acme-small"))
        .failed();
    assert!(err.contains("Device or resource busy"), "{err}");
    sim.stop();
}

/// Starts the binary with `args`, which must fail before mounting; returns its stderr.
fn fails_to_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("sys");
    let mut cmd = Command::new(sim_binary());
    cmd.arg(&mountpoint).args(args);
    let out = run_bounded(cmd);
    assert!(!out.status.success(), "started with {args:?}");
    assert!(!is_mounted(&mountpoint));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_profile_name_exits_with_the_list_of_profiles() {
    let err = fails_to_start(&["--profile", "nvidia-t5"]);
    assert!(err.contains("unknown profile \"nvidia-t5\""), "{err}");
    assert!(err.contains("nvidia-t4") && err.contains("mtty"), "{err}");
}

#[test]
fn a_bad_profile_count_exits_with_a_message() {
    let err = fails_to_start(&["--profile", "nvidia-t4:0"]);
    assert!(err.contains("nvidia-t4:0"), "{err}");
}

#[test]
fn a_bad_toml_file_exits_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[[device]]\nprofile = \"x\"\nkind = \"pcie\"\n").unwrap();
    let err = fails_to_start(&["--profile-file", file.to_str().unwrap()]);
    assert!(err.contains("is not valid"), "{err}");
    assert!(err.contains(file.to_str().unwrap()), "{err}");
}

#[test]
fn a_profile_file_that_does_not_validate_exits_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, CUSTOM.replace("EBUSY", "ENOPE")).unwrap();
    let err = fails_to_start(&["--profile-file", file.to_str().unwrap()]);
    assert!(err.contains("acme-gpu") && err.contains("ENOPE"), "{err}");
}

#[test]
fn a_missing_profile_file_exits_with_a_message() {
    let err = fails_to_start(&["--profile-file", "/nonexistent/host.toml"]);
    assert!(
        err.contains("cannot read profile file /nonexistent/host.toml"),
        "{err}"
    );
}
