//! The busctl commands the README shows, run against the real daemon (`vgpud --simulate` with
//! its own simulator and private bus): tree, introspect, get-property, call, monitor, and the
//! typed errors as an administrator sees them.

#[path = "common/daemon.rs"]
mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use common::{on_manager, Daemon};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use vgpud_api::proxies::ManagerProxy;

const LIMIT: Duration = Duration::from_secs(90);
const T4_TYPES: &str = "/org/vgpud/parents/0000_3a20_3a00_2e0/types";
const T4_2Q: &str = "/org/vgpud/parents/0000_3a20_3a00_2e0/types/nvidia_2d231";

/// What a busctl run printed.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Starts the daemon off the async threads (it blocks until the daemon is ready).
async fn start(profiles: &'static [&'static str]) -> Daemon {
    tokio::task::spawn_blocking(move || Daemon::start(profiles))
        .await
        .expect("the daemon starts")
}

/// `busctl --address=A ARGS`, killed if the test's timeout drops it.
async fn busctl(d: &Daemon, args: &[&str]) -> Out {
    let out = tokio::process::Command::new("busctl")
        .arg(format!("--address={}", d.address))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("busctl runs");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `busctl call org.vgpud /org/vgpud org.vgpud1.Manager CreateDevice 'sa{sv}' TYPE OPTIONS...`.
async fn create_device(d: &Daemon, type_spec: &str, options: &[&str]) -> Out {
    let mut args = vec!["sa{sv}", type_spec];
    args.extend_from_slice(options);
    busctl(d, &on_manager("call", "CreateDevice", &args)).await
}

/// The object path in busctl's rendering of an `o` reply: `o "/org/vgpud/devices/..."`.
fn object_path(reply: &str) -> String {
    reply
        .trim()
        .strip_prefix("o \"")
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not an object path reply: {reply:?}"))
        .to_owned()
}

/// A running `busctl monitor org.vgpud` whose output is collected as it comes.
struct Monitor {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: String,
}

impl Monitor {
    /// Starts the monitor and returns once it is attached to the bus (busctl says so on
    /// stderr after BecomeMonitor succeeded), so nothing sent afterwards is missed.
    async fn start(d: &Daemon) -> Monitor {
        let mut child = tokio::process::Command::new("busctl")
            .arg(format!("--address={}", d.address))
            .args(["monitor", "org.vgpud"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("busctl monitor starts");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        forward(child.stdout.take().expect("piped stdout"), tx.clone());
        forward(child.stderr.take().expect("piped stderr"), tx);
        let mut m = Monitor {
            child,
            lines,
            seen: String::new(),
        };
        m.expect(&["Monitoring bus message stream."]).await;
        m
    }

    /// Reads output until every marker has appeared (in any order), at most 10 s; returns
    /// everything read so far.
    async fn expect(&mut self, markers: &[&str]) -> String {
        self.wait_for(&format!("{markers:?}"), |seen| {
            markers.iter().all(|m| seen.contains(m))
        })
        .await;
        self.seen.clone()
    }

    /// Reads output until one message (busctl starts each with '‣') satisfies `matches`, at
    /// most 10 s; returns that message.
    async fn message(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        // busctl ends each message with an empty line; only whole messages are judged.
        let found = |seen: &str| {
            seen.split('‣')
                .filter(|m| m.ends_with("\n\n"))
                .find(|m| matches(m))
                .map(str::to_owned)
        };
        self.wait_for(what, |seen| found(seen).is_some()).await;
        found(&self.seen).unwrap_or_default()
    }

    async fn wait_for(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let read = async {
            while !done(&self.seen) {
                match self.lines.recv().await {
                    Some(line) => {
                        self.seen.push_str(&line);
                        self.seen.push('\n');
                    }
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
        assert!(
            done(&self.seen),
            "busctl monitor did not show {what} within 10 s; it printed:\n{}",
            self.seen
        );
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn forward(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn tree_lists_parents_and_types() {
    tokio::time::timeout(LIMIT, async {
        let d = start(&["nvidia-t4", "mtty"]).await;
        let out = busctl(&d, &["tree", "org.vgpud"]).await;
        assert!(out.ok, "{}", out.text());
        for path in [
            "/org/vgpud/parents/0000_3a20_3a00_2e0",
            T4_2Q,
            &format!("{T4_TYPES}/nvidia_2d321"),
            "/org/vgpud/parents/mtty",
            "/org/vgpud/parents/mtty/types/mtty_2d1",
            "/org/vgpud/parents/mtty/types/mtty_2d2",
        ] {
            assert!(
                out.stdout.contains(path),
                "{path} missing from:\n{}",
                out.stdout
            );
        }
        let types = out.stdout.matches(&format!("{T4_TYPES}/")).count();
        assert_eq!(types, 17, "a T4 offers 17 types:\n{}", out.stdout);
        assert!(
            !out.stdout.contains("/org/vgpud/devices/"),
            "{}",
            out.stdout
        );
        d.stop();
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn introspect_root_shows_the_manager_and_the_object_manager() {
    tokio::time::timeout(LIMIT, async {
        let d = start(&["nvidia-t4"]).await;
        let out = busctl(&d, &["introspect", "org.vgpud", "/org/vgpud"]).await;
        assert!(out.ok, "{}", out.text());
        for needle in [
            "org.vgpud1.Manager",
            ".CreateDevice",
            ".GetDevice",
            "org.freedesktop.DBus.ObjectManager",
            ".GetManagedObjects",
            ".InterfacesAdded",
            ".InterfacesRemoved",
        ] {
            assert!(
                out.stdout.contains(needle),
                "{needle} missing from:\n{}",
                out.stdout
            );
        }
        let create = out
            .stdout
            .lines()
            .find(|l| l.starts_with(".CreateDevice"))
            .expect("a CreateDevice line");
        let cols: Vec<&str> = create.split_whitespace().collect();
        assert_eq!(cols[1..4], ["method", "sa{sv}", "o"], "{create}");
        d.stop();
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_property_shows_available_instances_of_a_t4_type() {
    tokio::time::timeout(LIMIT, async {
        let d = start(&["nvidia-t4"]).await;
        let out = busctl(
            &d,
            &[
                "get-property",
                "org.vgpud",
                T4_2Q,
                "org.vgpud1.MdevType",
                "AvailableInstances",
            ],
        )
        .await;
        assert!(out.ok, "{}", out.text());
        assert_eq!(out.stdout.trim(), "u 8");
        d.stop();
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn call_create_device_returns_a_device_of_the_named_type() {
    tokio::time::timeout(LIMIT, async {
        let d = start(&["nvidia-t4", "mtty"]).await;
        let out = create_device(&d, "GRID T4-2Q", &["0"]).await;
        assert!(out.ok, "{}", out.text());
        let path = object_path(&out.stdout);
        assert!(path.starts_with("/org/vgpud/devices/"), "{path}");
        let type_id = busctl(
            &d,
            &[
                "get-property",
                "org.vgpud",
                &path,
                "org.vgpud1.Device",
                "TypeId",
            ],
        )
        .await;
        assert!(type_id.ok, "{}", type_id.text());
        assert_eq!(type_id.stdout.trim(), "s \"nvidia-231\"");
        let uuid = busctl(
            &d,
            &[
                "get-property",
                "org.vgpud",
                &path,
                "org.vgpud1.Device",
                "Uuid",
            ],
        )
        .await;
        let uuid = uuid
            .stdout
            .trim()
            .trim_start_matches("s \"")
            .trim_end_matches('"')
            .to_owned();
        assert_eq!(d.mdev_devices(), vec![uuid.clone()]);
        assert_eq!(
            path,
            format!("/org/vgpud/devices/{}", uuid.replace('-', "_"))
        );
        let left = busctl(
            &d,
            &[
                "get-property",
                "org.vgpud",
                T4_2Q,
                "org.vgpud1.MdevType",
                "AvailableInstances",
            ],
        )
        .await;
        assert_eq!(left.stdout.trim(), "u 7");
        d.stop();
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn call_remove_takes_the_device_out_of_the_simulator() {
    tokio::time::timeout(LIMIT, async {
        let d = start(&["nvidia-t4"]).await;
        let created = create_device(&d, "GRID T4-2Q", &["0"]).await;
        assert!(created.ok, "{}", created.text());
        let path = object_path(&created.stdout);
        assert_eq!(d.mdev_devices().len(), 1);
        let out = busctl(
            &d,
            &[
                "call",
                "org.vgpud",
                &path,
                "org.vgpud1.Device",
                "Remove",
                "a{sv}",
                "0",
            ],
        )
        .await;
        assert!(out.ok, "{}", out.text());
        assert_eq!(out.stdout.trim(), "", "Remove returns nothing");
        assert!(d.mdev_devices().is_empty(), "{:?}", d.mdev_devices());
        let tree = busctl(&d, &["tree", "org.vgpud"]).await;
        assert!(!tree.stdout.contains(&path), "{}", tree.stdout);
        let left = busctl(
            &d,
            &[
                "get-property",
                "org.vgpud",
                T4_2Q,
                "org.vgpud1.MdevType",
                "AvailableInstances",
            ],
        )
        .await;
        assert_eq!(left.stdout.trim(), "u 8");
        d.stop();
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_shows_a_create_as_interfaces_added_and_properties_changed() {
    tokio::time::timeout(LIMIT, async {
        let d = start(&["nvidia-t4"]).await;
        let mut monitor = Monitor::start(&d).await;
        let conn = d.conn().await;
        let manager = ManagerProxy::new(&conn).await.expect("a Manager proxy");
        let path = manager
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .expect("CreateDevice succeeds");
        let added = monitor
            .message("InterfacesAdded of the new device", |m| {
                m.contains("Member=InterfacesAdded")
                    && m.contains(&format!("OBJECT_PATH \"{}\";", path.as_str()))
            })
            .await;
        assert!(added.contains("STRING \"org.vgpud1.Device\";"), "{added}");
        assert!(added.contains("STRING \"nvidia-231\";"), "{added}");
        // The 2Q type's count went from 8 to 7.
        monitor
            .message("PropertiesChanged of AvailableInstances to 7", |m| {
                m.contains("Member=PropertiesChanged")
                    && m.contains(&format!("Path={T4_2Q} "))
                    && m.contains("STRING \"AvailableInstances\";")
                    && m.contains("UINT32 7;")
            })
            .await;
        monitor.stop().await;
        d.stop();
    })
    .await
    .expect("the test finished in time");
}

/// A CreateDevice that fails: busctl prints the message naming `shown` and exits non-zero, the
/// monitor sees the error reply named `error`, and nothing is created.
async fn create_fails_with(type_spec: &str, options: &[&str], shown: &str, error: &str) {
    let d = start(&["nvidia-t4"]).await;
    let mut monitor = Monitor::start(&d).await;
    let out = create_device(&d, type_spec, options).await;
    assert!(!out.ok, "{}", out.text());
    assert!(
        out.stderr.contains("Call failed: ") && out.stderr.contains(shown),
        "{}",
        out.text()
    );
    let reply = monitor
        .message("the error reply", |m| m.contains("Type=error"))
        .await;
    assert!(reply.contains(&format!("ErrorName={error} ")), "{reply}");
    assert!(reply.contains(shown.trim_matches('"')), "{reply}");
    assert!(d.mdev_devices().is_empty());
    monitor.stop().await;
    d.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_type_fails_with_not_found() {
    // busctl prints only the message of an error reply; its name shows in the monitor.
    tokio::time::timeout(
        LIMIT,
        create_fails_with(
            "GRID T9-99Q",
            &["0"],
            "\"GRID T9-99Q\"",
            "org.vgpud1.Error.NotFound",
        ),
    )
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_uuid_option_fails_with_invalid_argument() {
    tokio::time::timeout(
        LIMIT,
        create_fails_with(
            "GRID T4-2Q",
            &["1", "uuid", "s", "not-a-uuid"],
            "not-a-uuid",
            "org.vgpud1.Error.InvalidArgument",
        ),
    )
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn external_create_from_a_shell_appears_in_the_tree() {
    tokio::time::timeout(LIMIT, async {
        let d = start(&["mtty"]).await;
        let uuid = "6f2b8a3e-1c4d-4e5f-8a9b-0c1d2e3f4a5b";
        let create = d.sys("class/mdev_bus/mtty/mdev_supported_types/mtty-2/create");
        let status = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("echo {uuid} > {}", create.display()))
            .status()
            .await
            .expect("bash runs");
        assert!(status.success());
        assert_eq!(d.mdev_devices(), vec![uuid.to_owned()]);
        let path = format!("/org/vgpud/devices/{}", uuid.replace('-', "_"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut tree = busctl(&d, &["tree", "org.vgpud"]).await;
        while !tree.stdout.contains(&path) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tree = busctl(&d, &["tree", "org.vgpud"]).await;
        }
        assert!(
            tree.stdout.contains(&path),
            "{path} not in the tree after 2 s:\n{}",
            tree.text()
        );
        let type_id = busctl(
            &d,
            &[
                "get-property",
                "org.vgpud",
                &path,
                "org.vgpud1.Device",
                "TypeId",
            ],
        )
        .await;
        assert_eq!(type_id.stdout.trim(), "s \"mtty-2\"", "{}", type_id.text());
        d.stop();
    })
    .await
    .expect("the test finished in time");
}
