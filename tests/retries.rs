//! Boot-aware autostart: a parent that registers before its vendor side is ready (its creates
//! answer EAGAIN for a while) gets its autostart definitions retried with backoff, each pending
//! retry shown in Problems, until they start; the retries stop when the parent goes.

#[path = "common/daemon.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{within, Daemon};

const U: &str = "c0ffee00-0000-4000-8000-0000000000e1";

fn live(d: &Daemon) -> bool {
    d.sys("bus/mdev/devices").join(U).exists()
}

/// An autostart definition on mtty, with mtty unplugged; `fails` creates will answer `errno`.
fn prepared(errno: &str, fails: u32) -> (Daemon, tempfile::TempDir) {
    let defs = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(
        &["mtty"],
        &["--definitions-dir", defs.path().to_str().unwrap()],
    );
    d.ctl_ok(&["unplug", "mtty"]);
    d.vgpuctl_ok(&[
        "define", "mtty-1", "--parent", "mtty", "--uuid", U, "--auto",
    ]);
    d.ctl_ok(&[
        "inject",
        "*mtty-1/create",
        "--errno",
        errno,
        "--count",
        &fails.to_string(),
    ]);
    (d, defs)
}

#[test]
fn autostart_is_retried_until_the_vendor_side_is_ready() {
    let (d, _defs) = prepared("EAGAIN", 3);
    let started = Instant::now();
    d.ctl_ok(&["plug", "--parent", "mtty"]);
    assert!(
        within(10, || d.problems().contains("vendor side not ready")),
        "no pending retry in Problems: {}",
        d.problems()
    );
    let shown = d.problems();
    assert!(shown.contains(U) && shown.contains("mtty"), "{shown}");
    // Three EAGAINs: retried after ~0.5, ~1 and ~2 s (±25 %), then it starts.
    assert!(within(20, || live(&d)), "never started: {}", d.problems());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "three retries cannot take only {took:?}"
    );
    assert!(
        within(5, || !d.problems().contains("vendor side not ready")),
        "the retry stayed in Problems: {}",
        d.problems()
    );
    d.stop();
}

#[test]
fn retries_stop_when_the_parent_goes() {
    let (d, _defs) = prepared("EAGAIN", 1000);
    d.ctl_ok(&["plug", "--parent", "mtty"]);
    assert!(within(10, || d
        .problems()
        .contains("vendor side not ready")));
    d.ctl_ok(&["unplug", "mtty"]);
    assert!(
        within(5, || !d.problems().contains("vendor side not ready")),
        "{}",
        d.problems()
    );
    assert!(!live(&d));
    d.stop();
}

#[test]
fn a_refusal_that_will_not_pass_is_not_retried() {
    let (d, _defs) = prepared("EIO", 1000);
    d.ctl_ok(&["plug", "--parent", "mtty"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !d.problems().contains("vendor side not ready"),
        "{}",
        d.problems()
    );
    assert!(!live(&d));
    d.stop();
}
