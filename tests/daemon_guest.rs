//! Manager.LaunchGuest on `vgpud --simulate nvidia-t4`: a `vgpud-vmm` guest with the device
//! emulated from the simulator's description; InUse while it runs, Busy on Remove, Stop.

#[path = "common/daemon.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{device_proxy, eventually, guest_proxy, Daemon};
use vgpud_api::proxies::{GuestProxy, ManagerProxy};
use zbus::zvariant::Value;

const LIMIT: Duration = Duration::from_secs(120);

fn error_name(err: &zbus::Error) -> String {
    match err {
        zbus::Error::MethodError(n, m, _) => {
            format!("{} {}", n.as_str(), m.clone().unwrap_or_default())
        }
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_probes_its_device_and_holds_it_while_running() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4"]);
        let conn = d.conn().await;
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let dev_path = manager
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .unwrap();
        let dev = device_proxy(&conn, dev_path.clone()).await;
        assert!(!dev.in_use().await.unwrap());

        // pci-probe: the guest finds the emulated T4, sees its interrupt and ends with 0.
        let guest_path = manager
            .launch_guest(
                std::slice::from_ref(&dev_path),
                HashMap::from([("payload", Value::from("pci-probe"))]),
            )
            .await
            .unwrap();
        assert!(
            guest_path.as_str().starts_with("/org/vgpud/guests/"),
            "{guest_path}"
        );
        let guest = guest_proxy(&conn, guest_path.clone()).await;
        assert!(guest.emulated().await.unwrap());
        assert_eq!(guest.vfio_api().await.unwrap(), "emulated");
        assert!(guest.pid().await.unwrap() > 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while guest.state().await.unwrap() == "running" {
            assert!(
                Instant::now() < deadline,
                "the guest did not end within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(guest.state().await.unwrap(), "exited");
        let log_path = guest.serial_log().await.unwrap();
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert_eq!(guest.exit_status().await.unwrap(), 0, "{log}");
        assert!(log.contains("10de:1eb8"), "{log}");
        assert!(log.contains("irq count=1"), "{log}");
        assert_eq!(guest.devices().await.unwrap(), vec![dev_path.clone()]);
        assert!(eventually(5, async || !dev.in_use().await.unwrap()).await);

        // loop: runs until stopped; the device is in use and cannot be removed meanwhile.
        let guest_path = manager
            .launch_guest(
                std::slice::from_ref(&dev_path),
                HashMap::from([("payload", Value::from("loop"))]),
            )
            .await
            .unwrap();
        let guest = guest_proxy(&conn, guest_path.clone()).await;
        assert_eq!(guest.state().await.unwrap(), "running");
        assert_eq!(guest.exit_status().await.unwrap(), -1);
        assert!(
            eventually(10, async || dev.in_use().await.unwrap()).await,
            "InUse never became true"
        );
        let err = manager
            .launch_guest(std::slice::from_ref(&dev_path), HashMap::new())
            .await
            .unwrap_err();
        assert!(
            error_name(&err).starts_with("org.vgpud1.Error.Busy"),
            "{}",
            error_name(&err)
        );
        let err = dev.remove(HashMap::new()).await.unwrap_err();
        let text = error_name(&err);
        assert!(text.starts_with("org.vgpud1.Error.Busy"), "{text}");
        assert!(text.contains(guest_path.as_str()), "{text}");

        guest.stop().await.unwrap();
        let state = guest.state().await.unwrap();
        assert!(state == "exited" || state == "crashed", "{state}");
        assert_eq!(guest.exit_status().await.unwrap(), 143);
        assert!(!dev.in_use().await.unwrap());
        dev.remove(HashMap::new()).await.unwrap();
        d.stop();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn launch_guest_checks_its_arguments() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4"]);
        let conn = d.conn().await;
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let err = manager.launch_guest(&[], HashMap::new()).await.unwrap_err();
        assert!(
            error_name(&err).starts_with("org.vgpud1.Error.InvalidArgument"),
            "{}",
            error_name(&err)
        );
        let dev_path = manager
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .unwrap();
        let err = manager
            .launch_guest(
                std::slice::from_ref(&dev_path),
                HashMap::from([("bogus", Value::from(1u32))]),
            )
            .await
            .unwrap_err();
        assert!(
            error_name(&err).starts_with("org.vgpud1.Error.InvalidArgument"),
            "{}",
            error_name(&err)
        );
        d.stop();
    })
    .await
    .unwrap();
}

/// The fields of a `/proc/PID/status` line such as `Uid:`.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} missing from:\n{status}"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vmm_runs_jailed_unprivileged_and_under_seccomp() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4"]);
        let conn = d.conn().await;
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let dev_path = manager
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .unwrap();
        let guest_path = manager
            .launch_guest(
                std::slice::from_ref(&dev_path),
                HashMap::from([("payload", Value::from("loop"))]),
            )
            .await
            .unwrap();
        let guest = guest_proxy(&conn, guest_path.clone()).await;
        let pid = guest.pid().await.unwrap();
        let uuid = guest.uuid().await.unwrap();
        assert!(uuid::Uuid::parse_str(&uuid).is_ok(), "{uuid}");
        // Wait for the guest to run its payload: by then the jail and the filter are in place.
        let proc_dir = format!("/proc/{pid}");
        assert!(
            eventually(10, async || {
                std::fs::read_to_string(format!("{proc_dir}/status"))
                    .map(|s| status_field(&s, "Seccomp:") == "2")
                    .unwrap_or(false)
            })
            .await,
            "the VMM never came under seccomp"
        );
        let status = std::fs::read_to_string(format!("{proc_dir}/status")).unwrap();
        // Launched by root: the VMM runs as the dedicated user (vgpud-vmm, else nobody).
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let expected = nix::unistd::User::from_name("vgpud-vmm")
            .unwrap()
            .unwrap_or(nobody);
        let uid = expected.uid.as_raw().to_string();
        assert_eq!(
            status_field(&status, "Uid:")
                .split_whitespace()
                .collect::<Vec<_>>(),
            [uid.as_str(); 4]
        );
        assert_ne!(
            status_field(&status, "Gid:").split_whitespace().next(),
            Some("0")
        );
        for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(status_field(&status, caps), "0000000000000000", "{caps}");
        }
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
        // An empty root: nothing of the host's file system is reachable.
        let root: Vec<_> = std::fs::read_dir(format!("{proc_dir}/root"))
            .unwrap()
            .collect();
        assert!(root.is_empty(), "{root:?}");
        assert_ne!(
            std::fs::read_link(format!("{proc_dir}/ns/mnt")).unwrap(),
            std::fs::read_link("/proc/self/ns/mnt").unwrap()
        );
        // Limits vgpud set: locked memory for DMA and data bounded by the guest's size.
        let limits = std::fs::read_to_string(format!("{proc_dir}/limits")).unwrap();
        let memlock = limits
            .lines()
            .find(|l| l.starts_with("Max locked memory"))
            .unwrap();
        // Without CAP_SYS_RESOURCE (this container) vgpud cannot raise past its hard limit.
        let mut hard = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct on this stack frame.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut hard) };
        assert_eq!(got, 0);
        let want = ((64u64 + 64) << 20).min(hard.rlim_max);
        assert!(memlock.contains(&format!(" {want} ")), "{memlock}");
        let data = limits
            .lines()
            .find(|l| l.starts_with("Max data size"))
            .unwrap();
        let want = (64u64 << 20) + (1 << 30);
        assert!(data.contains(&format!(" {want} ")), "{data}");
        // The VM's UUID is on its command line, QEMU style.
        let cmdline = std::fs::read(format!("{proc_dir}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let at = args.iter().position(|a| a == "-uuid").expect("-uuid");
        assert_eq!(args[at + 1], uuid);
        guest.stop().await.unwrap();
        assert_eq!(guest.exit_status().await.unwrap(), 143);
        d.stop();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_syscall_outside_the_filter_kills_the_vmm_and_the_guest_says_so() {
    tokio::time::timeout(LIMIT, async {
        // The test switch: the VMM's allow-list without ioctl, which KVM_RUN needs.
        let d = Daemon::start_with_env(
            &["nvidia-t4"],
            &[],
            &[(vgpud_daemon::manager::guests::SECCOMP_WITHOUT_ENV, "ioctl")],
        );
        let conn = d.conn().await;
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let dev_path = manager
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .unwrap();
        let guest_path = manager
            .launch_guest(std::slice::from_ref(&dev_path), HashMap::new())
            .await
            .unwrap();
        let guest = guest_proxy(&conn, guest_path.clone()).await;
        assert!(
            eventually(20, async || guest.state().await.unwrap() != "running").await,
            "the VMM was not killed"
        );
        assert_eq!(guest.state().await.unwrap(), "crashed");
        assert_eq!(guest.exit_status().await.unwrap(), 128 + libc::SIGSYS);
        d.stop();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_descriptors_and_paths_are_refused() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4"]);
        let conn = d.conn().await;
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let dev_path = manager
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .unwrap();
        for (key, value) in [
            ("kernel", "/boot/vmlinuz"),
            ("initrd", "/boot/initrd.img"),
            ("payload_file", "/etc/shadow"),
        ] {
            let err = manager
                .launch_guest(
                    std::slice::from_ref(&dev_path),
                    HashMap::from([(key, Value::from(value))]),
                )
                .await
                .unwrap_err();
            let text = error_name(&err);
            assert!(
                text.starts_with("org.vgpud1.Error.InvalidArgument")
                    && text.contains("file descriptor (h)"),
                "{key}: {text}"
            );
        }
        let err = manager
            .launch_guest(
                std::slice::from_ref(&dev_path),
                HashMap::from([("payload", Value::from("/etc/shadow"))]),
            )
            .await
            .unwrap_err();
        let text = error_name(&err);
        assert!(text.contains("not built in"), "{text}");
        // A descriptor of a file that is no kernel is refused before any VMM starts.
        let dir = tempfile::tempdir().unwrap();
        let not_kernel = dir.path().join("passwd");
        std::fs::write(&not_kernel, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let f = std::fs::File::open(&not_kernel).unwrap();
        let err = manager
            .launch_guest(
                std::slice::from_ref(&dev_path),
                HashMap::from([("kernel", Value::Fd((&f).into()))]),
            )
            .await
            .unwrap_err();
        let text = error_name(&err);
        assert!(text.contains("not a Linux kernel"), "{text}");
        // The tiny 64-bit kernel by descriptor boots and prints its command line.
        let kernel = dir.path().join("tiny.elf");
        std::fs::write(&kernel, vgpud_vmm::payload::long_mode_elf().unwrap()).unwrap();
        let k = std::fs::File::open(&kernel).unwrap();
        let guest_path = manager
            .launch_guest(
                std::slice::from_ref(&dev_path),
                HashMap::from([
                    ("kernel", Value::Fd((&k).into())),
                    ("cmdline", Value::from("by=descriptor")),
                ]),
            )
            .await
            .unwrap();
        drop(k);
        let guest = guest_proxy(&conn, guest_path.clone()).await;
        assert!(eventually(60, async || guest.state().await.unwrap() != "running").await);
        let log = std::fs::read_to_string(guest.serial_log().await.unwrap()).unwrap();
        assert!(log.contains("elf64: cmdline=by=descriptor"), "{log}");
        assert_eq!(guest.exit_status().await.unwrap(), 0, "{log}");
        d.stop();
    })
    .await
    .unwrap();
}

/// Whether the guest object is still on the bus.
async fn on_bus(guest: &GuestProxy<'_>) -> bool {
    match guest.state().await {
        Ok(_) => true,
        Err(zbus::Error::FDO(e)) if matches!(*e, zbus::fdo::Error::UnknownObject(_)) => false,
        Err(e) => panic!("{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ended_guest_leaves_the_bus_after_its_retention() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start_with_env(
            &["nvidia-t4"],
            &[],
            &[(vgpud_daemon::manager::guests::RETENTION_ENV, "2")],
        );
        let conn = d.conn().await;
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let dev_path = manager
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .unwrap();
        let guest_path = manager
            .launch_guest(
                std::slice::from_ref(&dev_path),
                HashMap::from([("payload", Value::from("halt"))]),
            )
            .await
            .unwrap();
        let guest = guest_proxy(&conn, guest_path.clone()).await;
        let log = std::path::PathBuf::from(guest.serial_log().await.unwrap());
        assert!(eventually(20, async || guest.state().await.unwrap() == "exited").await);
        assert!(log.exists());
        // Kept for the retention, then gone with its log.
        assert!(on_bus(&guest).await);
        assert!(eventually(20, async || !on_bus(&guest).await).await);
        assert!(!log.exists(), "{}", log.display());
        d.stop();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn forget_removes_an_ended_guest_and_refuses_a_running_one() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4"]);
        let conn = d.conn().await;
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let dev_path = manager
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .unwrap();
        let guest_path = manager
            .launch_guest(
                std::slice::from_ref(&dev_path),
                HashMap::from([("payload", Value::from("loop"))]),
            )
            .await
            .unwrap();
        let guest = guest_proxy(&conn, guest_path.clone()).await;
        let err = guest.forget().await.unwrap_err();
        assert!(
            error_name(&err).starts_with("org.vgpud1.Error.Busy"),
            "{}",
            error_name(&err)
        );
        guest.stop().await.unwrap();
        guest.forget().await.unwrap();
        assert!(!on_bus(&guest).await);
        d.stop();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_daemon_adopts_a_running_vmm() {
    tokio::time::timeout(LIMIT, async {
        let state = tempfile::tempdir().unwrap();
        let state_arg = format!("--state-dir={}", state.path().display());
        let d = Daemon::start_with(&["nvidia-t4"], &[&state_arg]);
        let conn = d.conn().await;
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let dev_path = manager
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .unwrap();
        let guest_path = manager
            .launch_guest(
                std::slice::from_ref(&dev_path),
                HashMap::from([("payload", Value::from("loop"))]),
            )
            .await
            .unwrap();
        let guest = guest_proxy(&conn, guest_path.clone()).await;
        let (pid, uuid) = (guest.pid().await.unwrap(), guest.uuid().await.unwrap());
        // vgpud dies without a chance to stop its guests; the VMM goes on.
        let daemon = nix::unistd::Pid::from_raw(d.pid() as i32);
        nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGKILL).unwrap();
        // The simulator died with it: detach its mount, which nobody serves any more.
        let sim_root = d.sim_root.clone();
        drop(d);
        nix::mount::umount2(&sim_root, nix::mount::MntFlags::MNT_DETACH).unwrap();
        drop(conn);
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

        let d = Daemon::start_with(&["nvidia-t4"], &[&state_arg]);
        let conn = d.conn().await;
        let guest = guest_proxy(&conn, guest_path.clone()).await;
        assert_eq!(guest.state().await.unwrap(), "running");
        assert_eq!(guest.pid().await.unwrap(), pid);
        assert_eq!(guest.uuid().await.unwrap(), uuid);
        // A new guest gets a new id, not the adopted one's.
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let dev2 = manager
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .unwrap();
        let second = manager
            .launch_guest(
                std::slice::from_ref(&dev2),
                HashMap::from([("payload", Value::from("halt"))]),
            )
            .await
            .unwrap();
        assert_ne!(second, guest_path);
        // Stopped through its pidfd: ended, its status unknown to a daemon that is not its parent.
        guest.stop().await.unwrap();
        assert_eq!(guest.state().await.unwrap(), "exited");
        assert_eq!(guest.exit_status().await.unwrap(), -1);
        assert!(
            eventually(10, async || !std::path::Path::new(&format!(
                "/proc/{pid}/cmdline"
            ))
            .exists()
                || std::fs::read(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .is_empty())
            .await
        );
        d.stop();
    })
    .await
    .unwrap();
}
