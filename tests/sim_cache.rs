//! The kernel's cache of the simulated tree is safe: what a create, remove, unbind or injected
//! fault changes reads as changed at once through the mount, even along names and attributes
//! the kernel had cached; and what never changes is answered by the kernel without a request.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use vgpud_sim::cache::RequestCounts;
use vgpud_sim::control::{Client, Request};
use vgpud_sim::{SimOptions, Simulator};

const GPU: &str = "0000:20:00.0";
const PF_DIR: &str = "devices/pci0000:20/0000:20:00.0";
const T4_TYPE: &str = "nvidia-231";

struct Mounted {
    sim: Simulator,
    _dir: TempDir,
}

impl Mounted {
    fn start(profile: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = Simulator::start(&SimOptions {
            mountpoint: dir.path().join("sys"),
            profiles: vec![profile.to_owned()],
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("start {profile}: {e}"));
        Self { sim, _dir: dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.sim.mountpoint().join(rel)
    }

    fn requests(&self) -> RequestCounts {
        self.sim.requests()
    }

    fn ctl(&self, req: Request) {
        Client::connect(&self.sim.control_socket())
            .expect("control socket")
            .ok(&req)
            .unwrap_or_else(|e| panic!("{req:?}: {e}"));
    }

    fn create(&self, parent_dir: &str, type_id: &str) -> String {
        let uuid = uuid::Uuid::new_v4().to_string();
        let create = self.path(&format!(
            "{parent_dir}/mdev_supported_types/{type_id}/create"
        ));
        std::fs::write(&create, &uuid).expect("create");
        uuid
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn list(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_gone(path: &Path) -> bool {
    matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == ErrorKind::NotFound)
}

#[test]
fn available_instances_is_current_after_each_create_and_remove() {
    let m = Mounted::start("mtty");
    let dir = "devices/virtual/mtty/mtty";
    let count = m.path(&format!(
        "{dir}/mdev_supported_types/mtty-1/available_instances"
    ));
    let other = m.path(&format!(
        "{dir}/mdev_supported_types/mtty-2/available_instances"
    ));
    assert_eq!(read(&count), "24\n");
    std::fs::metadata(&count).expect("stat");
    assert_eq!(read(&other), "12\n");
    let uuid = m.create(dir, "mtty-1");
    assert_eq!(read(&count), "23\n");
    assert_eq!(read(&other), "11\n");
    std::fs::write(m.path(&format!("{dir}/{uuid}/remove")), "1").expect("remove");
    assert_eq!(read(&count), "24\n");
    assert_eq!(read(&other), "12\n");
}

#[test]
fn a_removed_device_is_gone_at_once_along_cached_names() {
    let m = Mounted::start("nvidia-t4");
    let uuid = m.create(PF_DIR, T4_TYPE);
    let device = m.path(&format!("{PF_DIR}/{uuid}"));
    let seen = [
        device.clone(),
        device.join("power/control"),
        device.join("uevent"),
        device.join("mdev_type"),
        m.path(&format!("bus/mdev/devices/{uuid}")),
        m.path(&format!(
            "{PF_DIR}/mdev_supported_types/{T4_TYPE}/devices/{uuid}"
        )),
    ];
    for p in &seen {
        std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    assert_eq!(read(&device.join("power/control")), "auto\n");
    let listing = m.path(&format!("{PF_DIR}/mdev_supported_types/{T4_TYPE}/devices"));
    assert_eq!(list(&listing), std::slice::from_ref(&uuid));

    std::fs::write(m.path(&format!("bus/mdev/devices/{uuid}/remove")), "1").expect("remove");
    for p in &seen {
        assert!(is_gone(p), "{} still there after remove", p.display());
    }
    assert!(list(&listing).is_empty());
    assert!(!list(&m.path(PF_DIR)).contains(&uuid));
    assert!(list(&m.path("bus/mdev/devices")).is_empty());
}

#[test]
fn a_new_device_appears_at_once_in_a_listing_the_kernel_cached() {
    let m = Mounted::start("nvidia-t4");
    let listing = m.path(&format!("{PF_DIR}/mdev_supported_types/{T4_TYPE}/devices"));
    assert!(list(&listing).is_empty());
    assert!(list(&listing).is_empty());
    let uuid = m.create(PF_DIR, T4_TYPE);
    assert_eq!(list(&listing), std::slice::from_ref(&uuid));
    assert!(list(&m.path(PF_DIR)).contains(&uuid));
    assert_eq!(list(&m.path("bus/mdev/devices")), [uuid]);
}

#[test]
fn a_static_attribute_is_answered_from_the_kernel_cache() {
    let m = Mounted::start("nvidia-t4");
    let vendor = m.path(&format!("{PF_DIR}/vendor"));
    let config = m.path(&format!("{PF_DIR}/config"));
    let name = m.path(&format!("{PF_DIR}/mdev_supported_types/{T4_TYPE}/name"));
    std::fs::metadata(&vendor).expect("stat vendor");
    std::fs::metadata(&name).expect("stat name");
    let first = std::fs::read(&config).expect("read config");
    let before = m.requests();
    std::fs::metadata(&vendor).expect("stat vendor");
    std::fs::metadata(&name).expect("stat name");
    let after = m.requests();
    assert_eq!(after.lookup, before.lookup, "{before:?} -> {after:?}");
    assert_eq!(after.getattr, before.getattr, "{before:?} -> {after:?}");
    // (A read marks the access time stale, so the stat inside fs::read may still ask.)
    assert_eq!(std::fs::read(&config).expect("read config"), first);
    let after = m.requests();
    assert_eq!(
        after.read, before.read,
        "config re-read: {before:?} -> {after:?}"
    );
    // A text attribute is still read from the simulator each time: sysfs reports one page
    // for it, so its content cannot be served from the page cache.
    assert_eq!(read(&vendor), "0x10de\n");
    assert_eq!(read(&vendor), "0x10de\n");
    assert!(m.requests().read >= after.read + 2);
}

#[test]
fn an_unbind_drops_cached_types_at_once_and_a_bind_brings_them_back() {
    let m = Mounted::start("nvidia-t4");
    let types = m.path(&format!("{PF_DIR}/mdev_supported_types"));
    let name = types.join(T4_TYPE).join("name");
    assert!(list(&types).contains(&T4_TYPE.to_owned()));
    std::fs::metadata(&name).expect("stat name");
    assert_eq!(list(&m.path("class/mdev_bus")), [GPU]);

    m.ctl(Request::Unbind {
        parent: GPU.to_owned(),
    });
    assert!(is_gone(&name), "a type's name survived the unbind");
    assert!(is_gone(&types));
    assert!(list(&m.path("class/mdev_bus")).is_empty());
    assert!(is_gone(&m.path(&format!("{PF_DIR}/driver"))));

    m.ctl(Request::Bind {
        parent: GPU.to_owned(),
    });
    assert!(list(&types).contains(&T4_TYPE.to_owned()));
    assert_eq!(list(&m.path("class/mdev_bus")), [GPU]);
    assert!(read(&name).starts_with("GRID T4"));
}

#[test]
fn an_unplug_removes_cached_paths_at_once() {
    let m = Mounted::start("nvidia-t4");
    let vendor = m.path(&format!("{PF_DIR}/vendor"));
    std::fs::metadata(&vendor).expect("stat vendor");
    assert_eq!(list(&m.path("bus/pci/devices")), [GPU]);
    m.ctl(Request::Unplug {
        parent: GPU.to_owned(),
    });
    assert!(is_gone(&vendor));
    assert!(list(&m.path("bus/pci/devices")).is_empty());
    m.ctl(Request::Plug {
        profile: None,
        parent: Some(GPU.to_owned()),
    });
    assert_eq!(read(&vendor), "0x10de\n");
}

#[test]
fn an_injected_fault_still_reaches_a_write_to_a_cached_attribute() {
    let m = Mounted::start("nvidia-t4");
    let create = m.path(&format!("{PF_DIR}/mdev_supported_types/{T4_TYPE}/create"));
    std::fs::metadata(&create).expect("stat create");
    std::fs::metadata(&create).expect("stat create");
    m.ctl(Request::Inject {
        path: format!("{PF_DIR}/mdev_supported_types/{T4_TYPE}/create"),
        errno: Some("EIO".into()),
        delay_ms: None,
        count: Some(1),
    });
    let err = std::fs::write(&create, uuid::Uuid::new_v4().to_string()).expect_err("injected");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    m.create(PF_DIR, T4_TYPE);
}
