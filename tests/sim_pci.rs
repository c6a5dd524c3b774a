//! The simulator's PCI view as tools read it: `config` and `resource` of every function agree
//! with the profile and with each other, and pciutils' `lspci` pointed at the simulated tree
//! (`-A linux-sysfs -O sysfs.path=DIR/bus/pci`) lists the GPUs as on a real host. The uevent
//! broadcast on NETLINK_KOBJECT_UEVENT reaches `udevadm monitor` in a private network namespace.

#[path = "common/sim.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::Sim;

const T4: &str = "0000:20:00.0";
const A100: &str = "0000:20:00.0";

fn config(sim: &Sim, function: &str) -> Vec<u8> {
    std::fs::read(sim.path(&format!("bus/pci/devices/{function}/config"))).expect("config reads")
}

fn u16_at(c: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([c[at], c[at + 1]])
}

fn u32_at(c: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([c[at], c[at + 1], c[at + 2], c[at + 3]])
}

/// `lspci` on the simulated tree; panics if pciutils is missing or fails.
fn lspci(root: &Path, args: &[&str]) -> String {
    let out = Command::new("lspci")
        .args(["-A", "linux-sysfs", "-O"])
        .arg(format!("sysfs.path={}", root.join("bus/pci").display()))
        .args(args)
        .output()
        .expect("lspci runs (scripts/install-deps installs pciutils)");
    assert!(
        out.status.success(),
        "lspci {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The capability ids in the standard list, in order.
fn capabilities(c: &[u8]) -> Vec<u8> {
    let mut ids = Vec::new();
    let mut at = usize::from(c[0x34]);
    while at != 0 && ids.len() < 48 {
        ids.push(c[at]);
        at = usize::from(c[at + 1]);
    }
    ids
}

#[test]
fn a_t4_config_space_has_its_ids_class_and_capabilities() {
    let sim = Sim::start(&["nvidia-t4"]);
    let c = config(&sim, T4);
    assert_eq!(c.len(), 4096, "a PCI Express function has 4096 bytes");
    assert_eq!((u16_at(&c, 0), u16_at(&c, 2)), (0x10de, 0x1eb8));
    assert_eq!(u32_at(&c, 8) >> 8, 0x030200, "class");
    assert_eq!((u16_at(&c, 0x2c), u16_at(&c, 0x2e)), (0x10de, 0x12a2));
    assert_ne!(u16_at(&c, 6) & 0x10, 0, "the capability list bit");
    assert_eq!(capabilities(&c), vec![0x01, 0x05, 0x10, 0x11]);
}

#[test]
fn a_conventional_pci_function_has_256_bytes_and_no_express_capability() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("t4-pci.toml");
    let t4 = include_str!("../crates/sim/src/profiles/nvidia-t4.toml").replace(
        "profile = \"nvidia-t4\"",
        "profile = \"t4-pci\"\npcie = false",
    );
    std::fs::write(&file, t4).expect("write the profile");
    let sim = Sim::start_with(&[], &[file]);
    let c = config(&sim, T4);
    assert_eq!(c.len(), 256);
    assert_eq!(
        capabilities(&c),
        vec![0x01, 0x05, 0x11],
        "PM, MSI, MSI-X; no PCIe"
    );
}

#[test]
fn config_bars_are_where_resource_says() {
    let sim = Sim::start(&["nvidia-t4"]);
    let c = config(&sim, T4);
    let resource = std::fs::read_to_string(sim.path(&format!("bus/pci/devices/{T4}/resource")))
        .expect("resource reads");
    let lines: Vec<Vec<u64>> = resource
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).unwrap())
                .collect()
        })
        .collect();
    assert_eq!(lines.len(), 13);
    // BAR0: 32-bit memory; BAR1 and BAR3: 64-bit prefetchable (each taking two registers).
    let bar = |i: usize| u64::from(u32_at(&c, 0x10 + 4 * i));
    assert_eq!(bar(0) & !0xf, lines[0][0]);
    assert_eq!(lines[0][1] - lines[0][0] + 1, 16 << 20);
    assert_eq!((bar(1) & !0xf) | (bar(2) << 32), lines[1][0]);
    assert_eq!(bar(1) & 0xf, 0xc, "64-bit prefetchable");
    assert_eq!(lines[1][1] - lines[1][0] + 1, 256 << 20);
    assert_eq!((bar(3) & !0xf) | (bar(4) << 32), lines[3][0]);
    assert_eq!(lines[2], vec![0, 0, 0], "the upper half of BAR1");
}

