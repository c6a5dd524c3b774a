//! Test fixture: the real `vgpud --simulate` (its own simulator mount and private dbus-daemon)
//! as a child process, with helpers for busctl, `vgpud-sim ctl` and zbus clients.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vgpud_api::proxies::{DeviceProxy, GuestProxy, ManagerProxy};
use zbus::zvariant::ObjectPath;

pub const VGPUD: &str = env!("CARGO_BIN_EXE_vgpud");
pub const VGPUD_SIM: &str = env!("CARGO_BIN_EXE_vgpud-sim");
pub const VGPUCTL: &str = env!("CARGO_BIN_EXE_vgpuctl");

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
        self.busctl(&on_manager("call", method, args))
    }

    /// `vgpuctl --address=<the daemon's bus> ARGS`.
    pub fn vgpuctl(&self, args: &[&str]) -> Output {
        self.vgpuctl_command(args).output().expect("vgpuctl runs")
    }

    /// `vgpuctl --address=<the daemon's bus> ARGS`, not yet run (to run it as another user,
    /// say).
    pub fn vgpuctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(VGPUCTL);
        cmd.arg(format!("--address={}", self.address)).args(args);
        cmd
    }

    /// vgpuctl that must succeed; what it printed on stdout.
    pub fn vgpuctl_ok(&self, args: &[&str]) -> String {
        ok_stdout(&format!("vgpuctl {args:?}"), self.vgpuctl(args))
    }

    /// `vgpuctl --json ARGS` that must succeed, its output parsed.
    pub fn vgpuctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        json_of(&self.vgpuctl_ok(&all))
    }

    /// The mdev devices the simulator lists (bus/mdev/devices), sorted.
    pub fn mdev_devices(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.sys("bus/mdev/devices"))
            .expect("the simulator lists devices")
            .map(|e| {
                e.expect("a readable entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        v.sort();
        v
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
        if !self.sigterm_and_reap() {
            panic!("vgpud did not stop within 20 s of SIGTERM");
        }
    }

    /// SIGTERM, then up to 20 s for the exit, SIGKILL past that; whether it stopped in time.
    fn sigterm_and_reap(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.sigterm_and_reap();
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
        let out = self.busctl(&on_manager("get-property", "Problems", &[]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// busctl's words for `VERB org.vgpud /org/vgpud org.vgpud1.Manager MEMBER ARGS...`: `call` a
/// method, `get-property` a property.
pub fn on_manager<'a>(verb: &'a str, member: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        verb,
        "org.vgpud",
        "/org/vgpud",
        "org.vgpud1.Manager",
        member,
    ];
    all.extend_from_slice(args);
    all
}

/// `setpriv` running `program` as another user (its own uid, gid and supplementary groups);
/// add the program's arguments.
pub fn as_user(uid: u32, program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--init-groups".into(),
    ])
    .arg(program);
    cmd
}

/// stdout and stderr of a finished command, one after the other.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// stdout of `what`, which must have succeeded (else the test fails with its stderr).
pub fn ok_stdout(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `text` parsed as JSON (the test fails on anything else).
pub fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The Manager, with no property cache (every read asks the daemon).
pub async fn manager_proxy(conn: &zbus::Connection) -> ManagerProxy<'static> {
    ManagerProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("a Manager proxy")
}

/// The device at `path`, with no property cache.
pub async fn device_proxy<'a, P>(conn: &zbus::Connection, path: P) -> DeviceProxy<'a>
where
    P: TryInto<ObjectPath<'a>>,
    P::Error: Into<zbus::Error>,
{
    DeviceProxy::builder(conn)
        .path(path)
        .expect("a device path")
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("a Device proxy")
}

/// The guest at `path`, with no property cache.
pub async fn guest_proxy<'a, P>(conn: &zbus::Connection, path: P) -> GuestProxy<'a>
where
    P: TryInto<ObjectPath<'a>>,
    P::Error: Into<zbus::Error>,
{
    GuestProxy::builder(conn)
        .path(path)
        .expect("a guest path")
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("a Guest proxy")
}

/// Runs a test body with a watchdog, so a hang fails the test instead of stalling the run.
pub fn with_timeout(limit: Duration, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the test ran for more than {limit:?}"),
    }
}

/// Waits for `child` to exit; kills it and fails the test (naming it `what`) past `limit`.
pub fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a program run by `run_child` printed, and its exit code (-1 if a signal ended it).
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The program exited with `code` and said `needle` on stderr.
    pub fn assert_failed(&self, code: i32, needle: &str) {
        assert_eq!(self.code, code, "{}", self.stderr);
        assert!(self.stderr.contains(needle), "{}", self.stderr);
    }
}

/// Runs `cmd` with `stdin` fed from a thread (so a program that does not read it cannot block
/// the test) and its output collected; kills it and fails the test (naming it `what`) past
/// `limit`.
pub fn run_child(mut cmd: Command, stdin: Vec<u8>, limit: Duration, what: &str) -> Ran {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        // A program may exit without reading everything: a broken pipe is fine.
        let _ = input.write_all(&stdin);
    });
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out_reader = read_all(Box::new(child.stdout.take().expect("stdout")));
    let err_reader = read_all(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_bounded(&mut child, limit, what);
    Ran {
        code: status.code().unwrap_or(-1),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}
