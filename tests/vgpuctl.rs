//! The real `vgpuctl` binary against the real daemon (`vgpud --simulate` on a private bus):
//! every command, the documented JSON fields and the exit code of each error class.

#[path = "common/daemon.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{json_of, run_child, with_timeout, within, Daemon, Ran, VGPUCTL};
use serde_json::Value as Json;

const T4: &str = "0000:20:00.0";
const LIMIT: Duration = Duration::from_secs(120);
const U1: &str = "5a1e0000-0000-4000-8000-000000000001";

impl Ran {
    fn json(&self) -> Json {
        json_of(&self.stdout)
    }

    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs vgpuctl with `args`, killing it if it runs longer than 60 s.
fn vgpuctl(args: &[&str]) -> Ran {
    let mut cmd = Command::new(VGPUCTL);
    cmd.args(args);
    run_child(
        cmd,
        Vec::new(),
        Duration::from_secs(60),
        &format!("vgpuctl {args:?}"),
    )
}

/// vgpuctl on the daemon's bus.
fn ctl(d: &Daemon, args: &[&str]) -> Ran {
    let mut all = vec!["--address", d.address.as_str()];
    all.extend_from_slice(args);
    vgpuctl(&all)
}

fn has_keys(object: &Json, keys: &[&str]) {
    for k in keys {
        assert!(object.get(k).is_some(), "{k} missing from {object}");
    }
}

const DEVICE_KEYS: &[&str] = &[
    "uuid",
    "parent",
    "type_id",
    "active",
    "persistent",
    "autostart",
    "in_use",
    "owner",
    "origin",
    "sysfs_path",
    "iommu_group",
    "path",
];

// --- reading ---------------------------------------------------------------------------------

#[test]
fn parents_are_listed_as_a_table_and_as_json() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4:2", "mtty"]);
        let table = ctl(&d, &["parents"]).ok().stdout;
        assert!(table.starts_with("PARENT"), "{table}");
        assert!(table.contains(T4) && table.contains("mtty"), "{table}");
        let j = ctl(&d, &["parents", "--json"]).ok().json();
        let parents = j["parents"].as_array().expect("parents array");
        assert_eq!(parents.len(), 3);
        let t4 = parents.iter().find(|p| p["name"] == T4).expect("the T4");
        has_keys(
            t4,
            &[
                "name",
                "path",
                "sysfs_path",
                "vendor_id",
                "device_id",
                "driver",
                "backend",
                "numa_node",
                "iommu_group",
                "physical_function",
                "types",
            ],
        );
        assert_eq!(t4["vendor_id"], 0x10de);
        assert_eq!(t4["backend"], "mdev");
        assert!(t4["types"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "nvidia-231"));
    });
}

#[test]
fn types_are_filtered_by_parent() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4", "mtty"]);
        let j = ctl(&d, &["--json", "types", "--parent", "mtty"])
            .ok()
            .json();
        let types = j["types"].as_array().expect("types array");
        assert_eq!(types.len(), 2);
        for t in types {
            has_keys(
                t,
                &[
                    "parent",
                    "id",
                    "name",
                    "description",
                    "device_api",
                    "available_instances",
                    "devices",
                    "path",
                ],
            );
            assert_eq!(t["parent"], "mtty");
        }
        assert_eq!(types[0]["id"], "mtty-1");
        assert_eq!(types[0]["available_instances"], 24);
        let table = ctl(&d, &["types"]).ok().stdout;
        assert!(
            table.contains("GRID T4-2Q") && table.contains("Single port serial"),
            "{table}"
        );
    });
}

#[test]
fn types_of_an_unknown_parent_is_not_found() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let r = ctl(&d, &["types", "--parent", "0000:99:00.0"]);
        r.assert_failed(4, "no parent device named 0000:99:00.0");
    });
}

// --- devices ---------------------------------------------------------------------------------

