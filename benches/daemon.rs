//! The daemon's cost as its clients pay it, on the simulator: a CreateDevice + Remove round
//! trip over D-Bus against the raw sysfs writes it stands for, start-up time to the bus name
//! and resident memory with 64 and 512 GPUs, and how long an external create takes to reach a
//! client as InterfacesAdded. Prints a table and writes the same figures to
//! target/bench-daemon.json; asserts nothing about time.
//!
//! `cargo bench --bench daemon` (root, /dev/fuse and dbus-daemon needed; it skips otherwise).
//! Each timed loop also stops at a time budget so the whole run stays under two minutes; a
//! row that stopped early says so. VGPUD_BENCH_LONG=1 lifts the budgets (minutes, not seconds)
//! for a run that completes every count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use vgpud_api::proxies::{DeviceProxy, ManagerProxy};
use vgpud_testkit::privbus::{BusKind, PrivateBus};
use vgpud_testkit::prove::check::object_manager;
use vgpud_testkit::prove::rig::{name_acquired, terminate, Bins, Sim};
use zbus::zvariant::OwnedObjectPath;

const VGPUD: &str = env!("CARGO_BIN_EXE_vgpud");
const VGPUD_SIM: &str = env!("CARGO_BIN_EXE_vgpud-sim");

const ROUND_TRIPS: usize = 300;
const STARTUP_ROUNDS: usize = 200;
const SIGNAL_SAMPLES: usize = 100;
/// Time budgets in seconds: (default, with VGPUD_BENCH_LONG=1).
/// The most one timed loop may take; it stops early (and says so) past this.
const LOOP_BUDGET: (u64, u64) = (10, 900);
/// The most a daemon may take to own its name.
const START_BUDGET: (u64, u64) = (30, 600);
/// The most the daemon may take to work off the uevents of unpaced raw writes.
const DRAIN_BUDGET: (u64, u64) = (10, 900);

fn budget((short, long): (u64, u64)) -> Duration {
    let long_run = std::env::var_os("VGPUD_BENCH_LONG").is_some_and(|v| v != "0" && !v.is_empty());
    Duration::from_secs(if long_run { long } else { short })
}

const BUS_NAME: &str = "org.vgpud";
const MTTY: &str = "mtty";
const MTTY_TYPE: &str = "mtty-1";
const T4: &str = "0000:20:00.0";
const T4_TYPE: &str = "nvidia-231";

// ---- measurements ----------------------------------------------------------------------------

/// Latencies of one kind of operation, and whether the loop stopped at its budget.
struct Samples {
    name: String,
    wanted: usize,
    times: Vec<Duration>,
    wall: Duration,
}

impl Samples {
    fn new(name: impl Into<String>, wanted: usize) -> Self {
        Self {
            name: name.into(),
            wanted,
            times: Vec::with_capacity(wanted),
            wall: Duration::ZERO,
        }
    }

    fn us(&self, p: f64) -> f64 {
        if self.times.is_empty() {
            return f64::NAN;
        }
        let mut v = self.times.clone();
        v.sort();
        // Nearest rank.
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1].as_secs_f64() * 1e6
    }

    fn mean_us(&self) -> f64 {
        let total: Duration = self.times.iter().sum();
        total.as_secs_f64() * 1e6 / self.times.len() as f64
    }

    /// Sequential operations per second of wall time (what one client gets).
    fn ops_per_s(&self) -> f64 {
        self.times.len() as f64 / self.wall.as_secs_f64()
    }

    fn note(&self) -> String {
        if self.times.len() < self.wanted {
            format!(
                "stopped at the {} s budget ({} of {})",
                budget(LOOP_BUDGET).as_secs(),
                self.times.len(),
                self.wanted
            )
        } else {
            String::new()
        }
    }

    fn row(&self) -> String {
        format!(
            "  {:<52} {:>5} {:>10.0} {:>10.0} {:>10.0} {:>9.1}  {}",
            self.name,
            self.times.len(),
            self.us(0.50),
            self.us(0.99),
            self.mean_us(),
            self.ops_per_s(),
            self.note()
        )
    }

    fn json(&self) -> Json {
        json!({
            "name": self.name,
            "n": self.times.len(),
            "wanted": self.wanted,
            "p50_us": round(self.us(0.50)),
            "p99_us": round(self.us(0.99)),
            "mean_us": round(self.mean_us()),
            "ops_per_s": round(self.ops_per_s()),
            "stopped_at_budget": self.times.len() < self.wanted,
        })
    }
}

