//! The real daemon (`vgpud --simulate`: vgpud-sim + a private dbus-daemon) driven by a zbus
//! client and by busctl, as the README shows.

#[path = "common/daemon.rs"]
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{device_proxy, eventually, manager_proxy, text, Daemon};
use futures_util::StreamExt;
use vgpud_api::proxies::{MdevTypeProxy, ParentProxy};
use zbus::zvariant::Value;

const T4: &str = "0000:20:00.0";
const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn busctl_create_by_type_name_makes_the_device() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4:2", "mtty"]);
        let out = d.manager_call("CreateDevice", &["sa{sv}", "GRID T4-2Q", "0"]);
        assert!(out.status.success(), "{}", text(&out));
        let reply = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(reply.starts_with("o \"/org/vgpud/devices/"), "{reply}");
        let devices = d.mdev_devices();
        assert_eq!(devices.len(), 1);
        assert!(
            reply.contains(&devices[0].replace('-', "_")),
            "{reply} vs {devices:?}"
        );
        let link = std::fs::read_link(d.sys(&format!("bus/mdev/devices/{}/mdev_type", devices[0])))
            .unwrap();
        assert_eq!(link.file_name().unwrap(), "nvidia-231");
        d.stop();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_type_is_not_found_and_writes_nothing() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4"]);
        let out = d.manager_call("CreateDevice", &["sa{sv}", "GRID T9-99Q", "0"]);
        assert!(!out.status.success());
        let conn = d.conn().await;
        let m = manager_proxy(&conn).await;
        let err = m.create_device("GRID T9-99Q", HashMap::new()).await.unwrap_err();
        assert!(matches!(&err, zbus::Error::MethodError(n, _, _) if n.as_str() == "org.vgpud1.Error.NotFound"), "{err:?}");
        assert!(d.mdev_devices().is_empty());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_arguments_are_invalid_and_write_nothing() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4"]);
        let out = d.manager_call("CreateDevice", &["sa{sv}", "GRID T4-2Q", "1", "uuid", "s", "not-a-uuid"]);
        assert!(!out.status.success());
        assert!(text(&out).contains("not-a-uuid"), "{}", text(&out));
        let conn = d.conn().await;
        let m = manager_proxy(&conn).await;
        for (key, value) in [
            ("uuid", Value::from("../../etc/passwd")),
            ("parent", Value::from("../..")),
            ("parent", Value::from(7u32)),
            ("colour", Value::from("blue")),
        ] {
            let err = m.create_device("GRID T4-2Q", HashMap::from([(key, value)])).await.unwrap_err();
            assert!(
                matches!(&err, zbus::Error::MethodError(n, _, _) if n.as_str() == "org.vgpud1.Error.InvalidArgument"),
                "{key}: {err:?}"
            );
        }
        let err = m.create_device("", HashMap::new()).await.unwrap_err();
        assert!(matches!(&err, zbus::Error::MethodError(n, _, _) if n.as_str() == "org.vgpud1.Error.InvalidArgument"));
        assert!(d.mdev_devices().is_empty());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tree_and_properties_describe_the_host() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4", "mtty"]);
        let tree = text(&d.busctl(&["tree", "org.vgpud"]));
        assert!(
            tree.contains("/org/vgpud/parents/0000_3a20_3a00_2e0/types/nvidia_2d231"),
            "{tree}"
        );
        assert!(tree.contains("/org/vgpud/parents/mtty"), "{tree}");
        let intro = text(&d.busctl(&["introspect", "org.vgpud", "/org/vgpud"]));
        assert!(
            intro.contains("org.vgpud1.Manager") && intro.contains(".CreateDevice"),
            "{intro}"
        );
        assert!(
            intro.contains("org.freedesktop.DBus.ObjectManager"),
            "{intro}"
        );
        let p = "/org/vgpud/parents/0000_3a20_3a00_2e0";
        let vendor = text(&d.busctl(&[
            "get-property",
            "org.vgpud",
            p,
            "org.vgpud1.Parent",
            "VendorId",
        ]));
        assert_eq!(vendor.trim(), "q 4318"); // 0x10de
        let conn = d.conn().await;
        let parent = ParentProxy::builder(&conn)
            .path(p)
            .unwrap()
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        assert_eq!(parent.name().await.unwrap(), T4);
        assert_eq!(parent.backend().await.unwrap(), "mdev");
        assert_eq!(parent.driver().await.unwrap(), "nvidia");
        assert_eq!(parent.types().await.unwrap().len(), 17);
        let mtty = TypeProxyAt::at(&conn, "/org/vgpud/parents/mtty/types/mtty_2d2").await;
        assert_eq!(mtty.name().await.unwrap(), "Dual port serial");
        assert_eq!(mtty.description().await.unwrap(), "");
        assert_eq!(mtty.available_instances().await.unwrap(), 12);
    })
    .await
    .unwrap();
}

