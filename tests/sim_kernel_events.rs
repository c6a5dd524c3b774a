//! The simulator against KERNEL-ABI.md §1 and §2, continued: uevents in the kernel's order for
//! every create, remove, bind, unbind, plug and unplug, and fault injection. One case per test,
//! each on its own simulator. (The errno of every `create`/`remove` case, pools, NVIDIA's rules
//! and blocking removes are in sim_kernel_abi.rs.)

#[path = "common/sim.rs"]
mod sim_fixture;

use std::time::{Duration, Instant};

use libc::{EIO, ENOSPC, EUSERS};
use sim_fixture::*;
use vgpud_sim::control::Request;

const GPU0: &str = "0000:20:00.0";

fn uuid_line(uuid: &str) -> Vec<u8> {
    format!("{uuid}\n").into_bytes()
}

// ---- uevents ----------------------------------------------------------------------------------------

#[test]
fn create_sends_add_then_bind_with_the_driver() {
    let sim = Sim::start(&["mtty"]);
    let events = sim.subscribe();
    let uuid = sim.created("mtty", "mtty-1");
    let got = events.take(3);
    // The vendor driver's probe registers the VFIO device (vfio-dev/vfioN) before `bind`.
    assert_eq!(
        summaries(&got),
        ["add mdev", "add vfio-dev", "bind mdev DRIVER=mtty"]
    );
    let devpath = format!("/devices/virtual/mtty/mtty/{uuid}");
    assert_eq!(got[0].devpath, devpath);
    assert_eq!(got[1].devpath, format!("{devpath}/vfio-dev/vfio0"));
    assert_eq!(got[2].devpath, devpath);
    assert_eq!(events.within(Duration::from_millis(100)), None);
}

#[test]
fn remove_sends_unbind_then_remove() {
    let sim = Sim::start(&["nvidia-t4"]);
    let uuid = sim.created(GPU0, "nvidia-231");
    let events = sim.subscribe();
    sim.remove_raw(&uuid, b"1").unwrap();
    let got = events.take(3);
    assert_eq!(
        summaries(&got),
        ["remove vfio-dev", "unbind mdev", "remove mdev"]
    );
    assert_eq!(got[1].devpath, format!("/devices/pci0000:20/{GPU0}/{uuid}"));
}

#[test]
fn driver_unbind_removes_devices_then_unregisters_then_unbinds() {
    let sim = Sim::start(&["nvidia-t4"]);
    let a = sim.created(GPU0, "nvidia-231");
    let b = sim.created(GPU0, "nvidia-231");
    let events = sim.subscribe();
    write_attr(&sim.path("bus/pci/drivers/nvidia/unbind"), GPU0.as_bytes()).unwrap();
    let got = events.take(8);
    assert_eq!(
        summaries(&got),
        [
            "remove vfio-dev",
            "unbind mdev",
            "remove mdev",
            "remove vfio-dev",
            "unbind mdev",
            "remove mdev",
            "change pci MDEV_STATE=unregistered",
            "unbind pci"
        ]
    );
    let mut removed = vec![got[1].sysname().to_owned(), got[4].sysname().to_owned()];
    removed.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(removed, want);
    assert_eq!(got[7].devpath, format!("/devices/pci0000:20/{GPU0}"));
}

#[test]
fn driver_bind_registers_then_binds() {
    let sim = Sim::start(&["nvidia-t4"]);
    write_attr(&sim.path("bus/pci/drivers/nvidia/unbind"), GPU0.as_bytes()).unwrap();
    let events = sim.subscribe();
    write_attr(&sim.path("bus/pci/drivers/nvidia/bind"), GPU0.as_bytes()).unwrap();
    let got = events.take(2);
    assert_eq!(
        summaries(&got),
        ["change pci MDEV_STATE=registered", "bind pci DRIVER=nvidia"]
    );
    assert_eq!(sim.parents(), [GPU0]);
}

#[test]
fn hot_plug_sends_add_then_registered_then_bind() {
    let sim = Sim::start(&["mtty"]);
    let events = sim.subscribe();
    sim.ctl(Request::Plug {
        profile: Some("nvidia-t4".into()),
        parent: None,
    });
    let got = events.take(3);
    assert_eq!(
        summaries(&got),
        [
            "add pci",
            "change pci MDEV_STATE=registered",
            "bind pci DRIVER=nvidia"
        ]
    );
    assert_eq!(got[0].prop("PCI_ID"), Some("10DE:1EB8"));
    assert_eq!(sim.parents(), [GPU0, "mtty"]);
}

#[test]
fn a_core_counter_refusal_sends_nothing() {
    let sim = Sim::start(&["mdpy"]);
    sim.fill("mdpy", "mdpy-vga", 4);
    let events = sim.subscribe();
    let r = sim.create_raw("mdpy", "mdpy-vga", &uuid_line(&new_uuid()));
    assert_eq!(r, Err(WriteErr::Write(EUSERS)));
    assert_eq!(events.within(Duration::from_millis(200)), None);
}