fn round(x: f64) -> Json {
    if x.is_finite() {
        json!((x * 10.0).round() / 10.0)
    } else {
        Json::Null
    }
}

const HEADER: &str = "  operation                                                n    p50 us     p99 us    mean us     ops/s";

/// Runs `op` up to `n` times or until the budget is spent; `op` returns its own latency
/// (so set-up steps such as a matching remove stay out of the figure).
async fn timed<F>(name: &str, n: usize, mut op: F) -> Samples
where
    F: AsyncFnMut(usize) -> Duration,
{
    let mut s = Samples::new(name, n);
    let start = Instant::now();
    for i in 0..n {
        s.times.push(op(i).await);
        if start.elapsed() > budget(LOOP_BUDGET) {
            break;
        }
    }
    s.wall = start.elapsed();
    s
}

fn uuid(case: u32, i: usize) -> String {
    format!("6a1e{case:04x}-0000-4000-8000-{i:012x}")
}

fn device_path(uuid: &str) -> String {
    format!("/org/vgpud/devices/{}", uuid.replace('-', "_"))
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---- the simulated host ----------------------------------------------------------------------

/// The simulator as a child process (the same one `vgpud-prove` uses).
fn start_sim(profiles: &[&str]) -> Result<Sim, String> {
    let bins = Bins {
        vgpud: VGPUD.into(),
        vgpud_sim: VGPUD_SIM.into(),
    };
    let profiles: Vec<String> = profiles.iter().map(|p| p.to_string()).collect();
    Sim::start(&bins, &profiles)
}

fn create_file(sim: &Sim, parent: &str, type_id: &str) -> PathBuf {
    sim.sys(&format!(
        "class/mdev_bus/{parent}/mdev_supported_types/{type_id}/create"
    ))
}

fn remove_file(sim: &Sim, uuid: &str) -> PathBuf {
    sim.sys(&format!("bus/mdev/devices/{uuid}/remove"))
}

/// Why a host did not come up; `rss_kib` is the daemon's when it was given up on.
struct StartFailure {
    message: String,
    waited: Duration,
    rss_kib: Option<u64>,
}

impl From<String> for StartFailure {
    fn from(message: String) -> Self {
        StartFailure {
            message,
            waited: Duration::ZERO,
            rss_kib: None,
        }
    }
}

impl From<&str> for StartFailure {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// The simulator, a private bus, the daemon on both and a client connection.
struct Host {
    // Dropped in this order: the daemon, then the bus, then the simulator.
    daemon: Child,
    conn: zbus::Connection,
    _bus: PrivateBus,
    sim: Sim,
    log: PathBuf,
    /// From spawning vgpud to org.vgpud having an owner.
    startup: Duration,
}

impl Drop for Host {
    fn drop(&mut self) {
        terminate(&mut self.daemon, "vgpud");
    }
}

impl Host {
    async fn start(profiles: &[&str]) -> Result<Host, StartFailure> {
        let sim = start_sim(profiles)?;
        Self::start_on(sim).await
    }

    /// Starts vgpud on a running simulator and times it to its bus name.
    async fn start_on(sim: Sim) -> Result<Host, StartFailure> {
        let bus = PrivateBus::start_with_policy(BusKind::System, &[])
            .map_err(|e| format!("private bus: {e}"))?;
        let conn = zbus::connection::Builder::address(bus.address())
            .map_err(|e| e.to_string())?
            .build()
            .await
            .map_err(|e| format!("client connection: {e}"))?;
        let dbus = zbus::fdo::DBusProxy::new(&conn)
            .await
            .map_err(|e| e.to_string())?;
        let mut owners = dbus
            .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
            .await
            .map_err(|e| e.to_string())?;
        let log = sim.dir().join("vgpud.log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("vgpud log: {e}"))?;
        // Definitions, policy and state go to the run's own directory, never to /etc or /var.
        let own = |name: &str| -> Result<PathBuf, String> {
            let dir = sim.dir().join(name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok(dir)
        };
        let (definitions, config, state) = (own("mdevctl.d")?, own("config")?, own("state")?);
        let t0 = Instant::now();
        let mut daemon = Command::new(VGPUD)
            .arg("--address")
            .arg(bus.address())
            .arg("--sysfs")
            .arg(&sim.mount)
            .arg("--events")
            .arg(format!("sim:{}", sim.uevents.display()))
            .arg("--dev")
            .arg(&sim.dev)
            .arg("--definitions-dir")
            .arg(&definitions)
            .arg("--config-dir")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run vgpud: {e}"))?;
        let owned = name_acquired(&mut owners);
        let acquired = tokio::time::timeout(budget(START_BUDGET), owned).await;
        let startup = t0.elapsed();
        if acquired != Ok(true) {
            let rss_kib = rss_kib(daemon.id());
            let exited = daemon.try_wait().ok().flatten();
            terminate(&mut daemon, "vgpud");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            let tail = match tail.into_iter().rev().collect::<Vec<_>>().join(" | ") {
                t if t.is_empty() => "its log is still empty".to_owned(),
                t => format!("log: {t}"),
            };
            return Err(StartFailure {
                message: match exited {
                    Some(status) => {
                        format!("vgpud exited ({status}) before owning {BUS_NAME}: {tail}")
                    }
                    None => format!(
                        "vgpud did not own {BUS_NAME} within the {} s budget ({tail})",
                        budget(START_BUDGET).as_secs()
                    ),
                },
                waited: startup,
                rss_kib,
            });
        }
        Ok(Host {
            daemon,
            conn,
            _bus: bus,
            sim,
            log,
            startup,
        })
    }

    fn pid(&self) -> u32 {
        self.daemon.id()
    }

    async fn manager(&self) -> ManagerProxy<'static> {
        ManagerProxy::new(&self.conn)
            .await
            .expect("a Manager proxy")
    }

    async fn device(&self, path: OwnedObjectPath) -> DeviceProxy<'static> {
        DeviceProxy::builder(&self.conn)
            .path(path)
            .expect("a device path")
            .build()
            .await
            .expect("a Device proxy")
    }

    /// One CreateDevice + Remove over D-Bus; returns (create, remove) latencies.
    async fn dbus_round_trip(&self, m: &ManagerProxy<'_>, type_spec: &str) -> (Duration, Duration) {
        let t0 = Instant::now();
        let path = m
            .create_device(type_spec, HashMap::new())
            .await
            .unwrap_or_else(|e| {
                panic!("CreateDevice {type_spec}: {e}; see {}", self.log.display())
            });
        let created = t0.elapsed();
        // Building the proxy is client-side set-up, not part of the remove.
        let dev = self.device(path).await;
        let t1 = Instant::now();
        dev.remove(HashMap::new())
            .await
            .unwrap_or_else(|e| panic!("Remove: {e}; see {}", self.log.display()));
        (created, t1.elapsed())
    }
}

/// One raw create + remove through the simulator's files, as a shell or mdevctl does it.
fn raw_round_trip(sim: &Sim, parent: &str, type_id: &str, uuid: &str) -> Duration {
    let t0 = Instant::now();
    std::fs::write(create_file(sim, parent, type_id), format!("{uuid}\n"))
        .unwrap_or_else(|e| panic!("raw create {uuid}: {e}"));
    std::fs::write(remove_file(sim, uuid), "1")
        .unwrap_or_else(|e| panic!("raw remove {uuid}: {e}"));
    t0.elapsed()
}

// ---- the cases -------------------------------------------------------------------------------

/// a. CreateDevice + Remove over D-Bus against the raw writes, on one simulator.
async fn round_trips(
    out: &mut Vec<Samples>,
    report: &mut serde_json::Map<String, Json>,
) -> Result<(), String> {
    let sim = start_sim(&[MTTY, "nvidia-t4"])?;
    let cases = [(MTTY, MTTY_TYPE, 1u32), (T4, T4_TYPE, 2u32)];
    // The kernel's (simulator's) own cost, nobody listening to its uevents.
    for (parent, type_id, case) in cases {
        let s = timed(
            &format!("raw write create+remove {type_id} (no daemon)"),
            ROUND_TRIPS,
            async |i| raw_round_trip(&sim, parent, type_id, &uuid(case, i)),
        )
        .await;
        println!("{}", s.row());
        out.push(s);
    }
    let host = Host::start_on(sim).await.map_err(|f| f.message)?;
    let m = host.manager().await;
    // One untimed round each, so connection set-up and first-use costs stay out.
    for (_, type_id, _) in cases {
        host.dbus_round_trip(&m, type_id).await;
    }
    for (_, type_id, _) in cases {
        let mut creates = Samples::new(format!("D-Bus CreateDevice {type_id}"), ROUND_TRIPS);
        let mut removes = Samples::new(format!("D-Bus Device.Remove {type_id}"), ROUND_TRIPS);
        let trips = timed(
            &format!("D-Bus CreateDevice+Remove {type_id}"),
            ROUND_TRIPS,
            async |_| {
                let (c, r) = host.dbus_round_trip(&m, type_id).await;
                creates.times.push(c);
                removes.times.push(r);
                c + r
            },
        )
        .await;
        creates.wall = creates.times.iter().sum();
        removes.wall = removes.times.iter().sum();
        for s in [trips, creates, removes] {
            println!("{}", s.row());
            out.push(s);
        }
    }
    // The same raw writes while the daemon follows their uevents. Unpaced: the writes return
    // at the simulator's speed and the daemon works the events off behind them.
    let mut last = String::new();
    for (parent, type_id, case) in cases {
        let s = timed(
            &format!("raw write create+remove {type_id} (daemon running)"),
            ROUND_TRIPS,
            async |i| {
                last = uuid(case + 0x10, i);
                raw_round_trip(&host.sim, parent, type_id, &last)
            },
        )
        .await;
        println!("{}", s.row());
        out.push(s);
    }
    // A method call queues behind those events in the manager: its answer says when the
    // daemon has caught up.
    let trips = out
        .iter()
        .rev()
        .take(2)
        .map(|s| s.times.len())
        .sum::<usize>();
    let t0 = Instant::now();
    let drained = tokio::time::timeout(budget(DRAIN_BUDGET), m.get_device(&last)).await;
    let drain = t0.elapsed();
    let line = match &drained {
        Ok(Err(zbus::Error::MethodError(name, _, _))) if name.as_str() == "org.vgpud1.Error.NotFound" => {
            format!("daemon caught up with the uevents of those {trips} round trips {:.1} s after the last write", drain.as_secs_f64())
        }
        Ok(other) => format!("GetDevice after the raw writes answered {other:?} after {:.1} s", drain.as_secs_f64()),
        Err(_) => format!(
            "daemon still behind the uevents of those {trips} round trips {} s after the last write (budget)",
            budget(DRAIN_BUDGET).as_secs()
        ),
    };
    println!("  {line}");
    report.insert(
        "raw_writes_catch_up".into(),
        json!({
            "raw_round_trips": trips,
            "caught_up": matches!(drained, Ok(Err(_))),
            "seconds": round(drain.as_secs_f64()),
            "note": line,
        }),
    );
    Ok(())
}

/// b. Start-up to the bus name and RSS, on `gpus` T4s.
async fn startup(gpus: u32) -> Json {
    let profile = format!("nvidia-t4:{gpus}");
    let sim_start = Instant::now();
    let sim = match start_sim(&[&profile]) {
        Ok(s) => s,
        Err(e) => {
            println!("  {profile}: the simulator did not start: {e}");
            return json!({ "gpus": gpus, "error": e });
        }
    };
    let sim_ready = sim_start.elapsed();
    let kib =
        |v: Option<u64>| v.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    let host = match Host::start_on(sim).await {
        Ok(h) => h,
        Err(f) => {
            println!(
                "  {profile:<16} sim ready {:>7.0} ms | NOT MEASURED: {} | RSS when given up after {:.1} s: {}",
                sim_ready.as_secs_f64() * 1e3,
                f.message,
                f.waited.as_secs_f64(),
                kib(f.rss_kib)
            );
            return json!({
                "gpus": gpus,
                "sim_ready_ms": round(sim_ready.as_secs_f64() * 1e3),
                "error": f.message,
                "waited_ms": round(f.waited.as_secs_f64() * 1e3),
                "rss_kib_when_given_up": f.rss_kib,
            });
        }
    };
    let rss_start = rss_kib(host.pid());
    let objects = object_manager(&host.conn)
        .await
        .expect("an ObjectManager proxy");
    let t_objects = Instant::now();
    let managed = objects.get_managed_objects().await.map(|o| o.len());
    let get_managed = t_objects.elapsed();
    // Its reply is the whole tree: measured apart so it is not mistaken for growth per round.
    let rss_objects = rss_kib(host.pid());
    let m = host.manager().await;
    let rounds = timed(
        &format!("D-Bus CreateDevice+Remove GRID T4-2Q ({gpus} GPUs)"),
        STARTUP_ROUNDS,
        async |_| {
            let (c, r) = host.dbus_round_trip(&m, "GRID T4-2Q").await;
            c + r
        },
    )
    .await;
    let rss_after = rss_kib(host.pid());
    println!(
        "  {profile:<16} sim ready {:>7.0} ms | vgpud to name {:>8.1} ms | objects {:>6} (GetManagedObjects {:>7.1} ms) | RSS {} at start, {} after GetManagedObjects, {} after {} rounds",
        sim_ready.as_secs_f64() * 1e3,
        host.startup.as_secs_f64() * 1e3,
        managed.as_ref().map_or("?".to_owned(), |n| n.to_string()),
        get_managed.as_secs_f64() * 1e3,
        kib(rss_start),
        kib(rss_objects),
        kib(rss_after),
        rounds.times.len(),
    );
    println!("{}", rounds.row());
    json!({
        "gpus": gpus,
        "sim_ready_ms": round(sim_ready.as_secs_f64() * 1e3),
        "start_to_name_ms": round(host.startup.as_secs_f64() * 1e3),
        "managed_objects": managed.ok(),
        "get_managed_objects_ms": round(get_managed.as_secs_f64() * 1e3),
        "rss_kib_after_start": rss_start,
        "rss_kib_after_get_managed_objects": rss_objects,
        "rss_kib_after_rounds": rss_after,
        "rounds": rounds.json(),
    })
}

/// c. An external create (a raw write) until the client sees InterfacesAdded, and the
/// matching remove until InterfacesRemoved.
async fn external_signals(out: &mut Vec<Samples>) -> Result<(), String> {
    let host = Host::start(&[MTTY]).await.map_err(|f| f.message)?;
    let om = object_manager(&host.conn).await?;
    let mut added = om
        .receive_interfaces_added()
        .await
        .map_err(|e| e.to_string())?;
    let mut removed = om
        .receive_interfaces_removed()
        .await
        .map_err(|e| e.to_string())?;
    let mut removals = Samples::new(
        "raw remove -> InterfacesRemoved at the client",
        SIGNAL_SAMPLES,
    );
    let wait = Duration::from_secs(10);
    let adds = timed(
        "raw create -> InterfacesAdded at the client",
        SIGNAL_SAMPLES,
        async |i| {
            let uuid = uuid(3, i);
            let path = device_path(&uuid);
            let t0 = Instant::now();
            std::fs::write(create_file(&host.sim, MTTY, MTTY_TYPE), format!("{uuid}\n"))
                .unwrap_or_else(|e| panic!("raw create {uuid}: {e}"));
            let seen = tokio::time::timeout(wait, async {
                while let Some(s) = added.next().await {
                    if s.args().is_ok_and(|a| a.object_path().as_str() == path) {
                        return;
                    }
                }
            })
            .await;
            let latency = t0.elapsed();
            assert!(seen.is_ok(), "no InterfacesAdded for {path} within 10 s");
            // The remove is timed too, but kept out of the create's figure.
            let t1 = Instant::now();
            std::fs::write(remove_file(&host.sim, &uuid), "1")
                .unwrap_or_else(|e| panic!("raw remove {uuid}: {e}"));
            let gone = tokio::time::timeout(wait, async {
                while let Some(s) = removed.next().await {
                    if s.args().is_ok_and(|a| a.object_path().as_str() == path) {
                        return;
                    }
                }
            })
            .await;
            assert!(gone.is_ok(), "no InterfacesRemoved for {path} within 10 s");
            removals.times.push(t1.elapsed());
            latency
        },
    )
    .await;
    removals.wall = removals.times.iter().sum();
    println!("{}", adds.row());
    println!("{}", removals.row());
    out.push(adds);
    out.push(removals);
    Ok(())
}

fn can_run() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (FUSE mount with allow_other, owning org.vgpud)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("needs /dev/fuse".into());
    }
    if Command::new("dbus-daemon")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("needs dbus-daemon".into());
    }
    Ok(())
}

