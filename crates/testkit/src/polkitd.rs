//! A real polkit authority on a private bus, for `vgpud --simulate` and tests: polkitd runs in
//! its own mount namespace where vgpud's actions (and optional rules) are bind-mounted over
//! /usr/share/polkit-1/actions and /etc/polkit-1/rules.d, so the host's files are never touched.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CANDIDATES: &[&str] = &[
    "/usr/lib/polkit-1/polkitd",
    "/usr/libexec/polkitd",
    "/usr/lib/polkit/polkitd",
];

/// Debian's bus policy for polkitd, used when the host has none to copy.
pub const BUS_POLICY: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="polkitd">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
  <policy user="polkitd">
    <allow send_interface="org.freedesktop.PolicyKit1.AuthenticationAgent"/>
  </policy>
</busconfig>
"#;

/// vgpud's polkit actions, as installed.
pub const ACTIONS: &str = include_str!("../../../policies/org.vgpud.policy");

pub fn polkitd_path() -> Option<PathBuf> {
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.exists())
}

pub struct Polkitd {
    child: Child,
    dir: PathBuf,
}

impl Polkitd {
    /// Starts polkitd on the bus at `address` with `actions` (file name, XML) and `rules`
    /// (file name, JavaScript); returns once it owns org.freedesktop.PolicyKit1. Needs root
    /// (for the mount namespace; polkitd drops to its own user).
    pub fn start(
        address: &str,
        actions: &[(&str, &str)],
        rules: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let binary = polkitd_path().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "polkitd is not installed (apt install polkitd)",
            )
        })?;
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vgpud-polkit-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let actions_dir = dir.join("actions");
        let rules_dir = dir.join("rules.d");
        std::fs::create_dir_all(&actions_dir)?;
        std::fs::create_dir_all(&rules_dir)?;
        for (dir_, files) in [(&actions_dir, actions), (&rules_dir, rules)] {
            for (name, text) in files {
                if name.contains('/') || name.starts_with('.') {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("bad file name {name:?}"),
                    ));
                }
                std::fs::write(dir_.join(name), text)?;
            }
        }
        // polkitd reads its rules as user polkitd.
        set_mode(&dir, 0o755)?;
        set_mode(&actions_dir, 0o755)?;
        set_mode(&rules_dir, 0o755)?;
        let script = format!(
            "mount --bind {a} /usr/share/polkit-1/actions && mount --bind {r} /etc/polkit-1/rules.d && exec {b}",
            a = shell_quote(&actions_dir),
            r = shell_quote(&rules_dir),
            b = shell_quote(&binary),
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", address)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let ready = loop {
            match rx.recv_timeout(Duration::from_secs(15)) {
                Ok(line) if line.contains("Acquired the name org.freedesktop.PolicyKit1") => {
                    break true
                }
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        // Keep draining its output so polkitd never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let me = Self { child, dir };
        if !ready {
            return Err(std::io::Error::other(
                "polkitd did not take its bus name within 15 s",
            ));
        }
        Ok(me)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

impl Drop for Polkitd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
