//! The real parts a proof runs on: `vgpud-sim` mounted in a temporary directory, a private
//! dbus-daemon, and `vgpud` on both as a child process that can be killed and restarted over
//! the same simulator, definitions and state (the simulated kernel outlives the daemon, as the
//! real one does).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::privbus::{BusKind, PrivateBus};
use vgpud_api::names::BUS_NAME;
use vgpud_sim::control::{Client, Request};

/// The most a simulator may take to mount, and a daemon to own its name.
const READY_BUDGET: Duration = Duration::from_secs(120);

/// Where the programs under test are.
#[derive(Debug, Clone)]
pub struct Bins {
    pub vgpud: PathBuf,
    pub vgpud_sim: PathBuf,
}

impl Bins {
    /// The binaries built beside the running one (`target/release/vgpud-prove` finds
    /// `target/release/vgpud`).
    pub fn beside_current_exe() -> Result<Bins, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
        let dir = exe.parent().ok_or("the executable has no directory")?;
        let bins = Bins {
            vgpud: dir.join("vgpud"),
            vgpud_sim: dir.join("vgpud-sim"),
        };
        for p in [&bins.vgpud, &bins.vgpud_sim] {
            if !p.is_file() {
                return Err(format!(
                    "{} is missing: build all binaries first (`cargo build --release --bins`)",
                    p.display()
                ));
            }
        }
        Ok(bins)
    }
}

/// `vgpud-sim DIR --profile P...` as a child process; SIGTERM unmounts it.
pub struct Sim {
    child: Child,
    pub mount: PathBuf,
    pub uevents: PathBuf,
    pub control: PathBuf,
    pub dev: PathBuf,
    dir: tempfile::TempDir,
}

impl Sim {
    pub fn start(bins: &Bins, profiles: &[String]) -> Result<Sim, String> {
        let dir = tempfile::Builder::new()
            .prefix("vgpud-prove.")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let mount = dir.path().join("sys");
        let mut cmd = Command::new(&bins.vgpud_sim);
        cmd.arg(&mount);
        for p in profiles {
            cmd.args(["--profile", p]);
        }
        let log = std::fs::File::create(dir.path().join("vgpud-sim.log"))
            .map_err(|e| format!("simulator log: {e}"))?;
        let mut child = cmd
            .env("VGPUD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bins.vgpud_sim.display()))?;
        let stdout = child.stdout.take().ok_or("vgpud-sim stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Keep reading after the receiver is gone so the simulator never blocks.
                let _ = tx.send(line);
            }
        });
        let (mut uevents, mut control, mut dev, mut mounted) = (None, None, None, None);
        let deadline = Instant::now() + READY_BUDGET;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == "ready" => break,
                Ok(line) => {
                    let mut words = line.splitn(2, ' ');
                    let (key, value) = (words.next(), words.next().map(PathBuf::from));
                    match key {
                        Some("uevents") => uevents = value,
                        Some("control") => control = value,
                        Some("dev") => dev = value,
                        Some("mounted") => mounted = value,
                        _ => {}
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(dir.path().join("vgpud-sim.log"))
                        .unwrap_or_default();
                    return Err(format!("vgpud-sim did not get ready: {}", log.trim()));
                }
            }
        }
        Ok(Sim {
            child,
            mount: mounted.unwrap_or(mount),
            uevents: uevents.ok_or("vgpud-sim printed no uevents socket")?,
            control: control.ok_or("vgpud-sim printed no control socket")?,
            dev: dev.ok_or("vgpud-sim printed no dev directory")?,
            dir,
        })
    }

    /// A path inside the simulated sysfs.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.mount.join(rel)
    }

    /// The run's own directory (logs, definitions, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn client(&self) -> Result<Client, String> {
        Client::connect(&self.control).map_err(|e| format!("simulator control socket: {e}"))
    }

    /// One control request; its error as text.
    pub fn ctl(&self, req: &Request) -> Result<serde_json::Value, String> {
        self.client()?.ok(req).map_err(|e| e.to_string())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        terminate(&mut self.child, "vgpud-sim");
    }
}

/// SIGTERM, then SIGKILL after 20 s.
pub fn terminate(child: &mut Child, what: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!("{what} did not stop within 20 s of SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// The simulator, a private system-like bus and vgpud on both.
pub struct Rig {
    daemon: Option<Child>,
    conn: zbus::Connection,
    bus: PrivateBus,
    pub sim: Sim,
    /// The sysfs root vgpud is started on: the simulator's mount, or a plain copy of it.
    pub sysfs: PathBuf,
    bins: Bins,
    pub definitions: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    /// How many times the daemon was started (each start appends to the log).
    pub starts: u32,
    /// From spawning vgpud to its owning the bus name, at the first start.
    pub startup: Duration,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            terminate(&mut d, "vgpud");
        }
    }
}

