//! Test fixture: the real `vgpud --simulate` (its own simulator mount and private dbus-daemon)
//! as a child process, with helpers for busctl, `vgpud-sim ctl` and zbus clients.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const VGPUD: &str = env!("CARGO_BIN_EXE_vgpud");
pub const VGPUD_SIM: &str = env!("CARGO_BIN_EXE_vgpud-sim");

pub struct Daemon {
    child: Child,
    pub address: String,
    pub sim_root: PathBuf,
}

impl Daemon {
    pub fn start(profiles: &[&str]) -> Self {
        Self::start_with(profiles, &[])
    }

    pub fn start_with(profiles: &[&str], extra: &[&str]) -> Self {
        Self::start_with_env(profiles, extra, &[])
    }

    pub fn start_with_env(profiles: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(VGPUD);
        cmd.arg("--simulate").args(profiles).args(extra);
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("vgpud starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut address, mut sim_root) = (None, None);
        while address.is_none() || sim_root.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("VGPUD_BUS_ADDRESS=") {
                        address = Some(a.to_owned());
                    }
                    if let Some(r) = line.strip_prefix("VGPUD_SIM_ROOT=") {
                        sim_root = Some(PathBuf::from(r));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("vgpud --simulate did not become ready within 60 s");
                }
            }
        }
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Daemon {
            child,
            address: address.unwrap(),
            sim_root: sim_root.unwrap(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn conn(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .expect("address parses")
            .build()
            .await
            .expect("connects to the private bus")
    }

    pub fn busctl(&self, args: &[&str]) -> Output {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .expect("busctl runs")
    }

    /// `busctl call org.vgpud /org/vgpud org.vgpud1.Manager METHOD ARGS...` as root.
    pub fn manager_call(&self, method: &str, args: &[&str]) -> Output {
        let mut all = vec![
            "call",
            "org.vgpud",
            "/org/vgpud",
            "org.vgpud1.Manager",
            method,
        ];
        all.extend_from_slice(args);
        self.busctl(&all)
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        let out = Command::new(VGPUD_SIM)
            .arg("ctl")
            .arg(&self.sim_root)
            .args(args)
            .output()
            .expect("vgpud-sim ctl runs");
        out
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "vgpud-sim ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sim_root.join(rel)
    }

    /// SIGKILLs the daemon (a crash) and lazily unmounts the simulator it leaves behind.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = nix::mount::umount2(&self.sim_root, nix::mount::MntFlags::MNT_DETACH);
    }

    /// Stops the daemon with SIGTERM and checks it tore everything down.
    pub fn stop(mut self) {
        self.terminate();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        assert!(
            !mounts.contains(&self.sim_root.display().to_string()),
            "the simulator is still mounted after vgpud stopped"
        );
    }

    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("vgpud did not stop within 20 s of SIGTERM");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` until it is true or `secs` pass.
pub async fn eventually(secs: u64, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Polls `check` until it is true or `secs` pass (for tests without an async runtime).
pub fn within(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Daemon {
    /// Manager.Problems as busctl prints it.
    pub fn problems(&self) -> String {
        let out = self.busctl(&[
            "get-property",
            "org.vgpud",
            "/org/vgpud",
            "org.vgpud1.Manager",
            "Problems",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
