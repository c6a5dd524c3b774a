//! vgpud-vmm on the real /dev/kvm: the pci-probe payload against emulated vGPU descriptions
//! taken from the simulator's profiles, and SIGTERM on a guest that never ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vgpud::sim::profile;

fn kvm_missing() -> bool {
    if Path::new("/dev/kvm").exists() {
        return false;
    }
    eprintln!("skipping: /dev/kvm does not exist on this machine");
    true
}

/// Writes the `[device.guest]` of a built-in profile as the JSON `--device emulated:` takes.
fn description(dir: &Path, profile_name: &str) -> PathBuf {
    let templates = profile::builtin(profile_name).expect("built-in profile");
    let guest = &templates[0].guest;
    let path = dir.join(format!("{profile_name}.json"));
    std::fs::write(&path, serde_json::to_vec(guest).unwrap()).unwrap();
    path
}

fn run_probe(profile_name: &str) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let desc = description(dir.path(), profile_name);
    let log = dir.path().join("serial.log");
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args([
            "--memory-mib",
            "64",
            "--vcpus",
            "1",
            "--payload",
            "pci-probe",
        ])
        .arg("--device")
        .arg(format!("emulated:{}", desc.display()))
        .arg("--serial-log")
        .arg(&log)
        .output()
        .unwrap();
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    (out, serial)
}

fn assert_line(serial: &str, line: &str) {
    assert!(
        serial.lines().any(|l| l.trim_end() == line),
        "serial log lacks {line:?}:\n{serial}"
    );
}

#[test]
fn pci_probe_finds_emulated_t4_and_gets_its_interrupt() {
    if kvm_missing() {
        return;
    }
    let (out, serial) = run_probe("nvidia-t4");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("emulated (no VFIO)"), "{stdout}");
    assert_line(
        &serial,
        "vgpud-vmm: device: 00:01.0 10de:1eb8 emulated (no VFIO)",
    );
    assert_line(&serial, "00:00.0 8086:1237 class 060000");
    assert_line(&serial, "00:01.0 10de:1eb8 class 030200");
    // Sizes as in nvidia-t4.toml: 16 MiB, 256 MiB (64-bit, prefetchable), 32 MiB (64-bit, prefetchable).
    assert_line(&serial, "  bar0 mem32 addr=d2000000 size=01000000");
    assert_line(&serial, "  bar1 mem64 prefetch addr=c0000000 size=10000000");
    assert_line(&serial, "  bar3 mem64 prefetch addr=d0000000 size=02000000");
    assert_line(&serial, "bar0 moved to e0000000");
    assert_line(&serial, "scratch wrote 5aa5c33c read 5aa5c33c ok");
    assert_line(&serial, "irq count=1");
    assert_line(&serial, "pci-probe: done");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pci_probe_handles_mtty_io_bars() {
    if kvm_missing() {
        return;
    }
    let (out, serial) = run_probe("mtty");
    assert_line(&serial, "00:01.0 4348:3253 class 070002");
    assert_line(&serial, "  bar0 io addr=0000c000 size=00000008");
    assert_line(&serial, "  bar1 io addr=0000c008 size=00000008");
    assert_line(&serial, "bar0 moved to 0000d000");
    assert_line(&serial, "scratch wrote 5aa5c33c read 5aa5c33c ok");
    assert_line(&serial, "irq count=1");
    assert_eq!(out.status.code(), Some(0), "serial:\n{serial}");
}

#[test]
fn sigterm_stops_a_guest_that_loops_forever() {
    if kvm_missing() {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--payload", "loop", "--vcpus", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the loop guest ended by itself"
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("vgpud-vmm did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(143));
}

#[test]
fn halt_with_interrupts_disabled_ends_the_guest() {
    if kvm_missing() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--payload", "halt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Halted"));
}

#[test]
fn kernel_boot_is_reported_as_not_implemented() {
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--kernel", "/nonexistent/bzImage"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not implemented in this build"));
}

#[test]
fn vfio_device_without_vfio_fails_clearly() {
    if kvm_missing() || Path::new("/dev/vfio/vfio").exists() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args([
            "--payload",
            "pci-probe",
            "--device",
            "vfio:/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VFIO is not available"));
}