#[test]
fn an_a100_pf_has_sr_iov_and_its_vfs_read_as_vfs() {
    let sim = Sim::start(&["nvidia-a100"]);
    let c = config(&sim, A100);
    assert_eq!(u16_at(&c, 0x100), 0x0010, "SR-IOV at 0x100");
    let (total, num) = (u16_at(&c, 0x10e), u16_at(&c, 0x110));
    assert_eq!((total, num), (16, 16));
    let (offset, stride) = (u16_at(&c, 0x114), u16_at(&c, 0x116));
    // The first VF's routing id is the PF's plus the offset: 20:00.0 + 4 = 20:00.4.
    assert_eq!((offset, stride), (4, 1));
    assert!(sim.path("bus/pci/devices/0000:20:00.4/physfn").exists());
    let vf = config(&sim, "0000:20:00.4");
    assert_eq!((u16_at(&vf, 0), u16_at(&vf, 2)), (0xffff, 0xffff));
    assert_eq!(u32_at(&vf, 0x10), 0, "a VF's BARs read 0");
    let vf_device = std::fs::read_to_string(sim.path("bus/pci/devices/0000:20:00.4/device"))
        .expect("device reads");
    assert_eq!(
        vf_device.trim(),
        format!("0x{:04x}", u16_at(&c, 0x11a)),
        "the VF device id in the PF's capability is the VF's"
    );
}

#[test]
fn lspci_lists_every_simulated_gpu() {
    let sim = Sim::start(&["nvidia-t4:2", "nvidia-a100", "mtty"]);
    let text = lspci(sim.root(), &["-n"]);
    let lines: Vec<&str> = text.lines().collect();
    // Two T4s, the A100 and its 16 VFs; mtty is not a PCI device.
    assert_eq!(lines.len(), 19, "{text}");
    assert!(
        lines[0].starts_with("20:00.0 0302: 10de:1eb8 (rev a1)"),
        "{text}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("10de:20f1")).count(),
        17,
        "{text}"
    );
}

#[test]
fn lspci_verbose_shows_the_bars_capabilities_and_driver() {
    let sim = Sim::start(&["nvidia-a100"]);
    let pf = lspci(sim.root(), &["-vvv", "-s", "20:00.0"]);
    for want in [
        "Region 0: Memory at",
        "(64-bit, prefetchable) [size=4G]",
        "Express (v2) Endpoint",
        "MSI-X: Enable- Count=6",
        "Single Root I/O Virtualization (SR-IOV)",
        "Total VFs: 16, Number of VFs: 16",
        "Kernel driver in use: nvidia",
    ] {
        assert!(pf.contains(want), "{want:?} missing from:\n{pf}");
    }
    let vf = lspci(sim.root(), &["-v", "-s", "20:00.4"]);
    assert!(vf.contains("[virtual] [size=4G]"), "{vf}");
}

#[test]
fn netlink_broadcast_reaches_udevadm_monitor_in_a_private_network_namespace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("sys");
    let out = dir.path().join("monitor.txt");
    let uuid = "3f2d4c1b-0a9e-4d8c-b7f6-e5d4c3b2a190";
    // One shell in its own network namespace: the simulator broadcasts there, udevadm listens
    // there (filtered by subsystem, so the header's subsystem hash is checked too).
    let script = format!(
        r#"
set -u
{sim} {root} -p mtty --netlink-uevents & SIM=$!
trap 'kill $MON $SIM 2>/dev/null; wait' EXIT
for i in $(seq 100); do [ -e {root}/class/mdev_bus/mtty ] && break; sleep 0.05; done
SYSTEMD_DEVICE_VERIFY_SYSFS=0 udevadm monitor --udev --property --subsystem-match=mdev > {out} & MON=$!
sleep 0.5
echo {uuid} > {root}/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create
echo 1 > {root}/bus/mdev/devices/{uuid}/remove
sleep 0.5
"#,
        sim = env!("CARGO_BIN_EXE_vgpud-sim"),
        root = root.display(),
        out = out.display(),
    );
    let status = Command::new("unshare")
        .args(["-n", "--", "bash", "-c", &script])
        .stdin(Stdio::null())
        .status()
        .expect("unshare runs");
    assert!(status.success(), "the script failed: {status}");
    let seen = std::fs::read_to_string(&out).expect("udevadm wrote its output");
    for action in ["add", "bind", "unbind", "remove"] {
        let block = seen
            .split("\n\n")
            .find(|b| b.contains(&format!("ACTION={action}\n")) && b.contains(uuid));
        assert!(block.is_some(), "no {action} of {uuid} in:\n{seen}");
    }
    assert!(seen.contains("SUBSYSTEM=mdev"), "{seen}");
}
