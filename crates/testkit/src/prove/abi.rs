//! `vgpud-prove abi`: the kernel-ABI scenarios of the sample drivers (mtty, mdpy, mbochs) run
//! against a sysfs root — the real kernel's /sys or a vgpud-sim mount — recording what was seen
//! as plain text per scenario. The same code runs on both, so the two records can be compared
//! line by line: where they differ, the simulator is wrong (or the difference is explained).
//!
//! What differs between the two hosts is only how a driver is loaded and unloaded (insmod/rmmod
//! or the simulator's unplug/plug), how a VM holds a device open (VFIO container, group and
//! device descriptors, or the simulator's hold) and where uevents come from.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use vgpud_daemon::events::{EventSpec, RawEvents, UEvent};
use vgpud_sim::control::{Client, Request};

/// The drivers whose parents the scenarios use, all loaded when the probe starts.
pub const DRIVERS: [&str; 3] = ["mtty", "mdpy", "mbochs"];

/// How long a blocked `remove` is watched before the holder lets go.
const BLOCKED: Duration = Duration::from_millis(500);
/// Events are collected until none came for this long.
const QUIET: Duration = Duration::from_millis(400);

/// What the scenarios saw: scenario name -> lines.
pub type Record = BTreeMap<String, Vec<String>>;

/// The host the scenarios run on.
pub enum Host {
    /// A real kernel: the sample drivers are modules in `modules` (loaded with finit_module).
    Kernel { modules: PathBuf },
    /// A vgpud-sim mount, driven through its control socket.
    Sim { control: PathBuf, feed: PathBuf },
}

/// A device held open as a VM holds it.
enum Held {
    /// Container, group and device descriptors, closed on drop.
    Vfio(#[allow(dead_code)] Vec<File>),
    Sim(String),
}

pub struct Probe {
    root: PathBuf,
    host: Host,
    record: Record,
}

impl Probe {
    pub fn new(root: &Path, host: Host) -> Self {
        Probe {
            root: root.to_path_buf(),
            host,
            record: Record::new(),
        }
    }

    /// Runs every scenario and returns what was seen. Only a failure of the probe itself (no
    /// event source, a control socket that does not answer) is an error.
    pub fn run(mut self) -> Result<Record, String> {
        self.tree();
        self.create_errors();
        self.device_tree();
        self.capacity();
        self.remove();
        self.remove_held()?;
        self.events()?;
        Ok(self.record)
    }