fn json_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-daemon.json")
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not and wants no run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // Every machine of this kind has root, /dev/fuse and dbus-daemon: a missing one fails the
    // bench, not skips it.
    if let Err(why) = can_run() {
        panic!("daemon bench cannot run: {why}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let mut report = serde_json::Map::new();
    report.insert(
        "budgets_s".into(),
        json!({
            "loop": budget(LOOP_BUDGET).as_secs(),
            "start": budget(START_BUDGET).as_secs(),
            "drain": budget(DRAIN_BUDGET).as_secs(),
        }),
    );
    runtime.block_on(async {
        println!("\na. CreateDevice + Remove over D-Bus vs raw sysfs writes (mtty + 1 T4, same simulator)");
        println!("{HEADER}");
        let mut trips = Vec::new();
        if let Err(e) = round_trips(&mut trips, &mut report).await {
            println!("  failed: {e}");
            report.insert("round_trips_error".into(), json!(e));
        }
        report.insert("round_trips".into(), trips.iter().map(Samples::json).collect());

        println!("\nb. Start-up to the bus name, and RSS (before any create, after {STARTUP_ROUNDS} create+remove rounds)");
        println!("{HEADER}");
        let mut starts = Vec::new();
        for gpus in [64, 512] {
            starts.push(startup(gpus).await);
        }
        report.insert("startup".into(), Json::Array(starts));

        println!("\nc. External create (raw write to the simulator) to the D-Bus client's signal (mtty-1)");
        println!("{HEADER}");
        let mut signals = Vec::new();
        if let Err(e) = external_signals(&mut signals).await {
            println!("  failed: {e}");
            report.insert("signals_error".into(), json!(e));
        }
        report.insert("signals".into(), signals.iter().map(Samples::json).collect());
    });
    report.insert("total_s".into(), round(started.elapsed().as_secs_f64()));
    let path = json_path();
    let text = serde_json::to_string_pretty(&Json::Object(report)).expect("JSON");
    match std::fs::write(&path, text + "\n") {
        Ok(()) => println!(
            "\nwrote {} ({:.1} s in all)",
            path.display(),
            started.elapsed().as_secs_f64()
        ),
        Err(e) => println!("\ncannot write {}: {e}", path.display()),
    }
}
