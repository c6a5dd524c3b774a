//! The libvirt tier, node devices: Debian's real libvirtd 9.0 beside vgpud over vgpud-sim
//! (tests/common/libvirt.rs) lists every simulated parent and type with the simulator's
//! counts; definitions made with vgpuctl are libvirt node devices; ones made with `virsh
//! nodedev-define` are on vgpud's D-Bus within a second; `nodedev-start`, `nodedev-destroy` and
//! `nodedev-undefine` (libvirt runs Debian's mdevctl for them) are seen by vgpud.

#[path = "common/libvirt.rs"]
mod libvirt;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libvirt::Rig;
use vgpud_api::proxies::ManagerProxy;

const T4: &str = "0000:20:00.0";
const U1: &str = "5a1e0000-0000-4000-8000-0000000000b1";
const U2: &str = "5a1e0000-0000-4000-8000-0000000000b2";
/// How long libvirt may take to notice a change (its udev monitor and mdevctl runs).
const LIBVIRT_SEES: Duration = Duration::from_secs(10);

/// `virsh nodedev-list ARGS` as a sorted list of names.
fn nodedevs(rig: &Rig, args: &[&str]) -> Vec<String> {
    let mut all = vec!["nodedev-list"];
    all.extend_from_slice(args);
    let mut v: Vec<String> = rig
        .virsh_ok(&all)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// (type id, name, availableInstances) of every type in a parent's `nodedev-dumpxml`.
fn libvirt_types(rig: &Rig, parent: &str) -> Vec<(String, String, u64)> {
    let name = format!("pci_{}", parent.replace([':', '.'], "_"));
    let xml = rig.virsh_ok(&["nodedev-dumpxml", &name]);
    let doc = roxmltree::Document::parse(&xml).expect("libvirt's XML parses");
    let mut v: Vec<(String, String, u64)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("type") && n.attribute("id").is_some())
        .filter(|n| {
            n.parent()
                .is_some_and(|p| p.attribute("type") == Some("mdev_types"))
        })
        .map(|n| {
            let child = |tag: &str| {
                n.children()
                    .find(|c| c.has_tag_name(tag))
                    .and_then(|c| c.text())
                    .unwrap_or_default()
                    .to_owned()
            };
            let available = child("availableInstances").parse().expect("a count");
            (
                n.attribute("id").unwrap_or_default().to_owned(),
                child("name"),
                available,
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn nodedev_list_shows_every_simulated_parent() {
    let rig = Rig::start(&["nvidia-t4:2", "nvidia-a100"]);
    let want: Vec<String> = rig
        .sim_parents()
        .iter()
        .map(|p| format!("pci_{}", p.replace([':', '.'], "_")))
        .collect();
    // Two T4s and the A100's 16 VFs; the A100's PF has no types of its own.
    assert_eq!(want.len(), 18);
    assert_eq!(nodedevs(&rig, &["--cap", "mdev_types"]), want);
}

#[test]
fn nodedev_dumpxml_shows_every_type_with_the_simulator_counts() {
    let rig = Rig::start(&["nvidia-t4:2", "nvidia-a100"]);
    let mut compared = 0;
    for parent in rig.sim_parents() {
        let sim = rig.sim_types(&parent);
        assert!(!sim.is_empty(), "{parent} has types");
        assert_eq!(libvirt_types(&rig, &parent), sim, "types of {parent}");
        compared += sim.len();
    }
    // 2 T4s x 17 types and 16 A100 VFs x 11 types.
    assert_eq!(compared, 2 * 17 + 16 * 11);
}

#[test]
fn counts_libvirt_shows_follow_a_device_vgpud_creates() {
    let rig = Rig::start(&["nvidia-t4"]);
    rig.vgpuctl_ok(&["create", "GRID T4-4Q", "--parent", T4, "--uuid", U1]);
    // A T4 runs one type at a time: every other type now reads 0, and T4-4Q one less.
    let sim = rig.sim_types(T4);
    assert_eq!(sim.iter().filter(|t| t.2 > 0).count(), 1, "{sim:?}");
    assert_eq!(libvirt_types(&rig, T4), sim);
}

#[test]
fn a_device_vgpuctl_creates_is_a_live_libvirt_node_device() {
    let rig = Rig::start(&["nvidia-t4"]);
    // libvirt names an mdev's parent only once it has enumerated that PCI device; a device
    // added before then is filed under "computer" (seen in CI).
    let parent_known = rig.eventually(LIBVIRT_SEES, || {
        nodedevs(&rig, &["--cap", "mdev_types"]).contains(&"pci_0000_20_00_0".to_owned())
    });
    assert!(parent_known, "libvirt never listed the T4:\n{}", rig.logs());
    rig.vgpuctl_ok(&["create", "GRID T4-2Q", "--parent", T4, "--uuid", U1]);
    let name = Rig::mdev_name(U1, T4);
    // libvirt learns of it from the uevents the simulator broadcasts in the rig's namespace.
    let seen = rig.eventually(LIBVIRT_SEES, || {
        nodedevs(&rig, &["--cap", "mdev"]).contains(&name)
    });
    assert!(seen, "{name} not listed by libvirt:\n{}", rig.logs());
    let xml = rig.virsh_ok(&["nodedev-dumpxml", &name]);
    assert!(xml.contains("<type id='nvidia-231'/>"), "{xml}");
    assert!(xml.contains(&format!("<uuid>{U1}</uuid>")), "{xml}");
    assert!(xml.contains("<parent>pci_0000_20_00_0</parent>"), "{xml}");
}

#[test]
fn a_definition_vgpuctl_makes_is_an_inactive_libvirt_node_device() {
    let rig = Rig::start(&["nvidia-t4"]);
    rig.vgpuctl_ok(&["define", "nvidia-231", "--parent", T4, "--uuid", U1]);
    let name = Rig::mdev_name(U1, T4);
    // libvirt watches /etc/mdevctl.d and asks mdevctl for the defined devices.
    let seen = rig.eventually(LIBVIRT_SEES, || {
        nodedevs(&rig, &["--cap", "mdev", "--inactive"]).contains(&name)
    });
    assert!(seen, "{name} not listed by libvirt:\n{}", rig.logs());
    assert!(
        !nodedevs(&rig, &["--cap", "mdev"]).contains(&name),
        "not active"
    );
}

#[test]
fn a_definition_virsh_nodedev_define_makes_is_on_vgpud_s_bus_within_a_second() {
    let rig = Rig::start(&["nvidia-t4"]);
    let file = rig.nodedev_xml(T4, "nvidia-231", U1);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let took = rt.block_on(async {
        let conn = rig.conn().await;
        let m = ManagerProxy::new(&conn).await.expect("manager proxy");
        assert!(m.get_device(U1).await.is_err(), "not defined yet");
        rig.virsh_ok(&["nodedev-define", &file]);
        let defined = Instant::now();
        while m.get_device(U1).await.is_err() {
            assert!(
                defined.elapsed() < Duration::from_secs(10),
                "the definition libvirt wrote never reached vgpud:\n{}",
                rig.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        defined.elapsed()
    });
    println!("virsh nodedev-define -> on vgpud's D-Bus: {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let d = rig.vgpud_device(U1).expect("listed by vgpuctl");
    assert_eq!(d["persistent"], true);
    assert_eq!(d["active"], false);
    assert_eq!(d["type_id"], "nvidia-231");
}

#[test]
fn nodedev_start_destroy_and_undefine_are_seen_by_vgpud() {
    let rig = Rig::start(&["nvidia-t4"]);
    let file = rig.nodedev_xml(T4, "nvidia-231", U2);
    rig.virsh_ok(&["nodedev-define", &file]);
    let name = Rig::mdev_name(U2, T4);
    let state = |rig: &Rig| {
        rig.vgpud_device(U2)
            .map(|d| (d["active"] == true, d["persistent"] == true))
    };
    let wait = |want: Option<(bool, bool)>, what: &str| {
        let ok = rig.eventually(Duration::from_secs(5), || state(&rig) == want);
        assert!(
            ok,
            "after {what}: vgpud shows {:?}\n{}",
            state(&rig),
            rig.logs()
        );
    };
    wait(Some((false, true)), "nodedev-define");
    rig.virsh_ok(&["nodedev-start", &name]);
    assert_eq!(rig.sim_devices(), vec![U2.to_owned()], "mdevctl started it");
    wait(Some((true, true)), "nodedev-start");
    rig.virsh_ok(&["nodedev-destroy", &name]);
    assert!(rig.sim_devices().is_empty(), "mdevctl stopped it");
    wait(Some((false, true)), "nodedev-destroy");
    rig.virsh_ok(&["nodedev-undefine", &name]);
    wait(None, "nodedev-undefine");
}

#[test]
fn what_vgpud_and_libvirt_list_agree_after_both_made_devices() {
    let rig = Rig::start(&["nvidia-t4:2"]);
    rig.vgpuctl_ok(&["create", "GRID T4-2Q", "--parent", T4, "--uuid", U1]);
    let file = rig.nodedev_xml("0000:21:00.0", "nvidia-232", U2);
    rig.virsh_ok(&["nodedev-define", &file]);
    rig.virsh_ok(&["nodedev-start", &Rig::mdev_name(U2, "0000:21:00.0")]);
    let libvirt_view = || -> BTreeMap<String, bool> {
        let active = nodedevs(&rig, &["--cap", "mdev"]);
        let all = nodedevs(&rig, &["--cap", "mdev", "--all"]);
        all.into_iter()
            .map(|n| (n.clone(), active.contains(&n)))
            .collect()
    };
    let want: BTreeMap<String, bool> = [
        (Rig::mdev_name(U1, T4), true),
        (Rig::mdev_name(U2, "0000:21:00.0"), true),
    ]
    .into_iter()
    .collect();
    let agreed = rig.eventually(LIBVIRT_SEES, || libvirt_view() == want);
    assert!(agreed, "libvirt lists {:?}", libvirt_view());
    for u in [U1, U2] {
        let d = rig.vgpud_device(u).expect("vgpud lists it");
        assert_eq!(d["active"], true, "{u}");
    }
}