    fn note(&mut self, scenario: &str, line: impl Into<String>) {
        self.record
            .entry(scenario.to_owned())
            .or_default()
            .push(line.into());
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn type_dir(&self, parent: &str, type_id: &str) -> PathBuf {
        self.path(&format!(
            "class/mdev_bus/{parent}/mdev_supported_types/{type_id}"
        ))
    }

    fn available(&self, parent: &str, type_id: &str) -> String {
        read_text(&self.type_dir(parent, type_id).join("available_instances"))
    }

    fn create(&self, parent: &str, type_id: &str, bytes: &[u8]) -> String {
        write_once(&self.type_dir(parent, type_id).join("create"), bytes)
    }

    fn remove_device(&self, uuid: &str, bytes: &[u8]) -> String {
        write_once(
            &self.path(&format!("bus/mdev/devices/{uuid}/remove")),
            bytes,
        )
    }

    fn devices(&self) -> Vec<String> {
        names(&self.path("bus/mdev/devices"))
    }

    /// Removes every device, so each scenario starts from an empty host.
    fn clear(&self) {
        for uuid in self.devices() {
            self.remove_device(&uuid, b"1");
        }
    }

    // ---- the tree ---------------------------------------------------------------------------

    fn tree(&mut self) {
        let parents = names(&self.path("class/mdev_bus"));
        for parent in &parents {
            let line = format!(
                "{parent} -> {}",
                link(&self.path(&format!("class/mdev_bus/{parent}")))
            );
            self.note("tree.parents", line);
        }
        for parent in DRIVERS {
            let dir = self.path(&format!("class/mdev_bus/{parent}"));
            let scenario = format!("tree.parent.{parent}");
            for line in listing(&dir) {
                self.note(&scenario, line);
            }
            let uevent = read_text(&dir.join("uevent"));
            self.note(&scenario, format!("uevent: {}", uevent.replace('\n', " ")));
            for type_id in names(&dir.join("mdev_supported_types")) {
                let tdir = dir.join("mdev_supported_types").join(&type_id);
                let scenario = format!("tree.type.{type_id}");
                for line in listing(&tdir) {
                    self.note(&scenario, line);
                }
                for file in ["name", "device_api", "description", "available_instances"] {
                    let value = read_text(&tdir.join(file));
                    self.note(&scenario, format!("{file}: {value}"));
                }
            }
        }
    }

    fn create_errors(&mut self) {
        const U1: &str = "8f0c0001-0000-4000-8000-000000000001";
        let line = format!("{U1}\n");
        let cases: [(&str, Vec<u8>); 4] = [
            ("create.35-bytes", U1.as_bytes()[..35].to_vec()),
            ("create.38-bytes", format!("{U1}\n\n").into_bytes()),
            (
                "create.non-hex",
                b"8f0c0001-0000-4000-8000-00000000000g\n".to_vec(),
            ),
            ("create.36-bytes-no-newline", U1.as_bytes().to_vec()),
        ];
        for (scenario, bytes) in cases {
            let r = self.create("mtty", "mtty-1", &bytes);
            self.note(scenario, r);
        }
        // U1 exists now (the 36-byte case): the duplicates.
        let r = self.create("mtty", "mtty-2", line.as_bytes());
        self.note("create.duplicate-same-parent", r);
        let r = self.create("mdpy", "mdpy-vga", line.as_bytes());
        self.note("create.duplicate-other-parent", r);
        let r = self.create(
            "mtty",
            "mtty-1",
            format!("{}\n", U1.to_uppercase()).as_bytes(),
        );
        self.note("create.duplicate-upper-case", r);
        self.note(
            "create.duplicate-upper-case",
            format!("devices: {}", self.devices().join(" ")),
        );
        let r = write_once(
            &self.path("class/mdev_bus/mtty/mdev_supported_types/mtty-9/create"),
            line.as_bytes(),
        );
        self.note("create.missing-type", r);
        let r = read_once(&self.type_dir("mtty", "mtty-1").join("create"));
        self.note("create.read", r);
        self.clear();
    }

    fn device_tree(&mut self) {
        const U: &str = "8f0c0002-0000-4000-8000-000000000002";
        let r = self.create("mtty", "mtty-2", format!("{U}\n").as_bytes());
        self.note("device.tree", format!("create: {r}"));
        let dev = self.path(&format!("bus/mdev/devices/{U}"));
        self.note(
            "device.tree",
            format!("bus/mdev/devices/{U} -> {}", link(&dev)),
        );
        for line in listing(&dev) {
            self.note("device.tree", line);
        }
        self.note(
            "device.tree",
            format!(
                "uevent: {}",
                read_text(&dev.join("uevent")).replace('\n', " ")
            ),
        );
        for file in [
            "vendor/sample_mdev_dev",
            "vfio-dev/vfio0/uevent",
            "power/control",
        ] {
            let text = read_text(&dev.join(file)).replace('\n', " ");
            self.note("device.tree", format!("{file}: {text}"));
        }
        let in_type = names(&self.type_dir("mtty", "mtty-2").join("devices"));
        self.note(
            "device.tree",
            format!("mtty-2/devices: {}", in_type.join(" ")),
        );
        self.clear();
    }

    // ---- capacity -----------------------------------------------------------------------------

    /// Creates `type_id` devices until the kernel refuses; notes how many and the refusal.
    fn fill(&mut self, scenario: &str, parent: &str, type_id: &str, prefix: u32) {
        let mut made = 0;
        let refusal = loop {
            let uuid = format!("8f0c{prefix:04x}-0000-4000-8000-{made:012x}");
            let r = self.create(parent, type_id, format!("{uuid}\n").as_bytes());
            if r != "ok" || made >= 64 {
                break r;
            }
            made += 1;
        };
        self.note(scenario, format!("{type_id}: {made} made, then {refusal}"));
    }

    fn availability(&mut self, scenario: &str, parent: &str) {
        let dir = self.path(&format!("class/mdev_bus/{parent}/mdev_supported_types"));
        let counts: Vec<String> = names(&dir)
            .iter()
            .map(|t| format!("{t}={}", self.available(parent, t)))
            .collect();
        self.note(scenario, format!("available: {}", counts.join(" ")));
    }

    fn capacity(&mut self) {
        for (scenario, parent, first, second) in [
            ("capacity.mtty", "mtty", "mtty-1", "mtty-2"),
            ("capacity.mtty-dual", "mtty", "mtty-2", "mtty-1"),
            ("capacity.mdpy", "mdpy", "mdpy-vga", "mdpy-hd"),
            ("capacity.mbochs", "mbochs", "mbochs-large", "mbochs-small"),
        ] {
            self.fill(scenario, parent, first, 0x10);
            self.availability(scenario, parent);
            self.fill(scenario, parent, second, 0x11);
            self.clear();
            self.availability(scenario, parent);
        }
        // One dual port takes two of the pool's 24 ports.
        let r = self.create("mtty", "mtty-2", b"8f0c0003-0000-4000-8000-000000000003\n");
        self.note("capacity.mtty-shared", format!("create mtty-2: {r}"));
        self.availability("capacity.mtty-shared", "mtty");
        self.clear();
    }

    // ---- remove -------------------------------------------------------------------------------

    fn remove(&mut self) {
        const U: &str = "8f0c0004-0000-4000-8000-000000000004";
        self.create("mtty", "mtty-1", format!("{U}\n").as_bytes());
        let r = self.remove_device(U, b"0\n");
        self.note(
            "remove.0",
            format!("{r}, devices: {}", self.devices().join(" ")),
        );
        let r = self.remove_device(U, b"yes\n");
        self.note(
            "remove.non-integer",
            format!("{r}, devices: {}", self.devices().join(" ")),
        );
        let r = self.remove_device(U, b"1\n");
        self.note(
            "remove.1",
            format!("{r}, devices: {}", self.devices().join(" ")),
        );
        self.availability("remove.1", "mtty");
        let r = self.remove_device(U, b"1\n");
        self.note("remove.gone", r);
    }

    fn hold(&self, uuid: &str) -> Result<Held, String> {
        match &self.host {
            Host::Kernel { .. } => {
                let group = link(&self.path(&format!("bus/mdev/devices/{uuid}/iommu_group")));
                let number = group.rsplit('/').next().unwrap_or_default().to_owned();
                vfio_hold(&format!("/dev/vfio/{number}"), uuid).map(Held::Vfio)
            }
            Host::Sim { control, .. } => {
                sim_call(
                    control,
                    &Request::Hold {
                        device: uuid.into(),
                    },
                )?;
                Ok(Held::Sim(uuid.into()))
            }
        }
    }

    fn release(&self, held: Held) -> Result<(), String> {
        match (held, &self.host) {
            (Held::Sim(device), Host::Sim { control, .. }) => {
                sim_call(control, &Request::Release { device })
            }
            (held, _) => {
                drop(held);
                Ok(())
            }
        }
    }

    fn remove_held(&mut self) -> Result<(), String> {
        const U: &str = "8f0c0005-0000-4000-8000-000000000005";
        let s = "remove.held";
        self.create("mtty", "mtty-1", format!("{U}\n").as_bytes());
        let held = self.hold(U)?;
        let path = self.path(&format!("bus/mdev/devices/{U}/remove"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(write_once(&path, b"1\n"));
        });
        match rx.recv_timeout(BLOCKED) {
            Ok(r) => self.note(s, format!("remove returned at once: {r}")),
            Err(_) => self.note(s, "remove blocks while held"),
        }
        // The kernel refuses to unload a driver whose device a VM holds.
        let unload = self.unload("mtty");
        self.note(s, format!("unload while held: {unload}"));
        self.release(held)?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(r) => self.note(s, format!("after release: {r}")),
            Err(_) => self.note(s, "still blocked 10 s after release"),
        }
        self.note(s, format!("devices: {}", self.devices().join(" ")));
        // An unload that waited for the holder goes on once it let go.
        let parent = self.path("class/mdev_bus/mtty");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while unload == "blocked" && parent.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let present = parent.exists();
        self.note(
            s,
            format!(
                "mtty after release: {}",
                if present { "present" } else { "gone" }
            ),
        );
        if !present {
            self.load("mtty");
        }
        self.clear();
        Ok(())
    }

