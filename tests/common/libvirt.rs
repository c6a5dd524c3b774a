//! Fixture of the libvirt tier: Debian's real libvirtd 9.0 beside vgpud over vgpud-sim, all in
//! private mount, network and PID namespaces (tests/common/libvirt-rig.sh sets them up), with
//! `virsh` run inside them through nsenter and vgpud's bus reachable from the test through a
//! second listening socket in the scratch directory. Dropping the rig kills its namespace's
//! first process, and with it every daemon and mount; a panicking test does the same, and the
//! rig dies with the test process (PR_SET_PDEATHSIG) if that is killed.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const VGPUD: &str = env!("CARGO_BIN_EXE_vgpud");
pub const VGPUCTL: &str = env!("CARGO_BIN_EXE_vgpuctl");
pub const VGPUD_SIM: &str = env!("CARGO_BIN_EXE_vgpud-sim");
const RIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/libvirt-rig.sh");
const FETCH_QEMU: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-qemu");
/// Start-up: the simulator, a bus, vgpud and libvirtd (which probes QEMU's capabilities).
const READY_WITHIN: Duration = Duration::from_secs(90);
/// The bound on one whole test; past it the test binary aborts (and the rig dies with it).
const TEST_GUARD: Duration = Duration::from_secs(120);

pub struct Rig {
    scratch: TempDir,
    child: Child,
    /// The namespace's first process, as the host sees it (for nsenter).
    inner: u32,
    pub address: String,
    pub qemu_wrapper: PathBuf,
    _guard: mpsc::Sender<()>,
}

fn guard(limit: Duration) -> mpsc::Sender<()> {
    let name = std::thread::current().name().unwrap_or("a test").to_owned();
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("{name} ran past {limit:?}; aborting the test binary");
            std::process::abort();
        }
    });
    tx
}

