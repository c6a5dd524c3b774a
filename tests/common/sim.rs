//! Fixture shared by the simulator's integration tests: one simulator per test in its own
//! temporary directory (in-process, or the real `vgpud-sim` binary), raw sysfs writes that
//! report the errno of open(2) and write(2) apart, and a time bound on everything that can
//! block, so a hang fails the test instead of stalling CI.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;
use vgpud_model::uevent::UEvent;
use vgpud_sim::control::{Client, Request};
use vgpud_sim::feed::Subscriber;
use vgpud_sim::mount::{self, MountState};
use vgpud_sim::{SimOptions, Simulator};

/// The bound on any single wait that should end quickly; reaching it means a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(15);
/// The bound on a whole test; past it the process aborts with the test's name.
const TEST_GUARD: Duration = Duration::from_secs(60);

// ---- raw sysfs access ------------------------------------------------------------------------

/// Why a write to a sysfs attribute failed: the kernel means different things at open and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteErr {
    Open(i32),
    Write(i32),
}

/// One open(O_WRONLY) and one write(2), as a careful tool writes a sysfs attribute.
pub fn write_attr(path: &Path, bytes: &[u8]) -> Result<(), WriteErr> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WriteErr::Open(e.raw_os_error().unwrap_or(0)))?;
    match f.write(bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(n) => panic!("short write to {}: {n} of {}", path.display(), bytes.len()),
        Err(e) => Err(WriteErr::Write(e.raw_os_error().unwrap_or(0))),
    }
}

/// A write on its own thread, for writes that block in the kernel.
pub struct PendingWrite {
    rx: mpsc::Receiver<Result<(), WriteErr>>,
    started: Instant,
}