    // ---- driver load and unload -------------------------------------------------------------

    fn unload(&self, driver: &str) -> String {
        match &self.host {
            Host::Kernel { .. } => delete_module(driver),
            Host::Sim { control, .. } => {
                // A blocking unplug (a held device) is reported as blocked, like a hung rmmod.
                let (tx, rx) = mpsc::channel();
                let control = control.clone();
                let parent = driver.to_owned();
                std::thread::spawn(move || {
                    let _ = tx.send(sim_call(&control, &Request::Unplug { parent }));
                });
                match rx.recv_timeout(Duration::from_secs(2)) {
                    Ok(Ok(())) => "ok".into(),
                    Ok(Err(e)) => errno_of_message(&e),
                    Err(_) => "blocked".into(),
                }
            }
        }
    }

    fn load(&self, driver: &str) -> String {
        match &self.host {
            Host::Kernel { modules } => finit_module(&modules.join(format!("{driver}.ko"))),
            Host::Sim { control, .. } => match sim_call(
                control,
                &Request::Plug {
                    profile: None,
                    parent: Some(driver.into()),
                },
            ) {
                Ok(()) => "ok".into(),
                Err(e) => format!("refused: {e}"),
            },
        }
    }

    fn events(&mut self) -> Result<(), String> {
        let spec = match &self.host {
            Host::Kernel { .. } => EventSpec::Kernel,
            Host::Sim { feed, .. } => EventSpec::Sim(feed.clone()),
        };
        let mut events =
            RawEvents::open(&spec).map_err(|e| format!("cannot listen to uevents: {e}"))?;
        const U: &str = "8f0c0006-0000-4000-8000-000000000006";
        let steps: [(&str, &Step); 5] = [
            ("events.create", &|p| {
                p.create("mtty", "mtty-2", format!("{U}\n").as_bytes())
            }),
            ("events.remove", &|p| p.remove_device(U, b"1\n")),
            ("events.unload", &|p| p.unload("mtty")),
            ("events.load", &|p| p.load("mtty")),
            ("events.unload-with-a-device", &|p| {
                let created = p.create("mtty", "mtty-1", format!("{U}\n").as_bytes());
                format!("create {created}, unload {}", p.unload("mtty"))
            }),
        ];
        for (scenario, step) in steps {
            drain_events(&mut events, QUIET);
            let r = step(self);
            self.note(scenario, format!("result: {r}"));
            for event in drain_events(&mut events, QUIET) {
                if let Some(line) = event_line(&event) {
                    self.note(scenario, line);
                }
            }
        }
        let r = self.load("mtty");
        self.note("events.unload-with-a-device", format!("reload: {r}"));
        // Refusals: mtty's own probe (after device_add) and the core's counter (mdpy, before).
        for (scenario, parent, type_id, n) in [
            ("events.refused-by-the-driver", "mtty", "mtty-1", 24),
            ("events.refused-by-the-core", "mdpy", "mdpy-vga", 4),
        ] {
            for i in 0..n {
                let uuid = format!("8f0c0007-0000-4000-8000-{i:012x}");
                self.create(parent, type_id, format!("{uuid}\n").as_bytes());
            }
            drain_events(&mut events, QUIET);
            let r = self.create(parent, type_id, format!("{U}\n").as_bytes());
            self.note(scenario, format!("result: {r}"));
            for event in drain_events(&mut events, QUIET) {
                if let Some(line) = event_line(&event) {
                    self.note(scenario, line);
                }
            }
            self.clear();
        }
        Ok(())
    }
}

/// One step of an event scenario: what it did, as "ok" or the errno's name.
type Step = dyn Fn(&Probe) -> String;

/// Every event until none came for `quiet` (at most 5 s in all).
fn drain_events(events: &mut RawEvents, quiet: Duration) -> Vec<UEvent> {
    let mut got = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        match events.next(quiet) {
            Ok(Some(event)) => got.push(event),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

/// One event as a line, or None for events about other devices than the sample drivers'.
fn event_line(e: &UEvent) -> Option<String> {
    let ours = DRIVERS.iter().any(|d| {
        e.devpath.starts_with(&format!("/devices/virtual/{d}/"))
            || e.devpath == format!("/module/{d}")
    });
    if !ours {
        return None;
    }
    let props: Vec<String> = e.props.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Some(
        format!(
            "{} {} {} {}",
            e.action,
            e.subsystem,
            e.devpath,
            props.join(" ")
        )
        .trim_end()
        .to_owned(),
    )
}

// ---- plain file operations, each reported as "ok" or the errno's name ------------------------

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string(),
    }
}

/// One open and one write(2), as a shell's `echo > file` does.
fn write_once(path: &Path, bytes: &[u8]) -> String {
    let mut file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) => return format!("open {}", errno_name(&e)),
    };
    match file.write(bytes) {
        Ok(n) if n == bytes.len() => "ok".into(),
        Ok(n) => format!("short write {n}"),
        Err(e) => errno_name(&e),
    }
}