struct TypeProxyAt;
impl TypeProxyAt {
    async fn at(conn: &zbus::Connection, path: &str) -> MdevTypeProxy<'static> {
        MdevTypeProxy::builder(conn)
            .path(path.to_owned())
            .unwrap()
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn available_instances_follow_creates_and_the_one_type_rule() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4"]);
        let conn = d.conn().await;
        let base = "/org/vgpud/parents/0000_3a20_3a00_2e0/types";
        let q2 = TypeProxyAt::at(&conn, &format!("{base}/nvidia_2d231")).await;
        let q4 = TypeProxyAt::at(&conn, &format!("{base}/nvidia_2d232")).await;
        assert_eq!(q2.available_instances().await.unwrap(), 8);
        let path = q2.create(HashMap::new()).await.unwrap();
        assert_eq!(q2.available_instances().await.unwrap(), 7);
        assert_eq!(q4.available_instances().await.unwrap(), 0);
        assert_eq!(q2.devices().await.unwrap(), vec![path.clone()]);
        let dev = device_proxy(&conn, path.clone()).await;
        assert_eq!(dev.type_id().await.unwrap(), "nvidia-231");
        assert!(dev.active().await.unwrap());
        assert!(!dev.in_use().await.unwrap());
        // The kernel's answer wins over the advisory count: a second type is refused.
        let err = q4.create(HashMap::new()).await.unwrap_err();
        assert!(matches!(&err, zbus::Error::MethodError(n, _, _) if n.as_str() == "org.vgpud1.Error.NoCapacity"), "{err:?}");
        dev.remove(HashMap::new()).await.unwrap();
        assert_eq!(q4.available_instances().await.unwrap(), 4);
        assert!(d.mdev_devices().is_empty());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_made_by_others_appear_and_go() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["mtty"]);
        let conn = d.conn().await;
        let om = zbus::fdo::ObjectManagerProxy::builder(&conn)
            .destination("org.vgpud").unwrap()
            .path("/org/vgpud").unwrap()
            .build().await.unwrap();
        let mut added = om.receive_interfaces_added().await.unwrap();
        let uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
        std::fs::write(d.sys("class/mdev_bus/mtty/mdev_supported_types/mtty-1/create"), format!("{uuid}\n")).unwrap();
        let signal = tokio::time::timeout(Duration::from_secs(10), added.next()).await.unwrap().unwrap();
        let args = signal.args().unwrap();
        assert_eq!(args.object_path().as_str(), "/org/vgpud/devices/83b8f4f2_509f_382f_3c1e_e6bfe0fa1001");
        let m = manager_proxy(&conn).await;
        let path = m.get_device(uuid).await.unwrap();
        let dev = device_proxy(&conn, path).await;
        assert!(eventually(5, async || dev.type_id().await.map(|t| t == "mtty-1").unwrap_or(false)).await);
        let mut removed = om.receive_interfaces_removed().await.unwrap();
        std::fs::write(d.sys(&format!("bus/mdev/devices/{uuid}/remove")), "1").unwrap();
        tokio::time::timeout(Duration::from_secs(10), removed.next()).await.unwrap().unwrap();
        let err = m.get_device(uuid).await.unwrap_err();
        assert!(matches!(&err, zbus::Error::MethodError(n, _, _) if n.as_str() == "org.vgpud1.Error.NotFound"), "{err:?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_unplug_and_replug_follow_the_simulator() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4:2"]);
        let conn = d.conn().await;
        let p = "/org/vgpud/parents/0000_3a20_3a00_2e0";
        let exists = async |conn: &zbus::Connection| {
            let parent = ParentProxy::builder(conn)
                .path(p)
                .unwrap()
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .unwrap();
            parent.name().await.is_ok()
        };
        assert!(exists(&conn).await);
        d.ctl_ok(&["unplug", T4]);
        assert!(
            eventually(10, async || !exists(&conn).await).await,
            "the parent stayed after unplug"
        );
        d.ctl_ok(&["plug", "--parent", T4]);
        assert!(
            eventually(10, async || exists(&conn).await).await,
            "the parent did not come back"
        );
        let t = TypeProxyAt::at(&conn, &format!("{p}/types/nvidia_2d231")).await;
        assert_eq!(t.available_instances().await.unwrap(), 8);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_held_device_is_busy_and_force_waits_without_blocking_others() {
    tokio::time::timeout(LIMIT, async {
        let d = Daemon::start(&["nvidia-t4"]);
        let conn = d.conn().await;
        let m = manager_proxy(&conn).await;
        let path = m.create_device("GRID T4-1Q", HashMap::new()).await.unwrap();
        let dev = device_proxy(&conn, path).await;
        let uuid = dev.uuid().await.unwrap();
        d.ctl_ok(&["hold", &uuid]);
        let err = dev.remove(HashMap::new()).await.unwrap_err();
        let zbus::Error::MethodError(name, msg, _) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(name.as_str(), "org.vgpud1.Error.Busy");
        assert!(
            msg.as_deref()
                .unwrap_or("")
                .contains(&format!("pid {}", d.pid())),
            "{msg:?}"
        );
        assert!(d.mdev_devices().contains(&uuid));
        // A forced remove waits for the holder; meanwhile the daemon answers others.
        let conn2 = conn.clone();
        let dev_path = dev.inner().path().to_owned();
        let forced = tokio::spawn(async move {
            let dev = device_proxy(&conn2, dev_path).await;
            dev.remove(HashMap::from([
                ("force", Value::from(true)),
                ("timeout_ms", Value::from(20_000u64)),
            ]))
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !forced.is_finished(),
            "the forced remove returned while the device was held"
        );
        let other = m.create_device("GRID T4-1Q", HashMap::new()).await.unwrap();
        assert!(other.as_str().starts_with("/org/vgpud/devices/"));
        d.ctl_ok(&["release", &uuid]);
        forced.await.unwrap().unwrap();
        assert!(!d.mdev_devices().contains(&uuid));
    })
    .await
    .unwrap();
}