/// Debian's QEMU 7.2, unpacked by scripts/fetch-qemu (which fetches it once): the root it
/// prints (the binary is ROOT/usr/bin/qemu-system-x86_64).
fn qemu_root() -> PathBuf {
    let out = Command::new(FETCH_QEMU)
        .output()
        .expect("scripts/fetch-qemu runs");
    assert!(
        out.status.success(),
        "scripts/fetch-qemu failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let root = text.lines().last().expect("fetch-qemu prints QEMU's root");
    PathBuf::from(root)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

const QEMU_CONF: &str = r#"# The libvirt tier: no systemd, no cgroups, no security driver, no per-domain /dev.
user = "root"
group = "root"
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
remember_owner = 0
# No virtlogd here: QEMU's output goes to /var/log/libvirt/qemu/<domain>.log directly.
stdio_handler = "file"
"#;

const LIBVIRTD_CONF: &str = r#"auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:stderr 1:file:/var/log/libvirt/debug.log"
log_filters = "1:node_device 1:util.pci 1:util.mdev 1:qemu.qemu_hostdev 1:util.hook 4:*"
"#;

fn bus_conf(scratch: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
        scratch.display()
    )
}

impl Rig {
    /// A rig on a simulated host of `profiles` (vgpud-sim's `-p` arguments).
    pub fn start(profiles: &[&str]) -> Self {
        let guard = guard(TEST_GUARD);
        let qemu = qemu_root();
        let scratch = tempfile::Builder::new()
            .prefix("vgpud-libvirt.")
            .tempdir()
            .expect("scratch dir");
        let s = scratch.path();
        for dir in [
            "etc-libvirt/hooks/qemu.d",
            "mdevctl.d/scripts.d/callouts",
            "mdevctl.d/scripts.d/notifiers",
            "vgpud-config/policy.d",
            "vgpud-state",
            "bin",
        ] {
            std::fs::create_dir_all(s.join(dir)).expect("create the scratch tree");
        }
        write(&s.join("etc-libvirt/qemu.conf"), QEMU_CONF);
        write(&s.join("etc-libvirt/libvirtd.conf"), LIBVIRTD_CONF);
        write(&s.join("etc-libvirt/libvirt.conf"), "");
        write(&s.join("bus.conf"), &bus_conf(s));
        std::os::unix::fs::symlink(VGPUCTL, s.join("etc-libvirt/hooks/qemu.d/vgpud"))
            .expect("link the hook");
        // libvirt clears the environment of what it runs: QEMU finds its libraries and modules
        // through this wrapper.
        let wrapper = s.join("bin/qemu-system-x86_64");
        let lib = format!(
            "{0}/usr/lib/x86_64-linux-gnu:{0}/lib/x86_64-linux-gnu",
            qemu.display()
        );
        write(
            &wrapper,
            &format!(
                "#!/bin/sh\nexport LD_LIBRARY_PATH={lib}\nexport QEMU_MODULE_DIR={q}/usr/lib/x86_64-linux-gnu/qemu\n\
                 exec {q}/usr/bin/qemu-system-x86_64 -L {q}/usr/share/qemu -L {q}/usr/share/seabios \"$@\"\n",
                q = qemu.display()
            ),
        );
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the wrapper");

        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
            "bash",
            RIG,
        ])
        .arg(s)
        .env("VGPUD", VGPUD)
        .env("VGPUCTL", VGPUCTL)
        .env("VGPUD_SIM", VGPUD_SIM)
        .env(
            "SIM_PROFILES",
            profiles
                .iter()
                .map(|p| format!("-p {p}"))
                .collect::<Vec<_>>()
                .join(" "),
        )
        .env("VGPUD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: prctl in the forked child before exec, no allocation: the rig is killed when
        // the thread that started it (this test) ends without dropping it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("unshare runs");
        let mut rig = Rig {
            address: format!("unix:path={}/bus", s.display()),
            scratch,
            inner: 0,
            child,
            qemu_wrapper: wrapper,
            _guard: guard,
        };
        rig.wait_ready();
        rig
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        let ready = self.scratch.path().join("ready");
        while !ready.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the libvirt rig ended ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "the libvirt rig was not ready within {READY_WITHIN:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let children = format!("/proc/{0}/task/{0}/children", self.child.id());
        let text = std::fs::read_to_string(&children).expect("unshare's children");
        self.inner = text
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the namespace's first process");
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// A file of the simulated sysfs, which is /sys inside the rig: reached through the
    /// root of the rig's first process (its mount namespace), as the host has no such mount.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.path_inside("/sys").join(rel)
    }

    /// The rig's mount namespace, as `/proc/PID/ns/mnt` names it (`mnt:[N]`).
    pub fn mount_namespace(&self) -> String {
        std::fs::read_link(format!("/proc/{}/ns/mnt", self.inner))
            .expect("the rig's mount namespace")
            .to_string_lossy()
            .into_owned()
    }

    /// A path as the rig's processes see it (`/run/...`), through its first process's root.
    pub fn path_inside(&self, abs: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{abs}", self.inner))
    }

    /// Every log of the rig, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for name in [
            "rig.log",
            "sim.log",
            "dbus.log",
            "vgpud.log",
            "libvirtd.log",
        ] {
            let text = std::fs::read_to_string(self.scratch.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            all.push_str(&format!("--- {name} (last lines)\n"));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    /// Runs `program args` inside the rig's namespaces.
    pub fn inside(&self, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.inner.to_string())
            .args(["-m", "-n", "-p", "--", program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter runs")
    }

    pub fn virsh(&self, args: &[&str]) -> Output {
        let mut all = vec!["-c", "qemu:///system"];
        all.extend_from_slice(args);
        self.inside("virsh", &all)
    }

    /// `virsh ARGS`, which must succeed; its standard output.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(
            out.status.success(),
            "virsh {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// vgpuctl against the rig's vgpud, from the test's side.
    pub fn vgpuctl(&self, args: &[&str]) -> Output {
        Command::new(VGPUCTL)
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .expect("vgpuctl runs")
    }

    pub fn vgpuctl_ok(&self, args: &[&str]) -> String {
        let out = self.vgpuctl(args);
        assert!(
            out.status.success(),
            "vgpuctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn conn(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .expect("address parses")
            .build()
            .await
            .expect("connects to the rig's bus")
    }

    /// Polls `check` every 20 ms for up to `limit`.
    pub fn eventually(&self, limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if check() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A vGPU of a domain: its UUID and, when the hook should create it, the type to create.
pub struct Hostdev<'a> {
    pub uuid: &'a str,
    pub create_as: Option<&'a str>,
}

impl Rig {
    /// The mdev parents the simulator shows, by name.
    pub fn sim_parents(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.sys("class/mdev_bus"))
            .expect("class/mdev_bus")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// (type id, name, available_instances) of every type of `parent`, from the simulator.
    pub fn sim_types(&self, parent: &str) -> Vec<(String, String, u64)> {
        let dir = self.sys(&format!("class/mdev_bus/{parent}/mdev_supported_types"));
        let mut v: Vec<(String, String, u64)> = std::fs::read_dir(&dir)
            .expect("mdev_supported_types")
            .map(|e| {
                let id = e.expect("entry").file_name().to_string_lossy().into_owned();
                let read =
                    |f: &str| std::fs::read_to_string(dir.join(&id).join(f)).unwrap_or_default();
                let available = read("available_instances").trim().parse().expect("a count");
                (id.clone(), read("name").trim().to_owned(), available)
            })
            .collect();
        v.sort();
        v
    }

    /// Live mdevs in the simulator.
    pub fn sim_devices(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.sys("bus/mdev/devices"))
            .expect("bus/mdev/devices")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A subscriber to the simulator's uevent feed (every event from now on).
    pub fn uevents(&self) -> vgpud_sim::feed::Subscriber {
        vgpud_sim::feed::Subscriber::connect(&self.scratch.path().join("sim/uevents"))
            .expect("subscribe to the simulator's uevents")
    }

    /// vgpud's view of a device (`vgpuctl --json list`, then `list --defined`), or None.
    pub fn vgpud_device(&self, uuid: &str) -> Option<serde_json::Value> {
        [
            &["--json", "list"][..],
            &["--json", "list", "--defined"][..],
        ]
        .iter()
        .find_map(|args| {
            let text = self.vgpuctl_ok(args);
            let all: serde_json::Value = serde_json::from_str(&text).expect("vgpuctl prints JSON");
            all["devices"]
                .as_array()
                .expect("a device list")
                .iter()
                .find(|d| d["uuid"] == uuid)
                .cloned()
        })
    }

    /// Defines domain `name` (TCG, 64 MiB) with these vGPUs; QEMU is the rig's wrapper.
    pub fn define_domain(&self, name: &str, hostdevs: &[Hostdev<'_>]) {
        let mut devices = String::new();
        let mut metadata = String::new();
        for h in hostdevs {
            devices.push_str(&format!(
                "    <hostdev mode='subsystem' type='mdev' model='vfio-pci' display='off'>\n      \
                 <source><address uuid='{}'/></source>\n    </hostdev>\n",
                h.uuid
            ));
            if let Some(t) = h.create_as {
                metadata.push_str(&format!(
                    "      <vgpud:device uuid=\"{}\" type=\"{t}\"/>\n",
                    h.uuid
                ));
            }
        }
        let xml = format!(
            "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>64</memory>\n  \
             <vcpu>1</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  \
             <metadata>\n    <vgpud:devices xmlns:vgpud=\"https://vgpud.org/xmlns/libvirt/1\">\n\
             {metadata}    </vgpud:devices>\n  </metadata>\n  <devices>\n    \
             <emulator>{}</emulator>\n{devices}  </devices>\n</domain>\n",
            self.qemu_wrapper.display()
        );
        let file = self.scratch.path().join(format!("{name}.xml"));
        write(&file, &xml);
        self.virsh_ok(&["define", file.to_str().expect("a UTF-8 path")]);
    }

    /// Writes a node device XML to the scratch dir and returns its path (for nodedev-define).
    pub fn nodedev_xml(&self, parent: &str, type_id: &str, uuid: &str) -> String {
        let xml = format!(
            "<device>\n  <parent>pci_{}</parent>\n  <capability type='mdev'>\n    \
             <type id='{type_id}'/>\n    <uuid>{uuid}</uuid>\n  </capability>\n</device>\n",
            parent.replace([':', '.'], "_")
        );
        let file = self.scratch.path().join(format!("{uuid}.nodedev.xml"));
        write(&file, &xml);
        file.to_str().expect("a UTF-8 path").to_owned()
    }

    /// The `virsh nodedev-*` name of an mdev.
    pub fn mdev_name(uuid: &str, parent: &str) -> String {
        format!(
            "mdev_{}_{}",
            uuid.replace('-', "_"),
            parent.replace([':', '.'], "_")
        )
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // SIGKILL to unshare: --kill-child kills the namespace's first process, and the kernel
        // every other process in the PID namespace; the mounts go with the mount namespace.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        let inner = PathBuf::from(format!("/proc/{}", self.inner));
        while self.inner != 0 && inner.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