fn read_once(path: &Path) -> String {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("open {}", errno_name(&e)),
    };
    let mut buf = Vec::new();
    match file.read_to_end(&mut buf) {
        Ok(n) => format!("read {n} bytes"),
        Err(e) => errno_name(&e),
    }
}

fn read_text(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(s) => s.trim_end().to_owned(),
        Err(e) => format!("({})", errno_name(&e)),
    }
}

fn link(path: &Path) -> String {
    match fs::read_link(path) {
        Ok(t) => t.to_string_lossy().into_owned(),
        Err(e) => format!("({})", errno_name(&e)),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A directory's entries as `name/ mode` (directories), `name -> target` (links) and
/// `name mode` (files), sorted; the entries of subdirectories follow their own line, as
/// `sub/name ...`, except under `mdev_supported_types` (the types have scenarios of their own)
/// and the devices below a parent (idem).
fn listing(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    listing_into(dir, "", 3, &mut lines);
    lines
}

fn listing_into(dir: &Path, prefix: &str, depth: u32, lines: &mut Vec<String>) {
    for name in names(dir) {
        let path = dir.join(&name);
        let shown = format!("{prefix}{name}");
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                lines.push(format!("{shown} -> {}", link(&path)))
            }
            Ok(m) if m.is_dir() => {
                lines.push(format!("{shown}/ {:o}", m.permissions().mode() & 0o7777));
                let nested = name == "mdev_supported_types" || is_uuid(&name);
                if depth > 1 && !nested {
                    listing_into(&path, &format!("{shown}/"), depth - 1, lines);
                }
            }
            Ok(m) => lines.push(format!("{shown} {:o}", m.permissions().mode() & 0o7777)),
            Err(e) => lines.push(format!("{shown} ({})", errno_name(&e))),
        }
    }
}

