//! mdevctl's call-out and notifier scripts, run as mdevctl 1.2 runs them (its mdevctl.rst,
//! "CALL-OUT EVENT SCRIPTS" and "NOTIFICATION EVENT SCRIPTS"), for every start, stop, define,
//! undefine and modify vgpud performs, so vendor integrations shipped as mdevctl scripts work
//! unchanged under vgpud.
//!
//! Each script gets `-t TYPE -e EVENT -a ACTION -s STATE -u UUID -p PARENT` and the device's
//! JSON on stdin. The first call-out script (in name order; `<definitions-dir>/scripts.d/
//! callouts`, then `/usr/lib/mdevctl/scripts.d/callouts`) that does not exit 2 ("not my device
//! type") handles the device: its non-zero exit on `pre` aborts the operation; `post` follows
//! the operation with state success or failure and cannot change it. Every notifier then runs
//! (state none after a refused pre). Each script is bounded in time and killed past it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vgpud_model::error::{Error, Result};

/// The operation, in mdevctl's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Define,
    Undefine,
    Modify,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Define => "define",
            Action::Undefine => "undefine",
            Action::Modify => "modify",
        }
    }
}

/// The device a script is told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutDevice {
    pub uuid: String,
    pub parent: String,
    pub type_id: String,
    pub autostart: bool,
    pub attrs: Vec<(String, String)>,
}

