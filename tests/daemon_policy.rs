//! Authorization, quotas, definitions and ensure rules against the real daemon
//! (`vgpud --simulate`, with the real polkitd on its private bus) and callers that run as
//! other uids (busctl started through setpriv).

#[path = "common/daemon.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{
    as_user, device_proxy, eventually, guest_proxy, manager_proxy, on_manager, text, Daemon,
};
use zbus::zvariant::Value;

const LIMIT: Duration = Duration::from_secs(120);
/// uid 1 ("daemon", group "daemon") and uid 2 ("bin", group "bin") exist on every Debian.
const LAB_UID: u32 = 1;
const OTHER_UID: u32 = 2;

/// busctl as another user (its own uid, gid and supplementary groups).
fn busctl_as(d: &Daemon, uid: u32, args: &[&str]) -> Output {
    as_user(uid, "busctl")
        .arg(format!("--address={}", d.address))
        .args(args)
        .output()
        .expect("setpriv runs")
}

fn create_as(d: &Daemon, uid: u32, type_spec: &str) -> Output {
    busctl_as(
        d,
        uid,
        &on_manager("call", "CreateDevice", &["sa{sv}", type_spec, "0"]),
    )
}

struct Config {
    dir: tempfile::TempDir,
}

impl Config {
    fn new(policies: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config/policy.d")).unwrap();
        for (name, text) in policies {
            std::fs::write(dir.path().join("config/policy.d").join(name), text).unwrap();
        }
        Config { dir }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn args(&self) -> Vec<String> {
        vec![
            format!("--config-dir={}", self.path("config").display()),
            format!("--definitions-dir={}", self.path("mdevctl.d").display()),
            format!("--state-dir={}", self.path("state").display()),
        ]
    }
    fn start(&self, profiles: &[&str]) -> Daemon {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start_with(profiles, &args)
    }
}

const LAB_POLICY: &str = r#"
[[allow]]
name = "lab-t4"
groups = ["daemon"]
types = ["GRID T4-*Q"]
parents = { vendor = "0x10de" }
max_per_user = 2
"#;

#[tokio::test(flavor = "multi_thread")]
async fn unprivileged_caller_is_refused_by_default() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[]);
        let d = c.start(&["nvidia-t4"]);
        let out = create_as(&d, LAB_UID, "GRID T4-2Q");
        assert!(!out.status.success());
        assert!(text(&out).contains("default"), "{}", text(&out));
        assert_eq!(d.mdev_devices().len(), 0);
        // Reading stays open to everyone.
        let out = busctl_as(&d, LAB_UID, &on_manager("get-property", "Version", &[]));
        assert!(out.status.success(), "{}", text(&out));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_grant_allows_its_group_with_the_quota_enforced() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[("10-lab.toml", LAB_POLICY)]);
        let d = c.start(&["nvidia-t4"]);
        for _ in 0..2 {
            let out = create_as(&d, LAB_UID, "GRID T4-2Q");
            assert!(out.status.success(), "{}", text(&out));
        }
        let out = create_as(&d, LAB_UID, "GRID T4-2Q");
        assert!(!out.status.success());
        assert!(
            text(&out).contains("lab-t4"),
            "the denial names the rule: {}",
            text(&out)
        );
        // Another user, not in the group, gets nothing; a type outside the grant neither.
        assert!(!create_as(&d, OTHER_UID, "GRID T4-2Q").status.success());
        assert!(!create_as(&d, LAB_UID, "GRID T4-2B").status.success());
        assert_eq!(d.mdev_devices().len(), 2);
        // The owner may remove its device; another user may not.
        let conn = d.conn().await;
        let snapshot_path = {
            let m = manager_proxy(&conn).await;
            let uuid = std::fs::read_dir(d.sys("bus/mdev/devices"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .file_name();
            m.get_device(&uuid.to_string_lossy()).await.unwrap()
        };
        let dev = device_proxy(&conn, snapshot_path.clone()).await;
        assert_eq!(dev.owner().await.unwrap(), i64::from(LAB_UID));
        let remove = |uid| {
            busctl_as(
                &d,
                uid,
                &[
                    "call",
                    "org.vgpud",
                    snapshot_path.as_str(),
                    "org.vgpud1.Device",
                    "Remove",
                    "a{sv}",
                    "0",
                ],
            )
        };
        let out = remove(OTHER_UID);
        assert!(!out.status.success(), "{}", text(&out));
        let out = remove(LAB_UID);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(d.mdev_devices().len(), 1);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn polkit_is_asked_about_the_caller() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[("10-lab.toml", LAB_POLICY)]);
        let d = c.start(&["nvidia-t4"]);
        // manage-definitions needs an administrator (auth_admin_keep): polkit refuses uid 1
        // even though the policy lets it create devices.
        let out = busctl_as(
            &d,
            LAB_UID,
            &on_manager(
                "call",
                "CreateDevice",
                &["sa{sv}", "GRID T4-2Q", "1", "persistent", "b", "true"],
            ),
        );
        assert!(!out.status.success());
        assert!(
            text(&out).contains("org.vgpud.manage-definitions"),
            "{}",
            text(&out)
        );
        assert_eq!(d.mdev_devices().len(), 0);
        // reload-policy is auth_admin: refused for uid 1, fine for root.
        let out = busctl_as(&d, LAB_UID, &on_manager("call", "ReloadPolicy", &[]));
        assert!(!out.status.success());
        let out = d.manager_call("ReloadPolicy", &[]);
        assert!(out.status.success(), "{}", text(&out));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_callers_get_exactly_the_quota() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[("10-lab.toml", LAB_POLICY)]);
        let d = c.start(&["nvidia-t4:4"]);
        let handles: Vec<_> = (0..12)
            .map(|_| {
                let (addr, _) = (d.address.clone(), ());
                std::thread::spawn(move || {
                    as_user(LAB_UID, "busctl")
                        .arg(format!("--address={addr}"))
                        .args(on_manager(
                            "call",
                            "CreateDevice",
                            &["sa{sv}", "GRID T4-1Q", "0"],
                        ))
                        .output()
                        .unwrap()
                        .status
                        .success()
                })
            })
            .collect();
        let ok = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|s| *s)
            .count();
        assert_eq!(ok, 2, "max_per_user = 2");
        assert_eq!(d.mdev_devices().len(), 2);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_for_the_last_instances_never_overbook() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[]);
        let d = c.start(&["mdpy"]);
        let conn = d.conn().await;
        let m = manager_proxy(&conn).await;
        let calls = (0..10).map(|_| m.create_device("mdpy-vga", HashMap::new()));
        let results = futures_util::future::join_all(calls).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 4, "mdpy has 4 instances: {results:?}");
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(r, zbus::Error::MethodError(n, _, _) if n.as_str() == "org.vgpud1.Error.NoCapacity"), "{r:?}");
        }
        assert_eq!(d.mdev_devices().len(), 4);
    })
    .await
    .unwrap();
}