#[test]
fn create_list_and_remove_a_device() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4:2", "mtty"]);
        let j = ctl(
            &d,
            &[
                "--json",
                "create",
                "GRID T4-2Q",
                "--parent",
                T4,
                "--uuid",
                U1,
            ],
        )
        .ok()
        .json();
        assert_eq!(j["uuid"], U1);
        let device = &j["device"];
        has_keys(device, DEVICE_KEYS);
        assert_eq!(device["parent"], T4);
        assert_eq!(device["type_id"], "nvidia-231");
        assert_eq!(device["active"], true);
        assert_eq!(device["persistent"], false);
        assert_eq!(d.mdev_devices(), vec![U1.to_owned()]);

        let table = ctl(&d, &["list"]).ok().stdout;
        assert!(table.starts_with("UUID") && table.contains(U1), "{table}");
        let listed = ctl(&d, &["list", "--json"]).ok().json();
        assert_eq!(listed["devices"].as_array().unwrap().len(), 1);
        let defined = ctl(&d, &["list", "--defined", "--json"]).ok().json();
        assert_eq!(defined["devices"], Json::Array(vec![]));

        let j = ctl(&d, &["--json", "remove", U1]).ok().json();
        assert_eq!(j["uuid"], U1);
        assert_eq!(j["device"], Json::Null);
        assert!(d.mdev_devices().is_empty());
    });
}

#[test]
fn create_with_define_and_auto_is_persistent_and_autostarts() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let out = ctl(
            &d,
            &["create", "mtty-1", "--uuid", U1, "--define", "--auto"],
        )
        .ok();
        assert!(
            out.stdout.starts_with(&format!("created {U1}")),
            "{}",
            out.stdout
        );
        let j = ctl(&d, &["--json", "list", "--defined"]).ok().json();
        let device = &j["devices"][0];
        assert_eq!(device["uuid"], U1);
        assert_eq!(device["persistent"], true);
        assert_eq!(device["autostart"], true);
        assert_eq!(device["active"], true);
    });
}

#[test]
fn a_definition_is_started_stopped_switched_and_undefined() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let j = ctl(
            &d,
            &[
                "--json", "define", "mtty-2", "--parent", "mtty", "--uuid", U1,
            ],
        )
        .ok()
        .json();
        assert_eq!(j["device"]["persistent"], true);
        assert_eq!(j["device"]["active"], false);
        assert!(d.mdev_devices().is_empty());

        let j = ctl(&d, &["--json", "start", U1]).ok().json();
        assert_eq!(j["device"]["active"], true);
        assert_eq!(d.mdev_devices(), vec![U1.to_owned()]);

        let j = ctl(&d, &["--json", "autostart", U1, "on"]).ok().json();
        assert_eq!(j["device"]["autostart"], true);
        let j = ctl(&d, &["--json", "autostart", U1, "off"]).ok().json();
        assert_eq!(j["device"]["autostart"], false);

        let j = ctl(&d, &["--json", "stop", U1]).ok().json();
        assert_eq!(j["device"]["active"], false);
        assert!(d.mdev_devices().is_empty());

        let out = ctl(&d, &["undefine", U1]).ok();
        assert!(
            out.stdout.starts_with(&format!("undefined {U1}")),
            "{}",
            out.stdout
        );
        let j = ctl(&d, &["--json", "list", "--defined"]).ok().json();
        assert_eq!(j["devices"], Json::Array(vec![]));
    });
}

#[test]
fn define_uuid_makes_a_live_device_persistent() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        ctl(&d, &["create", "mtty-1", "--uuid", U1]).ok();
        let j = ctl(&d, &["--json", "define", U1, "--auto"]).ok().json();
        assert_eq!(j["device"]["persistent"], true);
        assert_eq!(j["device"]["autostart"], true);
        assert_eq!(j["device"]["active"], true);
    });
}

#[test]
fn define_of_a_type_without_parent_is_a_usage_error() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let r = ctl(&d, &["define", "mtty-1"]);
        r.assert_failed(2, "--parent");
    });
}

#[test]
fn reload_prints_the_policy_in_force() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let j = ctl(&d, &["reload", "--json"]).ok().json();
        assert!(j["policy"].as_str().is_some_and(|s| !s.is_empty()), "{j}");
        let out = ctl(&d, &["reload"]).ok();
        assert!(out.stdout.starts_with("policy reloaded"), "{}", out.stdout);
    });
}

// --- exit codes ------------------------------------------------------------------------------