impl CalloutDevice {
    /// The device's configuration as mdevctl 1.2 writes it to a script's stdin: compact JSON,
    /// keys in mdevctl's order (mdev_type, start, attrs; seen side by side in tests/callouts.rs).
    pub fn config_json(&self) -> String {
        let attrs: Vec<String> = self
            .attrs
            .iter()
            .map(|(k, v)| format!("{{{}:{}}}", json_str(k), json_str(v)))
            .collect();
        format!(
            "{{\"mdev_type\":{},\"start\":{},\"attrs\":[{}]}}",
            json_str(&self.type_id),
            json_str(if self.autostart { "auto" } else { "manual" }),
            attrs.join(",")
        )
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Where the scripts are and how long each may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callouts {
    /// Searched in this order for the device's call-out script.
    pub callout_dirs: Vec<PathBuf>,
    /// Every script here runs on each notification.
    pub notifier_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

impl Callouts {
    /// mdevctl's places: `<definitions_dir>/scripts.d/{callouts,notifiers}` and
    /// `<lib_dir>/scripts.d/{callouts,notifiers}` (lib_dir: /usr/lib/mdevctl).
    pub fn new(definitions_dir: &Path, lib_dir: &Path) -> Self {
        let under = |base: &Path, what: &str| base.join("scripts.d").join(what);
        Callouts {
            callout_dirs: vec![
                under(definitions_dir, "callouts"),
                under(lib_dir, "callouts"),
            ],
            notifier_dirs: vec![
                under(definitions_dir, "notifiers"),
                under(lib_dir, "notifiers"),
            ],
            timeout: Duration::from_secs(10),
        }
    }

    /// Runs `operation` between the device's `pre` and `post` call-outs and notifies after.
    /// A `pre` that fails aborts with an error naming the script, and `operation` never runs.
    pub fn around<T>(
        &self,
        device: &CalloutDevice,
        action: Action,
        operation: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let script = match self.pre(device, action) {
            Ok(script) => script,
            Err(e) => {
                self.notify(device, action, "none");
                return Err(e);
            }
        };
        let result = operation();
        let state = if result.is_ok() { "success" } else { "failure" };
        if let Some(script) = &script {
            if let Err(e) = run(script, device, "post", action, state, self.timeout) {
                tracing::warn!("post call-out {} failed: {e}", script.display());
            }
        }
        self.notify(device, action, state);
        result
    }

    /// The device's script after its `pre` event: None when no script handles the type.
    fn pre(&self, device: &CalloutDevice, action: Action) -> Result<Option<PathBuf>> {
        for script in scripts(&self.callout_dirs) {
            match run(&script, device, "pre", action, "none", self.timeout) {
                Ok(Ran::Exited(2)) => continue,
                Ok(Ran::Exited(0)) | Ok(Ran::Signalled) => return Ok(Some(script)),
                Ok(Ran::Exited(code)) => {
                    return Err(Error::Failed(format!(
                        "call-out script {} refused to {} {} (exit status {code})",
                        script.display(),
                        action.as_str(),
                        device.uuid
                    )))
                }
                Err(e) => {
                    tracing::warn!("call-out script {} could not run: {e}", script.display());
                    continue;
                }
            }
        }
        Ok(None)
    }

    fn notify(&self, device: &CalloutDevice, action: Action, state: &str) {
        for script in scripts(&self.notifier_dirs) {
            match run(&script, device, "notify", action, state, self.timeout) {
                Ok(Ran::Exited(0)) => {}
                Ok(other) => tracing::debug!("notifier {} ended {other:?}", script.display()),
                Err(e) => tracing::warn!("notifier {} could not run: {e}", script.display()),
            }
        }
    }
}

/// The regular files of `dirs`, each directory's in name order.
fn scripts(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Ran {
    Exited(i32),
    /// Killed by a signal: mdevctl treats it as "no answer" (not a refusal).
    Signalled,
}

/// Runs one script with mdevctl's arguments and the device's JSON on stdin, within `timeout`.
fn run(
    script: &Path,
    device: &CalloutDevice,
    event: &str,
    action: Action,
    state: &str,
    timeout: Duration,
) -> std::io::Result<Ran> {
    let mut child = Command::new(script)
        .args(["-t", &device.type_id, "-e", event, "-a", action.as_str()])
        .args(["-s", state, "-u", &device.uuid, "-p", &device.parent])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A script that does not read its stdin closes the pipe: that is not an error.
        let _ = stdin.write_all(device.config_json().as_bytes());
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if let Some(mut err) = child.stderr.take() {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                if !text.trim().is_empty() {
                    tracing::info!("{}: {}", script.display(), text.trim());
                }
            }
            return Ok(match status.code() {
                Some(code) => Ran::Exited(code),
                None => Ran::Signalled,
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("killed after {} s", timeout.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn device() -> CalloutDevice {
        CalloutDevice {
            uuid: "c0ffee00-0000-4000-8000-000000000001".into(),
            parent: "mtty".into(),
            type_id: "mtty-1".into(),
            autostart: false,
            attrs: vec![("a".into(), "1".into())],
        }
    }

    fn script(dir: &Path, name: &str, body: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn setup() -> (tempfile::TempDir, Callouts) {
        let dir = tempfile::tempdir().unwrap();
        let c = Callouts::new(&dir.path().join("defs"), &dir.path().join("lib"));
        (dir, c)
    }

    #[test]
    fn the_config_is_mdevctls_compact_sorted_json() {
        assert_eq!(
            device().config_json(),
            r#"{"mdev_type":"mtty-1","start":"manual","attrs":[{"a":"1"}]}"#
        );
    }

    #[test]
    fn no_scripts_means_the_operation_just_runs() {
        let (_d, c) = setup();
        assert_eq!(c.around(&device(), Action::Start, || Ok(7)).unwrap(), 7);
    }

    #[test]
    fn a_refusing_pre_aborts_and_names_the_script() {
        let (d, c) = setup();
        script(
            &d.path().join("defs/scripts.d/callouts"),
            "10-vendor",
            "exit 1",
        );
        let mut ran = false;
        let e = c
            .around(&device(), Action::Start, || {
                ran = true;
                Ok(())
            })
            .unwrap_err();
        assert!(!ran);
        assert!(e.to_string().contains("10-vendor"), "{e}");
    }

    #[test]
    fn exit_2_passes_to_the_next_script_and_post_gets_the_outcome() {
        let (d, c) = setup();
        let log = d.path().join("log");
        let dir = d.path().join("defs/scripts.d/callouts");
        script(&dir, "10-other", "exit 2");
        script(
            &dir,
            "20-mine",
            &format!("echo \"$@ $(cat)\" >> {}", log.display()),
        );
        let r: Result<()> = c.around(&device(), Action::Stop, || Err(Error::Failed("x".into())));
        assert!(r.is_err());
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("-t mtty-1 -e pre -a stop -s none -u c0ffee00"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("-t mtty-1 -e post -a stop -s failure"),
            "{text}"
        );
        assert!(
            lines[1].ends_with(r#"{"mdev_type":"mtty-1","start":"manual","attrs":[{"a":"1"}]}"#)
        );
    }

    #[test]
    fn every_notifier_runs_with_the_final_state() {
        let (d, c) = setup();
        let log = d.path().join("log");
        for (dir, name) in [
            ("defs/scripts.d/notifiers", "a"),
            ("lib/scripts.d/notifiers", "b"),
        ] {
            script(
                &d.path().join(dir),
                name,
                &format!("echo \"{name} $4 $6 $8\" >> {}", log.display()),
            );
        }
        c.around(&device(), Action::Define, || Ok(())).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "a notify define success\nb notify define success\n"
        );
    }

    #[test]
    fn a_hung_script_is_killed_and_does_not_refuse() {
        let (d, mut c) = setup();
        c.timeout = Duration::from_millis(200);
        script(
            &d.path().join("defs/scripts.d/callouts"),
            "slow",
            "sleep 30",
        );
        let started = Instant::now();
        assert!(c.around(&device(), Action::Start, || Ok(())).is_ok());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
