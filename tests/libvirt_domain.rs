//! The libvirt tier, domains: `virsh start` under Debian's real libvirtd runs vgpud's hook
//! (tests/common/libvirt.rs). At `prepare begin` it creates a vGPU from the domain's metadata or
//! starts a definition (one vgpuctl made, or one libvirt made with `nodedev-define`); libvirt
//! then hands QEMU `sysfsdev=/sys/bus/mdev/devices/<uuid>`, and the start fails later because
//! this machine lets no process raise its locked-memory limit (no CAP_SYS_RESOURCE), so QEMU
//! never runs; libvirt then runs `release end`, which removes what prepare created and stops
//! what it started. A refusal (no capacity, an unknown type) reaches virsh's error text.

#[path = "common/libvirt.rs"]
mod libvirt;

use std::time::{Duration, Instant};

use libvirt::{Hostdev, Rig};
use vgpud_sim::feed::Subscriber;

const T4: &str = "0000:20:00.0";
const U1: &str = "c0ffee00-0000-4000-8000-0000000000d1";
const U2: &str = "c0ffee00-0000-4000-8000-0000000000d2";
/// Why every start fails here after the hook has run (see the module comment).
const NO_MEMLOCK: &str = "cannot limit locked memory";

/// The (action, subsystem) of the simulator's uevents about `uuid` within `limit`.
fn events_of(sub: &Subscriber, uuid: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match sub.next(left.min(Duration::from_millis(200))) {
            Ok(Some(e)) if e.devpath.ends_with(uuid) => seen.push(e.action.clone()),
            Ok(_) => {}
            Err(e) => panic!("the uevent feed failed: {e}"),
        }
    }
    seen
}