#[test]
fn an_unknown_type_exits_4_with_the_dbus_error_name() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let r = ctl(&d, &["create", "X"]);
        assert_eq!(r.code, 4);
        assert_eq!(
            r.stderr.trim_end(),
            "vgpuctl: no parent offers a type with id or name \"X\" (org.vgpud1.Error.NotFound)"
        );
        assert!(r.stdout.is_empty());
    });
}

#[test]
fn a_bad_uuid_exits_3() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let r = ctl(&d, &["remove", "not-a-uuid"]);
        r.assert_failed(3, "org.vgpud1.Error.InvalidArgument");
        let r = ctl(&d, &["create", "mtty-1", "--uuid", "1234"]);
        assert_eq!(r.code, 3, "{}", r.stderr);
    });
}

#[test]
fn an_existing_uuid_exits_5() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        ctl(&d, &["create", "mtty-1", "--uuid", U1]).ok();
        let r = ctl(&d, &["create", "mtty-1", "--uuid", U1]);
        r.assert_failed(5, "org.vgpud1.Error.AlreadyExists");
    });
}

#[test]
fn no_capacity_exits_6() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4"]);
        ctl(&d, &["create", "GRID T4-16Q"]).ok();
        let r = ctl(&d, &["create", "GRID T4-16Q"]);
        r.assert_failed(6, "org.vgpud1.Error.NoCapacity");
    });
}

#[test]
fn removing_a_held_device_exits_7() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        ctl(&d, &["create", "mtty-1", "--uuid", U1]).ok();
        d.ctl_ok(&["hold", U1]);
        let r = ctl(&d, &["remove", U1]);
        r.assert_failed(7, "org.vgpud1.Error.Busy");
        assert_eq!(d.mdev_devices(), vec![U1.to_owned()]);
        // A forced remove waits for the holder within --timeout; the kernel's remove then
        // stays pending, and vgpud reports the wait as timed out (Failed).
        let r = ctl(&d, &["--timeout", "4", "remove", "--force", U1]);
        r.assert_failed(1, "timed out");
        d.ctl_ok(&["release", U1]);
        assert!(
            within(20, || d.mdev_devices().is_empty()),
            "the pending remove completes on release"
        );
    });
}

#[test]
fn a_bus_that_is_not_there_exits_10() {
    with_timeout(LIMIT, || {
        let r = vgpuctl(&["--address", "unix:path=/nonexistent/vgpud-bus", "list"]);
        assert_eq!(r.code, 10, "{}", r.stderr);
        assert!(
            r.stderr
                .starts_with("vgpuctl: vgpud is not running on the bus at"),
            "{}",
            r.stderr
        );
        let r = vgpuctl(&["--address", "garbage", "parents"]);
        assert_eq!(r.code, 10, "{}", r.stderr);
    });
}

#[test]
fn a_daemon_that_does_not_answer_exits_10() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        // The bus stays up while vgpud is gone from it.
        let address = d.address.clone();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.pid() as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("stops vgpud");
        let r = vgpuctl(&["--address", &address, "--timeout", "2", "list"]);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.pid() as i32),
            nix::sys::signal::Signal::SIGCONT,
        )
        .expect("continues vgpud");
        assert_eq!(r.code, 10, "{}", r.stderr);
        // The bound covers connecting too: on a loaded machine it can run out while the bus
        // connection is still being set up (seen in CI), which is reported as a timeout.
        assert!(
            r.stderr.contains("did not answer") || r.stderr.contains("timed out"),
            "{}",
            r.stderr
        );
    });
}

#[test]
fn usage_errors_exit_2() {
    with_timeout(LIMIT, || {
        assert_eq!(vgpuctl(&["frobnicate"]).code, 2);
        assert_eq!(vgpuctl(&["autostart", U1, "maybe"]).code, 2);
        assert_eq!(vgpuctl(&["create", "mtty-1", "--attr", "novalue"]).code, 2);
        assert_eq!(vgpuctl(&["--session", "--address", "x", "list"]).code, 2);
    });
}