fn is_uuid(name: &str) -> bool {
    name.len() == 36 && name.parse::<uuid::Uuid>().is_ok()
}

/// rmmod without waiting, as `rmmod` does: "ok" or the errno's name.
fn delete_module(name: &str) -> String {
    let Ok(name) = std::ffi::CString::new(name) else {
        return "EINVAL".into();
    };
    // SAFETY: the name is a NUL-terminated string that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    if r == 0 {
        "ok".into()
    } else {
        errno_name(&std::io::Error::last_os_error())
    }
}

/// insmod: "ok" or the errno's name.
fn finit_module(ko: &Path) -> String {
    use std::os::fd::AsRawFd;
    let file = match File::open(ko) {
        Ok(f) => f,
        Err(e) => return format!("open {}", errno_name(&e)),
    };
    // SAFETY: a valid descriptor, an empty NUL-terminated parameter string, no flags.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if r == 0 {
        "ok".into()
    } else {
        errno_name(&std::io::Error::last_os_error())
    }
}

/// The simulator's control errors start with the errno's name where they stand for one.
fn errno_of_message(message: &str) -> String {
    match message.split_once(':') {
        Some((name, _))
            if name.len() > 1
                && name.starts_with('E')
                && name.chars().all(|c| c.is_ascii_uppercase()) =>
        {
            name.to_owned()
        }
        _ => format!("refused: {message}"),
    }
}