/// `virsh start NAME`, which must fail; its error text.
fn start_fails(rig: &Rig, name: &str) -> String {
    let out = rig.virsh(&["start", name]);
    assert!(
        !out.status.success(),
        "QEMU cannot run here; the start should fail"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The hook calls libvirt logged, as "op subop".
fn hook_calls(rig: &Rig) -> Vec<String> {
    let log = std::fs::read_to_string(rig.scratch().join("var.upper/log/libvirt/debug.log"))
        .expect("libvirtd's debug log");
    log.lines()
        .filter(|l| l.contains("Calling hook /etc/libvirt/hooks/qemu.d/vgpud"))
        .filter_map(|l| {
            let op = l.split(" op=").nth(1)?.split(' ').next()?;
            let sub = l.split(" subop=").nth(1)?.split(' ').next()?;
            Some(format!("{op} {sub}"))
        })
        .collect()
}

/// What QEMU was told: libvirt's record of the command line.
fn qemu_log(rig: &Rig, name: &str) -> String {
    let path = rig
        .scratch()
        .join(format!("var.upper/log/libvirt/qemu/{name}.log"));
    std::fs::read_to_string(&path).expect("libvirt's QEMU log")
}

fn hook_records(rig: &Rig) -> Vec<String> {
    match std::fs::read_dir(rig.path_inside("/run/vgpud/libvirt-hook")) {
        Ok(entries) => entries
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn start_runs_the_hook_which_creates_from_metadata_and_release_removes_it() {
    let rig = Rig::start(&["nvidia-t4"]);
    rig.define_domain(
        "vm1",
        &[Hostdev {
            uuid: U1,
            create_as: Some("GRID T4-2Q"),
        }],
    );
    let sub = rig.uevents();
    let error = start_fails(&rig, "vm1");
    assert!(error.contains(NO_MEMLOCK), "{error}\n{}", rig.logs());
    let events = events_of(&sub, U1, Duration::from_secs(2));
    assert_eq!(
        events.first().map(String::as_str),
        Some("add"),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("remove"),
        "{events:?}"
    );
    let qemu = qemu_log(&rig, "vm1");
    let sysfsdev = format!("\"sysfsdev\":\"/sys/bus/mdev/devices/{U1}\"");
    assert!(
        qemu.contains(&sysfsdev),
        "libvirt found the device:\n{qemu}"
    );
    assert_eq!(
        hook_calls(&rig),
        ["prepare begin", "start begin", "stopped end", "release end"]
    );
    assert!(rig.sim_devices().is_empty(), "release removed it");
    assert!(rig.vgpud_device(U1).is_none());
    assert!(hook_records(&rig).is_empty(), "{:?}", hook_records(&rig));
}

#[test]
fn start_starts_a_definition_libvirt_made_and_release_stops_it() {
    let rig = Rig::start(&["nvidia-t4"]);
    let file = rig.nodedev_xml(T4, "nvidia-231", U2);
    rig.virsh_ok(&["nodedev-define", &file]);
    let known = rig.eventually(Duration::from_secs(2), || rig.vgpud_device(U2).is_some());
    assert!(
        known,
        "vgpud never saw libvirt's definition:\n{}",
        rig.logs()
    );
    rig.define_domain(
        "vm2",
        &[Hostdev {
            uuid: U2,
            create_as: None,
        }],
    );
    let sub = rig.uevents();
    let error = start_fails(&rig, "vm2");
    assert!(error.contains(NO_MEMLOCK), "{error}\n{}", rig.logs());
    let events = events_of(&sub, U2, Duration::from_secs(2));
    assert_eq!(
        events.first().map(String::as_str),
        Some("add"),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("remove"),
        "{events:?}"
    );
    assert!(rig.sim_devices().is_empty(), "release stopped it");
    let d = rig.vgpud_device(U2).expect("the definition stays");
    assert_eq!(
        (d["active"].clone(), d["persistent"].clone()),
        (false.into(), true.into())
    );
    let inactive = rig.virsh_ok(&["nodedev-list", "--cap", "mdev", "--inactive"]);
    assert!(inactive.contains(&Rig::mdev_name(U2, T4)), "{inactive}");
}

#[test]
fn start_starts_a_definition_vgpuctl_made_and_release_stops_it() {
    let rig = Rig::start(&["nvidia-t4"]);
    rig.vgpuctl_ok(&["define", "nvidia-231", "--parent", T4, "--uuid", U2]);
    rig.define_domain(
        "vm3",
        &[Hostdev {
            uuid: U2,
            create_as: None,
        }],
    );
    let sub = rig.uevents();
    let error = start_fails(&rig, "vm3");
    assert!(error.contains(NO_MEMLOCK), "{error}\n{}", rig.logs());
    let events = events_of(&sub, U2, Duration::from_secs(2));
    assert_eq!(
        events.first().map(String::as_str),
        Some("add"),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("remove"),
        "{events:?}"
    );
    assert!(rig.sim_devices().is_empty(), "release stopped it");
    let d = rig.vgpud_device(U2).expect("the definition stays");
    assert_eq!(d["persistent"], true);
}

#[test]
fn a_full_gpu_is_refused_and_the_reason_reaches_virsh() {
    let rig = Rig::start(&["nvidia-t4"]);
    // The whole T4 for one vGPU: nothing else fits.
    rig.vgpuctl_ok(&["create", "GRID T4-16Q", "--parent", T4, "--uuid", U2]);
    rig.define_domain(
        "vm4",
        &[Hostdev {
            uuid: U1,
            create_as: Some("GRID T4-2Q"),
        }],
    );
    let error = start_fails(&rig, "vm4");
    assert!(
        !error.contains(NO_MEMLOCK),
        "the hook should have stopped it: {error}"
    );
    // libvirt's text: "... unexpected exit status 6: vgpuctl: domain vm4: cannot provide ...".
    assert!(
        error.contains("exit status 6"),
        "NoCapacity's exit code: {error}"
    );
    assert!(
        error.contains(&format!("vgpuctl: domain vm4: cannot provide vGPU {U1}")),
        "{error}"
    );
    // The refused prepare stopped the start before QEMU: no "start begin".
    assert_eq!(
        hook_calls(&rig),
        ["prepare begin", "stopped end", "release end"]
    );
    assert_eq!(
        rig.sim_devices(),
        vec![U2.to_owned()],
        "nothing else was made"
    );
}

#[test]
fn an_unknown_type_is_refused_and_the_reason_reaches_virsh() {
    let rig = Rig::start(&["nvidia-t4"]);
    rig.define_domain(
        "vm5",
        &[Hostdev {
            uuid: U1,
            create_as: Some("GRID T4-99Q"),
        }],
    );
    let error = start_fails(&rig, "vm5");
    assert!(
        !error.contains(NO_MEMLOCK),
        "the hook should have stopped it: {error}"
    );
    assert!(
        error.contains("exit status 4"),
        "NotFound's exit code: {error}"
    );
    assert!(error.contains("GRID T4-99Q"), "{error}");
    assert!(rig.sim_devices().is_empty());
}