#[test]
fn launch_with_the_probe_payload_shows_the_vgpu_in_the_guest() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4"]);
        ctl(&d, &["create", "GRID T4-2Q", "--uuid", U1]).ok();
        let r = ctl(&d, &["launch", U1, "--payload", "pci-probe"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        // The serial console of the guest: the vGPU's PCI ids and BARs, labelled as emulated.
        assert!(r.stdout.contains("10de:1eb8"), "{}", r.stdout);
        assert!(r.stdout.contains("bar0"), "{}", r.stdout);
        assert!(r.stdout.contains("irq count=1"), "{}", r.stdout);
        assert!(r.stderr.contains("EMULATED"), "{}", r.stderr);
        let j = ctl(&d, &["--json", "launch", U1, "--payload", "halt"])
            .ok()
            .json();
        assert_eq!(j["exit_status"], 0);
        assert_eq!(j["emulated"], true);
    });
}

#[test]
fn launch_with_two_devices_gives_the_guest_both() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4", "mtty"]);
        let u2 = "5a1e0000-0000-4000-8000-000000000002";
        ctl(&d, &["create", "GRID T4-2Q", "--uuid", U1]).ok();
        ctl(&d, &["create", "mtty-1", "--uuid", u2]).ok();
        let r = ctl(&d, &["launch", U1, u2, "--payload", "pci-probe"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("00:01.0 10de:1eb8 class 030200"),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout.contains("00:02.0 4348:3253 class 070002"),
            "{}",
            r.stdout
        );
        let twice = ctl(&d, &["launch", U1, U1, "--payload", "halt"]);
        assert_ne!(twice.code, 0);
        assert!(twice.stderr.contains("given twice"), "{}", twice.stderr);
    });
}

#[test]
fn launch_with_a_kernel_passes_kernel_initrd_and_cmdline_to_the_vmm() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["nvidia-t4"]);
        ctl(&d, &["create", "GRID T4-2Q", "--uuid", U1]).ok();
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("tiny.elf");
        std::fs::write(&kernel, vgpud_vmm::payload::long_mode_elf().unwrap()).unwrap();
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, [1u8; 512]).unwrap();
        let (k, i) = (kernel.to_str().unwrap(), initrd.to_str().unwrap());
        let r = ctl(
            &d,
            &[
                "launch",
                U1,
                "--kernel",
                k,
                "--initrd",
                i,
                "--cmdline",
                "console=ttyS0 from=vgpuctl",
            ],
        );
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        // The tiny 64-bit kernel prints the command line it found through its zero page.
        assert!(
            r.stdout
                .contains("elf64: cmdline=console=ttyS0 from=vgpuctl"),
            "{}",
            r.stdout
        );
        let bad = ctl(&d, &["launch", U1, "--kernel", "/nonexistent/vmlinuz"]);
        assert_ne!(bad.code, 0);
        assert!(
            bad.stdout
                .contains("cannot read kernel /nonexistent/vmlinuz")
                || bad
                    .stderr
                    .contains("cannot read kernel /nonexistent/vmlinuz"),
            "{}\n{}",
            bad.stdout,
            bad.stderr
        );
    });
}

#[test]
fn launch_of_an_unknown_device_exits_4() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        assert_eq!(ctl(&d, &["launch", U1, "--payload", "pci-probe"]).code, 4);
    });
}

#[test]
fn errors_under_json_are_also_json_on_stdout() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let r = ctl(&d, &["--json", "create", "X"]);
        assert_eq!(r.code, 4);
        let j = r.json();
        assert_eq!(j["error"]["name"], "org.vgpud1.Error.NotFound");
        assert_eq!(j["error"]["exit_code"], 4);
        assert!(j["error"]["message"].as_str().unwrap().contains("\"X\""));
    });
}

// --- monitor ---------------------------------------------------------------------------------

/// Starts `vgpuctl monitor`, waits until it listens, runs `act`, and returns the lines it
/// printed until `done` says enough.
fn monitor(
    d: &Daemon,
    json: bool,
    act: impl FnOnce(),
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut args = vec!["--address", d.address.as_str(), "monitor"];
    if json {
        args.push("--json");
    }
    let mut child = Command::new(VGPUCTL)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("monitor starts");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut ready = String::new();
    err.read_line(&mut ready).expect("monitor says it listens");
    assert!(ready.contains("monitoring vgpud"), "{ready}");
    let (tx, rx) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    act();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&lines) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("interrupts the monitor");
    let status = child.wait().expect("monitor ends");
    assert_eq!(status.code(), Some(0), "Ctrl-C ends the monitor cleanly");
    let _ = std::io::stdout().flush();
    lines
}