impl Rig {
    /// A simulator with `profiles`, a bus, and vgpud started on them.
    pub async fn start(bins: &Bins, profiles: &[String]) -> Result<Rig, String> {
        let sim = Sim::start(bins, profiles)?;
        Self::start_on(bins, sim).await
    }

    pub async fn start_on(bins: &Bins, sim: Sim) -> Result<Rig, String> {
        let bus = PrivateBus::start_with_policy(BusKind::System, &[])
            .map_err(|e| format!("private bus: {e}"))?;
        let conn = zbus::connection::Builder::address(bus.address())
            .map_err(|e| e.to_string())?
            .build()
            .await
            .map_err(|e| format!("client connection: {e}"))?;
        let own = |name: &str| -> Result<PathBuf, String> {
            let dir = sim.dir().join(name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok(dir)
        };
        let (definitions, config, state) = (own("mdevctl.d")?, own("config")?, own("state")?);
        let mut rig = Rig {
            daemon: None,
            conn,
            bus,
            log: sim.dir().join("vgpud.log"),
            sysfs: sim.mount.clone(),
            sim,
            bins: bins.clone(),
            definitions,
            state,
            config,
            starts: 0,
            startup: Duration::ZERO,
        };
        rig.startup = rig.start_daemon().await?;
        Ok(rig)
    }

    pub fn address(&self) -> &str {
        self.bus.address()
    }

    /// The rig's own client connection.
    pub fn conn(&self) -> &zbus::Connection {
        &self.conn
    }

    /// A fresh client connection (one per simulated client).
    pub async fn connect(&self) -> Result<zbus::Connection, String> {
        zbus::connection::Builder::address(self.bus.address())
            .map_err(|e| e.to_string())?
            .build()
            .await
            .map_err(|e| format!("client connection: {e}"))
    }

    /// Starts vgpud and waits until it owns its bus name; returns how long that took.
    pub async fn start_daemon(&mut self) -> Result<Duration, String> {
        if self.daemon.is_some() {
            return Err("the daemon is already running".into());
        }
        let dbus = zbus::fdo::DBusProxy::new(&self.conn)
            .await
            .map_err(|e| e.to_string())?;
        let mut owners = dbus
            .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
            .await
            .map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("vgpud log: {e}"))?;
        let t0 = Instant::now();
        let child = Command::new(&self.bins.vgpud)
            .arg("--address")
            .arg(self.bus.address())
            .arg("--sysfs")
            .arg(&self.sysfs)
            .arg("--events")
            .arg(format!("sim:{}", self.sim.uevents.display()))
            .arg("--dev")
            .arg(&self.sim.dev)
            .arg("--definitions-dir")
            .arg(&self.definitions)
            .arg("--config-dir")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .env("VGPUD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bins.vgpud.display()))?;
        self.daemon = Some(child);
        self.starts += 1;
        let owned = name_acquired(&mut owners);
        let acquired = tokio::time::timeout(READY_BUDGET, owned).await;
        let took = t0.elapsed();
        if acquired != Ok(true) {
            let exited = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten());
            self.stop_daemon();
            return Err(match exited {
                Some(status) => format!(
                    "vgpud exited ({status}) before owning {BUS_NAME}: {}",
                    self.log_tail(3)
                ),
                None => format!(
                    "vgpud did not own {BUS_NAME} within {READY_BUDGET:?}: {}",
                    self.log_tail(3)
                ),
            });
        }
        Ok(took)
    }

    /// SIGKILL: no clean-up of any kind, as a crash or the OOM killer would.
    pub fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            terminate(&mut d, "vgpud");
        }
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Whether the daemon process is still running (not exited, not a zombie).
    pub fn daemon_alive(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|d| matches!(d.try_wait(), Ok(None)))
    }

    pub fn daemon_rss_kib(&self) -> Option<u64> {
        self.daemon_pid().and_then(super::stats::rss_kib)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the daemon's log, joined.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(n).collect();
        match tail.into_iter().rev().collect::<Vec<_>>().join(" | ") {
            t if t.is_empty() => "its log is empty".to_owned(),
            t => format!("log: {t}"),
        }
    }

    /// Every log line since the start that contains "panicked".
    pub fn panics_in_log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("panicked"))
            .map(str::to_owned)
            .collect()
    }
}

/// Waits on a NameOwnerChanged stream for one name until it reports a new owner; false if the
/// stream ends first.
pub async fn name_acquired(owners: &mut zbus::fdo::NameOwnerChangedStream) -> bool {
    while let Some(signal) = owners.next().await {
        if signal.args().is_ok_and(|args| args.new_owner().is_some()) {
            return true;
        }
    }
    false
}