fn sim_call(control: &Path, req: &Request) -> Result<(), String> {
    let mut client = Client::connect(control)
        .map_err(|e| format!("cannot reach the simulator at {}: {e}", control.display()))?;
    client.ok(req).map(|_| ()).map_err(|e| e.to_string())
}

// ---- a VFIO holder, as a VM holds an mdev ----------------------------------------------------

const VFIO_TYPE: u64 = b';' as u64;
const VFIO_BASE: u64 = 100;
const fn vfio_io(nr: u64) -> u64 {
    (VFIO_TYPE << 8) | (VFIO_BASE + nr)
}
const VFIO_SET_IOMMU: u64 = vfio_io(2);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const VFIO_TYPE1V2_IOMMU: u64 = 3;

/// Holds the mdev `uuid` under `sysfs` open through VFIO as a VM would, until the process
/// ends (`vgpud-prove abi-hold`): prints "held" once the device descriptor is open.
pub fn hold_until_killed(sysfs: &Path, uuid: &str) -> Result<(), String> {
    let group = link(&sysfs.join(format!("bus/mdev/devices/{uuid}/iommu_group")));
    let number = group.rsplit('/').next().unwrap_or_default();
    let _files = vfio_hold(&format!("/dev/vfio/{number}"), uuid)?;
    println!("held {uuid} through /dev/vfio/{number}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Opens the container, the device's group and the device itself, as QEMU does.
fn vfio_hold(group: &str, uuid: &str) -> Result<Vec<File>, String> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let open = |p: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .map_err(|e| format!("cannot open {p}: {e}"))
    };
    let container = open("/dev/vfio/vfio")?;
    let group_file = open(group)?;
    let container_fd = container.as_raw_fd();
    // SAFETY: the argument points at a live int for the duration of the call.
    let r = unsafe {
        libc::ioctl(
            group_file.as_raw_fd(),
            VFIO_GROUP_SET_CONTAINER as _,
            &container_fd as *const i32,
        )
    };
    if r < 0 {
        return Err(format!(
            "VFIO_GROUP_SET_CONTAINER on {group}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: VFIO_SET_IOMMU takes its argument by value.
    let r = unsafe {
        libc::ioctl(
            container.as_raw_fd(),
            VFIO_SET_IOMMU as _,
            VFIO_TYPE1V2_IOMMU,
        )
    };
    if r < 0 {
        return Err(format!(
            "VFIO_SET_IOMMU: {}",
            std::io::Error::last_os_error()
        ));
    }
    let name = std::ffi::CString::new(uuid).map_err(|e| e.to_string())?;
    // SAFETY: the argument is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::ioctl(
            group_file.as_raw_fd(),
            VFIO_GROUP_GET_DEVICE_FD as _,
            name.as_ptr(),
        )
    };
    if fd < 0 {
        return Err(format!(
            "VFIO_GROUP_GET_DEVICE_FD {uuid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let device = unsafe { File::from_raw_fd(fd) };
    Ok(vec![device, group_file, container])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_ioctl_numbers_match_the_uapi() {
        // linux/vfio.h: _IO(';', 100 + n).
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
    }

    #[test]
    fn events_of_other_devices_are_left_out() {
        let ours =
            UEvent::new("add", "/devices/virtual/mtty/mtty/x", "mdev").with("DRIVER", "mtty");
        assert_eq!(
            event_line(&ours).as_deref(),
            Some("add mdev /devices/virtual/mtty/mtty/x DRIVER=mtty")
        );
        let other = UEvent::new("add", "/devices/virtual/bdi/9p-1", "bdi");
        assert_eq!(event_line(&other), None);
        let module = UEvent::new("remove", "/module/mtty", "module");
        assert_eq!(
            event_line(&module).as_deref(),
            Some("remove module /module/mtty")
        );
    }

    #[test]
    fn a_listing_shows_modes_links_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("create"), "").unwrap();
        fs::set_permissions(dir.path().join("create"), fs::Permissions::from_mode(0o200)).unwrap();
        fs::create_dir(dir.path().join("devices")).unwrap();
        std::os::unix::fs::symlink("../x", dir.path().join("link")).unwrap();
        assert_eq!(
            listing(dir.path()),
            ["create 200", "devices/ 755", "link -> ../x"]
        );
    }
}
