//! The introspection XML in dbus/ is the published API: the running service must match it
//! exactly. `VGPUD_REGENERATE=1 cargo test --test daemon_introspect` rewrites the files after
//! a deliberate API change (review the diff: removing or changing a member breaks clients).

#[path = "common/daemon.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::Daemon;
use vgpud_api::names;
use vgpud_api::proxies::ManagerProxy;
use zbus::zvariant::Value;

/// The `<interface name="NAME">...</interface>` block of an introspection document.
fn interface_block(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<interface name=\"{name}\">"))?;
    let end = xml[start..].find("</interface>")? + start + "</interface>".len();
    Some(xml[start..end].to_owned())
}

/// Comments (zbus puts doc comments in) and indentation do not change the API.
fn normalize(xml: &str) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<!--") {
        out.push_str(&rest[..i]);
        match rest[i..].find("-->") {
            Some(j) => rest = &rest[i + j + 3..],
            None => break,
        }
    }
    out.push_str(rest);
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn running_service_matches_the_published_xml() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let d = Daemon::start(&["mtty"]);
        let conn = d.conn().await;
        let dev = ManagerProxy::new(&conn).await.unwrap().create_device("mtty-1", HashMap::new()).await.unwrap();
        let guest = ManagerProxy::new(&conn)
            .await
            .unwrap()
            .launch_guest(std::slice::from_ref(&dev), HashMap::from([("payload", Value::from("halt"))]))
            .await
            .unwrap();
        let objects = [
            (names::MANAGER_IFACE, names::ROOT_PATH.to_owned()),
            (names::PARENT_IFACE, "/org/vgpud/parents/mtty".to_owned()),
            (names::TYPE_IFACE, "/org/vgpud/parents/mtty/types/mtty_2d1".to_owned()),
            (names::DEVICE_IFACE, dev.as_str().to_owned()),
            (names::GUEST_IFACE, guest.as_str().to_owned()),
        ];
        let regenerate = std::env::var_os("VGPUD_REGENERATE").is_some();
        let mut mismatches = Vec::new();
        for (iface, path) in objects {
            let out = d.busctl(&["--xml-interface", "introspect", names::BUS_NAME, &path]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let xml = String::from_utf8_lossy(&out.stdout).into_owned();
            let live = interface_block(&xml, iface).unwrap_or_else(|| panic!("{iface} missing at {path}"));
            let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus").join(format!("{iface}.xml"));
            let doc = format!(
                "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n{live}\n</node>\n"
            );
            if regenerate {
                std::fs::write(&file, doc).unwrap();
                continue;
            }
            let published = std::fs::read_to_string(&file).unwrap_or_else(|_| panic!("{} is missing", file.display()));
            let published = interface_block(&published, iface).unwrap_or_default();
            if normalize(&published) != normalize(&live) {
                mismatches.push(format!("{iface}:\n--- published\n{published}\n--- running\n{live}"));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
    })
    .await
    .unwrap();
}

#[test]
fn normalize_ignores_comments_and_indentation() {
    assert_eq!(normalize("  <a>\n<!-- x\n y -->\n   <b/>\n"), "<a>\n<b/>");
}
