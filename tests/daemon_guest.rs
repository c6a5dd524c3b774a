//! Manager.LaunchGuest on `vgpud --simulate nvidia-t4`: a `vgpud-vmm` guest with the device
//! emulated from the simulator's description; InUse while it runs, Busy on Remove, Stop.

#[path = "common/daemon.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{eventually, Daemon};
use vgpud::dbus::proxies::{DeviceProxy, GuestProxy, ManagerProxy};
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
        let dev = DeviceProxy::builder(&conn)
            .path(dev_path.clone())
            .unwrap()
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
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
        let guest = GuestProxy::builder(&conn)
            .path(guest_path.clone())
            .unwrap()
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        assert!(guest.emulated().await.unwrap());
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
        let guest = GuestProxy::builder(&conn)
            .path(guest_path.clone())
            .unwrap()
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
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