fn parse_definition(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let (type_id, start, _) = vgpud_daemon::store::parse_mdevctl_json(&text).unwrap();
    (type_id.to_string(), start.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_defined_device_is_an_mdevctl_file_and_autostart_survives_replug() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[]);
        let d = c.start(&["nvidia-t4"]);
        let conn = d.conn().await;
        let m = manager_proxy(&conn).await;
        let path = m
            .create_device(
                "GRID T4-2Q",
                HashMap::from([("autostart", Value::from(true))]),
            )
            .await
            .unwrap();
        let dev = device_proxy(&conn, path.clone()).await;
        let uuid = dev.uuid().await.unwrap();
        let file = c.path("mdevctl.d").join("0000:20:00.0").join(&uuid);
        assert_eq!(
            parse_definition(&file),
            ("nvidia-231".to_owned(), "auto".to_owned())
        );
        assert!(dev.persistent().await.unwrap());
        d.ctl_ok(&["unplug", "0000:20:00.0"]);
        assert!(
            eventually(10, async || !dev.active().await.unwrap_or(true)).await,
            "still active after unplug"
        );
        assert!(
            dev.persistent().await.unwrap(),
            "the definition outlives its GPU"
        );
        d.ctl_ok(&["plug", "--parent", "0000:20:00.0"]);
        assert!(
            eventually(10, async || dev.active().await.unwrap_or(false)).await,
            "autostart did not bring it back"
        );
        assert!(d.sys(&format!("bus/mdev/devices/{uuid}")).exists());
        // Undefine keeps the live device but deletes the file.
        dev.undefine().await.unwrap();
        assert!(!file.exists());
        assert!(dev.active().await.unwrap());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn definitions_written_by_others_are_picked_up() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[]);
        let uuid = "5f7c1e2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
        let dir = c.path("mdevctl.d/mtty");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(uuid),
            "{\n  \"mdev_type\": \"mtty-2\",\n  \"start\": \"manual\",\n  \"attrs\": []\n}",
        )
        .unwrap();
        let d = c.start(&["mtty"]);
        let conn = d.conn().await;
        let m = manager_proxy(&conn).await;
        let path = m.get_device(uuid).await.unwrap();
        let dev = device_proxy(&conn, path).await;
        assert!(dev.persistent().await.unwrap());
        assert!(!dev.active().await.unwrap());
        dev.start().await.unwrap();
        assert!(dev.active().await.unwrap());
        assert_eq!(dev.type_id().await.unwrap(), "mtty-2");
        assert!(d.sys(&format!("bus/mdev/devices/{uuid}")).exists());
    })
    .await
    .unwrap();
}

