//! mdevctl's call-out and notifier scripts under vgpud, side by side with Debian's mdevctl
//! 1.2.0 running the very same scripts: a recording call-out and notifier log their arguments
//! and stdin for each start, stop, define, modify and undefine, done once through vgpuctl and
//! once through mdevctl (in a mount namespace where the test's definitions dir is
//! /etc/mdevctl.d and the simulator is /sys); the two logs must read the same. A refusing
//! call-out stops vgpud's create with an error naming the script.

#[path = "common/daemon.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::Daemon;

const U1: &str = "c0ffee00-0000-4000-8000-0000000000c1";
const U2: &str = "c0ffee00-0000-4000-8000-0000000000c2";
/// mdevctl's twins of U1 and U2 (the same device cannot be made twice).
const M1: &str = "c0ffee00-0000-4000-8000-0000000000d1";
const M2: &str = "c0ffee00-0000-4000-8000-0000000000d2";

fn script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct Setup {
    _tmp: tempfile::TempDir,
    defs: std::path::PathBuf,
    log: std::path::PathBuf,
    daemon: Daemon,
}

fn setup(callout_body: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let defs = tmp.path().join("mdevctl.d");
    let log = tmp.path().join("log");
    let record = format!("echo \"$0 $* stdin=$(cat)\" >> {}", log.display());
    script(
        &defs.join("scripts.d/callouts/50-record"),
        &format!("{callout_body}\n{record}\nexit 0"),
    );
    script(&defs.join("scripts.d/notifiers/50-notify"), &record);
    let lib = tmp.path().join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let daemon = Daemon::start_with(
        &["mtty"],
        &[
            "--definitions-dir",
            defs.to_str().unwrap(),
            "--mdevctl-lib-dir",
            lib.to_str().unwrap(),
        ],
    );
    Setup {
        _tmp: tmp,
        defs,
        log,
        daemon,
    }
}

impl Setup {
    /// mdevctl with the test's definitions dir as /etc/mdevctl.d and the simulator as /sys.
    fn mdevctl(&self, args: &str) {
        let inner = format!(
            "mount --bind {} /etc/mdevctl.d && mount --bind {} /sys && exec mdevctl {args}",
            self.defs.display(),
            self.daemon.sim_root.display()
        );
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &inner])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mdevctl {args}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The log since the last call, and empties it.
    fn take_log(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        std::fs::write(&self.log, "").unwrap();
        text.lines().map(str::to_owned).collect()
    }
}

#[test]
fn vgpud_runs_the_scripts_as_mdevctl_does() {
    let s = setup("");
    let steps: [(&[&str], String); 5] = [
        (
            &["create", "mtty-1", "--uuid", U1],
            format!("start -u {M1} -p mtty -t mtty-1"),
        ),
        (&["remove", U1], format!("stop -u {M1}")),
        (
            &["define", "mtty-1", "--parent", "mtty", "--uuid", U2],
            format!("define -u {M2} -p mtty -t mtty-1"),
        ),
        (&["autostart", U2, "on"], format!("modify -u {M2} --auto")),
        (&["undefine", U2], format!("undefine -u {M2}")),
    ];
    for (vgpuctl_args, mdevctl_args) in steps {
        s.take_log();
        s.daemon.vgpuctl_ok(vgpuctl_args);
        // mdevctl sees the same scripts under /etc/mdevctl.d (its bind mount).
        let here = s.defs.display().to_string();
        let by_vgpud: Vec<String> = s
            .take_log()
            .iter()
            .map(|l| l.replace(&here, "/etc/mdevctl.d"))
            .collect();
        s.mdevctl(&mdevctl_args);
        let by_mdevctl: Vec<String> = s
            .take_log()
            .iter()
            .map(|l| l.replace(M1, U1).replace(M2, U2))
            .collect();
        assert!(
            !by_vgpud.is_empty(),
            "vgpud ran no script for {vgpuctl_args:?}"
        );
        assert_eq!(
            by_vgpud, by_mdevctl,
            "vgpuctl {vgpuctl_args:?} and mdevctl {mdevctl_args} ran the scripts differently"
        );
    }
}

#[test]
fn a_refusing_call_out_stops_the_create_and_names_the_script() {
    let s =
        setup(r#"case "$*" in *"-t mtty-2 -e pre"*) echo "no dual ports here" >&2; exit 1;; esac"#);
    let out = s.daemon.vgpuctl(&["create", "mtty-2", "--uuid", U1]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("50-record"), "{err}");
    assert!(!s.daemon.sys("bus/mdev/devices").join(U1).exists());
    let log = s.take_log();
    // The pre event refused (nothing recorded by it), then every notifier with state none.
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0].contains("50-notify -t mtty-2 -e notify -a start -s none"),
        "{log:?}"
    );
    // Another type passes through the same script.
    s.daemon.vgpuctl_ok(&["create", "mtty-1", "--uuid", U2]);
    let log = s.take_log();
    assert_eq!(log.len(), 3, "pre, post and notify: {log:?}");
    assert!(log[1].contains("-e post -a start -s success"), "{log:?}");
}