#[test]
fn a_vendor_refusal_sends_add_then_remove() {
    let sim = Sim::start(&["mtty"]);
    sim.fill("mtty", "mtty-1", 24);
    let events = sim.subscribe();
    let uuid = new_uuid();
    let r = sim.create_raw("mtty", "mtty-1", &uuid_line(&uuid));
    assert_eq!(r, Err(WriteErr::Write(ENOSPC)));
    // device_add() announced the device before the driver's probe refused it.
    let got = events.take(2);
    assert_eq!(summaries(&got), ["add mdev", "remove mdev"]);
    assert_eq!(got[0].sysname(), uuid);
}

#[test]
fn a_create_refused_before_device_add_sends_nothing() {
    let sim = Sim::start(&["mtty"]);
    let taken = sim.created("mtty", "mtty-1");
    let events = sim.subscribe();
    assert!(sim.create_raw("mtty", "mtty-1", b"not-a-uuid").is_err());
    assert!(sim
        .create_raw("mtty", "mtty-1", &uuid_line(&taken))
        .is_err());
    let next = sim.created("mtty", "mtty-1");
    assert_eq!(
        events.next().sysname(),
        next,
        "the first event is the good create's"
    );
}

#[test]
fn seqnums_strictly_increase() {
    let sim = Sim::start(&["nvidia-t4"]);
    let events = sim.subscribe();
    let uuid = sim.created(GPU0, "nvidia-231");
    sim.remove_raw(&uuid, b"1").unwrap();
    sim.ctl(Request::Unbind {
        parent: GPU0.into(),
    });
    sim.ctl(Request::Bind {
        parent: GPU0.into(),
    });
    let got = events.take(8);
    for pair in got.windows(2) {
        assert!(
            pair[1].seqnum > pair[0].seqnum,
            "{} then {}",
            pair[0].seqnum,
            pair[1].seqnum
        );
    }
    assert!(got[0].seqnum > 0);
}

#[test]
fn two_subscribers_both_get_every_event() {
    let sim = Sim::start(&["mtty"]);
    let first = sim.subscribe();
    let second = sim.subscribe();
    let a = sim.created("mtty", "mtty-1");
    sim.created("mtty", "mtty-2");
    sim.remove_raw(&a, b"1").unwrap();
    let one = first.take(9);
    let two = second.take(9);
    assert_eq!(one, two);
    assert_eq!(
        summaries(&one),
        [
            "add mdev",
            "add vfio-dev",
            "bind mdev DRIVER=mtty",
            "add mdev",
            "add vfio-dev",
            "bind mdev DRIVER=mtty",
            "remove vfio-dev",
            "unbind mdev",
            "remove mdev"
        ]
    );
}

#[test]
fn a_subscriber_gets_events_from_the_moment_connect_returns() {
    let sim = Sim::start(&["mtty"]);
    // Like a netlink bind: nothing in between may be lost, however fast the first event comes.
    for _ in 0..50 {
        let events = sim.subscribe();
        let uuid = sim.created("mtty", "mtty-1");
        assert_eq!(events.next().sysname(), uuid);
        sim.remove_raw(&uuid, b"1").unwrap();
    }
}

// ---- fault injection --------------------------------------------------------------------------------

#[test]
fn an_injected_errno_fails_exactly_the_next_write() {
    let sim = Sim::start(&["mtty"]);
    sim.inject_errno(MTTY_1_CREATE, "EIO");
    assert_eq!(sim.create("mtty", "mtty-1"), Err(WriteErr::Write(EIO)));
    assert!(sim.devices().is_empty(), "the failed write created nothing");
    sim.created("mtty", "mtty-1");
}

#[test]
fn an_injected_errno_applies_to_its_path_only() {
    let sim = Sim::start(&["mtty"]);
    sim.inject_errno(MTTY_1_CREATE, "EIO");
    sim.created("mtty", "mtty-2");
    assert_eq!(sim.create("mtty", "mtty-1"), Err(WriteErr::Write(EIO)));
}

#[test]
fn an_injected_delay_slows_the_write_but_not_readers() {
    let sim = Sim::start(&["mtty"]);
    let delay = Duration::from_millis(1000);
    sim.ctl(Request::Inject {
        path: MTTY_1_CREATE.into(),
        errno: None,
        delay_ms: Some(delay.as_millis() as u64),
        count: None,
    });
    let pending = PendingWrite::spawn(
        sim.type_dir("mtty", "mtty-1").join("create"),
        uuid_line(&new_uuid()),
    );
    assert!(pending.still_pending_after(Duration::from_millis(50)));
    let started = Instant::now();
    assert_eq!(sim.available("mtty", "mtty-2"), 12);
    let read_took = started.elapsed();
    let (r, write_took) = pending.wait();
    assert_eq!(r, Ok(()));
    assert!(write_took >= delay, "the write took only {write_took:?}");
    assert!(
        read_took < delay / 2,
        "a read during the delayed write took {read_took:?}"
    );
    assert_eq!(sim.devices().len(), 1);
}