const ENSURE_POLICY: &str = r#"
[[ensure]]
name = "two-q2-per-t4"
parents = { device = "0x1eb8" }
type = "GRID T4-2Q"
count = 2
"#;

#[tokio::test(flavor = "multi_thread")]
async fn ensure_rules_hold_across_hot_plug() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[("20-ensure.toml", ENSURE_POLICY)]);
        let d = c.start(&["nvidia-t4:2"]);
        assert!(
            eventually(10, async || d.mdev_devices().len() == 4).await,
            "ensure did not create 2 per GPU: {}",
            d.mdev_devices().len()
        );
        d.ctl_ok(&["unplug", "0000:21:00.0"]);
        assert!(eventually(10, async || d.mdev_devices().len() == 2).await);
        d.ctl_ok(&["plug", "--parent", "0000:21:00.0"]);
        assert!(
            eventually(10, async || d.mdev_devices().len() == 4).await,
            "ensure did not refill the re-plugged GPU"
        );
        // Desired state, not "create on every event": it settles at exactly two per GPU.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(d.mdev_devices().len(), 4, "ensure over-created");
        // A GPU that cannot hold the rule is reported, not retried forever.
        let conn = d.conn().await;
        let m = manager_proxy(&conn).await;
        let problems: Vec<String> = m.inner().get_property("Problems").await.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_policy_never_replaces_the_good_one() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[("10-lab.toml", LAB_POLICY)]);
        let d = c.start(&["nvidia-t4"]);
        std::fs::write(
            c.path("config/policy.d/10-lab.toml"),
            "[[allow]]\nname = \"x\"\nmax_per_user = -1\n",
        )
        .unwrap();
        let out = d.manager_call("ReloadPolicy", &[]);
        assert!(!out.status.success());
        assert!(
            text(&out).contains("10-lab.toml:3"),
            "file:line in the error: {}",
            text(&out)
        );
        // The last good policy still grants the lab.
        assert!(create_as(&d, LAB_UID, "GRID T4-2Q").status.success());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_polkit_authority_only_root_may_act() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[("10-lab.toml", LAB_POLICY)]);
        let mut args = c.args();
        args.push("--no-polkit".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let d = Daemon::start_with(&["nvidia-t4"], &args);
        let out = create_as(&d, LAB_UID, "GRID T4-2Q");
        assert!(!out.status.success());
        assert!(text(&out).contains("no polkit authority"), "{}", text(&out));
        let out = d.manager_call("CreateDevice", &["sa{sv}", "GRID T4-2Q", "0"]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(d.mdev_devices().len(), 1);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn attributes_are_written_in_order_and_a_failure_rolls_back() {
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[]);
        let d = c.start(&["nvidia-t4"]);
        let conn = d.conn().await;
        let m = manager_proxy(&conn).await;
        let attrs = vec![(
            "nvidia/vgpu_params".to_owned(),
            "frame_rate_limiter=0".to_owned(),
        )];
        let path = m
            .create_device("GRID T4-2Q", HashMap::from([("attrs", Value::new(attrs))]))
            .await
            .unwrap();
        let dev = device_proxy(&conn, path).await;
        let uuid = dev.uuid().await.unwrap();
        let written =
            std::fs::read_to_string(d.sys(&format!("bus/mdev/devices/{uuid}/nvidia/vgpu_params")))
                .unwrap();
        assert_eq!(written.trim(), "frame_rate_limiter=0");
        // The second attribute does not exist: the device made for this call is removed again.
        let attrs = vec![
            (
                "nvidia/vgpu_params".to_owned(),
                "frame_rate_limiter=1".to_owned(),
            ),
            ("no_such_attribute".to_owned(), "1".to_owned()),
        ];
        let err = m
            .create_device("GRID T4-2Q", HashMap::from([("attrs", Value::new(attrs))]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no_such_attribute"), "{err}");
        assert_eq!(
            d.mdev_devices().len(),
            1,
            "the half-made device was not rolled back"
        );
        // A path trick in an attribute name is refused before anything is created.
        let attrs = vec![("../remove".to_owned(), "1".to_owned())];
        let err = m
            .create_device("GRID T4-2Q", HashMap::from([("attrs", Value::new(attrs))]))
            .await
            .unwrap_err();
        assert!(matches!(&err, zbus::Error::MethodError(..)), "{err}");
        assert_eq!(d.mdev_devices().len(), 1);
    })
    .await
    .unwrap();
}

/// A program run as another user (its own uid, gid and supplementary groups).
fn run_as(uid: u32, program: &str, args: &[&str]) -> Output {
    as_user(uid, program)
        .args(args)
        .output()
        .expect("setpriv runs")
}

/// Opens and accesses of `path` by anyone, as inotify saw them since `watch`.
struct OpenWatch(std::os::fd::OwnedFd);

impl OpenWatch {
    fn new(path: &Path) -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: inotify_init1 returns a new descriptor (checked), owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just checked to be open.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                c.as_ptr(),
                libc::IN_OPEN | libc::IN_ACCESS,
            )
        };
        assert!(wd >= 0);
        OpenWatch(fd)
    }

    fn events(&self) -> usize {
        let mut buf = [0u8; 4096];
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.0), &mut buf) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => 0,
            Err(e) => panic!("inotify read: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_cannot_make_vgpud_or_its_vmm_read_a_file_it_cannot_read() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    tokio::time::timeout(LIMIT, async {
        let c = Config::new(&[("10-lab.toml", LAB_POLICY)]);
        let d = c.start(&["nvidia-t4"]);
        let out = create_as(&d, LAB_UID, "GRID T4-2Q");
        assert!(out.status.success(), "{}", text(&out));
        let dev_path = text(&out)
            .split('"')
            .nth(1)
            .expect("an object path")
            .to_owned();
        let uuid = dev_path.rsplit('/').next().unwrap().replace('_', "-");
        // A root-only file that would boot if it were read, and a kernel the user may read.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let elf = vgpud_vmm::payload::long_mode_elf().unwrap();
        let secret = dir.path().join("secret-kernel");
        std::fs::write(&secret, &elf).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mine = dir.path().join("tiny.elf");
        std::fs::write(&mine, &elf).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o644)).unwrap();
        let secret_s = secret.to_str().unwrap();
        let watch = OpenWatch::new(&secret);
        // vgpuctl follows the serial log by its path: the user must reach the guests directory.
        for rel in ["", "state", "state/guests"] {
            let p = c.path(rel);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        // vgpuctl opens the file as the user: refused before anything reaches vgpud.
        let vgpuctl = env!("CARGO_BIN_EXE_vgpuctl");
        let address = format!("--address={}", d.address);
        let out = run_as(
            LAB_UID,
            vgpuctl,
            &[&address, "launch", &uuid, "--kernel", secret_s],
        );
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("cannot read kernel {secret_s}: Permission denied")),
            "{}",
            text(&out)
        );
        // Naming the path over D-Bus is refused: vgpud opens no path a caller names.
        for key in ["kernel", "initrd", "payload_file"] {
            let out = busctl_as(
                &d,
                LAB_UID,
                &on_manager(
                    "call",
                    "LaunchGuest",
                    &["aoa{sv}", "1", &dev_path, "1", key, "s", secret_s],
                ),
            );
            assert!(!out.status.success());
            assert!(
                text(&out).contains("file descriptor (h)"),
                "{key}: {}",
                text(&out)
            );
        }
        assert_eq!(watch.events(), 0, "someone opened the root-only file");

        // A kernel the user can read boots, with the VMM running as that user.
        let out = run_as(
            LAB_UID,
            vgpuctl,
            &[
                &address,
                "launch",
                &uuid,
                "--kernel",
                mine.to_str().unwrap(),
                "--cmdline",
                "as=daemon",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("elf64: cmdline=as=daemon"),
            "{}",
            text(&out)
        );
        let out = busctl_as(
            &d,
            LAB_UID,
            &on_manager(
                "call",
                "LaunchGuest",
                &["aoa{sv}", "1", &dev_path, "1", "payload", "s", "loop"],
            ),
        );
        assert!(out.status.success(), "{}", text(&out));
        let guest_path = text(&out).split('"').nth(1).unwrap().to_owned();
        let conn = d.conn().await;
        let guest = guest_proxy(&conn, guest_path.as_str()).await;
        let pid = guest.pid().await.unwrap();
        assert!(
            eventually(10, async || {
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .map(|s| s.contains("Seccomp:\t2"))
                    .unwrap_or(false)
            })
            .await
        );
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            status.contains(&format!(
                "Uid:\t{LAB_UID}\t{LAB_UID}\t{LAB_UID}\t{LAB_UID}\n"
            )),
            "{status}"
        );
        let log = std::fs::metadata(guest.serial_log().await.unwrap()).unwrap();
        assert_eq!((log.uid(), log.mode() & 0o777), (LAB_UID, 0o600));
        let out = busctl_as(
            &d,
            LAB_UID,
            &["call", "org.vgpud", &guest_path, "org.vgpud1.Guest", "Stop"],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(watch.events(), 0, "someone opened the root-only file");
    })
    .await
    .unwrap();
}