impl PendingWrite {
    pub fn spawn(path: PathBuf, bytes: Vec<u8>) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(write_attr(&path, &bytes));
        });
        PendingWrite {
            rx,
            started: Instant::now(),
        }
    }

    /// Whether the write is still blocked after `d`.
    pub fn still_pending_after(&self, d: Duration) -> bool {
        match self.rx.recv_timeout(d) {
            Err(mpsc::RecvTimeoutError::Timeout) => true,
            Ok(r) => {
                eprintln!("the write finished early: {r:?}");
                false
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the writer thread died"),
        }
    }

    /// The write's result and how long it took from the spawn; panics on a hang.
    pub fn wait(self) -> (Result<(), WriteErr>, Duration) {
        let r = self
            .rx
            .recv_timeout(HANG_GUARD)
            .expect("a blocked write never finished");
        (r, self.started.elapsed())
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn read_u64(path: &Path) -> u64 {
    let text = read(path);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{} holds {text:?}, not a number", path.display()))
}

/// Sorted entry names of a directory.
pub fn list(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(path)
        .unwrap_or_else(|e| panic!("list {}: {e}", path.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

pub fn link(path: &Path) -> String {
    std::fs::read_link(path)
        .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
        .to_string_lossy()
        .into_owned()
}

pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn is_mounted(dir: &Path) -> bool {
    !matches!(
        mount::state(dir).expect("mountinfo"),
        MountState::NotMounted
    )
}

// ---- hang guard ------------------------------------------------------------------------------

/// Aborts the process if the test holding it does not finish in time: a FUSE request that
/// never gets an answer cannot be interrupted from the test thread.
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    pub fn arm(limit: Duration) -> Self {
        let name = std::thread::current().name().unwrap_or("a test").to_owned();
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{name} hung for {limit:?}; aborting the test binary");
                std::process::abort();
            }
        });
        Watchdog { _disarm: tx }
    }
}

// ---- in-process simulator ------------------------------------------------------------------

/// A simulator mounted in this process at `<tempdir>/sys`; unmounted on drop.
pub struct Sim {
    sim: Option<Simulator>,
    root: PathBuf,
    _dir: TempDir,
    _watchdog: Watchdog,
}

impl Sim {
    pub fn start(profiles: &[&str]) -> Self {
        Self::start_with(profiles, &[])
    }

    /// Built-in `profiles` and custom profile files.
    pub fn start_with(profiles: &[&str], profile_files: &[PathBuf]) -> Self {
        let watchdog = Watchdog::arm(TEST_GUARD);
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SimOptions {
            mountpoint: dir.path().join("sys"),
            profiles: profiles.iter().map(|s| s.to_string()).collect(),
            profile_files: profile_files.to_vec(),
            ..Default::default()
        };
        let sim = Simulator::start(&opts).unwrap_or_else(|e| panic!("start {profiles:?}: {e}"));
        let root = sim.mountpoint().to_path_buf();
        Sim {
            sim: Some(sim),
            root,
            _dir: dir,
            _watchdog: watchdog,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` under the mount point.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn sim(&self) -> &Simulator {
        self.sim.as_ref().expect("running")
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.sim().control_socket()).expect("control socket")
    }

    /// A control request that must succeed.
    pub fn ctl(&self, req: Request) -> Value {
        let shown = format!("{req:?}");
        self.client()
            .ok(&req)
            .unwrap_or_else(|e| panic!("{shown}: {e}"))
    }

    pub fn hold(&self, device: &str) {
        self.ctl(Request::Hold {
            device: device.into(),
        });
    }

    pub fn release(&self, device: &str) {
        self.ctl(Request::Release {
            device: device.into(),
        });
    }

    /// Makes writes to `path` (root-relative) fail with `errno` from now on.
    pub fn inject_errno(&self, path: &str, errno: &str) {
        self.ctl(Request::Inject {
            path: path.into(),
            errno: Some(errno.into()),
            delay_ms: None,
            count: None,
        });
    }

    /// A control request on its own connection and thread, for requests that block.
    pub fn ctl_pending(&self, req: Request) -> mpsc::Receiver<Result<Value, String>> {
        let mut client = self.client();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(client.ok(&req).map_err(|e| e.to_string()));
        });
        rx
    }

    pub fn subscribe(&self) -> Events {
        Events(Subscriber::connect(&self.sim().uevent_socket()).expect("uevent socket"))
    }

    /// Names in class/mdev_bus.
    pub fn parents(&self) -> Vec<String> {
        list(&self.path("class/mdev_bus"))
    }

    pub fn type_dir(&self, parent: &str, type_id: &str) -> PathBuf {
        self.path(&format!(
            "class/mdev_bus/{parent}/mdev_supported_types/{type_id}"
        ))
    }

    pub fn available(&self, parent: &str, type_id: &str) -> u64 {
        read_u64(&self.type_dir(parent, type_id).join("available_instances"))
    }

    /// Every type of `parent` with its `available_instances`.
    pub fn availability(&self, parent: &str) -> Vec<(String, u64)> {
        let dir = self.path(&format!("class/mdev_bus/{parent}/mdev_supported_types"));
        list(&dir)
            .into_iter()
            .map(|t| {
                let n = read_u64(&dir.join(&t).join("available_instances"));
                (t, n)
            })
            .collect()
    }

    /// Writes `bytes` to a type's `create`.
    pub fn create_raw(&self, parent: &str, type_id: &str, bytes: &[u8]) -> Result<(), WriteErr> {
        write_attr(&self.type_dir(parent, type_id).join("create"), bytes)
    }

    /// Creates a device with a fresh UUID, as `echo UUID > create` does.
    pub fn create(&self, parent: &str, type_id: &str) -> Result<String, WriteErr> {
        let uuid = new_uuid();
        self.create_raw(parent, type_id, format!("{uuid}\n").as_bytes())?;
        Ok(uuid)
    }

    /// Creates `n` devices of a type, each of which must succeed.
    pub fn fill(&self, parent: &str, type_id: &str, n: usize) {
        for i in 0..n {
            self.create(parent, type_id)
                .unwrap_or_else(|e| panic!("create #{} of {type_id}: {e:?}", i + 1));
        }
    }

    /// `create` that must succeed.
    pub fn created(&self, parent: &str, type_id: &str) -> String {
        self.create(parent, type_id)
            .unwrap_or_else(|e| panic!("create {type_id} on {parent}: {e:?}"))
    }

    pub fn device_dir(&self, uuid: &str) -> PathBuf {
        self.path(&format!("bus/mdev/devices/{uuid}"))
    }

    pub fn remove_raw(&self, uuid: &str, bytes: &[u8]) -> Result<(), WriteErr> {
        write_attr(&self.device_dir(uuid).join("remove"), bytes)
    }

    pub fn remove_pending(&self, uuid: &str) -> PendingWrite {
        PendingWrite::spawn(self.device_dir(uuid).join("remove"), b"1\n".to_vec())
    }

    pub fn devices(&self) -> Vec<String> {
        list(&self.path("bus/mdev/devices"))
    }

    /// The PCI functions of the host, as bus/pci/devices lists them.
    pub fn pci_devices(&self) -> Vec<String> {
        list(&self.path("bus/pci/devices"))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(sim) = self.sim.take() {
            let root = self.root.clone();
            let stopped = sim.stop();
            if !std::thread::panicking() {
                stopped.expect("unmount");
                assert!(!is_mounted(&root), "{} is still mounted", root.display());
            }
        }
    }
}

/// Where mtty-1 devices are created, root-relative.
pub const MTTY_1_CREATE: &str = "class/mdev_bus/mtty/mdev_supported_types/mtty-1/create";

// ---- uevents -----------------------------------------------------------------------------------

/// A subscriber to the simulator's uevent feed.
pub struct Events(pub Subscriber);

impl Events {
    /// The next event; panics if none comes before the hang guard.
    pub fn next(&self) -> UEvent {
        self.0
            .next(HANG_GUARD)
            .expect("uevent feed")
            .expect("no uevent came")
    }

    pub fn take(&self, n: usize) -> Vec<UEvent> {
        (0..n).map(|_| self.next()).collect()
    }

    /// An event arriving within `d`, if any.
    pub fn within(&self, d: Duration) -> Option<UEvent> {
        self.0.next(d).expect("uevent feed")
    }
}

/// `ACTION SUBSYSTEM [KEY=VALUE of DRIVER and MDEV_STATE]`, to compare sequences at a glance.
pub fn summary(e: &UEvent) -> String {
    let mut s = format!("{} {}", e.action, e.subsystem);
    for key in ["DRIVER", "MDEV_STATE"] {
        if let Some(v) = e.prop(key) {
            s.push_str(&format!(" {key}={v}"));
        }
    }
    s
}

pub fn summaries(events: &[UEvent]) -> Vec<String> {
    events.iter().map(summary).collect()
}

// ---- the real binary ---------------------------------------------------------------------------

pub fn sim_binary() -> &'static str {
    env!("CARGO_BIN_EXE_vgpud-sim")
}

/// Runs `cmd` to completion within the hang guard (killing it past that).
pub fn run_bounded(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HANG_GUARD) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{shown}: {e}")),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("{shown} did not finish within {HANG_GUARD:?}");
        }
    }
}

/// What a finished command printed.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(out: Output) -> Self {
        Ran {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stdout of a command that must have succeeded.
    pub fn ok(self) -> String {
        assert!(
            self.status.success(),
            "failed ({}): stdout {:?} stderr {:?}",
            self.status,
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    /// stderr of a command that must have failed.
    pub fn failed(self) -> String {
        assert!(
            !self.status.success(),
            "succeeded but should not have: stdout {:?} stderr {:?}",
            self.stdout,
            self.stderr
        );
        self.stderr
    }
}

/// A `vgpud-sim DIR ...` process mounted at `<tempdir>/sys`, started and waited for "ready".
pub struct SimProcess {
    child: Option<Child>,
    /// None once `crash` handed it (and the stale mount in it) to the caller.
    dir: Option<TempDir>,
    pub mountpoint: PathBuf,
    /// What it printed before "ready".
    pub banner: Vec<String>,
    stderr_path: PathBuf,
}

impl SimProcess {
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("sys");
        Self::start_at(dir, mountpoint, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts at `mountpoint` (inside `dir`); on a failed start, what it said on stderr.
    pub fn start_at(dir: TempDir, mountpoint: PathBuf, args: &[&str]) -> Result<Self, String> {
        let stderr_path = dir.path().join(format!(
            "stderr-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(sim_binary())
            .arg(&mountpoint)
            .args(args)
            .env("VGPUD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn vgpud-sim");
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
        let mut me = SimProcess {
            child: Some(child),
            dir: Some(dir),
            mountpoint,
            banner: Vec::new(),
            stderr_path,
        };
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line == "ready" => return Ok(me),
                Ok(line) => me.banner.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = me.wait_exit();
                    return Err(format!(
                        "vgpud-sim exited before ready ({status}): {}",
                        me.stderr()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "vgpud-sim was not ready within {HANG_GUARD:?}: {}",
                        me.stderr()
                    ))
                }
            }
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The value of a banner line such as `control /path`.
    pub fn banner_value(&self, key: &str) -> String {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key:?} line in {:?}", self.banner))
            .to_owned()
    }

    /// `bash -c script` with $SYS set to the mount point.
    pub fn bash(&self, script: &str) -> Ran {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(script).env("SYS", &self.mountpoint);
        Ran::from(run_bounded(cmd))
    }

    /// `vgpud-sim ctl SYS args...`.
    pub fn ctl(&self, args: &[&str]) -> Ran {
        let mut cmd = Command::new(sim_binary());
        cmd.arg("ctl").arg(&self.mountpoint).args(args);
        Ran::from(run_bounded(cmd))
    }

    /// Waits for the process to exit, within the hang guard.
    fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vgpud-sim did not exit within {HANG_GUARD:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and waits for the exit.
    pub fn signal_and_wait(&mut self, signal: Signal) -> ExitStatus {
        kill(self.pid(), signal).expect("kill");
        self.wait_exit()
    }

    /// SIGTERM, then checks it exited 0 and left nothing mounted.
    pub fn stop(mut self) {
        let status = self.signal_and_wait(Signal::SIGTERM);
        assert!(status.success(), "exit {status}: {}", self.stderr());
        assert!(
            !is_mounted(&self.mountpoint),
            "{} is still mounted after SIGTERM",
            self.mountpoint.display()
        );
    }

    /// Kills the process with SIGKILL, leaving a stale mount behind; returns the temp dir.
    pub fn crash(mut self) -> (TempDir, PathBuf) {
        self.signal_and_wait(Signal::SIGKILL);
        let dir = self.dir.take().expect("a temp dir");
        (dir, self.mountpoint.clone())
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Never leave a mount behind for the temp dir's removal to trip over.
        if self.dir.is_some() && is_mounted(&self.mountpoint) {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Reads all of a file that might be write-only, returning the errno of the failure.
pub fn read_errno(path: &Path) -> Result<String, i32> {
    let mut f = std::fs::File::open(path).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let mut s = String::new();
    f.read_to_string(&mut s)
        .map_err(|e| e.raw_os_error().unwrap_or(0))?;
    Ok(s)
}
