//! `vgpud --metrics-listen`: what the daemon serves is checked by Debian's real `promtool`, and
//! a real Prometheus server scrapes it; the values follow the simulated host and the calls made.

#[path = "common/daemon.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// GET http://127.0.0.1:port{path}: (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

fn scrape(port: u16) -> String {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// The value of the sample `name{labels}` in `text`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

fn start(port: u16) -> Daemon {
    Daemon::start_with(
        &["mtty"],
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    )
}

#[test]
fn metrics_follow_the_host_and_the_calls() {
    let port = free_port();
    let d = start(port);
    let before = scrape(port);
    let avail =
        r#"vgpud_available_instances{parent="mtty",type="mtty-1",name="Single port serial"}"#;
    assert_eq!(sample(&before, avail), 24.0);
    assert_eq!(sample(&before, "vgpud_parents"), 1.0);
    assert_eq!(sample(&before, r#"vgpud_devices{state="active"}"#), 0.0);
    assert!(sample(&before, "vgpud_startup_seconds") > 0.0);

    let out = d.manager_call("CreateDevice", &["sa{sv}", "mtty-2", "0"]);
    assert!(out.status.success(), "{out:?}");
    let out = d.manager_call("CreateDevice", &["sa{sv}", "no-such-type", "0"]);
    assert!(!out.status.success());

    let after = scrape(port);
    assert_eq!(sample(&after, avail), 22.0);
    assert_eq!(
        sample(
            &after,
            r#"vgpud_used_instances{parent="mtty",type="mtty-2"}"#
        ),
        1.0
    );
    assert_eq!(sample(&after, r#"vgpud_devices{state="active"}"#), 1.0);
    assert_eq!(
        sample(
            &after,
            r#"vgpud_operations_total{method="CreateDevice",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"vgpud_operations_total{method="CreateDevice",result="NotFound"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"vgpud_operation_duration_seconds_count{method="CreateDevice"}"#
        ),
        2.0
    );
    assert!(
        sample(&after, "vgpud_uevents_total") >= 2.0,
        "the create's add and bind"
    );
    d.stop();
}

#[test]
fn promtool_accepts_what_is_served() {
    let port = free_port();
    let d = start(port);
    let out = d.manager_call("CreateDevice", &["sa{sv}", "mtty-1", "0"]);
    assert!(out.status.success(), "{out:?}");
    let text = scrape(port);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus, installed by scripts/install-deps)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    d.stop();
}

#[test]
fn other_paths_and_methods_are_refused() {
    let port = free_port();
    let d = start(port);
    assert_eq!(get(port, "/").0, "HTTP/1.1 404 Not Found");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"DELETE /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request"), "{text}");
    d.stop();
}

#[test]
fn a_non_loopback_listen_address_is_refused() {
    let out = Command::new(common::VGPUD)
        .args(["--simulate", "mtty", "--metrics-listen", "0.0.0.0:9400"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a loopback address"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_prometheus_server_scrapes_vgpud() {
    let port = free_port();
    let d = start(port);
    let out = d.manager_call("CreateDevice", &["sa{sv}", "mtty-2", "0"]);
    assert!(out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vgpud\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let _server = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "prometheus runs (Debian package prometheus, installed by scripts/install-deps)",
            ),
    );
    let query = "/api/v1/query?query=vgpud_used_instances%7Btype%3D%22mtty-2%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", web)) {
            drop(s);
            let (_, body) = get(web, query);
            if body.contains(r#""value":["#) {
                last = body;
                break;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let v: serde_json::Value =
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"));
    let result = &v["data"]["result"][0];
    assert_eq!(result["metric"]["job"], "vgpud", "{v}");
    assert_eq!(result["metric"]["parent"], "mtty", "{v}");
    assert_eq!(result["value"][1], "1", "{v}");
    d.stop();
}