#[test]
fn monitor_prints_json_lines_for_added_changed_and_removed() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let lines = monitor(
            &d,
            true,
            || {
                ctl(&d, &["create", "mtty-1", "--uuid", U1]).ok();
                ctl(&d, &["remove", U1]).ok();
            },
            |lines| {
                lines
                    .iter()
                    .any(|l| l.contains("\"removed\"") && l.contains(U1))
                    && lines
                        .iter()
                        .any(|l| l.contains("\"changed\"") && l.contains("\"type\""))
            },
        );
        let events: Vec<Json> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let added = events
            .iter()
            .find(|e| e["event"] == "added" && e["id"] == U1)
            .unwrap_or_else(|| panic!("no added event in {lines:?}"));
        assert_eq!(added["kind"], "device");
        assert_eq!(added["interfaces"]["org.vgpud1.Device"]["TypeId"], "mtty-1");
        let changed = events
            .iter()
            .find(|e| e["event"] == "changed" && e["kind"] == "type")
            .unwrap_or_else(|| panic!("no changed event in {lines:?}"));
        has_keys(
            changed,
            &["path", "id", "interface", "changed", "invalidated"],
        );
        let removed = events
            .iter()
            .find(|e| e["event"] == "removed")
            .expect("removed");
        assert_eq!(
            removed["interfaces"],
            serde_json::json!(["org.vgpud1.Device"])
        );
    });
}

#[test]
fn monitor_prints_one_line_per_event_for_people() {
    with_timeout(LIMIT, || {
        let d = Daemon::start(&["mtty"]);
        let lines = monitor(
            &d,
            false,
            || {
                ctl(&d, &["create", "mtty-1", "--uuid", U1]).ok();
            },
            |lines| {
                lines.contains(&format!("added device {U1}"))
                    && lines
                        .iter()
                        .any(|l| l.starts_with("changed type mtty/mtty-1 AvailableInstances="))
            },
        );
        assert!(lines.contains(&format!("added device {U1}")), "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("changed type mtty/mtty-1 AvailableInstances=")),
            "{lines:?}"
        );
    });
}

// --- offline commands ------------------------------------------------------------------------

#[test]
fn policy_check_prints_file_line_column() {
    with_timeout(LIMIT, || {
        let dir = tempfile::tempdir().expect("temp dir");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[placement]\nstrategy = \"sideways\"\n").expect("writes");
        let bad = bad.to_str().expect("utf-8 path");
        let r = vgpuctl(&["policy", "check", bad]);
        assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
        assert!(r.stdout.starts_with(&format!("{bad}:2:")), "{}", r.stdout);
        let j = vgpuctl(&["--json", "policy", "check", bad]).json();
        assert_eq!(j["valid"], false);
        has_keys(&j["diagnostics"][0], &["file", "line", "column", "message"]);
        assert_eq!(j["diagnostics"][0]["line"], 2);

        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/default.toml");
        let r = vgpuctl(&["policy", "check", shipped]).ok();
        assert!(r.stdout.starts_with("policy is valid"), "{}", r.stdout);
    });
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    with_timeout(LIMIT, || {
        for shell in ["bash", "zsh", "fish"] {
            let r = vgpuctl(&["completions", shell]).ok();
            assert!(r.stdout.contains("libvirt-hook"), "{shell}: {}", r.stdout);
        }
        let man = vgpuctl(&["man"]).ok().stdout;
        assert!(
            man.starts_with(".ie") || man.contains(".TH vgpuctl 1"),
            "{man}"
        );
        assert!(man.contains(".SH EXIT CODES"));
        let help = vgpuctl(&["--help"]).ok().stdout;
        assert!(
            help.contains("EXIT CODES") && help.contains("JSON OUTPUT"),
            "{help}"
        );
    });
}
